//! The snapshot builder: follows the store's revision and keeps the latest consistent snapshot
//! ready for every sync stream. Bursts of writes coalesce: a stream only ever sends the newest.
//!
//! The builder is also where store trouble is absorbed: while the store is unreachable the last
//! snapshot keeps being served; and if the store comes back wiped or replaced (its `store_id`
//! changed, or its revision went back), the builder keeps serving the last snapshot and reports
//! the reset instead of telling every data plane to delete everything. The operator accepts the
//! new store explicitly (`POST /admin/store/adopt`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postern_proto::model::{ConfigSet, Resource, ResourceKind, ValidationError};
use postern_proto::{packing, sync};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::lock;
use crate::store::{ConfigStore, StoreResult, StoreSnapshot, StoredResource};

/// The builder's maps are keyed by every resource of the config, once per change: foldhash,
/// not SipHash, which was most of a one-route change's build at 10,000 routes.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// How often the builder re-reads the store even without a notification (a safety net for a
/// missed notification, and how a store outage is noticed when nothing is being written).
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// How many (version, published at) pairs are kept to compute data-plane lag.
const VERSION_LOG_LEN: usize = 1024;

/// One built snapshot, shared by every sync stream.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub store_id: String,
    /// Encoded for the wire.
    pub resources: Vec<sync::Resource>,
    /// As stored, for Admin API reads while the store is unreachable; shared with the snapshots
    /// before and after this one where unchanged.
    pub stored: Vec<Arc<StoredResource>>,
    pub build_time: Duration,
    /// Unix seconds.
    pub published_at: i64,
    /// The delta from one base version to this snapshot, kept for the next stream that needs
    /// the same (see [`Snapshot::delta_from`]).
    delta_memo: Mutex<Option<(u64, Arc<Delta>)>>,
    /// This snapshot whole, packed for DPs that unpack snapshots (`None` inside: too small to
    /// pack); packed once, by the first stream that needs it.
    packed_whole: tokio::sync::OnceCell<Option<bytes::Bytes>>,
}

/// What changed from one snapshot to another: resources added or changed, keys removed.
pub type Delta = (Vec<sync::Resource>, Vec<sync::ResourceKey>);

impl Snapshot {
    /// The delta from `base` (a snapshot of the same store) to this one. Every stream that sent
    /// `base` last needs the same one: the first computes it (a pass over every resource of
    /// both), the others take it, so a change costs the CP one diff however many DPs follow.
    pub fn delta_from(&self, base: &Snapshot) -> Arc<Delta> {
        let mut memo = lock(&self.delta_memo);
        if let Some((version, delta)) = memo.as_ref()
            && *version == base.version
        {
            return delta.clone();
        }
        let delta = Arc::new(postern_proto::delta::diff(&base.resources, &self.resources));
        *memo = Some((base.version, delta.clone()));
        delta
    }

    /// This snapshot whole, for the wire (nonce to be set by the stream).
    pub fn wire_whole(&self) -> sync::Snapshot {
        sync::Snapshot {
            version: self.version,
            resources: self.resources.clone(),
            store_id: self.store_id.clone(),
            ..sync::Snapshot::default()
        }
    }

    /// This snapshot whole, packed (`postern_proto::packing`), or `None` when it is small enough
    /// to go as it is. Every DP at this version gets the same packing: a fleet reconnecting
    /// after a CP restart costs one compression, not one per DP. Compressed on a blocking
    /// thread (about 10 ms at 10,000 routes), off the streams' async threads.
    pub async fn packed_whole(self: &Arc<Self>) -> Option<bytes::Bytes> {
        self.packed_whole
            .get_or_init(|| async {
                let wire = self.wire_whole();
                if !packing::worth_packing(&wire) {
                    return None;
                }
                // A panic in the compressor leaves the snapshot to go unpacked.
                tokio::task::spawn_blocking(move || packing::pack(&wire))
                    .await
                    .ok()
                    .flatten()
            })
            .await
            .clone()
    }
}

/// Receives the latest snapshot (`None` until the first one is built).
pub type SnapshotReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Validates a store snapshot as a whole (every resource parses, every reference resolves) and
/// encodes it for the wire. The DP runs the same checks; doing them here too means a bad store
/// row is caught before it reaches any DP.
///
/// Incremental on `previous` (the snapshot being served): within one store a resource's
/// `mod_revision` names its content, so an unchanged resource keeps its encoded body, and when
/// no resource other than routes changed, an unchanged route is not parsed or checked again
/// (it was checked against the same other resources). Other resources are always parsed: the
/// routes that are checked are checked against them.
pub fn build(
    store: StoreSnapshot,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ValidationError> {
    build_from(Found::from(store), previous)
}

/// A whole config as the builder read it: from the store at once, or as the changes since the
/// served snapshot applied to it.
#[derive(Debug)]
struct Found {
    store_id: String,
    revision: u64,
    resources: Vec<Arc<StoredResource>>,
}

impl From<StoreSnapshot> for Found {
    fn from(s: StoreSnapshot) -> Found {
        Found {
            store_id: s.store_id,
            revision: s.revision,
            resources: s.resources.into_iter().map(Arc::new).collect(),
        }
    }
}

/// Reads the store now: only what changed since `serving` when the store can tell (all three),
/// so a one-route write at 10,000 routes reads one row rather than every resource; the whole
/// store otherwise, or when the changes do not add up on top of `serving`.
async fn read_store(store: &dyn ConfigStore, serving: Option<&Snapshot>) -> StoreResult<Found> {
    if let Some(serving) = serving
        && let Some(changes) = store.changes_since(serving.version).await?
        && changes.store_id == serving.store_id
        && changes.revision >= serving.version
    {
        let (store_id, revision) = (changes.store_id.clone(), changes.revision);
        if revision == serving.version {
            // Nothing was written since (the periodic re-read).
            return Ok(Found {
                store_id,
                revision,
                resources: serving.stored.clone(),
            });
        }
        match changes.apply_to(&serving.stored) {
            Some(resources) => {
                return Ok(Found {
                    store_id,
                    revision,
                    resources,
                });
            }
            None => tracing::info!(
                revision,
                "the store's history does not account for every change since the served \
                 snapshot (a write by an older control plane?); reading it whole"
            ),
        }
    }
    Ok(Found::from(store.snapshot().await?))
}

fn build_from(store: Found, previous: Option<&Snapshot>) -> Result<Snapshot, ValidationError> {
    let started = Instant::now();
    let previous = previous.filter(|p| p.store_id == store.store_id);
    let encoded: HashMap<(ResourceKind, &str), (u64, &sync::Resource)> = previous
        .map(|p| {
            p.stored
                .iter()
                .zip(&p.resources)
                .map(|(s, r)| ((s.kind, s.id.as_str()), (s.mod_revision, r)))
                .collect()
        })
        .unwrap_or_default();
    let unchanged = |r: &StoredResource| {
        encoded
            .get(&(r.kind, r.id.as_str()))
            .filter(|(rev, _)| *rev == r.mod_revision)
            .map(|(_, encoded)| *encoded)
    };
    let not_routes = |list: &[Arc<StoredResource>]| {
        list.iter()
            .filter(|r| r.kind != ResourceKind::Routes)
            .map(|r| (r.kind, r.id.clone(), r.mod_revision))
            .collect::<Vec<_>>()
    };
    let context_unchanged =
        previous.is_some_and(|p| not_routes(&p.stored) == not_routes(&store.resources));

    let mut set = ConfigSet::default();
    for r in store
        .resources
        .iter()
        .filter(|r| r.kind != ResourceKind::Routes)
    {
        let parsed = Resource::parse(r.kind, &r.value)
            .map_err(|e| e.under(&format!("{}/{}", r.kind, r.id)))?;
        set.insert(&r.id, parsed);
    }
    set.check_references()?;
    let mut resources = Vec::with_capacity(store.resources.len());
    for r in store.resources.iter().map(|r| &**r) {
        let reused = unchanged(r);
        if r.kind == ResourceKind::Routes && !(context_unchanged && reused.is_some()) {
            let at = || format!("{}/{}", r.kind, r.id);
            let Resource::Route(route) =
                Resource::parse(r.kind, &r.value).map_err(|e| e.under(&at()))?
            else {
                return Err(ValidationError::new(at(), "not a route"));
            };
            set.check_route(&r.id, &route)?;
        }
        resources.push(match reused {
            Some(encoded) => encoded.clone(),
            None => sync::Resource {
                kind: r.kind.as_str().to_string(),
                id: r.id.clone(),
                mod_revision: r.mod_revision,
                body: serde_json::to_vec(&r.value).unwrap_or_default().into(),
            },
        });
    }
    Ok(Snapshot {
        version: store.revision,
        store_id: store.store_id,
        resources,
        stored: store.resources,
        build_time: started.elapsed(),
        published_at: unix_now(),
        delta_memo: Mutex::new(None),
        packed_whole: tokio::sync::OnceCell::new(),
    })
}

/// A store that came back different from the one the served snapshot was built from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoreReset {
    pub serving_store_id: String,
    pub serving_version: u64,
    pub found_store_id: String,
    pub found_revision: u64,
    pub found_resources: usize,
    /// Unix seconds.
    pub detected_at: i64,
}

/// What `GET /admin/status` shows about the store and the snapshot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HubStatus {
    pub store_reachable: bool,
    pub store_error: Option<String>,
    /// Unix seconds of the last successful read of the store.
    pub store_last_ok: Option<i64>,
    pub store_reset: Option<StoreReset>,
}

/// The latest snapshot plus what is known about how it came to be. One per control plane.
pub struct SnapshotHub {
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    status: Mutex<HubStatus>,
    /// Oldest first: when each version was published.
    versions: Mutex<VecDeque<(u64, i64)>>,
    /// A store id the operator accepted after a reset.
    adopted: Mutex<Option<String>>,
    wake: Notify,
}

impl SnapshotHub {
    pub fn new() -> Arc<SnapshotHub> {
        Arc::new(SnapshotHub {
            tx: watch::channel(None).0,
            status: Mutex::new(HubStatus::default()),
            versions: Mutex::new(VecDeque::new()),
            adopted: Mutex::new(None),
            wake: Notify::new(),
        })
    }

    pub fn subscribe(&self) -> SnapshotReceiver {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.tx.borrow().clone()
    }

    pub fn status(&self) -> HubStatus {
        lock(&self.status).clone()
    }

    /// Seconds since the first version newer than `applied` was published (0 when `applied` is
    /// current): how far behind a data plane is.
    pub fn lag_seconds(&self, applied: u64) -> i64 {
        let versions = lock(&self.versions);
        versions
            .iter()
            .find(|(v, _)| *v > applied)
            .map(|(_, at)| (unix_now() - at).max(0))
            .unwrap_or(0)
    }

    /// The operator accepts the store with `store_id` as the new source of truth after a reset.
    /// Fails unless that is the reset store now found.
    pub fn adopt(&self, store_id: &str) -> Result<(), String> {
        let status = lock(&self.status);
        match &status.store_reset {
            Some(r) if r.found_store_id == store_id => {
                *lock(&self.adopted) = Some(store_id.to_string());
                self.wake.notify_one();
                Ok(())
            }
            Some(r) => Err(format!(
                "the store found now has id '{}', not '{store_id}'",
                r.found_store_id
            )),
            None => Err("no store reset is pending".to_string()),
        }
    }

    fn store_ok(&self) {
        let mut status = lock(&self.status);
        if status.store_error.is_some() {
            tracing::info!("the config store is reachable again");
        }
        status.store_reachable = true;
        status.store_error = None;
        status.store_last_ok = Some(unix_now());
    }

    fn store_failed(&self, e: &crate::store::StoreError) {
        crate::metrics::METRICS
            .store_errors
            .with_label_values(&["builder"])
            .inc();
        let mut status = lock(&self.status);
        if status.store_error.is_none() {
            // Logged once per outage, not once per retry.
            tracing::error!(error = %e, "cannot read the config store; still serving the last snapshot");
        }
        status.store_reachable = false;
        status.store_error = Some(e.to_string());
    }

    fn publish(&self, snap: Snapshot) {
        {
            let mut versions = lock(&self.versions);
            versions.push_back((snap.version, snap.published_at));
            while versions.len() > VERSION_LOG_LEN {
                versions.pop_front();
            }
        }
        lock(&self.status).store_reset = None;
        self.tx.send_replace(Some(Arc::new(snap)));
    }

    /// Whether `found` may replace what is served, or is a reset to report.
    fn check_reset(&self, found: &Found) -> Result<(), StoreReset> {
        let Some(serving) = self.current() else {
            return Ok(());
        };
        let same_store = serving.store_id == found.store_id;
        if same_store && found.revision >= serving.version {
            return Ok(());
        }
        if lock(&self.adopted).as_deref() == Some(found.store_id.as_str()) {
            return Ok(());
        }
        Err(StoreReset {
            serving_store_id: serving.store_id.clone(),
            serving_version: serving.version,
            found_store_id: found.store_id.clone(),
            found_revision: found.revision,
            found_resources: found.resources.len(),
            detected_at: unix_now(),
        })
    }
}

/// Runs until `shutdown`: rebuilds the snapshot whenever the store's revision moves. Store errors
/// are retried with backoff while the last snapshot keeps being served.
pub async fn run_builder(
    store: Arc<dyn ConfigStore>,
    hub: Arc<SnapshotHub>,
    shutdown: CancellationToken,
) {
    let mut changes = store.subscribe();
    let mut delay = Duration::from_millis(100);
    loop {
        changes.borrow_and_update();
        let serving = hub.current();
        match read_store(&*store, serving.as_deref()).await {
            Ok(found) => {
                delay = Duration::from_millis(100);
                hub.store_ok();
                let unchanged = serving
                    .as_ref()
                    .is_some_and(|c| c.version == found.revision && c.store_id == found.store_id);
                if !unchanged {
                    apply(&hub, found);
                }
            }
            Err(e) => {
                hub.store_failed(&e);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                continue;
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
            _ = hub.wake.notified() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn apply(hub: &SnapshotHub, found: Found) {
    if let Err(reset) = hub.check_reset(&found) {
        let mut status = lock(&hub.status);
        if status
            .store_reset
            .as_ref()
            .map(|r| (&r.found_store_id, r.found_revision))
            != Some((&reset.found_store_id, reset.found_revision))
        {
            tracing::error!(
                serving_store_id = %reset.serving_store_id,
                serving_version = reset.serving_version,
                found_store_id = %reset.found_store_id,
                found_revision = reset.found_revision,
                found_resources = reset.found_resources,
                "the config store was wiped or replaced; still serving the last snapshot. \
                 Restore it, or accept it with POST /admin/store/adopt"
            );
            status.store_reset = Some(reset);
        }
        return;
    }
    let revision = found.revision;
    match build_from(found, hub.current().as_deref()) {
        Ok(snap) => {
            tracing::info!(
                version = snap.version,
                resources = snap.resources.len(),
                build_ms = snap.build_time.as_secs_f64() * 1e3,
                "snapshot built"
            );
            let m = &crate::metrics::METRICS;
            m.snapshot_build.observe(snap.build_time.as_secs_f64());
            m.snapshot_version
                .set(i64::try_from(snap.version).unwrap_or(i64::MAX));
            hub.publish(snap);
        }
        Err(e) => tracing::error!(
            revision,
            error = %e,
            "the store holds an inconsistent config; keeping the previous snapshot"
        ),
    }
}

#[cfg(test)]
mod tests {
    use postern_proto::model::ResourceKind;
    use serde_json::json;

    use super::*;

    fn store_snapshot(store_id: &str, revision: u64, routes: usize) -> StoreSnapshot {
        StoreSnapshot {
            store_id: store_id.to_string(),
            revision,
            resources: (0..routes)
                .map(|i| {
                    let id = format!("r{i}");
                    let value =
                        json!({"id": id, "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}}});
                    stored(ResourceKind::Routes, &id, 1, value)
                })
                .collect(),
        }
    }

    fn stored(kind: ResourceKind, id: &str, rev: u64, value: serde_json::Value) -> StoredResource {
        StoredResource {
            kind,
            id: id.to_string(),
            value,
            create_revision: rev,
            mod_revision: rev,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn unchanged_resources_keep_their_encoding_and_changed_context_rechecks_every_route() {
        let u1 = stored(
            ResourceKind::Upstreams,
            "u1",
            1,
            json!({"nodes": {"127.0.0.1:1": 1}}),
        );
        let route = |id: &str, rev: u64, uri: &str| {
            stored(
                ResourceKind::Routes,
                id,
                rev,
                json!({"uri": uri, "upstream_id": "u1"}),
            )
        };
        let store = |revision: u64, resources: Vec<StoredResource>| StoreSnapshot {
            store_id: "s".to_string(),
            revision,
            resources,
        };
        let first = build(
            store(
                2,
                vec![u1.clone(), route("a", 1, "/a"), route("b", 2, "/b")],
            ),
            None,
        )
        .unwrap();
        // b changes: a keeps its encoded body (the same buffer), b gets a new one.
        let second = build(
            store(
                3,
                vec![u1.clone(), route("a", 1, "/a"), route("b", 3, "/b2")],
            ),
            Some(&first),
        )
        .unwrap();
        let body = |s: &Snapshot, id: &str| {
            s.resources
                .iter()
                .find(|r| r.id == id)
                .unwrap()
                .body
                .clone()
        };
        assert_eq!(body(&first, "a").as_ptr(), body(&second, "a").as_ptr());
        assert_ne!(body(&first, "b"), body(&second, "b"));
        assert!(String::from_utf8_lossy(&body(&second, "b")).contains("/b2"));
        // A changed route is checked: one naming a missing upstream is refused.
        let bad = stored(
            ResourceKind::Routes,
            "b",
            4,
            json!({"uri": "/b", "upstream_id": "nope"}),
        );
        let err = build(
            store(4, vec![u1.clone(), route("a", 1, "/a"), bad]),
            Some(&second),
        )
        .unwrap_err();
        assert!(err.to_string().contains("routes/b"), "{err}");
        // The upstream goes (a store changed behind the Admin API's back): the unchanged route
        // a is checked again, and its dangling reference refused.
        let err = build(store(5, vec![route("a", 1, "/a")]), Some(&second)).unwrap_err();
        assert!(err.to_string().contains("routes/a"), "{err}");
        // Another store: nothing is taken from the previous snapshot.
        let other = build(
            StoreSnapshot {
                store_id: "t".to_string(),
                revision: 3,
                resources: vec![u1, route("a", 1, "/a")],
            },
            Some(&second),
        )
        .unwrap();
        assert_ne!(body(&other, "a").as_ptr(), body(&second, "a").as_ptr());
    }

    #[test]
    fn a_wiped_or_replaced_store_is_reported_not_served_until_adopted() {
        let hub = SnapshotHub::new();
        apply(&hub, store_snapshot("a", 5, 3).into());
        assert_eq!(hub.current().unwrap().version, 5);

        // Same store, revision went back (restored from an old backup or wiped): reported.
        apply(&hub, store_snapshot("a", 0, 0).into());
        assert_eq!(hub.current().unwrap().resources.len(), 3, "still serving");
        let reset = hub.status().store_reset.expect("reported");
        assert_eq!(
            (reset.found_store_id.as_str(), reset.found_revision),
            ("a", 0)
        );

        // A different store: reported too; adopting the wrong id is refused.
        apply(&hub, store_snapshot("b", 2, 1).into());
        assert_eq!(hub.current().unwrap().version, 5);
        assert_eq!(hub.status().store_reset.unwrap().found_store_id, "b");
        assert!(hub.adopt("a").is_err());
        hub.adopt("b").unwrap();
        apply(&hub, store_snapshot("b", 2, 1).into());
        let current = hub.current().unwrap();
        assert_eq!((current.store_id.as_str(), current.version), ("b", 2));
        assert!(hub.status().store_reset.is_none());
        assert!(hub.adopt("b").is_err(), "nothing pending any more");

        // Forward progress on the adopted store needs nothing special.
        apply(&hub, store_snapshot("b", 3, 2).into());
        assert_eq!(hub.current().unwrap().version, 3);
    }

    /// On a SQL store the builder reads what changed, not every resource: a resource no write
    /// touched is the very one the served snapshot holds, and the result is what a whole read
    /// gives.
    #[tokio::test]
    async fn the_builder_reads_only_the_changes_from_a_sql_store() {
        use crate::store::{Precondition, PutRequest, SqliteStore};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("config.db"))
            .await
            .unwrap();
        let put = |id: &str, uri: &str| PutRequest {
            kind: ResourceKind::Routes,
            id: id.to_string(),
            value: json!({"id": id, "uri": uri, "upstream": {"nodes": {"127.0.0.1:1": 1}}}),
            references: Vec::new(),
            claims: Vec::new(),
            precondition: Precondition::None,
            actor: None,
        };
        for i in 0..50 {
            store.put(put(&format!("r{i}"), "/a")).await.unwrap();
        }
        let serving = build_from(read_store(&store, None).await.unwrap(), None).unwrap();
        store.put(put("r7", "/changed")).await.unwrap();
        let found = read_store(&store, Some(&serving)).await.unwrap();
        assert_eq!(found.revision, serving.version + 1);
        let whole = store.snapshot().await.unwrap();
        let read: Vec<StoredResource> = found.resources.iter().map(|r| (**r).clone()).collect();
        assert_eq!(read, whole.resources);
        let at = |id: &str| found.resources.iter().position(|r| r.id == id).unwrap();
        assert!(Arc::ptr_eq(
            &found.resources[at("r8")],
            &serving.stored[at("r8")]
        ));
        assert!(!Arc::ptr_eq(
            &found.resources[at("r7")],
            &serving.stored[at("r7")]
        ));
    }

    /// Every stream at the same base needs the same delta: computed once, then shared; a
    /// stream at another base gets its own.
    #[test]
    fn a_delta_is_computed_once_for_the_streams_at_one_base() {
        let a = build(store_snapshot("s", 1, 3), None).unwrap();
        let b = build(store_snapshot("s", 2, 4), Some(&a)).unwrap();
        let first = b.delta_from(&a);
        assert!(Arc::ptr_eq(&first, &b.delta_from(&a)), "shared");
        assert_eq!(
            *first,
            postern_proto::delta::diff(&a.resources, &b.resources)
        );
        let added: Vec<&str> = first.0.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(added, ["r3"]);
        let empty = build(store_snapshot("s", 0, 0), None).unwrap();
        let from_empty = b.delta_from(&empty);
        assert_eq!(from_empty.0.len(), 4);
        assert!(!Arc::ptr_eq(&first, &from_empty));
    }

    #[test]
    fn lag_counts_from_the_first_newer_version() {
        let hub = SnapshotHub::new();
        let mut s = build(store_snapshot("a", 1, 0), None).unwrap();
        s.published_at = unix_now() - 30;
        hub.publish(s);
        let mut s = build(store_snapshot("a", 2, 0), None).unwrap();
        s.published_at = unix_now() - 10;
        hub.publish(s);
        assert_eq!(hub.lag_seconds(2), 0);
        let lag = hub.lag_seconds(1);
        assert!((10..=11).contains(&lag), "{lag}");
        let lag = hub.lag_seconds(0);
        assert!((30..=31).contains(&lag), "{lag}");
    }
}
