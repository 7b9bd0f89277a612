//! `rate-limiting`: Kong's shape (fixed windows per `second`…`year`, all enforced, keyed by
//! `limit_by`) or the BFF routes' shape (a token bucket of `rate` per second holding
//! `rate + burst`); see `postern_proto::model::plugins::rate_limiting`. Kong-shaped limits
//! send Kong's headers (`RateLimit-*`, `X-RateLimit-Limit-Minute`…) as well as
//! `X-RateLimit-*`, unless `hide_client_headers`.

use http::{HeaderName, StatusCode};
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::limits::Degrade;
use postern_proto::model::plugins::parse;
use postern_proto::model::plugins::rate_limiting::{LimitBy, RateLimitingConfig, Shape};
use serde_json::Value;

use super::limiting::{Headers, Limit, PeriodHeaders};
use super::{Plugin, RequestCtx, Step};
use crate::ratelimit::key::{KeyResolver, remote_addr};
use crate::ratelimit::{Rule, Window};

enum Caller {
    Kong {
        limit_by: LimitBy,
        header: Option<HeaderName>,
        path: Option<String>,
    },
    Key(KeyResolver),
}

pub struct RateLimiting {
    caller: Caller,
    limit: Limit,
}

impl RateLimiting {
    pub fn new(config: &Value) -> Result<RateLimiting, ValidationError> {
        let c: RateLimitingConfig = parse(config)?;
        let status = StatusCode::from_u16(c.error_code())
            .map_err(|_| ValidationError::new("error_code", "not a status code"))?;
        let redis = c.redis_settings()?;
        let hide = c.hide_client_headers.unwrap_or(false);
        let (rule, caller, headers) = match c.shape()? {
            Shape::Kong { windows, limit_by } => {
                let header = match (&c.header_name, limit_by) {
                    (Some(h), LimitBy::Header) => {
                        Some(HeaderName::try_from(h.to_ascii_lowercase()).map_err(|_| {
                            ValidationError::new("header_name", "not a header name")
                        })?)
                    }
                    _ => None,
                };
                let rule = Rule::FixedWindow(
                    windows
                        .iter()
                        .map(|(_, secs, limit)| Window {
                            limit: *limit,
                            window_ms: secs * 1000,
                        })
                        .collect(),
                );
                let periods = windows
                    .iter()
                    .map(|(name, _, _)| PeriodHeaders::new(name))
                    .collect();
                (
                    rule,
                    Caller::Kong {
                        limit_by,
                        header,
                        path: c.path.clone(),
                    },
                    Headers::Kong(periods),
                )
            }
            Shape::Bucket {
                rate,
                capacity,
                key,
            } => (
                Rule::TokenBucket { rate, capacity },
                Caller::Key(KeyResolver::new(key)?),
                Headers::Standard,
            ),
        };
        Ok(RateLimiting {
            caller,
            limit: Limit::new(
                "rate-limiting",
                config,
                rule,
                redis.as_ref(),
                Degrade::resolve(c.degrade, c.fault_tolerant.unwrap_or(true)),
                status,
                c.error_message
                    .clone()
                    .unwrap_or_else(|| "API rate limit exceeded".to_string()),
                if hide { Headers::None } else { headers },
            ),
        })
    }

    /// Kong's identifier: the named thing when the request has it, else the client address.
    fn caller(&self, req: &http::request::Parts, ctx: &RequestCtx) -> String {
        let (limit_by, header, path) = match &self.caller {
            Caller::Key(k) => return k.resolve(req, ctx),
            Caller::Kong {
                limit_by,
                header,
                path,
            } => (limit_by, header, path),
        };
        let found: Option<String> = match limit_by {
            LimitBy::Consumer => ctx
                .consumer_name
                .as_deref()
                .or(ctx.credential_id.as_deref())
                .map(|c| format!("consumer:{c}")),
            LimitBy::Credential => ctx.credential_id.as_deref().map(|c| format!("cred:{c}")),
            LimitBy::Ip => None,
            LimitBy::Header => header
                .as_ref()
                .and_then(|h| req.headers.get(h))
                .and_then(|v| v.to_str().ok())
                .map(|v| format!("header:{v}")),
            LimitBy::Path => path
                .as_deref()
                .filter(|p| *p == req.uri.path())
                .map(|p| format!("path:{p}")),
            // Counters are per route already: every caller of the route shares one.
            LimitBy::Service => Some("service".to_string()),
        };
        found.unwrap_or_else(|| remote_addr(ctx))
    }
}

impl Plugin for RateLimiting {
    fn name(&self) -> &'static str {
        "rate-limiting"
    }

    fn access<'a>(
        &'a self,
        req: &'a mut http::request::Parts,
        ctx: &'a mut RequestCtx,
    ) -> Step<'a> {
        let caller = self.caller(req, ctx);
        self.limit.check(&caller, ctx)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugins::Flow;

    async fn run(
        p: &RateLimiting,
        route: &str,
        consumer: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (Option<u16>, http::HeaderMap) {
        let mut b = http::Request::builder().uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (mut parts, _) = b.body(()).unwrap().into_parts();
        let mut ctx = RequestCtx::new("10.4.0.1:1".parse().unwrap(), route.into());
        ctx.consumer_name = consumer.map(Into::into);
        let flow = p.access(&mut parts, &mut ctx).resolve().await;
        let s = match flow {
            Flow::Continue => None,
            Flow::Respond(r) => Some(r.status.as_u16()),
        };
        let mut headers = http::HeaderMap::new();
        ctx.response_headers.apply_to(&mut headers);
        (s, headers)
    }

    #[tokio::test]
    async fn kong_shape_enforces_every_period_and_sends_kongs_headers() {
        let p =
            RateLimiting::new(&json!({"minute": 3, "hour": 2, "limit_by": "consumer"})).unwrap();
        let (s, h) = run(&p, "kong-1", Some("alice"), &[]).await;
        assert_eq!(s, None);
        assert_eq!(h["x-ratelimit-limit-minute"], "3");
        assert_eq!(h["x-ratelimit-remaining-minute"], "2");
        assert_eq!(h["x-ratelimit-limit-hour"], "2");
        assert_eq!(h["x-ratelimit-remaining-hour"], "1");
        assert_eq!(h["ratelimit-limit"], "2", "the tightest period");
        assert_eq!(h["ratelimit-remaining"], "1");
        assert_eq!(h["x-ratelimit-remaining"], "1");
        assert_eq!(run(&p, "kong-1", Some("alice"), &[]).await.0, None);
        assert_eq!(run(&p, "kong-1", Some("alice"), &[]).await.0, Some(429));
        // Bob, and an anonymous caller (counted by address), have their own counters.
        assert_eq!(run(&p, "kong-1", Some("bob"), &[]).await.0, None);
        assert_eq!(run(&p, "kong-1", None, &[]).await.0, None);
    }

    #[tokio::test]
    async fn kong_limit_by_header_and_hidden_headers() {
        let p = RateLimiting::new(&json!({"second": 1, "limit_by": "header",
            "header_name": "X-Tenant", "hide_client_headers": true, "error_code": 430,
            "error_message": "tenant over quota"}))
        .unwrap();
        let (s, h) = run(&p, "kong-2", None, &[("x-tenant", "t1")]).await;
        assert_eq!(s, None);
        assert!(h.is_empty());
        // Same tenant from anywhere: refused (unless the second just turned).
        let (s, _) = run(&p, "kong-2", None, &[("x-tenant", "t1")]).await;
        let (s2, _) = run(&p, "kong-2", None, &[("x-tenant", "t1")]).await;
        assert!(s == Some(430) || s2 == Some(430));
        assert_eq!(run(&p, "kong-2", None, &[("x-tenant", "t2")]).await.0, None);
    }

    #[tokio::test]
    async fn bff_shape_is_a_token_bucket_of_rate_plus_burst() {
        let p = RateLimiting::new(&json!({"rate": 2, "burst": 1, "key_type": "consumer_name"}))
            .unwrap();
        let admitted = {
            let mut n = 0;
            for _ in 0..6 {
                if run(&p, "bff", Some("web"), &[]).await.0.is_none() {
                    n += 1;
                }
            }
            n
        };
        // 3 at once (a few ms of refill cannot make a fourth token at 2/s).
        assert_eq!(admitted, 3);
        let (s, h) = run(&p, "bff", Some("mobile"), &[]).await;
        assert_eq!(s, None);
        assert_eq!(h["x-ratelimit-limit"], "3");
        assert_eq!(h["x-ratelimit-remaining"], "2");
    }
}
