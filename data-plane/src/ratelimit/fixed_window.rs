//! Fixed window: one counter per window aligned to the epoch (`now - now % window`). Cheapest
//! and exact within a window, but a caller can spend one window's quota at its very end and the
//! next window's at the very start: up to 2× the limit in one window's length.
//!
//! Several windows can be enforced at once (Kong's `minute` + `hour`): a request passes only if
//! every window has room, and then counts in every window.

use super::{Decision, Window, WindowQuota};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    /// Start of the window `count` belongs to.
    pub start: u64,
    pub count: u64,
}

pub fn decide(windows: &[Window], counters: &mut [Counter], now: u64) -> (Decision, u64) {
    let mut allowed = true;
    for (w, c) in windows.iter().zip(counters.iter_mut()) {
        let start = now - now % w.window_ms;
        if c.start != start {
            *c = Counter { start, count: 0 };
        }
        if c.count >= w.limit {
            allowed = false;
        }
    }
    // Every window's quota is kept only for a several-window rule (Kong's per-period headers):
    // a single window's decision allocates nothing.
    let mut quotas = Vec::new();
    let mut tightest = None;
    let mut retry_after_ms = 0;
    let mut expires = now;
    for (w, c) in windows.iter().zip(counters.iter_mut()) {
        let reset_ms = c.start + w.window_ms - now;
        if allowed {
            c.count += 1;
        } else if c.count >= w.limit {
            retry_after_ms = retry_after_ms.max(reset_ms);
        }
        expires = expires.max(c.start + w.window_ms);
        let q = WindowQuota {
            limit: w.limit,
            remaining: w.limit.saturating_sub(c.count),
            reset_ms,
        };
        tightest = Some(tightest.map_or(q, |t| tighter(t, q)));
        if windows.len() > 1 {
            quotas.push(q);
        }
    }
    (decision(allowed, retry_after_ms, tightest, quotas), expires)
}

/// The decision of a several-window rule: its headline quota is the window with the fewest
/// requests left (the shortest such window on a tie).
pub fn summarise(allowed: bool, retry_after_ms: u64, quotas: Vec<WindowQuota>) -> Decision {
    let tightest = quotas.iter().copied().reduce(tighter);
    let quotas = if quotas.len() > 1 { quotas } else { Vec::new() };
    decision(allowed, retry_after_ms, tightest, quotas)
}

/// The window with fewer requests left; the earlier (shorter) one on a tie.
fn tighter(a: WindowQuota, b: WindowQuota) -> WindowQuota {
    if b.remaining < a.remaining { b } else { a }
}

fn decision(
    allowed: bool,
    retry_after_ms: u64,
    tightest: Option<WindowQuota>,
    windows: Vec<WindowQuota>,
) -> Decision {
    let t = tightest.unwrap_or(WindowQuota {
        limit: 0,
        remaining: 0,
        reset_ms: 0,
    });
    Decision {
        allowed,
        limit: t.limit,
        remaining: t.remaining,
        reset_ms: t.reset_ms,
        retry_after_ms,
        delay_ms: 0,
        windows,
    }
}

/// KEYS[1]: a hash with `w<i>` (window start) and `n<i>` (count) per window.
/// ARGV: `limit_1, window_ms_1, limit_2, window_ms_2, …`, then optionally `n`: how many
/// requests this call decides at once (`coalesce`; 1 when absent).
/// Returns `{admitted, retry_after_ms, delay_ms, remaining_1, reset_ms_1, …}`: the first
/// `admitted` of the `n` requests pass (as many as every window has room for), remaining is
/// counted after them, and `retry_after_ms` is for the ones refused. With `n` = 1, `admitted`
/// is the one request's `allowed`.
pub const LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = math.floor(#ARGV / 2)
local want = 1
if #ARGV % 2 == 1 then want = tonumber(ARGV[#ARGV]) end
local starts, counts = {}, {}
local admitted = want
for i = 1, n do
  local limit, win = tonumber(ARGV[2*i-1]), tonumber(ARGV[2*i])
  local start = now - (now % win)
  local v = redis.call('HMGET', KEYS[1], 'w'..i, 'n'..i)
  local c = 0
  if tonumber(v[1]) == start then c = tonumber(v[2]) end
  starts[i], counts[i] = start, c
  if limit - c < admitted then admitted = limit - c end
end
if admitted < 0 then admitted = 0 end
local out = {admitted, 0, 0}
local retry, ttl = 0, 0
for i = 1, n do
  local limit, win = tonumber(ARGV[2*i-1]), tonumber(ARGV[2*i])
  local c, reset = counts[i] + admitted, starts[i] + win - now
  if admitted > 0 then
    redis.call('HSET', KEYS[1], 'w'..i, starts[i], 'n'..i, c)
  end
  if admitted < want and c >= limit and reset > retry then
    retry = reset
  end
  if reset > ttl then ttl = reset end
  local left = limit - c
  if left < 0 then left = 0 end
  out[#out+1] = left
  out[#out+1] = reset
end
out[2] = retry
if admitted > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return out
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn run(windows: &[Window], counters: &mut [Counter], at: u64) -> Decision {
        decide(windows, counters, at).0
    }

    #[test]
    fn admits_twice_the_limit_around_a_boundary() {
        let w = [Window {
            limit: 3,
            window_ms: 1000,
        }];
        let mut c = [Counter::default()];
        // The end of one window…
        let admitted_late: usize = (0..5).filter(|_| run(&w, &mut c, 10_990).allowed).count();
        // …and the start of the next: 6 requests within 20 ms for a limit of 3 per second.
        let admitted_early: usize = (0..5).filter(|_| run(&w, &mut c, 11_010).allowed).count();
        assert_eq!((admitted_late, admitted_early), (3, 3));
    }

    #[test]
    fn quota_and_reset_as_the_window_runs() {
        let w = [Window {
            limit: 2,
            window_ms: 60_000,
        }];
        let mut c = [Counter::default()];
        let cases = [
            // (at, allowed, remaining, reset_ms, retry_after_ms)
            (60_000, true, 1, 60_000, 0),
            (61_000, true, 0, 59_000, 0),
            (62_000, false, 0, 58_000, 58_000),
            (119_999, false, 0, 1, 1),
            (120_000, true, 1, 60_000, 0),
        ];
        for (at, allowed, remaining, reset, retry) in cases {
            let d = run(&w, &mut c, at);
            assert_eq!(
                (d.allowed, d.remaining, d.reset_ms, d.retry_after_ms),
                (allowed, remaining, reset, retry),
                "at {at}"
            );
            assert_eq!(d.limit, 2);
        }
    }

    #[test]
    fn every_window_is_enforced_and_only_admitted_requests_count() {
        let w = [
            Window {
                limit: 2,
                window_ms: 1000,
            },
            Window {
                limit: 3,
                window_ms: 60_000,
            },
        ];
        let mut c = [Counter::default(); 2];
        let allowed: Vec<bool> = [0, 10, 20, 1000, 1010, 2000]
            .iter()
            .map(|&at| run(&w, &mut c, at).allowed)
            .collect();
        // Second 0: 2 of 3 (per second); second 1: 1 (the minute has 3); second 2: none.
        assert_eq!(allowed, [true, true, false, true, false, false]);
        assert_eq!(c[1].count, 3, "rejections do not count");
        let d = run(&w, &mut c, 2500);
        assert_eq!(d.limit, 3, "the minute is the tightest");
        assert_eq!(d.retry_after_ms, 57_500);
        assert_eq!(d.windows.len(), 2);
        assert_eq!(d.windows[0].remaining, 2);
    }
}
