//! The data plane's shared state: the config it serves, swapped atomically per snapshot.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::compile::CompiledConfig;

pub struct DpState {
    pub node_id: String,
    /// `None` until the first snapshot is applied. Readers `load()` it once per request.
    pub config: ArcSwapOption<CompiledConfig>,
}

impl DpState {
    pub fn new(node_id: String) -> DpState {
        DpState {
            node_id,
            config: ArcSwapOption::empty(),
        }
    }

    /// The version being served, if any.
    pub fn applied_version(&self) -> Option<u64> {
        self.config.load().as_ref().map(|c| c.version)
    }

    pub fn apply(&self, config: CompiledConfig) {
        self.config.store(Some(Arc::new(config)));
    }
}
