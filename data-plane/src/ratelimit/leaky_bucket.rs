//! Leaky bucket, as APISIX's `limit-req` (nginx's `limit_req`): requests drain at `rate` per
//! second; a request arriving while `level` requests are still ahead of it is admitted when
//! `level ≤ burst`, and held `level / rate` seconds so requests leave at the rate (or let
//! through at once with `nodelay`). Beyond `burst` it is rejected. The output is smooth: no
//! bursts reach the upstream without `nodelay`.

use super::{Decision, ms_for};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Requests in the bucket at `at` (admitted, not yet drained).
    pub level: f64,
    pub at: u64,
}

impl Bucket {
    pub fn empty(now: u64) -> Bucket {
        Bucket {
            level: 0.0,
            at: now,
        }
    }
}

pub fn decide(rate: f64, burst: f64, nodelay: bool, b: &mut Bucket, now: u64) -> (Decision, u64) {
    let elapsed = now.saturating_sub(b.at);
    let ahead = (b.level - elapsed as f64 * rate / 1000.0).max(0.0);
    b.level = ahead;
    b.at = b.at.max(now);
    let allowed = ahead <= burst;
    if allowed {
        b.level += 1.0;
    }
    let reset_ms = ms_for(b.level, rate);
    let d = Decision {
        allowed,
        limit: burst.floor() as u64 + 1,
        remaining: (burst + 1.0 - b.level).max(0.0).floor() as u64,
        reset_ms,
        retry_after_ms: if allowed {
            0
        } else {
            ms_for(ahead - burst, rate)
        },
        delay_ms: if allowed && !nodelay {
            ms_for(ahead, rate)
        } else {
            0
        },
        windows: Vec::new(),
    };
    (d, now + reset_ms)
}

/// KEYS[1]: a hash `l` (level), `ts` (last update, ms). ARGV: rate per second, burst, nodelay
/// (1/0). Returns `{allowed, retry_after_ms, delay_ms, remaining, reset_ms}`.
pub const LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst, nodelay = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local v = redis.call('HMGET', KEYS[1], 'l', 'ts')
local level, ts = tonumber(v[1]) or 0, tonumber(v[2]) or now
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
local ahead = math.max(level - elapsed * rate / 1000, 0)
if ts < now then ts = now end
local allowed, retry, delay = 0, 0, 0
level = ahead
if ahead <= burst then
  allowed = 1
  level = ahead + 1
  if not nodelay then delay = math.ceil(ahead * 1000 / rate) end
else
  retry = math.ceil((ahead - burst) * 1000 / rate)
end
local reset = math.ceil(level * 1000 / rate)
redis.call('HSET', KEYS[1], 'l', tostring(level), 'ts', ts)
redis.call('PEXPIRE', KEYS[1], reset + 1000)
local left = math.floor(burst + 1 - level)
if left < 0 then left = 0 end
return {allowed, retry, delay, left, reset}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_nodelay_requests_are_spaced_at_the_rate() {
        // 2 per second, burst 3: a burst of 6 → 4 admitted, held 0, 500, 1000, 1500 ms.
        let mut b = Bucket::empty(0);
        let out: Vec<(bool, u64)> = (0..6)
            .map(|_| {
                let d = decide(2.0, 3.0, false, &mut b, 0).0;
                (d.allowed, d.delay_ms)
            })
            .collect();
        assert_eq!(
            out,
            [
                (true, 0),
                (true, 500),
                (true, 1000),
                (true, 1500),
                (false, 0),
                (false, 0)
            ]
        );
        // The upstream sees them at 0, 0.5, 1, 1.5 s: the rate, not the burst.
        let d = decide(2.0, 3.0, false, &mut b, 0).0;
        assert_eq!(d.retry_after_ms, 500);
        // 500 ms later one slot drained.
        let d = decide(2.0, 3.0, false, &mut b, 500).0;
        assert_eq!((d.allowed, d.delay_ms), (true, 1500));
    }

    #[test]
    fn with_nodelay_the_burst_passes_at_once() {
        let mut b = Bucket::empty(0);
        let out: Vec<(bool, u64)> = (0..6)
            .map(|_| {
                let d = decide(2.0, 3.0, true, &mut b, 0).0;
                (d.allowed, d.delay_ms)
            })
            .collect();
        assert_eq!(
            out,
            [
                (true, 0),
                (true, 0),
                (true, 0),
                (true, 0),
                (false, 0),
                (false, 0)
            ]
        );
    }

    #[test]
    fn a_steady_stream_at_the_rate_always_passes_and_faster_does_not() {
        let mut b = Bucket::empty(0);
        // Exactly 5/s with burst 0: every request passes, none delayed.
        for i in 0..50 {
            let d = decide(5.0, 0.0, false, &mut b, i * 200).0;
            assert!(d.allowed && d.delay_ms == 0, "request {i}");
        }
        // 10/s against 5/s: half pass.
        let mut b = Bucket::empty(0);
        let n = (0..100)
            .filter(|i| decide(5.0, 0.0, false, &mut b, i * 100).0.allowed)
            .count();
        assert_eq!(n, 50);
    }
}
