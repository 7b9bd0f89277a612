//! Sliding window counter: two fixed-window counters, the previous one weighted by how much of
//! it still overlaps the sliding window (the guide's formula):
//!
//! `estimated = prev × (window − elapsed) / window + curr`; a request passes when
//! `estimated < limit`, and then counts in `curr`.
//!
//! Two numbers per key, and the boundary burst of a fixed window mostly gone (it assumes the
//! previous window's requests were spread evenly).

use super::{Decision, Window};

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// Start of the current window.
    pub start: u64,
    pub curr: u64,
    pub prev: u64,
}

/// The guide's weighted estimate.
pub fn estimate(prev: u64, curr: u64, window_ms: u64, elapsed_ms: u64) -> f64 {
    prev as f64 * (window_ms - elapsed_ms) as f64 / window_ms as f64 + curr as f64
}

pub fn decide(w: Window, c: &mut Counters, now: u64) -> (Decision, u64) {
    let start = now - now % w.window_ms;
    if c.start != start {
        let prev = if c.start + w.window_ms == start {
            c.curr
        } else {
            0
        };
        *c = Counters {
            start,
            curr: 0,
            prev,
        };
    }
    let elapsed = now - start;
    let mut est = estimate(c.prev, c.curr, w.window_ms, elapsed);
    let allowed = est < w.limit as f64;
    if allowed {
        c.curr += 1;
        est += 1.0;
    }
    let reset_ms = w.window_ms - elapsed;
    let d = Decision {
        allowed,
        limit: w.limit,
        remaining: (w.limit as f64 - est).max(0.0).floor() as u64,
        reset_ms,
        retry_after_ms: if allowed {
            0
        } else {
            retry_after(w, c, elapsed)
        },
        delay_ms: 0,
        windows: Vec::new(),
    };
    (d, start + 2 * w.window_ms)
}

/// How long until the estimate drops below the limit: within this window if the previous
/// window's weight can fall far enough, else at the next window's start.
fn retry_after(w: Window, c: &Counters, elapsed: u64) -> u64 {
    let (limit, curr, prev) = (w.limit as f64, c.curr as f64, c.prev as f64);
    if curr < limit && prev > 0.0 {
        // prev × (window − e) / window + curr < limit  ⇔  e > window − (limit − curr) × window / prev
        let e = w.window_ms as f64 - (limit - curr) * w.window_ms as f64 / prev;
        let at = e.floor() as u64 + 1;
        if at > elapsed && at < w.window_ms {
            return at - elapsed;
        }
    }
    w.window_ms - elapsed
}

/// KEYS[1]: a hash `s` (current window start), `c` (current count), `p` (previous count).
/// ARGV: limit, window_ms. Returns `{allowed, retry_after_ms, delay_ms, remaining, reset_ms}`.
pub const LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, win = tonumber(ARGV[1]), tonumber(ARGV[2])
local start = now - (now % win)
local v = redis.call('HMGET', KEYS[1], 's', 'c', 'p')
local s, c, p = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
if s ~= start then
  if s ~= nil and s + win == start then p = c else p = 0 end
  c = 0
end
local elapsed = now - start
local est = p * (win - elapsed) / win + c
local allowed, retry = 0, win - elapsed
if est < limit then
  allowed, retry = 1, 0
  c = c + 1
  est = est + 1
elseif c < limit and p > 0 then
  local at = math.floor(win - (limit - c) * win / p) + 1
  if at > elapsed and at < win then retry = at - elapsed end
end
redis.call('HSET', KEYS[1], 's', start, 'c', c, 'p', p)
redis.call('PEXPIRE', KEYS[1], 2 * win - elapsed)
local left = math.floor(limit - est)
if left < 0 then left = 0 end
return {allowed, retry, 0, left, win - elapsed}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_weighted_formula() {
        let w = Window {
            limit: 10,
            window_ms: 1000,
        };
        let mut c = Counters::default();
        // 8 requests in window [10 000, 11 000).
        for i in 0..8 {
            assert!(decide(w, &mut c, 10_500 + i).0.allowed);
        }
        // 25% into the next window: prev 8 × 0.75 = 6 → 4 more pass, then the 5th is refused.
        let at = 11_250;
        let admitted = (0..10).filter(|_| decide(w, &mut c, at).0.allowed).count();
        assert_eq!(admitted, 4);
        assert_eq!(estimate(8, 4, 1000, 250), 10.0);
        let d = decide(w, &mut c, at).0;
        assert!(!d.allowed);
        // The estimate falls below 10 once 8 × (1000 − e)/1000 + 4 < 10, i.e. e > 250.
        assert_eq!(d.retry_after_ms, 1);
        // At 75%: prev weighs 2 → 2 + 4 = 6 → 4 more.
        let admitted = (0..10)
            .filter(|_| decide(w, &mut c, 11_750).0.allowed)
            .count();
        assert_eq!(admitted, 4);
    }

    #[test]
    fn the_boundary_burst_is_gone() {
        let w = Window {
            limit: 3,
            window_ms: 1000,
        };
        let mut c = Counters::default();
        let late = (0..5)
            .filter(|_| decide(w, &mut c, 10_990).0.allowed)
            .count();
        let early = (0..5)
            .filter(|_| decide(w, &mut c, 11_010).0.allowed)
            .count();
        // A fixed window would admit 3 + 3; the previous window still weighs 2.97.
        assert_eq!((late, early), (3, 1));
    }

    #[test]
    fn an_idle_window_forgets() {
        let w = Window {
            limit: 2,
            window_ms: 1000,
        };
        let mut c = Counters::default();
        decide(w, &mut c, 1000);
        decide(w, &mut c, 1001);
        assert!(!decide(w, &mut c, 1002).0.allowed);
        // Two windows later, nothing weighs.
        let d = decide(w, &mut c, 3000).0;
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
    }
}
