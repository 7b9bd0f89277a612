//! The limiter core shared by the rate-limiting plugins: five algorithms, each with a local
//! backend (sharded maps in this process, [`local`]) and a Redis backend (one atomic Lua script
//! per algorithm, one round trip per decision — per batch of decisions for one fixed-window key,
//! [`coalesce`] — [`redis`]) so a limit can hold across every data plane.
//!
//! An algorithm is a pure function `(rule, state, now) → (decision, new state)`. The local
//! backend runs it under a shard lock; the Redis scripts are the same function written in Lua,
//! run with Redis' own clock (`TIME`) so every data plane shares one clock. Time comes from a
//! [`Clock`], so tests drive it by hand and assert exact numbers.

pub mod coalesce;
pub mod fixed_window;
pub mod key;
pub mod leaky_bucket;
pub mod local;
pub mod redis;
pub mod resp;
pub mod sliding_window_counter;
pub mod sliding_window_log;
pub mod token_bucket;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Live data planes, as the control plane last told this one (1 until it does): what
/// `degrade: local` divides a limit by while Redis is down.
static LIVE_DATA_PLANES: AtomicU32 = AtomicU32::new(1);

pub fn set_live_data_planes(n: u32) {
    LIVE_DATA_PLANES.store(n.max(1), Ordering::Relaxed);
}

pub fn live_data_planes() -> u32 {
    LIVE_DATA_PLANES.load(Ordering::Relaxed)
}

/// Wall-clock milliseconds. Windows are aligned to the epoch (as Redis' `TIME` is), so a local
/// and a Redis fixed window start at the same instants.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// What is limited and how.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Every `(limit, window_ms)` pair is enforced at once: a request passes only if each
    /// window has room, and then counts in each (Kong's `second`…`year`).
    FixedWindow(Vec<Window>),
    SlidingWindowLog(Window),
    SlidingWindowCounter(Window),
    /// A bucket of `capacity` tokens refilled at `rate` per second; a request takes one.
    TokenBucket {
        rate: f64,
        capacity: f64,
    },
    /// Requests drain at `rate` per second; up to `burst` may be waiting. Without `nodelay` an
    /// admitted request is delayed until its turn.
    LeakyBucket {
        rate: f64,
        burst: f64,
        nodelay: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub window_ms: u64,
}

/// One window's view of a decision (for Kong's per-period headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowQuota {
    pub limit: u64,
    pub remaining: u64,
    pub reset_ms: u64,
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// The quota of the most constrained window (what `X-RateLimit-*` report).
    pub limit: u64,
    pub remaining: u64,
    /// Until the quota is whole again (window end, or a bucket refilled / drained).
    pub reset_ms: u64,
    /// When rejected: how long until a request could pass.
    pub retry_after_ms: u64,
    /// When admitted by a leaky bucket without `nodelay`: how long to hold the request.
    pub delay_ms: u64,
    /// For a several-window rule, every window (in rule order).
    pub windows: Vec<WindowQuota>,
}

impl Decision {
    pub fn reset_secs(&self) -> u64 {
        self.reset_ms.div_ceil(1000)
    }

    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ms.div_ceil(1000).max(1)
    }
}

/// An algorithm's state for one key.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    FixedWindow(Vec<fixed_window::Counter>),
    SlidingWindowLog(sliding_window_log::Log),
    SlidingWindowCounter(sliding_window_counter::Counters),
    TokenBucket(token_bucket::Bucket),
    LeakyBucket(leaky_bucket::Bucket),
}

impl Rule {
    /// This rule's share for one of `n` data planes: each limit, rate and burst divided by `n`
    /// (rounded up, so a limit never drops to 0).
    pub fn share(&self, n: u32) -> Rule {
        let n64 = u64::from(n.max(1));
        let nf = f64::from(n.max(1));
        let w = |w: &Window| Window {
            limit: w.limit.div_ceil(n64),
            window_ms: w.window_ms,
        };
        match self {
            Rule::FixedWindow(ws) => Rule::FixedWindow(ws.iter().map(w).collect()),
            Rule::SlidingWindowLog(x) => Rule::SlidingWindowLog(w(x)),
            Rule::SlidingWindowCounter(x) => Rule::SlidingWindowCounter(w(x)),
            Rule::TokenBucket { rate, capacity } => Rule::TokenBucket {
                rate: rate / nf,
                capacity: (capacity / nf).ceil().max(1.0),
            },
            Rule::LeakyBucket {
                rate,
                burst,
                nodelay,
            } => Rule::LeakyBucket {
                rate: rate / nf,
                burst: (burst / nf).ceil(),
                nodelay: *nodelay,
            },
        }
    }

    /// Decides one request at `now_ms`, updating `state` (created when `None` or of another
    /// rule). Returns the decision and when the state may be forgotten.
    pub fn decide(&self, state: &mut Option<State>, now_ms: u64) -> (Decision, u64) {
        let fits = match (self, &*state) {
            (Rule::FixedWindow(w), Some(State::FixedWindow(c))) => w.len() == c.len(),
            (Rule::SlidingWindowLog(_), Some(State::SlidingWindowLog(_)))
            | (Rule::SlidingWindowCounter(_), Some(State::SlidingWindowCounter(_)))
            | (Rule::TokenBucket { .. }, Some(State::TokenBucket(_)))
            | (Rule::LeakyBucket { .. }, Some(State::LeakyBucket(_))) => true,
            _ => false,
        };
        let state = match state {
            Some(s) if fits => s,
            _ => state.insert(self.initial_state(now_ms)),
        };
        match (self, state) {
            (Rule::FixedWindow(w), State::FixedWindow(c)) => fixed_window::decide(w, c, now_ms),
            (Rule::SlidingWindowLog(w), State::SlidingWindowLog(l)) => {
                sliding_window_log::decide(*w, l, now_ms)
            }
            (Rule::SlidingWindowCounter(w), State::SlidingWindowCounter(c)) => {
                sliding_window_counter::decide(*w, c, now_ms)
            }
            (Rule::TokenBucket { rate, capacity }, State::TokenBucket(b)) => {
                token_bucket::decide(*rate, *capacity, b, now_ms)
            }
            (
                Rule::LeakyBucket {
                    rate,
                    burst,
                    nodelay,
                },
                State::LeakyBucket(b),
            ) => leaky_bucket::decide(*rate, *burst, *nodelay, b, now_ms),
            _ => unreachable!("the state was just made to fit the rule"),
        }
    }

    fn initial_state(&self, now_ms: u64) -> State {
        match self {
            Rule::FixedWindow(w) => {
                State::FixedWindow(vec![fixed_window::Counter::default(); w.len()])
            }
            Rule::SlidingWindowLog(_) => State::SlidingWindowLog(Default::default()),
            Rule::SlidingWindowCounter(_) => State::SlidingWindowCounter(Default::default()),
            Rule::TokenBucket { capacity, .. } => {
                State::TokenBucket(token_bucket::Bucket::full(*capacity, now_ms))
            }
            Rule::LeakyBucket { .. } => State::LeakyBucket(leaky_bucket::Bucket::empty(now_ms)),
        }
    }
}

/// Milliseconds for `amount` at `rate` per second, rounded up.
fn ms_for(amount: f64, rate: f64) -> u64 {
    if amount <= 0.0 {
        0
    } else {
        (amount * 1000.0 / rate).ceil() as u64
    }
}

/// A stable 64-bit FNV-1a hash: every data plane must derive the same Redis key from the same
/// config and caller, so no per-process random seed.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
pub mod test_clock {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::Clock;

    /// A clock the test moves by hand.
    #[derive(Default)]
    pub struct ManualClock(AtomicU64);

    impl ManualClock {
        pub fn at(ms: u64) -> ManualClock {
            ManualClock(AtomicU64::new(ms))
        }
        pub fn advance(&self, ms: u64) {
            self.0.fetch_add(ms, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Clock for std::sync::Arc<ManualClock> {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }
}
