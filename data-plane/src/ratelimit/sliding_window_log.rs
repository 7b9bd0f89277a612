//! Sliding window log: the time of every admitted request in the last window. Exact — no more
//! than `limit` in any window-long interval — at the cost of memory per request.

use std::collections::VecDeque;

use super::{Decision, Window};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Log {
    pub times: VecDeque<u64>,
}

pub fn decide(w: Window, log: &mut Log, now: u64) -> (Decision, u64) {
    // A request at `t` counts while `now - t < window`.
    while log.times.front().is_some_and(|&t| t + w.window_ms <= now) {
        log.times.pop_front();
    }
    let allowed = (log.times.len() as u64) < w.limit;
    if allowed {
        log.times.push_back(now);
    }
    let reset_ms = log.times.front().map_or(0, |&t| t + w.window_ms - now);
    let expires = log.times.back().map_or(now, |&t| t + w.window_ms);
    let d = Decision {
        allowed,
        limit: w.limit,
        remaining: w.limit.saturating_sub(log.times.len() as u64),
        reset_ms,
        retry_after_ms: if allowed { 0 } else { reset_ms },
        delay_ms: 0,
        windows: Vec::new(),
    };
    (d, expires)
}

/// KEYS[1]: a sorted set of admitted times. ARGV: limit, window_ms, a unique member for this
/// request. Returns `{allowed, retry_after_ms, delay_ms, remaining, reset_ms}`.
pub const LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, win = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - win)
local c = redis.call('ZCARD', KEYS[1])
local allowed = 0
if c < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], win)
  c = c + 1
  allowed = 1
end
local reset = 0
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] then reset = tonumber(oldest[2]) + win - now end
local retry = 0
if allowed == 0 then retry = reset end
local left = limit - c
if left < 0 then left = 0 end
return {allowed, retry, 0, left, reset}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_the_limit_in_any_window() {
        let w = Window {
            limit: 3,
            window_ms: 1000,
        };
        let mut log = Log::default();
        let cases = [
            // (at, allowed, remaining, reset_ms)
            (10_990, true, 2, 1000),
            (10_995, true, 1, 995),
            (10_999, true, 0, 991),
            // A fixed window would start over here; the log still holds the three above.
            (11_010, false, 0, 980),
            (11_989, false, 0, 1),
            // 10_990 left the window: one slot.
            (11_990, true, 0, 5),
            (11_991, false, 0, 4),
            (11_995, true, 0, 4),
        ];
        for (at, allowed, remaining, reset) in cases {
            let (d, _) = decide(w, &mut log, at);
            assert_eq!(
                (d.allowed, d.remaining, d.reset_ms),
                (allowed, remaining, reset),
                "at {at}"
            );
            if !d.allowed {
                assert_eq!(d.retry_after_ms, reset, "at {at}");
            }
        }
    }

    #[test]
    fn exact_over_a_long_run() {
        // One request every 7 ms for 10 s, limit 50 per second: check every 1 s interval.
        let w = Window {
            limit: 50,
            window_ms: 1000,
        };
        let mut log = Log::default();
        let mut admitted = Vec::new();
        for i in 0..1500u64 {
            let at = i * 7;
            if decide(w, &mut log, at).0.allowed {
                admitted.push(at);
            }
        }
        for (i, &start) in admitted.iter().enumerate() {
            let within = admitted[i..]
                .iter()
                .take_while(|&&t| t < start + 1000)
                .count();
            assert!(
                within <= 50,
                "{within} admitted in [{start}, {})",
                start + 1000
            );
        }
        // And the limit is used: about 50 per second over 10.5 s.
        assert!(admitted.len() >= 500, "{}", admitted.len());
    }
}
