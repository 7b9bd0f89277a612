//! `limit-req`: a leaky bucket per key (see the config type in
//! `postern_proto::model::plugins::limit_req`). Requests within `burst` are held until their
//! turn at `rate` per second (the access phase sleeps), or let through at once with `nodelay`.

use http::StatusCode;
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::limit_req::LimitReqConfig;
use postern_proto::model::plugins::limits::Degrade;
use postern_proto::model::plugins::parse;
use serde_json::Value;

use super::limiting::{Headers, Limit};
use super::{Plugin, RequestCtx, Step};
use crate::ratelimit::Rule;
use crate::ratelimit::key::KeyResolver;

pub struct LimitReq {
    key: KeyResolver,
    limit: Limit,
}

impl LimitReq {
    pub fn new(config: &Value) -> Result<LimitReq, ValidationError> {
        let c: LimitReqConfig = parse(config)?;
        let status = StatusCode::from_u16(c.rejected_code)
            .map_err(|_| ValidationError::new("rejected_code", "not a status code"))?;
        let redis = c.redis()?;
        Ok(LimitReq {
            key: KeyResolver::new(c.limit_key()?)?,
            limit: Limit::new(
                "limit-req",
                config,
                Rule::LeakyBucket {
                    rate: c.rate,
                    burst: c.burst,
                    nodelay: c.nodelay,
                },
                redis.as_ref(),
                Degrade::resolve(c.degrade, c.allow_degradation),
                status,
                c.rejected_msg
                    .clone()
                    .unwrap_or_else(|| "rate limit exceeded".to_string()),
                Headers::Standard,
            ),
        })
    }
}

impl Plugin for LimitReq {
    fn name(&self) -> &'static str {
        "limit-req"
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
    use serde_json::json;

    use super::*;
    use crate::plugins::Flow;

    async fn run(p: &LimitReq) -> (bool, std::time::Duration) {
        let (mut parts, _) = http::Request::new(()).into_parts();
        let mut ctx = RequestCtx::new("10.3.0.1:1".parse().unwrap(), "route-lr-test".into());
        let t = tokio::time::Instant::now();
        let flow = p.access(&mut parts, &mut ctx).resolve().await;
        (matches!(flow, Flow::Continue), t.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn excess_within_burst_is_delayed_to_the_rate() {
        let p = LimitReq::new(&json!({"rate": 0.001, "burst": 2, "key": "remote_addr",
            "rejected_code": 429}))
        .unwrap();
        let (ok, waited) = run(&p).await;
        assert!(ok);
        assert_eq!(waited.as_secs(), 0);
        // The second waits its turn: 1 / 0.001 s, less the few ms (real time) the bucket
        // drained since the first (the sleep itself runs on tokio's paused clock).
        let (ok, waited) = run(&p).await;
        assert!(ok);
        assert!((999..=1000).contains(&waited.as_secs()), "{waited:?}");
    }

    #[tokio::test]
    async fn with_nodelay_the_burst_passes_at_once() {
        let p = LimitReq::new(&json!({"rate": 0.001, "burst": 2, "key": "remote_addr",
            "nodelay": true}))
        .unwrap();
        for _ in 0..3 {
            let (ok, waited) = run(&p).await;
            assert!(ok && waited.as_millis() < 100);
        }
        assert!(!run(&p).await.0);
    }
}
