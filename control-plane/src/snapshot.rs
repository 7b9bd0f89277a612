//! The snapshot builder: follows the store's revision and keeps the latest consistent snapshot
//! ready for every sync stream. Bursts of writes coalesce: a stream only ever sends the newest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_proto::model::{ConfigSet, Resource, ValidationError};
use postern_proto::sync;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{ConfigStore, StoreSnapshot};

/// How often the builder re-reads the store even without a notification (a safety net for a
/// missed notification).
const RESYNC_INTERVAL: Duration = Duration::from_secs(10);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// One built snapshot, shared by every sync stream.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub resources: Vec<sync::Resource>,
    pub build_time: Duration,
}

/// Receives the latest snapshot (`None` until the first one is built).
pub type SnapshotReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

/// Validates a store snapshot as a whole (every resource parses, every reference resolves) and
/// encodes it for the wire. The DP runs the same checks; doing them here too means a bad store
/// row is caught before it reaches any DP.
pub fn build(store: &StoreSnapshot) -> Result<Snapshot, ValidationError> {
    let started = Instant::now();
    let mut set = ConfigSet::default();
    let mut resources = Vec::with_capacity(store.resources.len());
    for r in &store.resources {
        let parsed = Resource::parse(r.kind, &r.value)
            .map_err(|e| e.under(&format!("{}/{}", r.kind, r.id)))?;
        set.insert(&r.id, parsed);
        resources.push(sync::Resource {
            kind: r.kind.as_str().to_string(),
            id: r.id.clone(),
            mod_revision: r.mod_revision,
            body: serde_json::to_vec(&r.value).unwrap_or_default().into(),
        });
    }
    set.check_references()?;
    Ok(Snapshot {
        version: store.revision,
        resources,
        build_time: started.elapsed(),
    })
}

/// Runs until `shutdown`: rebuilds the snapshot whenever the store's revision moves. Store errors
/// are retried with backoff while the last snapshot keeps being served.
pub async fn run_builder(
    store: Arc<dyn ConfigStore>,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    shutdown: CancellationToken,
) {
    let mut changes = store.subscribe();
    let mut delay = Duration::from_millis(100);
    loop {
        changes.borrow_and_update();
        match store.snapshot().await {
            Ok(s) => {
                delay = Duration::from_millis(100);
                let current = tx.borrow().as_ref().map(|s| s.version);
                if current != Some(s.revision) {
                    match build(&s) {
                        Ok(snap) => {
                            tracing::info!(
                                version = snap.version,
                                resources = snap.resources.len(),
                                build_ms = snap.build_time.as_secs_f64() * 1e3,
                                "snapshot built"
                            );
                            tx.send_replace(Some(Arc::new(snap)));
                        }
                        Err(e) => tracing::error!(
                            revision = s.revision,
                            error = %e,
                            "the store holds an inconsistent config; keeping the previous snapshot"
                        ),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot read the config store");
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
            _ = shutdown.cancelled() => return,
        }
    }
}
