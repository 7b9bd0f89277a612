//! Consistent hashing: each node owns `VNODES_PER_WEIGHT × weight` points on a ring of 64-bit
//! hashes; a key goes to the owner of the first point at or after its hash. Adding a node to n
//! equal nodes moves only the keys that land on the new node's points, about 1/(n+1) of them,
//! instead of almost all of them as `hash % n` would.

use super::stable_hash;

/// Virtual nodes per unit of (gcd-reduced) weight, as in common ketama setups.
const VNODES_PER_WEIGHT: u64 = 160;
/// Largest ring built (about 1.6 MB); heavier weight sets are scaled down to fit.
const MAX_POINTS: u64 = 100_000;

#[derive(Debug)]
pub struct Chash {
    /// (point, node index), sorted by point.
    ring: Box<[(u64, usize)]>,
    /// How many nodes have points on the ring.
    nodes: usize,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Chash {
    /// `weights[i]` is node `i`'s weight and `names[i]` its address; nodes with weight 0 get
    /// no points.
    pub fn new(weights: &[u32], names: &[&str]) -> Chash {
        let g = weights
            .iter()
            .filter(|&&w| w > 0)
            .fold(0u64, |g, &w| gcd(g, u64::from(w)));
        let total: u64 = weights.iter().map(|&w| u64::from(w) / g.max(1)).sum();
        let per_weight = MAX_POINTS
            .checked_div(total)
            .map_or(0, |fit| VNODES_PER_WEIGHT.min(fit.max(1)));
        let mut ring = Vec::new();
        for (i, &w) in weights.iter().enumerate() {
            let points = u64::from(w) / g.max(1) * per_weight;
            for v in 0..points {
                // Points depend on the node's address and the vnode number only: the ring is the
                // same on every data plane, and a node keeps its points when others come and go.
                let name = names.get(i).copied().unwrap_or_default();
                ring.push((stable_hash(format!("{name}#{v}").as_bytes()), i));
            }
        }
        ring.sort_unstable();
        let nodes = weights.iter().filter(|&&w| w > 0).count();
        Chash {
            ring: ring.into_boxed_slice(),
            nodes,
        }
    }

    /// The node owning `hash`, walking on past nodes for which `ok` is false.
    pub fn pick(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.ring.len();
        if n == 0 {
            return None;
        }
        let start = self.ring.partition_point(|&(p, _)| p < hash);
        // Nodes found unusable on the way; the walk stops once every node with points is in it.
        let mut rejected: Vec<usize> = Vec::new();
        for k in 0..n {
            let (_, node) = self.ring[(start + k) % n];
            if rejected.contains(&node) {
                continue;
            }
            if ok(node) {
                return Some(node);
            }
            rejected.push(node);
            if rejected.len() == self.nodes {
                return None;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> impl Iterator<Item = u64> {
        (0..20_000u32).map(|k| {
            stable_hash(format!("10.{}.{}.{}", k >> 16, (k >> 8) & 255, k & 255).as_bytes())
        })
    }

    #[test]
    fn distribution_follows_weights() {
        // (weights, expected share of each node), within ±5 percentage points: with 160 points
        // per node a node's arc length varies by about ±8% (1/sqrt(160)).
        let cases: [(&[u32], &[f64]); 3] = [
            (&[1, 1, 1], &[0.333, 0.333, 0.333]),
            (&[8, 2], &[0.8, 0.2]),
            (&[1, 0, 3], &[0.25, 0.0, 0.75]),
        ];
        for (weights, shares) in cases {
            let names: Vec<String> = (0..weights.len())
                .map(|i| format!("10.0.0.{i}:80"))
                .collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let ring = Chash::new(weights, &names);
            let mut hits = vec![0u32; weights.len()];
            for h in keys() {
                hits[ring.pick(h, |_| true).unwrap()] += 1;
            }
            for (i, (&got, &want)) in hits.iter().zip(shares).enumerate() {
                let share = f64::from(got) / 20_000.0;
                println!("{weights:?} node {i}: {share:.3} (ideal {want})");
                assert!(
                    (share - want).abs() < 0.05,
                    "{weights:?} node {i}: {share:.3} vs {want}"
                );
            }
        }
    }

    #[test]
    fn adding_a_node_moves_about_one_in_n_plus_one_keys() {
        for n in [2usize, 3, 4, 9] {
            // The new node sorts first: nodes are matched by address, not position.
            let names: Vec<String> = (0..=n).map(|i| format!("10.0.0.{i}:80")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let before = Chash::new(&vec![1; n], &names[1..]);
            let after = Chash::new(&vec![1; n + 1], &names);
            let mut moved = 0u32;
            for h in keys() {
                let a = before.pick(h, |_| true).unwrap() + 1;
                let b = after.pick(h, |_| true).unwrap();
                if a != b {
                    assert_eq!(b, 0, "a key only ever moves to the new node");
                    moved += 1;
                }
            }
            let share = f64::from(moved) / 20_000.0;
            let ideal = 1.0 / (n as f64 + 1.0);
            println!("adding node {n}: moved {share:.3} of keys (ideal {ideal:.3})");
            assert!(
                (share - ideal).abs() < 0.05,
                "n={n}: moved {share:.3}, ideal {ideal:.3}"
            );
        }
    }

    #[test]
    fn an_unusable_node_only_moves_its_own_keys() {
        let ring = Chash::new(&[1, 1, 1], &["a:1", "b:1", "c:1"]);
        for h in keys().take(2000) {
            let first = ring.pick(h, |_| true).unwrap();
            let without_1 = ring.pick(h, |i| i != 1).unwrap();
            assert_ne!(without_1, 1);
            if first != 1 {
                assert_eq!(first, without_1, "keys of healthy nodes stay put");
            }
        }
        assert_eq!(ring.pick(42, |_| false), None);
        assert_eq!(Chash::new(&[0, 0], &["a:1", "b:1"]).pick(1, |_| true), None);
    }
}
