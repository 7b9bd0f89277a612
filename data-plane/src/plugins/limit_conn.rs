//! `limit-conn`: at most `conn` requests in flight per key in this data plane (see
//! `postern_proto::model::plugins::limit_conn`). Requests above `conn`, up to `conn + burst`,
//! are delayed (`default_conn_delay` per multiple of `conn` in flight, or exactly
//! `default_conn_delay` with `only_use_default_delay`) and then go on; beyond, rejected.
//!
//! The slot is a guard held in the request context, which the proxy hands to the response body:
//! it is released when the response has been sent — or failed, or dropped because the client
//! went away — never at the response head (a long download still counts), never leaked.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use http::StatusCode;
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::limit_conn::LimitConnConfig;
use postern_proto::model::plugins::parse;
use serde_json::Value;

use super::{Flow, Plugin, PluginResponse, RequestCtx, Step};
use crate::ratelimit::key::KeyResolver;
use crate::ratelimit::stable_hash;

/// In-flight counts per key, process-wide (keys carry the route and a hash of the config).
#[derive(Default)]
struct InFlight {
    shards: [Mutex<HashMap<Box<str>, u64>>; 16],
}

impl InFlight {
    fn shard(&self, key: &str) -> &Mutex<HashMap<Box<str>, u64>> {
        &self.shards[(stable_hash(key.as_bytes()) % 16) as usize]
    }

    /// Takes a slot unless `max` are taken; returns the count including this one.
    fn acquire(&self, key: &str, max: u64) -> Option<u64> {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.into()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(*n)
    }

    fn release(&self, key: &str) {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                map.remove(key);
            }
        }
    }

    #[cfg(test)]
    fn count(&self, key: &str) -> u64 {
        let map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).copied().unwrap_or(0)
    }
}

static IN_FLIGHT: LazyLock<InFlight> = LazyLock::new(InFlight::default);

/// One taken slot; dropping it gives the slot back.
struct Slot(Arc<str>);

impl Drop for Slot {
    fn drop(&mut self) {
        IN_FLIGHT.release(&self.0);
    }
}

pub struct LimitConn {
    key: KeyResolver,
    scope: String,
    conn: u64,
    burst: u64,
    delay: Duration,
    only_default_delay: bool,
    rejected: PluginResponse,
}

impl LimitConn {
    pub fn new(config: &Value) -> Result<LimitConn, ValidationError> {
        let c: LimitConnConfig = parse(config)?;
        let status = StatusCode::from_u16(c.rejected_code)
            .map_err(|_| ValidationError::new("rejected_code", "not a status code"))?;
        Ok(LimitConn {
            key: KeyResolver::new(c.limit_key()?)?,
            scope: format!(
                "limit-conn:{:016x}",
                stable_hash(config.to_string().as_bytes())
            ),
            conn: c.conn,
            burst: c.burst,
            delay: Duration::from_secs_f64(c.default_conn_delay),
            only_default_delay: c.only_use_default_delay,
            rejected: PluginResponse::error(
                status,
                c.rejected_msg
                    .as_deref()
                    .unwrap_or("too many requests in flight"),
            ),
        })
    }

    fn slot_key(&self, caller: &str, ctx: &RequestCtx) -> Arc<str> {
        format!("{}:{}:{caller}", self.scope, ctx.route_id).into()
    }

    #[cfg(test)]
    fn in_flight(&self, caller: &str, ctx: &RequestCtx) -> u64 {
        IN_FLIGHT.count(&self.slot_key(caller, ctx))
    }
}

impl Plugin for LimitConn {
    fn name(&self) -> &'static str {
        "limit-conn"
    }

    fn access<'a>(
        &'a self,
        req: &'a mut http::request::Parts,
        ctx: &'a mut RequestCtx,
    ) -> Step<'a> {
        let caller = self.key.resolve(req, ctx);
        let key = self.slot_key(&caller, ctx);
        let Some(n) = IN_FLIGHT.acquire(&key, self.conn + self.burst) else {
            return Step::Ready(Flow::Respond(self.rejected.clone()));
        };
        ctx.held.push(Box::new(Slot(key)));
        if n <= self.conn {
            return Step::Ready(Flow::Continue);
        }
        let delay = if self.only_default_delay {
            self.delay
        } else {
            self.delay * ((n - 1) / self.conn) as u32
        };
        Step::Pending(Box::pin(async move {
            tokio::time::sleep(delay).await;
            Flow::Continue
        }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx() -> RequestCtx {
        RequestCtx::new("10.5.0.1:1".parse().unwrap(), "route-conn-test".into())
    }

    #[tokio::test(start_paused = true)]
    async fn admits_conn_delays_burst_rejects_beyond_and_releases() {
        let p = LimitConn::new(&json!({"conn": 2, "burst": 1, "default_conn_delay": 0.5,
            "key": "remote_addr", "rejected_code": 429}))
        .unwrap();
        let (mut parts, _) = http::Request::new(()).into_parts();
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = ctx();
            assert!(matches!(
                p.access(&mut parts, &mut c),
                Step::Ready(Flow::Continue)
            ));
            held.push(c);
        }
        // The third is within burst: delayed 0.5 s.
        let mut c = ctx();
        let t = tokio::time::Instant::now();
        assert!(matches!(
            p.access(&mut parts, &mut c).resolve().await,
            Flow::Continue
        ));
        assert_eq!(t.elapsed(), Duration::from_millis(500));
        held.push(c);
        // The fourth: rejected.
        let mut c = ctx();
        let Step::Ready(Flow::Respond(r)) = p.access(&mut parts, &mut c) else {
            panic!("not rejected")
        };
        assert_eq!(r.status, 429);
        assert_eq!(p.in_flight("10.5.0.1", &c), 3);
        // Requests end (or are cancelled): their contexts drop, the slots come back.
        held.clear();
        assert_eq!(p.in_flight("10.5.0.1", &c), 0);
        let mut c = ctx();
        assert!(matches!(
            p.access(&mut parts, &mut c),
            Step::Ready(Flow::Continue)
        ));
    }
}
