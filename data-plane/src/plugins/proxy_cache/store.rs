//! The entries of one route's cache: in memory, or on disk (one file per entry, the index in
//! memory), bounded by bytes and evicted least recently used. Sharded by key so concurrent
//! requests for different keys rarely meet on a lock; each shard's critical sections are hash
//! map operations only (no I/O: evicted files are removed after the lock is let go).
//!
//! An entry is found by its key (the resolved `cache_key`) and then its variant (method, the
//! consumer when added automatically, and the request's values of the headers the response
//! varies on). Purging a key drops every variant of it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use tokio::sync::watch;

use crate::observability::metrics::CacheMetrics;

/// Where an entry's body is.
pub enum BodyAt {
    Memory(Bytes),
    /// A file of the disk store, removed when the entry is dropped (evicted, purged, replaced,
    /// and no request still reading it).
    File(PathBuf),
}

/// One stored response.
pub struct Entry {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BodyAt,
    pub stored: Instant,
    pub expires: Instant,
    /// What it counts against `cache_size`.
    pub size: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let BodyAt::File(path) = &self.body {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Every variant stored under one key, with the header names they vary on.
struct Variants {
    vary: Arc<[HeaderName]>,
    map: HashMap<String, (Arc<Entry>, u64)>,
}

#[derive(Default)]
struct Shard {
    keys: HashMap<String, Variants>,
    /// Use tick → (key, variant): the first is the least recently used.
    lru: BTreeMap<u64, (String, String)>,
    bytes: u64,
    tick: u64,
}

impl Shard {
    fn remove_key(&mut self, key: &str, out: &mut Vec<Arc<Entry>>) {
        if let Some(v) = self.keys.remove(key) {
            for (_, (entry, tick)) in v.map {
                self.lru.remove(&tick);
                self.bytes -= entry.size;
                out.push(entry);
            }
        }
    }

    fn remove_lru(&mut self) -> Option<Arc<Entry>> {
        let (_, (key, variant)) = self.lru.pop_first()?;
        let vars = self.keys.get_mut(&key)?;
        let (entry, _) = vars.map.remove(&variant)?;
        if vars.map.is_empty() {
            self.keys.remove(&key);
        }
        self.bytes -= entry.size;
        Some(entry)
    }
}

/// What a request filling an entry told the requests that waited for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    Pending,
    Stored,
    NotStored,
    /// The response may not be stored (no-store, too big…): misses for the key stop waiting
    /// for each other for `PASS_FOR`.
    Uncacheable,
}

/// How long a key whose response could not be stored is fetched without coalescing.
const PASS_FOR: std::time::Duration = std::time::Duration::from_secs(10);
/// Most keys remembered as uncacheable; beyond, the list starts again.
const MAX_PASS_KEYS: usize = 10_000;

pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    shard_cap: u64,
    hasher: std::collections::hash_map::RandomState,
    /// The disk store's directory (this store's own, removed with it).
    dir: Option<PathBuf>,
    /// Whether `dir` was made (on the first entry: building a config never touches the disk).
    dir_ready: std::sync::OnceLock<bool>,
    next_file: AtomicU64,
    /// Keys being fetched from the upstream right now: later misses wait for that response.
    inflight: Mutex<HashMap<String, watch::Receiver<Filled>>>,
    /// Keys whose last response could not be stored, until when (hit-for-pass).
    pass: Mutex<HashMap<String, Instant>>,
    /// Purges already applied (ids), so a snapshot applies each one once.
    purges: Mutex<HashSet<String>>,
    pub metrics: Arc<CacheMetrics>,
}

/// Either this request fetches the entry (and holds the guard until it is stored or given
/// up), or it waits for the request that does.
pub enum Join {
    Lead(FillGuard),
    Wait(watch::Receiver<Filled>),
}

/// Held by the request that fetches a missing entry; dropping it wakes the waiters.
pub struct FillGuard {
    store: Arc<Store>,
    key: String,
    tx: watch::Sender<Filled>,
    outcome: Filled,
}

impl FillGuard {
    pub fn stored(&mut self) {
        self.outcome = Filled::Stored;
    }

    /// The response cannot be stored: wakes the waiters now, and lets later misses for the
    /// key go upstream without waiting for each other for a while.
    pub fn uncacheable(mut self) {
        self.outcome = Filled::Uncacheable;
        let mut pass = self.store.pass.lock().expect("pass lock");
        if pass.len() >= MAX_PASS_KEYS {
            pass.clear();
        }
        pass.insert(self.key.clone(), Instant::now() + PASS_FOR);
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.store
            .inflight
            .lock()
            .expect("inflight lock")
            .remove(&self.key);
        let outcome = match self.outcome {
            Filled::Pending => Filled::NotStored,
            o => o,
        };
        let _ = self.tx.send(outcome);
    }
}

/// Most shards a store is split into.
const MAX_SHARDS: u64 = 16;

impl Store {
    /// A store of `capacity` bytes holding entries up to `max_entry` bytes each. With `dir`,
    /// bodies go to files in it (created empty; anything in it is removed first).
    pub fn new(
        capacity: u64,
        max_entry: u64,
        dir: Option<PathBuf>,
        metrics: Arc<CacheMetrics>,
    ) -> Store {
        // Each shard must hold the largest entry.
        let shards = (capacity / max_entry.max(1)).clamp(1, MAX_SHARDS);
        Store {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            shard_cap: capacity / shards,
            hasher: Default::default(),
            dir,
            dir_ready: std::sync::OnceLock::new(),
            next_file: AtomicU64::new(0),
            inflight: Mutex::default(),
            pass: Mutex::default(),
            purges: Mutex::default(),
            metrics,
        }
    }

    pub fn is_disk(&self) -> bool {
        self.dir.is_some()
    }

    /// A fresh file name for a body of the disk store; `None` when its directory cannot be
    /// made (logged once). Blocking: call it off the async workers.
    pub fn file_path(&self) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let ready = *self.dir_ready.get_or_init(|| {
            // A directory of this process's: whatever is in it is left from an earlier run.
            let _ = std::fs::remove_dir_all(dir);
            match std::fs::create_dir_all(dir) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "proxy-cache: cannot create the cache directory; nothing is stored");
                    false
                }
            }
        });
        if !ready {
            return None;
        }
        Some(dir.join(format!(
            "{:016x}",
            self.next_file.fetch_add(1, Ordering::Relaxed)
        )))
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(key);
        &self.shards[(h % self.shards.len() as u64) as usize]
    }

    /// The entry for `key` and the variant `variant` computes from the key's `Vary` names
    /// (fresh or not: the caller decides); marks it used.
    pub fn get(
        &self,
        key: &str,
        variant: impl FnOnce(&[HeaderName]) -> String,
    ) -> Option<Arc<Entry>> {
        let mut shard = self.shard(key).lock().expect("cache shard lock");
        let shard = &mut *shard;
        let vars = shard.keys.get_mut(key)?;
        let variant = variant(&vars.vary);
        let (entry, tick) = vars.map.get_mut(&variant)?;
        shard.tick += 1;
        if let Some(k) = shard.lru.remove(tick) {
            shard.lru.insert(shard.tick, k);
        }
        *tick = shard.tick;
        Some(entry.clone())
    }

    /// Stores an entry, evicting the least recently used ones to make room. A response whose
    /// `Vary` differs from the key's other variants replaces them all.
    pub fn insert(&self, key: &str, vary: Arc<[HeaderName]>, variant: String, entry: Entry) {
        let size = entry.size;
        if size > self.shard_cap {
            return;
        }
        let mut dropped = Vec::new();
        {
            let mut shard = self.shard(key).lock().expect("cache shard lock");
            let shard = &mut *shard;
            if shard.keys.get(key).is_some_and(|v| v.vary != vary) {
                shard.remove_key(key, &mut dropped);
            }
            if let Some((old, tick)) = shard.keys.get_mut(key).and_then(|v| v.map.remove(&variant))
            {
                shard.lru.remove(&tick);
                shard.bytes -= old.size;
                dropped.push(old);
            }
            let mut evicted = 0;
            while shard.bytes + size > self.shard_cap {
                match shard.remove_lru() {
                    Some(e) => {
                        dropped.push(e);
                        evicted += 1;
                    }
                    None => break,
                }
            }
            shard.tick += 1;
            let tick = shard.tick;
            shard.lru.insert(tick, (key.to_string(), variant.clone()));
            shard
                .keys
                .entry(key.to_string())
                .or_insert_with(|| Variants {
                    vary,
                    map: HashMap::new(),
                })
                .map
                .insert(variant, (Arc::new(entry), tick));
            shard.bytes += size;
            self.metrics.evicted(evicted);
        }
        self.metrics
            .stored(size, dropped.iter().map(|e| e.size).sum());
        // Files are removed here, outside the lock, unless a reader still holds the entry.
        drop(dropped);
    }

    /// Drops every variant of `key`, or everything.
    pub fn purge(&self, key: Option<&str>) {
        let mut dropped = Vec::new();
        match key {
            Some(k) => self
                .shard(k)
                .lock()
                .expect("cache shard lock")
                .remove_key(k, &mut dropped),
            None => {
                for s in self.shards.iter() {
                    let mut shard = s.lock().expect("cache shard lock");
                    let keys: Vec<String> = shard.keys.keys().cloned().collect();
                    for k in keys {
                        shard.remove_key(&k, &mut dropped);
                    }
                }
            }
        }
        self.metrics
            .stored(0, dropped.iter().map(|e| e.size).sum::<u64>());
    }

    /// Applies a purge unless this store already did.
    pub fn apply_purge(&self, id: &str, key: Option<&str>) {
        if self
            .purges
            .lock()
            .expect("purge lock")
            .insert(id.to_string())
        {
            self.purge(key);
        }
    }

    /// Bytes held (bodies, headers, keys).
    pub fn bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().expect("cache shard lock").bytes)
            .sum()
    }

    /// Whether misses for `lock_key` go upstream without coalescing (its last response could
    /// not be stored).
    pub fn is_pass(&self, lock_key: &str) -> bool {
        let mut pass = self.pass.lock().expect("pass lock");
        match pass.get(lock_key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                pass.remove(lock_key);
                false
            }
            None => false,
        }
    }

    /// Leads the fetch of `lock_key`, or joins the request already fetching it.
    pub fn join(self: &Arc<Self>, lock_key: String) -> Join {
        let mut inflight = self.inflight.lock().expect("inflight lock");
        if let Some(rx) = inflight.get(&lock_key) {
            return Join::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(Filled::Pending);
        inflight.insert(lock_key.clone(), rx);
        Join::Lead(FillGuard {
            store: self.clone(),
            key: lock_key,
            tx,
            outcome: Filled::Pending,
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.metrics.stored(0, self.bytes());
        if let Some(d) = &self.dir {
            // Entries (and their files) go with the shards; then the directory.
            for s in self.shards.iter() {
                if let Ok(mut shard) = s.lock() {
                    shard.keys.clear();
                }
            }
            if self.dir_ready.get().is_some() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry(size: u64) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: BodyAt::Memory(Bytes::from(vec![b'x'; size as usize])),
            stored: Instant::now(),
            expires: Instant::now() + Duration::from_secs(60),
            size,
        }
    }

    fn store(capacity: u64, max_entry: u64) -> Store {
        Store::new(capacity, max_entry, None, Arc::new(CacheMetrics::new("t")))
    }

    fn none() -> Arc<[HeaderName]> {
        Arc::from(Vec::new())
    }

    fn has(s: &Store, key: &str) -> bool {
        s.get(key, |_| "GET".into()).is_some()
    }

    #[test]
    fn lru_stays_within_its_bytes() {
        // (capacity, entry sizes inserted in order, keys left, in order of insertion)
        let cases: [(u64, &[u64], &[usize]); 4] = [
            (100, &[40, 40], &[0, 1]),
            (100, &[40, 40, 40], &[1, 2]),
            (100, &[90, 20], &[1]),
            // Larger than the store: not stored, nothing evicted for it.
            (100, &[50, 150], &[0]),
        ];
        for (cap, sizes, left) in cases {
            let s = store(cap, cap);
            for (i, size) in sizes.iter().enumerate() {
                s.insert(&format!("k{i}"), none(), "GET".into(), entry(*size));
            }
            let kept: Vec<usize> = (0..sizes.len())
                .filter(|i| has(&s, &format!("k{i}")))
                .collect();
            assert_eq!(kept, left, "{cap} {sizes:?}");
            assert!(s.bytes() <= cap);
        }
    }

    #[test]
    fn a_read_makes_an_entry_recently_used() {
        let s = store(100, 100);
        s.insert("a", none(), "GET".into(), entry(40));
        s.insert("b", none(), "GET".into(), entry(40));
        assert!(has(&s, "a"));
        s.insert("c", none(), "GET".into(), entry(40));
        assert!(has(&s, "a") && !has(&s, "b") && has(&s, "c"));
        assert_eq!(s.bytes(), 80);
    }

    #[test]
    fn variants_and_purges() {
        let s = store(1000, 1000);
        let accept: Arc<[HeaderName]> = Arc::from(vec![http::header::ACCEPT]);
        s.insert("k", accept.clone(), "GET\njson".into(), entry(10));
        s.insert("k", accept.clone(), "GET\nxml".into(), entry(10));
        s.insert("other", none(), "GET".into(), entry(10));
        assert!(s.get("k", |v| format!("GET\n{}", v.len())).is_none());
        assert!(s.get("k", |_| "GET\nxml".into()).is_some());
        // A new Vary for the key replaces its variants.
        s.insert("k", none(), "GET".into(), entry(10));
        assert!(s.get("k", |_| "GET\njson".into()).is_none());
        assert_eq!(s.bytes(), 20);
        s.apply_purge("p1", Some("k"));
        assert!(!has(&s, "k") && has(&s, "other"));
        s.insert("k", none(), "GET".into(), entry(10));
        // Applied once only.
        s.apply_purge("p1", Some("k"));
        assert!(has(&s, "k"));
        s.apply_purge("p2", None);
        assert!(!has(&s, "k") && !has(&s, "other"));
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn disk_entries_are_files_removed_on_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let s = Store::new(
            100,
            100,
            Some(path.clone()),
            Arc::new(CacheMetrics::new("t")),
        );
        let mut files = Vec::new();
        for i in 0..3 {
            let f = s.file_path().unwrap();
            std::fs::write(&f, [b'x'; 40]).unwrap();
            files.push(f.clone());
            let mut e = entry(40);
            e.body = BodyAt::File(f);
            s.insert(&format!("k{i}"), none(), "GET".into(), e);
        }
        assert!(!files[0].exists() && files[1].exists() && files[2].exists());
        drop(s);
        assert!(!path.exists());
    }
}
