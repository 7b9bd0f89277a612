//! Smooth weighted round robin, as in nginx: on each pick every node's `current` grows by its
//! weight, the node with the largest `current` is picked (the first one on ties) and loses the
//! total weight. Heavy nodes are spread out instead of picked in bursts: 5:1:1 gives
//! `a a b a c a a`.
//!
//! The sequence is periodic with period `sum(weights / gcd)`, so when that period is short
//! (<= [`MAX_CYCLE`]) one period is computed at build time and `pick` just indexes it with an
//! atomic counter: no lock, no shared writes beyond one `fetch_add`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Longest period precomputed (32 KiB of indexes at most per upstream).
///
/// Longer periods need large weights with no common divisor (e.g. 65535:1). Weights in
/// practice are small or round numbers (1-100, 10:20:70), so the locked fallback is rare.
const MAX_CYCLE: u64 = 4096;

/// Picks node indexes by smooth weighted round robin. Nodes with weight 0 are never picked.
#[derive(Debug)]
pub struct RoundRobin {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// No node with a weight above 0.
    Empty,
    /// One live node: no shared state to touch at all.
    Single(usize),
    /// One full period of the sequence; `next` counts picks.
    Cycle {
        seq: Box<[usize]>,
        next: AtomicUsize,
    },
    /// nginx's state, for periods longer than [`MAX_CYCLE`].
    Locked(Mutex<Smooth>),
}

/// nginx's per-node state over the live nodes, weights divided by their gcd.
#[derive(Debug)]
struct Smooth {
    /// Index into the caller's node list.
    index: Box<[usize]>,
    weight: Box<[i128]>,
    current: Box<[i128]>,
    total: i128,
}

impl Smooth {
    fn next(&mut self) -> Option<usize> {
        let mut best: Option<(usize, i128)> = None;
        for (i, (c, &w)) in self.current.iter_mut().zip(self.weight.iter()).enumerate() {
            *c += w;
            if best.is_none_or(|(_, b)| *c > b) {
                best = Some((i, *c));
            }
        }
        let (i, _) = best?;
        *self.current.get_mut(i)? -= self.total;
        self.index.get(i).copied()
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl RoundRobin {
    /// `weights[i]` is node `i`'s weight; [`RoundRobin::pick`] returns such an `i`.
    pub fn new(weights: &[u32]) -> RoundRobin {
        let live: Vec<(usize, u32)> = weights
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, w)| w > 0)
            .collect();
        let inner = match live.as_slice() {
            [] => Inner::Empty,
            [(i, _)] => Inner::Single(*i),
            _ => {
                // Same sequence as the original weights (every `current` is just scaled), with
                // a shorter period.
                let g = live.iter().fold(0, |g, &(_, w)| gcd(g, w));
                let period: u64 = live.iter().map(|&(_, w)| u64::from(w / g)).sum();
                let mut smooth = Smooth {
                    index: live.iter().map(|&(i, _)| i).collect(),
                    weight: live.iter().map(|&(_, w)| i128::from(w / g)).collect(),
                    current: vec![0; live.len()].into_boxed_slice(),
                    total: i128::from(period),
                };
                let seq = (period <= MAX_CYCLE)
                    .then(|| (0..period).map(|_| smooth.next()).collect::<Option<_>>())
                    .flatten();
                match seq {
                    Some(seq) => Inner::Cycle {
                        seq,
                        next: AtomicUsize::new(0),
                    },
                    None => Inner::Locked(Mutex::new(smooth)),
                }
            }
        };
        RoundRobin { inner }
    }

    /// The next node, or `None` if every weight is 0.
    pub fn pick(&self) -> Option<usize> {
        match &self.inner {
            Inner::Empty => None,
            Inner::Single(i) => Some(*i),
            Inner::Cycle { seq, next } => {
                // Relaxed: picks need distinct counter values, not ordering with other memory.
                // The wrap at usize::MAX skews one period once, which is harmless.
                let n = next.fetch_add(1, Ordering::Relaxed);
                n.checked_rem(seq.len()).and_then(|i| seq.get(i)).copied()
            }
            // The state is consistent after every statement, so a poisoned lock is still usable.
            Inner::Locked(state) => state.lock().unwrap_or_else(PoisonError::into_inner).next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const A: usize = 0;
    const B: usize = 1;
    const C: usize = 2;

    /// nginx's loop over the raw weights, no gcd, no precomputation.
    fn reference(weights: &[u32], picks: usize) -> Vec<usize> {
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let mut current = vec![0i64; weights.len()];
        let mut out = Vec::with_capacity(picks);
        for _ in 0..picks {
            let mut best: Option<usize> = None;
            for (i, &w) in weights.iter().enumerate() {
                if w == 0 {
                    continue;
                }
                current[i] += i64::from(w);
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let Some(b) = best else { break };
            current[b] -= total;
            out.push(b);
        }
        out
    }

    fn picks(rr: &RoundRobin, n: usize) -> Vec<usize> {
        (0..n).map(|_| rr.pick().expect("has live nodes")).collect()
    }

    fn counts(seq: &[usize]) -> HashMap<usize, usize> {
        let mut m = HashMap::new();
        for &i in seq {
            *m.entry(i).or_default() += 1;
        }
        m
    }

    fn is_locked(rr: &RoundRobin) -> bool {
        matches!(rr.inner, Inner::Locked(_))
    }

    #[test]
    fn send_sync() {
        fn assert<T: Send + Sync>() {}
        assert::<RoundRobin>();
    }

    #[test]
    fn nginx_sequence_5_1_1() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let cycle = [A, A, B, A, C, A, A];
        let want: Vec<usize> = cycle.iter().chain(&cycle).chain(&cycle).copied().collect();
        assert_eq!(picks(&rr, 21), want);
    }

    #[test]
    fn gcd_reduction_keeps_the_sequence() {
        for weights in [
            vec![10, 2, 2],
            vec![5000, 3000],
            vec![100, 100, 100],
            vec![6, 0, 4, 2],
        ] {
            let rr = RoundRobin::new(&weights);
            assert!(!is_locked(&rr), "{weights:?} should be precomputed");
            let period: u32 = weights.iter().sum();
            let n = 2 * period as usize;
            assert_eq!(picks(&rr, n), reference(&weights, n), "{weights:?}");
        }
    }

    #[test]
    fn matches_nginx_for_many_weight_sets() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..300 {
            let weights: Vec<u32> = (0..rng.usize(1..6)).map(|_| rng.u32(0..40)).collect();
            let rr = RoundRobin::new(&weights);
            let n = 3 * weights.iter().sum::<u32>() as usize;
            let want = reference(&weights, n);
            let got: Vec<usize> = (0..want.len()).map_while(|_| rr.pick()).collect();
            assert_eq!(got, want, "{weights:?}");
            if want.is_empty() {
                assert_eq!(rr.pick(), None, "{weights:?}");
            }
        }
    }

    #[test]
    fn split_8_2_is_smooth() {
        let rr = RoundRobin::new(&[8, 2]);
        let seq = picks(&rr, 10_000);
        let heavy = seq.iter().filter(|&&i| i == A).count();
        assert!((7_800..=8_200).contains(&heavy), "heavy node got {heavy}");
        assert_eq!(heavy + seq.iter().filter(|&&i| i == B).count(), 10_000);
        let longest = seq
            .chunk_by(|a, b| a == b)
            .filter(|run| run[0] == A)
            .map(<[usize]>::len)
            .max();
        assert_eq!(longest, Some(4));
    }

    #[test]
    fn zero_weight_is_never_picked() {
        let rr = RoundRobin::new(&[0, 3, 0, 1, 0]);
        let seq = picks(&rr, 4_000);
        let c = counts(&seq);
        assert_eq!(c.get(&1), Some(&3_000));
        assert_eq!(c.get(&3), Some(&1_000));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn no_live_node_picks_none() {
        for weights in [&[][..], &[0], &[0, 0, 0]] {
            let rr = RoundRobin::new(weights);
            assert_eq!(rr.pick(), None, "{weights:?}");
            assert_eq!(rr.pick(), None, "{weights:?}");
        }
    }

    #[test]
    fn single_node() {
        for (weights, want) in [(&[7][..], 0), (&[1][..], 0), (&[0, 4, 0][..], 1)] {
            let rr = RoundRobin::new(weights);
            assert!((0..100).all(|_| rr.pick() == Some(want)), "{weights:?}");
        }
    }

    #[test]
    fn large_weights_take_the_locked_path() {
        let rr = RoundRobin::new(&[65_535, 1]);
        assert!(is_locked(&rr));
        let seq = picks(&rr, 2 * 65_536);
        let c = counts(&seq);
        assert_eq!(c.get(&A), Some(&(2 * 65_535)));
        assert_eq!(c.get(&B), Some(&2));

        // Co-prime weights just over the limit: same sequence as nginx, exact totals per period.
        let weights = [4_000, 3_000, 0, 1];
        let rr = RoundRobin::new(&weights);
        assert!(is_locked(&rr));
        let seq = picks(&rr, 7_001);
        assert_eq!(seq, reference(&weights, 7_001));
        let c = counts(&seq);
        assert_eq!((c[&0], c[&1], c.get(&2), c[&3]), (4_000, 3_000, None, 1));
    }

    #[test]
    fn boundary_of_precomputation() {
        let at = RoundRobin::new(&[4_095, 1]);
        assert!(!is_locked(&at));
        let over = RoundRobin::new(&[4_096, 1]);
        assert!(is_locked(&over));
        for (rr, weights) in [(at, [4_095, 1]), (over, [4_096, 1])] {
            let n = 2 * (weights[0] + 1) as usize;
            assert_eq!(picks(&rr, n), reference(&weights, n), "{weights:?}");
        }
    }

    #[test]
    fn concurrent_picks_keep_exact_totals() {
        // 4 threads, total picks a whole number of periods: counts must be exact.
        for (weights, per_thread) in [(vec![5, 1, 1], 7 * 2_500), (vec![65_535, 1], 65_536)] {
            let rr = RoundRobin::new(&weights);
            let threads = 4;
            let all: Vec<usize> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| s.spawn(|| picks(&rr, per_thread)))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("picker thread"))
                    .collect()
            });
            let period: usize = weights.iter().map(|&w| w as usize).sum();
            let periods = threads * per_thread / period;
            assert_eq!(periods * period, threads * per_thread);
            let c = counts(&all);
            for (i, &w) in weights.iter().enumerate() {
                assert_eq!(
                    c.get(&i).copied(),
                    Some(w as usize * periods),
                    "{weights:?}"
                );
            }
        }
    }
}
