//! Load balancers: built once per upstream per config snapshot, picked from per request
//! without allocating.
//!
//! - `roundrobin`: smooth weighted round robin ([`RoundRobin`]).
//! - `chash`: consistent hashing on a ring of virtual nodes ([`Chash`]).
//! - `least_conn`: the node with the fewest in-flight requests per unit of weight.
//! - `ewma`: peak-EWMA latency × in-flight, best of two random nodes ([`ewma`]).
//!
//! Every pick takes a `usable` predicate: nodes that are unhealthy or already tried by this
//! request are skipped, so health checks and retries work the same with every algorithm.

mod chash;
pub mod ewma;
mod roundrobin;

use std::sync::atomic::{AtomicU32, Ordering};

pub use chash::Chash;
pub use ewma::NodeLoad;
use postern_proto::model::BalancerType;
pub use roundrobin::RoundRobin;

/// One upstream's balancer.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
    Chash(Chash),
    LeastConn,
    Ewma,
}

impl Balancer {
    /// `weights[i]` and `names[i]` (its address) describe node `i`.
    pub fn new(kind: BalancerType, weights: &[u32], names: &[&str]) -> Balancer {
        match kind {
            BalancerType::Roundrobin => Balancer::RoundRobin(RoundRobin::new(weights)),
            BalancerType::Chash => Balancer::Chash(Chash::new(weights, names)),
            BalancerType::LeastConn => Balancer::LeastConn,
            BalancerType::Ewma => Balancer::Ewma,
        }
    }

    /// A node index: `hash` is the request's key hash (for `chash`), `loads` the nodes' live
    /// counters, `weights` their weights; nodes with weight 0 or for which `usable` is false are
    /// never returned.
    pub fn pick(
        &self,
        hash: u64,
        weights: &[u32],
        loads: &[NodeLoad],
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let ok = |i: usize| weights.get(i).is_some_and(|&w| w > 0) && usable(i);
        if weights.len() == 1 {
            // One node: every balancer picks it when it is usable. Skipping the balancer's state
            // (the round robin's shared counter, the ring) saves a write to a shared cache line
            // per request.
            return ok(0).then_some(0);
        }
        match self {
            Balancer::RoundRobin(rr) => {
                // The round robin's own order, skipping unusable nodes; after as many tries as
                // there are nodes, the first usable one.
                for _ in 0..weights.len() {
                    match rr.pick() {
                        Some(i) if ok(i) => return Some(i),
                        Some(_) => continue,
                        None => return None,
                    }
                }
                (0..weights.len()).find(|&i| ok(i))
            }
            Balancer::Chash(ring) => ring.pick(hash, ok),
            Balancer::LeastConn => least_conn(weights, loads, ok),
            Balancer::Ewma => ewma::pick(weights, loads, ok),
        }
    }
}

/// Fewest in-flight requests per unit of weight: `(in_flight + 1) / weight`, lowest wins.
/// Ties go to a random one of the tied nodes, so idle nodes share the load.
fn least_conn(weights: &[u32], loads: &[NodeLoad], ok: impl Fn(usize) -> bool) -> Option<usize> {
    let n = weights.len();
    if n == 0 {
        return None;
    }
    let start = fastrand::usize(..n);
    let mut best: Option<(usize, u64, u64)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        if !ok(i) {
            continue;
        }
        let (Some(&w), Some(load)) = (weights.get(i), loads.get(i)) else {
            continue;
        };
        let busy = u64::from(load.in_flight()) + 1;
        let w = u64::from(w);
        // busy/w < best_busy/best_w, without division.
        if best.is_none_or(|(_, bb, bw)| busy * bw < bb * w) {
            best = Some((i, busy, w));
        }
    }
    best.map(|(i, _, _)| i)
}

/// A 64-bit hash that is the same on every data plane and every build (FNV-1a, then
/// murmur3's finaliser to spread the bits): the same key reaches the same node through any DP.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// An in-flight slot on a node, released on drop (when the response body ends or is dropped).
pub struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    pub fn new(counter: &'a AtomicU32) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(in_flight: &[u32]) -> Vec<NodeLoad> {
        in_flight
            .iter()
            .map(|&n| {
                let l = NodeLoad::default();
                for _ in 0..n {
                    l.in_flight.fetch_add(1, Ordering::Relaxed);
                }
                l
            })
            .collect()
    }

    #[test]
    fn least_conn_prefers_idle_and_weighted_nodes() {
        let b = Balancer::new(BalancerType::LeastConn, &[1, 1, 1], &[]);
        let l = loads(&[3, 0, 2]);
        for _ in 0..50 {
            assert_eq!(b.pick(0, &[1, 1, 1], &l, |_| true), Some(1));
        }
        // Node 0 has weight 4: 3 in flight there is (3+1)/4 = 1 per weight, less than 2's 3/1.
        let l = loads(&[3, 5, 2]);
        assert_eq!(b.pick(0, &[4, 1, 1], &l, |_| true), Some(0));
        // Unusable and zero-weight nodes are skipped.
        let l = loads(&[0, 0, 9]);
        assert_eq!(b.pick(0, &[0, 1, 1], &l, |i| i != 1), Some(2));
        assert_eq!(b.pick(0, &[0, 1, 1], &l, |_| false), None);
        // Equal idle nodes share the load.
        let l = loads(&[0, 0]);
        let mut hits = [0; 2];
        for _ in 0..1000 {
            hits[b.pick(0, &[1, 1], &l, |_| true).unwrap()] += 1;
        }
        assert!(hits.iter().all(|&h| h > 350), "{hits:?}");
    }

    #[test]
    fn roundrobin_skips_unusable_nodes() {
        let b = Balancer::new(BalancerType::Roundrobin, &[1, 1, 1], &[]);
        let l = loads(&[0, 0, 0]);
        let mut hits = [0; 3];
        for _ in 0..300 {
            hits[b.pick(0, &[1, 1, 1], &l, |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(hits, [150, 0, 150]);
        assert_eq!(b.pick(0, &[1, 1, 1], &l, |_| false), None);
    }

    /// With one node every balancer gives it when it is usable, and nothing when it is not (or
    /// has weight 0).
    #[test]
    fn one_node_is_picked_by_every_balancer_when_usable() {
        let l = loads(&[0]);
        for kind in [
            BalancerType::Roundrobin,
            BalancerType::Chash,
            BalancerType::LeastConn,
            BalancerType::Ewma,
        ] {
            let b = Balancer::new(kind, &[1], &["n"]);
            for hash in [0, 7, u64::MAX] {
                assert_eq!(b.pick(hash, &[1], &l, |_| true), Some(0), "{kind:?}");
                assert_eq!(b.pick(hash, &[1], &l, |_| false), None, "{kind:?}");
                assert_eq!(b.pick(hash, &[0], &l, |_| true), None, "{kind:?}");
            }
        }
    }

    #[test]
    fn stable_hash_is_stable() {
        // Fixed values: a change here would move every chash key on upgrade.
        assert_eq!(stable_hash(b"abc"), 0x33eb_af99_27cb_c5bd);
        assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_ne!(stable_hash(b"10.0.0.1"), stable_hash(b"10.0.0.2"));
    }
}
