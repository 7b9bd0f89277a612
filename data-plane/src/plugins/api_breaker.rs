//! `api-breaker`: a circuit breaker per route (config type in
//! `postern_proto::model::plugins::api_breaker`), with APISIX's semantics:
//!
//! - **closed**: requests go through; `unhealthy.failures` consecutive unhealthy statuses open it.
//! - **open**: the route answers `break_response_code` at once, without touching the upstream,
//!   for 2 s the first time, then 4, 8 … (doubling each time it re-opens) capped at
//!   `max_breaker_sec`.
//! - **half-open**: once the open period is over, requests go through again (as in APISIX, all
//!   of them); `healthy.successes` consecutive healthy statuses close the breaker and reset the
//!   back-off; one unhealthy status re-opens it with the next, longer, period.
//!
//! What counts is the final status of a request the proxy sent upstream: the upstream's own
//! status, or the proxy's 502 (connection refused/reset) or 504 (timeout) when the upstream did
//! not answer. So a hanging or dead upstream trips the breaker when 502/504 are among
//! `unhealthy.http_statuses` (as in the guide). Answers given by plugins (the breaker's own,
//! an auth plugin's 401) are not counted.
//!
//! The state lives in one `AtomicU64` per route (updated by compare-and-swap: no lock on the
//! request path) and survives snapshots that leave the route's breaker config unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::api_breaker::ApiBreakerConfig;
use postern_proto::model::plugins::parse;
use serde_json::Value;
use tokio::time::Instant;

use super::{Flow, Plugin, PluginResponse, RequestCtx, StateScope, Step};

/// Breaker transitions since the process started, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct BreakerMetrics {
    /// Closed or half-open → open.
    pub opened: AtomicU64,
    /// Open → half-open (the open period ran out and a request went through).
    pub half_opened: AtomicU64,
    /// Half-open → closed.
    pub closed: AtomicU64,
    /// Requests answered by an open breaker.
    pub rejected: AtomicU64,
}

pub static BREAKER_METRICS: BreakerMetrics = BreakerMetrics {
    opened: AtomicU64::new(0),
    half_opened: AtomicU64::new(0),
    closed: AtomicU64::new(0),
    rejected: AtomicU64::new(0),
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Closed,
    Open,
    HalfOpen,
}

/// The breaker's state, unpacked. Packed into one `u64`: phase (2 bits), consecutive count
/// (16 bits), back-off step (8 bits), end of the open period in ms since `epoch` (38 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    phase: Phase,
    /// Consecutive failures (closed) or successes (half-open).
    count: u16,
    /// How many times it opened since it was last closed by successes: open period 2^step s.
    step: u8,
    open_until_ms: u64,
}

impl State {
    const CLOSED: State = State {
        phase: Phase::Closed,
        count: 0,
        step: 0,
        open_until_ms: 0,
    };

    fn pack(self) -> u64 {
        let phase = match self.phase {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::HalfOpen => 2,
        };
        phase
            | (u64::from(self.count) << 2)
            | (u64::from(self.step) << 18)
            | ((self.open_until_ms & ((1 << 38) - 1)) << 26)
    }

    fn unpack(w: u64) -> State {
        State {
            phase: match w & 3 {
                1 => Phase::Open,
                2 => Phase::HalfOpen,
                _ => Phase::Closed,
            },
            count: ((w >> 2) & 0xffff) as u16,
            step: ((w >> 18) & 0xff) as u8,
            open_until_ms: w >> 26,
        }
    }
}

/// One route's breaker, shared by the plugin instances of successive snapshots.
pub struct BreakerState {
    word: AtomicU64,
    epoch: Instant,
}

impl BreakerState {
    fn new() -> BreakerState {
        BreakerState {
            word: AtomicU64::new(State::CLOSED.pack()),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Applies `f` atomically; returns (before, after).
    fn update(&self, f: impl Fn(State) -> Option<State>) -> Option<(State, State)> {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let before = State::unpack(cur);
            let after = f(before)?;
            match self.word.compare_exchange_weak(
                cur,
                after.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((before, after)),
                Err(actual) => cur = actual,
            }
        }
    }
}

struct Settings {
    unhealthy: Vec<u16>,
    failures: u32,
    healthy: Vec<u16>,
    successes: u32,
    max_open: Duration,
}

impl Settings {
    /// Open period for back-off step `step` (1, 2, …): 2^step seconds, capped.
    fn open_for(&self, step: u8) -> Duration {
        let secs = 1u64.checked_shl(u32::from(step)).unwrap_or(u64::MAX);
        Duration::from_secs(secs).min(self.max_open)
    }
}

pub struct ApiBreaker {
    response: PluginResponse,
    settings: Settings,
    state: Arc<BreakerState>,
}

impl ApiBreaker {
    pub fn new(config: &Value, scope: &mut StateScope<'_>) -> Result<ApiBreaker, ValidationError> {
        let c: ApiBreakerConfig = parse(config)?;
        let status = StatusCode::from_u16(c.break_response_code)
            .map_err(|_| ValidationError::new("break_response_code", "not a status code"))?;
        let mut headers = HeaderMap::new();
        for (i, h) in c.break_response_headers.iter().enumerate() {
            let bad =
                || ValidationError::new(format!("break_response_headers.{i}"), "not a header");
            let name = HeaderName::from_bytes(h.key.as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(&h.value).map_err(|_| bad())?;
            headers.append(name, value);
        }
        let response = PluginResponse {
            status,
            headers,
            body: c.break_response_body.map(Bytes::from).unwrap_or_default(),
        };
        let state = scope.state("api-breaker", config, BreakerState::new);
        Ok(ApiBreaker {
            response,
            settings: Settings {
                unhealthy: c.unhealthy.http_statuses,
                failures: c.unhealthy.failures,
                healthy: c.healthy.http_statuses,
                successes: c.healthy.successes,
                max_open: Duration::from_secs(c.max_breaker_sec),
            },
            state,
        })
    }

    pub fn phase(&self) -> Phase {
        State::unpack(self.state.word.load(Ordering::Acquire)).phase
    }

    /// Whether a request may go through now; moves an expired open breaker to half-open.
    fn admit(&self, route: &str) -> bool {
        let now = self.state.now_ms();
        let s = State::unpack(self.state.word.load(Ordering::Acquire));
        if s.phase != Phase::Open {
            return true;
        }
        if now < s.open_until_ms {
            BREAKER_METRICS.rejected.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let moved = self.state.update(|s| {
            (s.phase == Phase::Open && now >= s.open_until_ms).then_some(State {
                phase: Phase::HalfOpen,
                count: 0,
                ..s
            })
        });
        if moved.is_some() {
            BREAKER_METRICS.half_opened.fetch_add(1, Ordering::Relaxed);
            transition(route, "half_open", 2);
            tracing::info!(route, "api-breaker half-open: letting requests through");
        }
        true
    }

    /// Counts one final status of a request that went upstream.
    fn record(&self, route: &str, status: u16) {
        let unhealthy = self.settings.unhealthy.contains(&status);
        let healthy = self.settings.healthy.contains(&status);
        if !unhealthy && !healthy {
            return;
        }
        let now = self.state.now_ms();
        let open = |s: State| {
            let step = s.step.saturating_add(1).min(62);
            let period = self.settings.open_for(step);
            State {
                phase: Phase::Open,
                count: 0,
                step,
                open_until_ms: now + u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            }
        };
        let changed = self.state.update(|s| {
            // An open breaker whose period ran out is half-open in all but name.
            let phase = match s.phase {
                Phase::Open if now >= s.open_until_ms => Phase::HalfOpen,
                p => p,
            };
            let next = match (phase, unhealthy) {
                // Answers to requests sent before it opened change nothing.
                (Phase::Open, _) => return None,
                (Phase::Closed, true) => {
                    let count = s.count.saturating_add(1);
                    if u32::from(count) >= self.settings.failures {
                        open(s)
                    } else {
                        State { count, ..s }
                    }
                }
                (Phase::Closed, false) if s.count == 0 => return None,
                (Phase::Closed, false) => State { count: 0, ..s },
                (Phase::HalfOpen, true) => open(s),
                (Phase::HalfOpen, false) => {
                    let count = if s.phase == Phase::HalfOpen {
                        s.count
                    } else {
                        0
                    };
                    let count = count.saturating_add(1);
                    if u32::from(count) >= self.settings.successes {
                        State::CLOSED
                    } else {
                        State {
                            phase: Phase::HalfOpen,
                            count,
                            ..s
                        }
                    }
                }
            };
            Some(next)
        });
        let Some((before, after)) = changed else {
            return;
        };
        // Opened, or re-opened from an expired open state (a new period).
        if after.phase == Phase::Open
            && (before.phase != Phase::Open || before.open_until_ms != after.open_until_ms)
        {
            BREAKER_METRICS.opened.fetch_add(1, Ordering::Relaxed);
            transition(route, "open", 1);
            tracing::warn!(
                route,
                status,
                open_secs = self.settings.open_for(after.step).as_secs(),
                "api-breaker open"
            );
        } else if after.phase == Phase::Closed && before.phase != Phase::Closed {
            BREAKER_METRICS.closed.fetch_add(1, Ordering::Relaxed);
            transition(route, "closed", 0);
            tracing::info!(route, "api-breaker closed");
        }
    }
}

/// The Prometheus side of a state change: `postern_breaker_transitions_total{route, to}` and
/// `postern_breaker_state{route}` (0 closed, 1 open, 2 half-open).
fn transition(route: &str, to: &str, state: i64) {
    let m = &crate::observability::metrics::METRICS;
    m.breaker_transitions.with_label_values(&[route, to]).inc();
    m.breaker_state.with_label_values(&[route]).set(state);
}

impl Plugin for ApiBreaker {
    fn name(&self) -> &'static str {
        "api-breaker"
    }

    fn access<'a>(
        &'a self,
        _req: &'a mut http::request::Parts,
        ctx: &'a mut RequestCtx,
    ) -> Step<'a> {
        if self.admit(&ctx.route_id) {
            Step::Ready(Flow::Continue)
        } else {
            Step::Ready(Flow::Respond(self.response.clone()))
        }
    }

    fn response(&self, resp: &mut http::response::Parts, ctx: &mut RequestCtx) {
        if ctx.upstream_called {
            self.record(&ctx.route_id, resp.status.as_u16());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::PluginStates;
    use super::*;

    fn breaker(
        config: &Value,
        states: &mut PluginStates,
        previous: Option<&PluginStates>,
    ) -> ApiBreaker {
        let mut scope = StateScope {
            route_id: "r1",
            previous,
            next: states,
        };
        ApiBreaker::new(config, &mut scope).unwrap()
    }

    /// Sends one request through the breaker: `None` when it answered, else the upstream's
    /// `status` is recorded.
    fn call(b: &ApiBreaker, status: u16) -> Option<u16> {
        let (mut req, _) = http::Request::new(()).into_parts();
        let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r1".into());
        let flow = match b.access(&mut req, &mut ctx) {
            Step::Ready(f) => f,
            Step::Pending(_) => panic!("the breaker never waits"),
        };
        let (mut resp, _) = http::Response::new(()).into_parts();
        match flow {
            Flow::Respond(r) => {
                resp.status = r.status;
                b.response(&mut resp, &mut ctx);
                None
            }
            Flow::Continue => {
                ctx.upstream_called = true;
                resp.status = StatusCode::from_u16(status).unwrap();
                b.response(&mut resp, &mut ctx);
                Some(status)
            }
        }
    }

    fn guide_config() -> Value {
        json!({
            "break_response_code": 503,
            "break_response_body": "{\"error\":\"circuit open\",\"retry_after\":30}",
            "break_response_headers": [
                {"key": "Content-Type", "value": "application/json"},
                {"key": "Retry-After", "value": "30"}
            ],
            "unhealthy": {"http_statuses": [500, 502, 503], "failures": 3},
            "healthy": {"http_statuses": [200, 201], "successes": 2},
            "max_breaker_sec": 10
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_backs_off_doubling_and_closes_after_successes() {
        let mut states = PluginStates::default();
        let b = breaker(&guide_config(), &mut states, None);
        // Two failures, a success in between resets the count: still closed.
        for s in [500, 502, 200, 500, 503] {
            assert_eq!(call(&b, s), Some(s));
        }
        assert_eq!(b.phase(), Phase::Closed);
        // Third consecutive failure opens it for 2 s.
        assert_eq!(call(&b, 500), Some(500));
        assert_eq!(b.phase(), Phase::Open);
        assert_eq!(call(&b, 200), None, "open: answered by the breaker");
        tokio::time::advance(Duration::from_millis(1990)).await;
        assert_eq!(call(&b, 200), None);
        tokio::time::advance(Duration::from_millis(20)).await;
        // Half-open: one failure re-opens it, now for 4 s.
        assert_eq!(call(&b, 500), Some(500));
        assert_eq!(b.phase(), Phase::Open);
        tokio::time::advance(Duration::from_millis(3990)).await;
        assert_eq!(call(&b, 200), None, "second period is 4 s");
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(call(&b, 503), Some(503));
        // 8 s, then capped at max_breaker_sec = 10 s.
        tokio::time::advance(Duration::from_millis(7990)).await;
        assert_eq!(call(&b, 200), None, "third period is 8 s");
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(call(&b, 500), Some(500));
        tokio::time::advance(Duration::from_millis(9990)).await;
        assert_eq!(call(&b, 200), None);
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(call(&b, 500), Some(500), "fourth period capped at 10 s");
        // Recovery: two consecutive successes close it; the back-off starts over.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(call(&b, 200), Some(200));
        assert_eq!(b.phase(), Phase::HalfOpen);
        assert_eq!(call(&b, 201), Some(201));
        assert_eq!(b.phase(), Phase::Closed);
        for s in [500, 500, 500] {
            assert_eq!(call(&b, s), Some(s));
        }
        tokio::time::advance(Duration::from_millis(2010)).await;
        assert_eq!(b.phase(), Phase::Open);
        assert_eq!(call(&b, 200), Some(200), "back to a 2 s period");
    }

    #[tokio::test(start_paused = true)]
    async fn the_open_answer_is_the_configured_one() {
        let mut states = PluginStates::default();
        let b = breaker(&guide_config(), &mut states, None);
        for _ in 0..3 {
            call(&b, 500);
        }
        let (mut req, _) = http::Request::new(()).into_parts();
        let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r1".into());
        let Step::Ready(Flow::Respond(r)) = b.access(&mut req, &mut ctx) else {
            panic!("open breaker let the request through")
        };
        assert_eq!(r.status, 503);
        assert_eq!(r.body, r#"{"error":"circuit open","retry_after":30}"#);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["retry-after"], "30");
    }

    #[tokio::test(start_paused = true)]
    async fn other_statuses_and_plugin_answers_do_not_count() {
        let mut states = PluginStates::default();
        let b = breaker(&json!({"break_response_code": 502}), &mut states, None);
        // Defaults: unhealthy [500] x3. 404 and 503 are neither; they do not reset the count.
        for s in [500, 404, 503, 500] {
            call(&b, s);
        }
        assert_eq!(b.phase(), Phase::Closed);
        // A plugin's 500 answer (the upstream was not called) is not the upstream's failure.
        let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r1".into());
        let (mut resp, _) = http::Response::new(()).into_parts();
        resp.status = StatusCode::INTERNAL_SERVER_ERROR;
        b.response(&mut resp, &mut ctx);
        assert_eq!(b.phase(), Phase::Closed);
        call(&b, 500);
        assert_eq!(b.phase(), Phase::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn state_survives_a_snapshot_that_keeps_the_config() {
        let mut first = PluginStates::default();
        let b1 = breaker(&guide_config(), &mut first, None);
        for _ in 0..3 {
            call(&b1, 500);
        }
        let mut second = PluginStates::default();
        let b2 = breaker(&guide_config(), &mut second, Some(&first));
        assert_eq!(
            b2.phase(),
            Phase::Open,
            "same route, same config: same breaker"
        );
        let mut changed = guide_config();
        changed["unhealthy"]["failures"] = json!(4);
        let mut third = PluginStates::default();
        let b3 = breaker(&changed, &mut third, Some(&second));
        assert_eq!(b3.phase(), Phase::Closed, "a changed config starts afresh");
    }

    #[test]
    fn state_packs_losslessly() {
        for s in [
            State::CLOSED,
            State {
                phase: Phase::Open,
                count: 65535,
                step: 255,
                open_until_ms: (1 << 38) - 1,
            },
            State {
                phase: Phase::HalfOpen,
                count: 7,
                step: 3,
                open_until_ms: 123_456,
            },
        ] {
            assert_eq!(State::unpack(s.pack()), s);
        }
    }
}
