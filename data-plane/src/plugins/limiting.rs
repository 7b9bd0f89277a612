//! What the rate-limiting plugins share: one compiled limit (rule, counter store, failure mode,
//! rejection, headers) and the access-phase step that applies it to a request.
//!
//! Counter keys are `<plugin>:<config hash>:<route id>:<caller key>`: a route's counters
//! survive config snapshots that do not change its limit, start over when the limit changes,
//! and are never shared between routes. On Redis the key is wrapped in a hash tag
//! (`postern:rl:{…}`) so a cluster keeps it on one slot.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use postern_proto::model::plugins::limits::{Degrade, RedisSettings};

use super::{Flow, PluginResponse, RequestCtx, Step};
use crate::observability::metrics::METRICS;
use crate::ratelimit::key::KeyResolver;
use crate::ratelimit::local::LocalStore;
use crate::ratelimit::redis::{RedisBackend, RedisFailure};
use crate::ratelimit::{Decision, Rule, stable_hash};

/// Caller keys longer than this are replaced by a hash of them (a header can be 8 KiB).
const MAX_RAW_KEY: usize = 128;

pub enum Backend {
    Local(&'static LocalStore),
    Redis(Arc<RedisBackend>),
}

impl Backend {
    pub fn new(redis: Option<&RedisSettings>) -> Backend {
        match redis {
            None => Backend::Local(LocalStore::global()),
            Some(s) => Backend::Redis(RedisBackend::shared(s)),
        }
    }
}

/// A number as a header value, from a small per-thread cache of recent ones. A limit's
/// `X-RateLimit-Limit` is the same on every request and its `-Reset` for a second at a time,
/// while `HeaderValue::from(u64)` formats into a new allocation each time; a cached value is
/// shared (a reference count). `-Remaining` changes with every request and is not cached.
fn recent_number(n: u64) -> HeaderValue {
    const SLOTS: usize = 16;
    thread_local! {
        static RECENT: RefCell<[Option<(u64, HeaderValue)>; SLOTS]> =
            const { RefCell::new([const { None }; SLOTS]) };
    }
    RECENT
        .try_with(|recent| {
            let mut recent = recent.borrow_mut();
            let slot = &mut recent[(n % SLOTS as u64) as usize];
            match slot {
                Some((m, value)) if *m == n => value.clone(),
                _ => slot.insert((n, HeaderValue::from(n))).1.clone(),
            }
        })
        .unwrap_or_else(|_| HeaderValue::from(n))
}

/// Which rate-limit headers a limit sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Headers {
    None,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` (seconds).
    Standard,
    /// The standard ones (for the tightest window), Kong's `RateLimit-Limit`, `-Remaining`,
    /// `-Reset`, and `X-RateLimit-Limit-<Period>`, `X-RateLimit-Remaining-<Period>` for each
    /// period (`Minute`, `Hour`…).
    Kong(Vec<PeriodHeaders>),
}

/// `X-RateLimit-Limit-<Period>` and `X-RateLimit-Remaining-<Period>` for one period.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodHeaders {
    limit: HeaderName,
    remaining: HeaderName,
}

impl PeriodHeaders {
    pub fn new(period: &str) -> PeriodHeaders {
        let name = |kind: &str| {
            HeaderName::try_from(format!("x-ratelimit-{kind}-{period}"))
                .expect("period names are header-safe")
        };
        PeriodHeaders {
            limit: name("limit"),
            remaining: name("remaining"),
        }
    }
}

/// The outcome while Redis fails: decided outright, or by the local share.
enum Degraded {
    Decided(Flow),
    Local(Decision),
}

pub struct Limit {
    pub plugin: &'static str,
    pub rule: Rule,
    /// `<plugin>:<config hash>`.
    scope: Box<str>,
    pub backend: Backend,
    /// What happens while Redis fails: let requests through, 503, or a local share.
    pub degrade: Degrade,
    pub rejected_status: StatusCode,
    pub rejected_msg: String,
    pub headers: Headers,
}

static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

impl Limit {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plugin: &'static str,
        config: &serde_json::Value,
        rule: Rule,
        redis: Option<&RedisSettings>,
        degrade: Degrade,
        rejected_status: StatusCode,
        rejected_msg: String,
        headers: Headers,
    ) -> Limit {
        let scope = format!(
            "{plugin}:{:016x}",
            stable_hash(config.to_string().as_bytes())
        );
        Limit {
            plugin,
            rule,
            scope: scope.into(),
            backend: Backend::new(redis),
            degrade,
            rejected_status,
            rejected_msg,
            headers,
        }
    }

    /// The counter key for a caller on this request's route.
    pub fn counter_key(&self, ctx: &RequestCtx, caller: &str) -> String {
        self.counter_key_with(ctx, |key| key.push_str(caller))
    }

    /// The counter key, the caller's part written by `push_caller` into the key itself (no
    /// string of its own per request).
    fn counter_key_with(&self, ctx: &RequestCtx, push_caller: impl FnOnce(&mut String)) -> String {
        let mut key = String::with_capacity(self.scope.len() + ctx.route_id.len() + 40);
        key.push_str(&self.scope);
        key.push(':');
        key.push_str(&ctx.route_id);
        key.push(':');
        let at = key.len();
        push_caller(&mut key);
        if key.len() - at > MAX_RAW_KEY {
            let caller = key.split_off(at);
            let a = stable_hash(caller.as_bytes());
            let b = stable_hash(&[caller.as_bytes(), b"\x01"].concat());
            key.push_str(&format!("#{a:016x}{b:016x}"));
        }
        key
    }

    /// The access step for `caller`: decides, sets the headers, holds or answers.
    pub fn check<'a>(&'a self, caller: &str, ctx: &'a mut RequestCtx) -> Step<'a> {
        let key = self.counter_key(ctx, caller);
        self.check_counter(key, ctx)
    }

    /// As [`Limit::check`], for the caller `resolver` reads from the request.
    pub fn check_caller<'a>(
        &'a self,
        resolver: &KeyResolver,
        parts: &http::request::Parts,
        ctx: &'a mut RequestCtx,
    ) -> Step<'a> {
        let key = self.counter_key_with(ctx, |key| resolver.resolve_into(key, parts, ctx));
        self.check_counter(key, ctx)
    }

    fn check_counter<'a>(&'a self, key: String, ctx: &'a mut RequestCtx) -> Step<'a> {
        match &self.backend {
            Backend::Local(store) => {
                let d = store.decide(&key, &self.rule);
                let (flow, delay) = self.apply(&d, ctx);
                match delay {
                    None => Step::Ready(flow),
                    Some(delay) => Step::Pending(Box::pin(async move {
                        tokio::time::sleep(delay).await;
                        flow
                    })),
                }
            }
            Backend::Redis(redis) => Step::Pending(Box::pin(async move {
                let key = format!("postern:rl:{{{key}}}");
                match redis.decide(&key, &self.rule).await {
                    Ok(d) => {
                        let (flow, delay) = self.apply(&d, ctx);
                        if let Some(delay) = delay {
                            tokio::time::sleep(delay).await;
                        }
                        flow
                    }
                    Err(e) => {
                        let flow = self.degraded(&e, &key, ctx);
                        match flow {
                            Degraded::Decided(flow) => flow,
                            Degraded::Local(d) => {
                                let (flow, delay) = self.apply(&d, ctx);
                                if let Some(delay) = delay {
                                    tokio::time::sleep(delay).await;
                                }
                                flow
                            }
                        }
                    }
                }
            })),
        }
    }

    fn degraded(&self, e: &RedisFailure, key: &str, ctx: &RequestCtx) -> Degraded {
        METRICS
            .rate_limit_degradations
            .with_label_values(&[self.plugin, self.degrade.as_str()])
            .inc();
        match self.degrade {
            Degrade::Open => return Degraded::Decided(Flow::Continue),
            Degrade::Local => {
                // This DP's share of the limit, counted here until Redis answers again (under
                // its own key: never mixed with a true local limit's counters).
                let rule = self.rule.share(crate::ratelimit::live_data_planes());
                let local_key = format!("degraded:{key}");
                return Degraded::Local(LocalStore::global().decide(&local_key, &rule));
            }
            Degrade::Closed => {}
        }
        METRICS
            .rate_limit_rejections
            .with_label_values(&[&*ctx.route_id, self.plugin])
            .inc();
        tracing::debug!(plugin = self.plugin, error = %e, "rate limit store unavailable: refusing");
        Degraded::Decided(Flow::Respond(PluginResponse::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "rate limiting is unavailable (its Redis store does not answer); retry shortly",
        )))
    }

    /// Headers for the decision, and the answer: continue (maybe after a delay) or reject.
    fn apply(&self, d: &Decision, ctx: &mut RequestCtx) -> (Flow, Option<Duration>) {
        let h = &mut ctx.response_headers;
        if self.headers != Headers::None {
            h.insert(X_LIMIT.clone(), recent_number(d.limit));
            h.insert(X_REMAINING.clone(), HeaderValue::from(d.remaining));
            h.insert(X_RESET.clone(), recent_number(d.reset_secs()));
        }
        if let Headers::Kong(periods) = &self.headers {
            h.insert(LIMIT.clone(), recent_number(d.limit));
            h.insert(REMAINING.clone(), HeaderValue::from(d.remaining));
            h.insert(RESET.clone(), recent_number(d.reset_secs()));
            let quotas = if d.windows.is_empty() {
                vec![crate::ratelimit::WindowQuota {
                    limit: d.limit,
                    remaining: d.remaining,
                    reset_ms: d.reset_ms,
                }]
            } else {
                d.windows.clone()
            };
            for (names, q) in periods.iter().zip(quotas) {
                h.insert(names.limit.clone(), recent_number(q.limit));
                h.insert(names.remaining.clone(), HeaderValue::from(q.remaining));
            }
        }
        if d.allowed {
            let delay = (d.delay_ms > 0).then(|| Duration::from_millis(d.delay_ms));
            return (Flow::Continue, delay);
        }
        METRICS
            .rate_limit_rejections
            .with_label_values(&[&*ctx.route_id, self.plugin])
            .inc();
        let mut answer = PluginResponse::error(self.rejected_status, &self.rejected_msg);
        answer.headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(d.retry_after_secs()),
        );
        (Flow::Respond(answer), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_numbers_are_the_numbers_asked_for() {
        // Repeats, and numbers that share a slot (16 apart), in turn.
        for n in [0, 7, 7, 23, 7, 39, 1_000_000_000, 23, u64::MAX, 0] {
            assert_eq!(recent_number(n), HeaderValue::from(n), "{n}");
        }
    }
}
