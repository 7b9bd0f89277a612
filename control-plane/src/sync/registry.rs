//! The data planes this control plane has seen: who they are, what they applied, their last
//! ACK/NACK. Shown by `GET /admin/data-planes`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postern_proto::sync::{Hello, UpstreamHealth};
use serde::Serialize;

/// Disconnected data planes are forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize)]
pub struct DataPlaneInfo {
    pub node_id: String,
    pub hostname: String,
    /// The DP's address as this CP sees the sync connection.
    pub address: String,
    pub proxy_address: String,
    pub build_version: String,
    pub connected: bool,
    /// Unix seconds.
    pub connected_at: i64,
    pub last_seen: i64,
    /// The version the DP serves now (from its last ACK, or its Hello).
    pub applied_version: u64,
    /// The latest version sent to it.
    pub sent_version: u64,
    pub last_ack: Option<AckInfo>,
    pub last_nack: Option<NackInfo>,
    /// Which sync stream owns this entry: a DP that reconnects before its old stream is noticed
    /// dead must not be marked disconnected when the old one ends.
    #[serde(skip)]
    session: u64,
    /// The DP's last health report: node health of its upstreams with checks.
    #[serde(skip)]
    health: Vec<UpstreamHealth>,
}

/// One data plane's view of one upstream's nodes: `(address, healthy)`.
#[derive(Debug, Clone, Serialize)]
pub struct DataPlaneHealth {
    pub node_id: String,
    pub nodes: Vec<(String, bool)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AckInfo {
    pub version: u64,
    pub nonce: String,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NackInfo {
    pub version: u64,
    pub nonce: String,
    pub error: String,
    pub at: i64,
}

/// Connected and recently seen data planes, keyed by node id. Touched once per sync message,
/// never on the proxy path, so a plain mutex is enough.
#[derive(Debug)]
pub struct DataPlaneRegistry {
    nodes: Mutex<HashMap<String, DataPlaneInfo>>,
    /// How many are connected, for the sessions to tell their DPs.
    connected: tokio::sync::watch::Sender<usize>,
}

impl Default for DataPlaneRegistry {
    fn default() -> Self {
        DataPlaneRegistry {
            nodes: Mutex::default(),
            connected: tokio::sync::watch::Sender::new(0),
        }
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl DataPlaneRegistry {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, DataPlaneInfo>) -> R) -> R {
        // A poisoned lock only means another sync task panicked mid-update; the map is still usable.
        let mut guard = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut guard);
        let n = guard.values().filter(|n| n.connected).count();
        self.connected
            .send_if_modified(|c| std::mem::replace(c, n) != n);
        out
    }

    /// The number of connected data planes, now and as it changes.
    pub fn watch_connected(&self) -> tokio::sync::watch::Receiver<usize> {
        self.connected.subscribe()
    }

    pub fn connected(&self, session: u64, hello: &Hello, address: String) {
        let t = now();
        self.with(|nodes| {
            nodes.retain(|_, n| n.connected || t - n.last_seen < FORGET_AFTER.as_secs() as i64);
            let prior = nodes.remove(&hello.node_id);
            nodes.insert(
                hello.node_id.clone(),
                DataPlaneInfo {
                    node_id: hello.node_id.clone(),
                    hostname: hello.hostname.clone(),
                    address,
                    proxy_address: hello.proxy_address.clone(),
                    build_version: hello.build_version.clone(),
                    connected: true,
                    connected_at: t,
                    last_seen: t,
                    applied_version: hello.applied_version,
                    sent_version: 0,
                    last_ack: prior.as_ref().and_then(|p| p.last_ack.clone()),
                    last_nack: prior.and_then(|p| p.last_nack),
                    session,
                    health: Vec::new(),
                },
            );
        });
    }

    fn update(&self, node_id: &str, f: impl FnOnce(&mut DataPlaneInfo)) {
        self.with(|nodes| {
            if let Some(n) = nodes.get_mut(node_id) {
                n.last_seen = now();
                f(n);
            }
        });
    }

    pub fn sent(&self, node_id: &str, version: u64) {
        self.update(node_id, |n| n.sent_version = version);
    }

    pub fn acked(&self, node_id: &str, version: u64, nonce: String) {
        self.update(node_id, |n| {
            n.applied_version = version;
            n.last_ack = Some(AckInfo {
                version,
                nonce,
                at: n.last_seen,
            });
        });
    }

    pub fn nacked(&self, node_id: &str, version: u64, nonce: String, error: String) {
        self.update(node_id, |n| {
            n.last_nack = Some(NackInfo {
                version,
                nonce,
                error,
                at: n.last_seen,
            });
        });
    }

    pub fn health_reported(&self, node_id: &str, upstreams: Vec<UpstreamHealth>) {
        self.update(node_id, |n| n.health = upstreams);
    }

    /// What each connected data plane last reported of the upstream `owner`/`id` (DPs that
    /// have no checks for it, or have not applied it yet, report nothing), by node id.
    pub fn upstream_health(&self, owner: &str, id: &str) -> Vec<DataPlaneHealth> {
        let mut out: Vec<DataPlaneHealth> = self.with(|nodes| {
            nodes
                .values()
                .filter(|n| n.connected)
                .filter_map(|n| {
                    let u = n.health.iter().find(|u| u.owner == owner && u.id == id)?;
                    Some(DataPlaneHealth {
                        node_id: n.node_id.clone(),
                        nodes: u
                            .nodes
                            .iter()
                            .map(|h| (h.address.clone(), h.healthy))
                            .collect(),
                    })
                })
                .collect()
        });
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    pub fn connected_count(&self) -> usize {
        self.with(|nodes| nodes.values().filter(|n| n.connected).count())
    }

    pub fn disconnected(&self, session: u64, node_id: &str) {
        self.update(node_id, |n| {
            if n.session == session {
                n.connected = false;
                n.health.clear();
            }
        });
    }

    /// Every known data plane, connected first, then by node id.
    pub fn list(&self) -> Vec<DataPlaneInfo> {
        let mut all: Vec<_> = self.with(|nodes| nodes.values().cloned().collect());
        all.sort_by(|a, b| {
            b.connected
                .cmp(&a.connected)
                .then(a.node_id.cmp(&b.node_id))
        });
        all
    }
}
