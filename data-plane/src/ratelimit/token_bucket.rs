//! Token bucket: `capacity` tokens, refilled continuously at `rate` per second; a request takes
//! one. A caller idle long enough may send `capacity` at once, then `rate` per second.

use super::{Decision, ms_for};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at: u64,
}

impl Bucket {
    pub fn full(capacity: f64, now: u64) -> Bucket {
        Bucket {
            tokens: capacity,
            at: now,
        }
    }
}

pub fn decide(rate: f64, capacity: f64, b: &mut Bucket, now: u64) -> (Decision, u64) {
    let elapsed = now.saturating_sub(b.at);
    b.tokens = (b.tokens + elapsed as f64 * rate / 1000.0).min(capacity);
    b.at = b.at.max(now);
    // A hair of tolerance so that refills summed in floating point (0.2 × 5) make a token.
    let allowed = b.tokens + 1e-9 >= 1.0;
    if allowed {
        b.tokens = (b.tokens - 1.0).max(0.0);
    }
    let reset_ms = ms_for(capacity - b.tokens, rate);
    let d = Decision {
        allowed,
        limit: capacity.floor() as u64,
        remaining: b.tokens.floor() as u64,
        reset_ms,
        retry_after_ms: if allowed {
            0
        } else {
            ms_for(1.0 - b.tokens, rate)
        },
        delay_ms: 0,
        windows: Vec::new(),
    };
    (d, now + reset_ms)
}

/// KEYS[1]: a hash `t` (tokens), `ts` (last update, ms). ARGV: rate per second, capacity.
/// Returns `{allowed, retry_after_ms, delay_ms, remaining, reset_ms}`.
pub const LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens, ts = tonumber(v[1]), tonumber(v[2])
if tokens == nil or ts == nil then tokens, ts = cap, now end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(cap, tokens + elapsed * rate / 1000)
if ts < now then ts = now end
local allowed, retry = 0, 0
if tokens + 1e-9 >= 1 then
  tokens = math.max(tokens - 1, 0)
  allowed = 1
else
  retry = math.ceil((1 - tokens) * 1000 / rate)
end
local reset = math.ceil((cap - tokens) * 1000 / rate)
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', ts)
redis.call('PEXPIRE', KEYS[1], reset + 1000)
return {allowed, retry, 0, math.floor(tokens), reset}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_burst_then_the_rate() {
        let (rate, cap) = (2.0, 5.0);
        let mut b = Bucket::full(cap, 0);
        // A full bucket: 5 at once, the 6th waits for a token (500 ms at 2/s).
        let burst = (0..10)
            .filter(|_| decide(rate, cap, &mut b, 0).0.allowed)
            .count();
        assert_eq!(burst, 5);
        let d = decide(rate, cap, &mut b, 0).0;
        assert_eq!((d.allowed, d.retry_after_ms, d.remaining), (false, 500, 0));
        assert_eq!(d.reset_ms, 2500);
        // Then 2 per second: over 10 s, one request every 100 ms gets 20 through.
        let steady = (1..=100)
            .filter(|i| decide(rate, cap, &mut b, i * 100).0.allowed)
            .count();
        assert_eq!(steady, 20);
    }

    #[test]
    fn refills_up_to_capacity_only() {
        let (rate, cap) = (10.0, 3.0);
        let mut b = Bucket::full(cap, 0);
        for _ in 0..3 {
            assert!(decide(rate, cap, &mut b, 0).0.allowed);
        }
        // An hour idle refills 3 tokens, not 36 000.
        let n = (0..10)
            .filter(|_| decide(rate, cap, &mut b, 3_600_000).0.allowed)
            .count();
        assert_eq!(n, 3);
    }
}
