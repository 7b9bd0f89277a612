//! The data plane's shared state: the config it serves, swapped atomically per snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;

use crate::compile::CompiledConfig;
use crate::observability::metrics::METRICS;

fn applied_metrics(config: &CompiledConfig) {
    METRICS
        .config_version
        .set(i64::try_from(config.version).unwrap_or(i64::MAX));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    METRICS
        .config_applied_timestamp
        .set(i64::try_from(now).unwrap_or(i64::MAX));
}

pub struct DpState {
    pub node_id: String,
    /// `None` until the first snapshot is applied. Readers `load()` it once per request.
    pub config: ArcSwapOption<CompiledConfig>,
    /// The config came from the disk cache and no control plane has confirmed it since.
    stale: AtomicBool,
    /// A sync stream to a control plane is open.
    connected: AtomicBool,
    /// Shutting down: `/readyz` says not ready so load balancers stop sending traffic here.
    draining: AtomicBool,
}

impl DpState {
    pub fn new(node_id: String) -> DpState {
        DpState {
            node_id,
            config: ArcSwapOption::empty(),
            stale: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// The version being served, if any.
    pub fn applied_version(&self) -> Option<u64> {
        self.config.load().as_ref().map(|c| c.version)
    }

    /// The config being served, to compile the next one against (unchanged parts are reused).
    pub fn current(&self) -> Option<Arc<CompiledConfig>> {
        self.config.load_full()
    }

    /// Swaps in a config received from a control plane; returns the config it replaces, for the caller to drop where freeing
    /// thousands of routes costs nothing (see `sync.rs`).
    #[must_use = "dropping the old config here frees it on this thread"]
    pub fn apply(&self, config: CompiledConfig) -> Option<Arc<CompiledConfig>> {
        applied_metrics(&config);
        let old = self.config.swap(Some(Arc::new(config)));
        self.stale.store(false, Ordering::Release);
        METRICS.config_stale.set(0);
        old
    }

    /// Swaps in a config read from the disk cache at start.
    pub fn apply_cached(&self, config: CompiledConfig) {
        applied_metrics(&config);
        self.config.store(Some(Arc::new(config)));
        self.stale.store(true, Ordering::Release);
        METRICS.config_stale.set(1);
    }

    /// A control plane confirmed the version being served (it sent that same version).
    pub fn confirm(&self) {
        self.stale.store(false, Ordering::Release);
        METRICS.config_stale.set(0);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
        METRICS.sync_connected.set(i64::from(connected));
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}
