//! Per-node load counters shared by the balancers, and the `ewma` balancer: peak-EWMA of the
//! response-head latency (a slower answer is taken at once, a faster one blends in with a
//! 10 s decay), times the in-flight requests, per unit of weight; two distinct random nodes
//! are compared and the cheaper one wins (power of two choices), which avoids herding every
//! request onto the one node that looked best a moment ago.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How fast old latency is forgotten.
const DECAY: Duration = Duration::from_secs(10);

/// One node's live counters. Updates are racy by design (a lost EWMA update only blurs an
/// estimate); in-flight counts are exact.
#[derive(Debug)]
pub struct NodeLoad {
    pub in_flight: AtomicU32,
    /// EWMA of latency in microseconds, as `f64` bits.
    ewma_micros: AtomicU64,
    /// When `ewma_micros` was last updated, in microseconds since `epoch`.
    stamp_micros: AtomicU64,
    epoch: Instant,
}

impl Default for NodeLoad {
    fn default() -> Self {
        NodeLoad {
            in_flight: AtomicU32::new(0),
            ewma_micros: AtomicU64::new(0f64.to_bits()),
            stamp_micros: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl NodeLoad {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn ewma(&self) -> Duration {
        Duration::from_secs_f64(f64::from_bits(self.ewma_micros.load(Ordering::Relaxed)) / 1e6)
    }

    /// Records one response-head latency.
    pub fn observe(&self, latency: Duration) {
        let now = self.epoch.elapsed().as_micros() as u64;
        let rtt = latency.as_secs_f64() * 1e6;
        let prev = f64::from_bits(self.ewma_micros.load(Ordering::Relaxed));
        let then = self.stamp_micros.swap(now, Ordering::Relaxed);
        let next = if rtt > prev {
            // Peak: a slowdown shows at once.
            rtt
        } else {
            let elapsed = now.saturating_sub(then) as f64;
            let w = (-elapsed / (DECAY.as_secs_f64() * 1e6)).exp();
            prev * w + rtt * (1.0 - w)
        };
        self.ewma_micros.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Lower is better: latency (at least 1 µs, so idle fresh nodes still compare by load)
    /// times (in flight + 1), per unit of weight.
    fn cost(&self, weight: u32) -> f64 {
        let ewma = f64::from_bits(self.ewma_micros.load(Ordering::Relaxed)).max(1.0);
        ewma * (f64::from(self.in_flight()) + 1.0) / f64::from(weight.max(1))
    }
}

pub fn pick(weights: &[u32], loads: &[NodeLoad], ok: impl Fn(usize) -> bool) -> Option<usize> {
    let n = weights.len().min(loads.len());
    // The usable nodes (the first 64 of them: upstreams are smaller than that in practice).
    let mut usable = [0usize; 64];
    let mut m = 0;
    for i in (0..n).filter(|&i| ok(i)) {
        if m == usable.len() {
            break;
        }
        usable[m] = i;
        m += 1;
    }
    let (a, b) = match m {
        0 => return None,
        1 => return Some(usable[0]),
        // Two distinct ones, uniformly.
        _ => {
            let x = fastrand::usize(..m);
            let y = (x + 1 + fastrand::usize(..m - 1)) % m;
            (usable[x], usable[y])
        }
    };
    let cost = |i: usize| loads[i].cost(weights[i]);
    Some(if cost(a) <= cost(b) { a } else { b })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn prefers_the_fast_node_and_notices_a_slowdown() {
        let loads: Vec<NodeLoad> = (0..2).map(|_| NodeLoad::default()).collect();
        for _ in 0..20 {
            loads[0].observe(Duration::from_millis(5));
            loads[1].observe(Duration::from_millis(50));
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let mut hits = [0u32; 2];
        for _ in 0..1000 {
            hits[pick(&[1, 1], &loads, |_| true).unwrap()] += 1;
        }
        assert_eq!(
            hits,
            [1000, 0],
            "two nodes: always compared, the fast one wins"
        );
        // Node 0 slows down: peak EWMA takes the slow answer at once.
        loads[0].observe(Duration::from_millis(200));
        assert_eq!(loads[0].ewma(), Duration::from_millis(200));
        assert_eq!(pick(&[1, 1], &loads, |_| true), Some(1));
        // A fast answer blends in with the decay; after a long quiet spell it dominates.
        tokio::time::advance(Duration::from_secs(60)).await;
        loads[0].observe(Duration::from_millis(5));
        assert!(
            loads[0].ewma() < Duration::from_millis(6),
            "{:?}",
            loads[0].ewma()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_load_counts_and_unusable_nodes_are_skipped() {
        let loads: Vec<NodeLoad> = (0..3).map(|_| NodeLoad::default()).collect();
        for l in &loads {
            l.observe(Duration::from_millis(10));
        }
        loads[0].in_flight.store(10, Ordering::Relaxed);
        loads[1].in_flight.store(10, Ordering::Relaxed);
        let mut hits = [0u32; 3];
        for _ in 0..3000 {
            hits[pick(&[1, 1, 1], &loads, |_| true).unwrap()] += 1;
        }
        // Node 2 wins whenever it is drawn: 2 of the 3 possible pairs.
        assert!(hits[2] > 1800, "{hits:?}");
        assert_eq!(pick(&[1, 1, 1], &loads, |i| i == 1), Some(1));
        assert_eq!(pick(&[1, 1, 1], &loads, |_| false), None);
    }
}
