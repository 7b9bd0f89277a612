//! `limit-count`: at most `count` requests per `time_window` per key (see the config type in
//! `postern_proto::model::plugins::limit_count`), counted by the chosen algorithm in this data
//! plane or in Redis.

use http::StatusCode;
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::limit_count::LimitCountConfig;
use postern_proto::model::plugins::limits::Algorithm;
use postern_proto::model::plugins::limits::Degrade;
use postern_proto::model::plugins::parse;
use serde_json::Value;

use super::limiting::{Headers, Limit};
use super::{Plugin, RequestCtx, Step};
use crate::ratelimit::key::KeyResolver;
use crate::ratelimit::{Rule, Window};

pub struct LimitCount {
    key: KeyResolver,
    limit: Limit,
}

/// The rule for `count` per `time_window` seconds with `algorithm`. The buckets run at
/// `count / time_window` per second and hold `count`.
pub fn rule(algorithm: Algorithm, count: u64, time_window: u64) -> Rule {
    let w = Window {
        limit: count,
        window_ms: time_window.saturating_mul(1000),
    };
    let rate = count as f64 / time_window as f64;
    match algorithm {
        Algorithm::FixedWindow => Rule::FixedWindow(vec![w]),
        Algorithm::SlidingWindowLog => Rule::SlidingWindowLog(w),
        Algorithm::SlidingWindowCounter => Rule::SlidingWindowCounter(w),
        Algorithm::TokenBucket => Rule::TokenBucket {
            rate,
            capacity: count as f64,
        },
        Algorithm::LeakyBucket => Rule::LeakyBucket {
            rate,
            burst: count as f64,
            nodelay: false,
        },
    }
}

impl LimitCount {
    pub fn new(config: &Value) -> Result<LimitCount, ValidationError> {
        let c: LimitCountConfig = parse(config)?;
        let status = StatusCode::from_u16(c.rejected_code)
            .map_err(|_| ValidationError::new("rejected_code", "not a status code"))?;
        let redis = c.redis()?;
        Ok(LimitCount {
            key: KeyResolver::new(c.limit_key()?)?,
            limit: Limit::new(
                "limit-count",
                config,
                rule(c.algorithm, c.count, c.time_window),
                redis.as_ref(),
                Degrade::resolve(c.degrade, c.allow_degradation),
                status,
                c.rejected_msg
                    .clone()
                    .unwrap_or_else(|| "rate limit exceeded".to_string()),
                if c.show_limit_quota_header {
                    Headers::Standard
                } else {
                    Headers::None
                },
            ),
        })
    }
}

impl Plugin for LimitCount {
    fn name(&self) -> &'static str {
        "limit-count"
    }

    fn access<'a>(
        &'a self,
        req: &'a mut http::request::Parts,
        ctx: &'a mut RequestCtx,
    ) -> Step<'a> {
        self.limit.check_caller(&self.key, req, ctx)
    }
}

#[cfg(test)]
mod tests {
    use http::header::RETRY_AFTER;
    use serde_json::json;

    use super::*;
    use crate::plugins::Flow;

    async fn run(p: &LimitCount, from: &str) -> (Option<u16>, RequestCtx) {
        let (mut parts, _) = http::Request::new(()).into_parts();
        let mut ctx = RequestCtx::new(from.parse().unwrap(), "route-lc-test".into());
        let flow = p.access(&mut parts, &mut ctx).resolve().await;
        let status = match flow {
            Flow::Continue => None,
            Flow::Respond(r) => {
                assert!(r.headers.contains_key(RETRY_AFTER));
                Some(r.status.as_u16())
            }
        };
        (status, ctx)
    }

    #[tokio::test]
    async fn counts_per_address_and_rejects_with_the_configured_answer() {
        let p = LimitCount::new(
            &json!({"count": 2, "time_window": 3600, "rejected_code": 429,
            "rejected_msg": "slow down", "key": "remote_addr"}),
        )
        .unwrap();
        let (s, ctx) = run(&p, "10.1.0.1:1").await;
        assert_eq!(s, None);
        assert_eq!(ctx.response_headers["x-ratelimit-limit"], "2");
        assert_eq!(ctx.response_headers["x-ratelimit-remaining"], "1");
        assert_eq!(run(&p, "10.1.0.1:2").await.0, None);
        let (s, ctx) = run(&p, "10.1.0.1:3").await;
        assert_eq!(s, Some(429));
        assert_eq!(ctx.response_headers["x-ratelimit-remaining"], "0");
        // Another caller has its own count.
        assert_eq!(run(&p, "10.1.0.2:1").await.0, None);
    }

    #[tokio::test]
    async fn quota_headers_can_be_hidden() {
        let p = LimitCount::new(&json!({"count": 1, "time_window": 3600,
            "show_limit_quota_header": false}))
        .unwrap();
        let (s, ctx) = run(&p, "10.2.0.1:1").await;
        assert_eq!(s, None);
        assert!(ctx.response_headers.is_empty());
        assert_eq!(run(&p, "10.2.0.1:1").await.0, Some(503), "APISIX's default");
    }
}
