//! The local backend: every key's state in this process, in shards of `Mutex<HashTable>` picked
//! by the key's hash, so concurrent requests for different keys rarely meet on a lock and a
//! decision holds a lock for a few hundred nanoseconds. Idle keys are dropped: every
//! `SWEEP_EVERY` decisions on a thread, the next shard in turn drops its expired entries.
//!
//! A key is hashed once per decision (SipHash, keyed per process: keys come from clients), and
//! that hash both picks the shard and finds the key in it.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::{Clock, Decision, Rule, State, SystemClock};

const SHARDS: usize = 64;
const SWEEP_EVERY: usize = 1024;

struct Entry {
    key: Box<str>,
    state: Option<State>,
    expires_ms: u64,
}

#[derive(Default)]
struct Shard {
    table: hashbrown::HashTable<Entry>,
}

pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    /// Sweeps made: the next one sweeps shard `sweeps % SHARDS`.
    sweeps: AtomicUsize,
}

thread_local! {
    /// Decisions made on this thread: every `SWEEP_EVERY`th sweeps a shard.
    static DECISIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl LocalStore {
    pub fn new(clock: Arc<dyn Clock>) -> LocalStore {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            clock,
            sweeps: AtomicUsize::new(0),
        }
    }

    fn lock(&self, idx: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding the lock can at worst lose a count: use a poisoned shard as is.
        self.shards[idx]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The process-wide store the plugins use. Keys carry the route, the plugin and a hash of
    /// its config, so counters outlive config snapshots that do not change the limit.
    pub fn global() -> &'static LocalStore {
        static STORE: OnceLock<LocalStore> = OnceLock::new();
        STORE.get_or_init(|| LocalStore::new(Arc::new(SystemClock)))
    }

    pub fn decide(&self, key: &str, rule: &Rule) -> Decision {
        let now = self.clock.now_ms();
        // Counted per thread: a shared counter would be one cache line every worker writes.
        let n = DECISIONS.get().wrapping_add(1);
        DECISIONS.set(n);
        if n.is_multiple_of(SWEEP_EVERY) {
            let turn = self.sweeps.fetch_add(1, Ordering::Relaxed) % self.shards.len();
            self.lock(turn).table.retain(|e| e.expires_ms > now);
        }
        let hash = self.hasher.hash_one(key);
        // Bits 32 and up pick the shard: the table places keys by the low bits and tags them
        // with the top seven.
        let idx = (hash >> 32) as usize % self.shards.len();
        let mut shard = self.lock(idx);
        let entry =
            match shard
                .table
                .entry(hash, |e| *e.key == *key, |e| self.hasher.hash_one(&*e.key))
            {
                hashbrown::hash_table::Entry::Occupied(e) => e.into_mut(),
                hashbrown::hash_table::Entry::Vacant(e) => e
                    .insert(Entry {
                        key: key.into(),
                        state: None,
                        expires_ms: 0,
                    })
                    .into_mut(),
            };
        let (decision, expires_ms) = rule.decide(&mut entry.state, now);
        entry.expires_ms = expires_ms;
        decision
    }

    /// Keys currently held (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.table.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::Window;
    use super::super::test_clock::ManualClock;
    use super::*;

    #[test]
    fn keys_are_counted_apart_and_idle_keys_expire() {
        let clock = Arc::new(ManualClock::at(1_000_000));
        let store = LocalStore::new(Arc::new(clock.clone()));
        let rule = Rule::FixedWindow(vec![Window {
            limit: 2,
            window_ms: 1000,
        }]);
        assert!(store.decide("a", &rule).allowed);
        assert!(store.decide("a", &rule).allowed);
        assert!(!store.decide("a", &rule).allowed);
        assert!(store.decide("b", &rule).allowed);
        for i in 0..10_000 {
            store.decide(&format!("k{i}"), &rule);
        }
        assert!(store.len() > 10_000);
        // Two seconds later every window above has ended; traffic on other keys sweeps them.
        clock.advance(2000);
        for _ in 0..(SWEEP_EVERY * SHARDS) {
            store.decide("busy", &rule);
        }
        assert!(store.len() < 100, "{} keys left", store.len());
        assert!(store.decide("a", &rule).allowed, "a new window");
    }

    #[test]
    fn a_rule_change_on_a_key_starts_over() {
        let store = LocalStore::new(Arc::new(ManualClock::at(0)));
        let one = Rule::SlidingWindowLog(Window {
            limit: 1,
            window_ms: 1000,
        });
        assert!(store.decide("k", &one).allowed);
        assert!(!store.decide("k", &one).allowed);
        let bucket = Rule::TokenBucket {
            rate: 1.0,
            capacity: 1.0,
        };
        assert!(store.decide("k", &bucket).allowed);
    }
}
