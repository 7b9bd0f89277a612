//! The gRPC sync server: one bidirectional stream per data plane. The DP says Hello; the CP sends
//! the current snapshot whole, then each newer one as a delta from the one it sent before (only
//! what changed; whole again when the store was replaced or most of it changed); the DP ACKs or
//! NACKs each by version and nonce.

pub mod registry;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::Stream;
use postern_proto::packing;
use postern_proto::sync::config_sync_server::{ConfigSync, ConfigSyncServer};
use postern_proto::sync::{
    ClusterInfo, ControlPlaneMessage, DataPlaneMessage, Hello, PackedSnapshot,
    Snapshot as WireSnapshot, control_plane_message, data_plane_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

use crate::snapshot::SnapshotReceiver;
pub use registry::{DataPlaneInfo, DataPlaneRegistry};

/// A DP must say Hello within this time after opening a stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest sync message either side accepts (a 10,000-route snapshot is a few MiB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

pub struct SyncService {
    snapshots: SnapshotReceiver,
    registry: Arc<DataPlaneRegistry>,
    sessions: AtomicU64,
    shutdown: CancellationToken,
}

impl SyncService {
    pub fn new(
        snapshots: SnapshotReceiver,
        registry: Arc<DataPlaneRegistry>,
        shutdown: CancellationToken,
    ) -> Self {
        SyncService {
            snapshots,
            registry,
            sessions: AtomicU64::new(0),
            shutdown,
        }
    }

    /// A DP that says `unpacks_snapshots` (every Postern DP since session 21) gets big snapshots
    /// packed by the CP and small ones, such as a one-route delta, as they are
    /// (`postern_proto::packing`); it does not ask for gRPC compression. A DP of an older build
    /// asks for it (`grpc-accept-encoding: zstd`) and gets every message zstd-compressed by
    /// tonic, as before. Routes' JSON bodies repeat each other: generated ones shrank about 60×
    /// (bench/results/2026-11-30-session8.md), real configs less.
    pub fn into_server(self) -> ConfigSyncServer<SyncService> {
        ConfigSyncServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .send_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Zstd)
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<ControlPlaneMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigSync for SyncService {
    type StreamStream = OutStream;

    async fn stream(
        &self,
        request: Request<Streaming<DataPlaneMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a: SocketAddr| a.to_string())
            .unwrap_or_default();
        let inbound = request.into_inner();
        // Room for one snapshot in flight: a slow DP holds back only its own stream, and newer
        // versions coalesce in the watch channel meanwhile.
        let (tx, rx) = mpsc::channel(1);
        let session = Session {
            id: self.sessions.fetch_add(1, Ordering::Relaxed) + 1,
            peer,
            snapshots: self.snapshots.clone(),
            registry: self.registry.clone(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(session.run(inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Session {
    id: u64,
    peer: String,
    snapshots: SnapshotReceiver,
    registry: Arc<DataPlaneRegistry>,
    shutdown: CancellationToken,
}

type Outbox = mpsc::Sender<Result<ControlPlaneMessage, Status>>;

impl Session {
    async fn run(mut self, mut inbound: Streaming<DataPlaneMessage>, tx: Outbox) {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(DataPlaneMessage {
                message: Some(data_plane_message::Message::Hello(h)),
            }))) if !h.node_id.is_empty() => h,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "sync stream failed before hello");
                return;
            }
            _ => {
                let _ = tx
                    .send(Err(Status::invalid_argument(
                        "the first message must be a Hello with a node_id",
                    )))
                    .await;
                return;
            }
        };
        self.registry.connected(self.id, &hello, self.peer.clone());
        tracing::info!(node_id = %hello.node_id, peer = %self.peer, applied = hello.applied_version, "data plane connected");
        let reason = self.serve(&hello, &mut inbound, &tx).await;
        self.registry.disconnected(self.id, &hello.node_id);
        tracing::info!(node_id = %hello.node_id, reason, "data plane disconnected");
    }

    /// Sends snapshots and records ACK/NACKs until the stream ends; returns why it ended.
    async fn serve(
        &mut self,
        hello: &Hello,
        inbound: &mut Streaming<DataPlaneMessage>,
        tx: &Outbox,
    ) -> &'static str {
        let node = hello.node_id.as_str();
        // The snapshot last sent on this stream: the base of the next delta.
        let mut sent: Option<Arc<crate::snapshot::Snapshot>> = None;
        let mut nonce = 0u64;
        // The DP learns how many DPs there are after its first snapshot, then on every change.
        let mut data_planes = self.registry.watch_connected();
        let mut tell_data_planes = true;
        loop {
            let latest = self.snapshots.borrow_and_update().clone();
            if let Some(snap) =
                latest.filter(|s| sent.as_ref().map(|p| p.version) != Some(s.version))
            {
                nonce += 1;
                let wire = wire_snapshot(sent.as_deref(), &snap);
                let nonce = format!("{}-{nonce}", self.id);
                let msg = ControlPlaneMessage {
                    message: Some(
                        snapshot_message(&snap, wire, nonce, hello.unpacks_snapshots).await,
                    ),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return "stream closed";
                }
                self.registry.sent(node, snap.version);
                sent = Some(snap);
            }
            if std::mem::take(&mut tell_data_planes) {
                let n = *data_planes.borrow_and_update();
                let msg = ControlPlaneMessage {
                    message: Some(control_plane_message::Message::Cluster(ClusterInfo {
                        data_planes: u32::try_from(n).unwrap_or(u32::MAX),
                    })),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return "stream closed";
                }
            }
            tokio::select! {
                changed = self.snapshots.changed() => if changed.is_err() { return "shutting down" },
                changed = data_planes.changed() => match changed {
                    Ok(()) => tell_data_planes = true,
                    Err(_) => return "shutting down",
                },
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => self.record(node, m),
                    Ok(None) => return "stream closed by the data plane",
                    Err(_) => return "stream error",
                },
                _ = self.shutdown.cancelled() => return "shutting down",
            }
        }
    }

    fn record(&self, node: &str, msg: DataPlaneMessage) {
        match msg.message {
            Some(data_plane_message::Message::Ack(a)) => {
                tracing::debug!(node_id = node, version = a.version, "ack");
                self.registry.acked(node, a.version, a.nonce);
            }
            Some(data_plane_message::Message::Nack(n)) => {
                tracing::warn!(node_id = node, version = n.version, error = %n.error, "data plane rejected a snapshot");
                self.registry.nacked(node, n.version, n.nonce, n.error);
            }
            Some(data_plane_message::Message::Health(h)) => {
                tracing::debug!(
                    node_id = node,
                    upstreams = h.upstreams.len(),
                    "health report"
                );
                self.registry.health_reported(node, h.upstreams);
            }
            Some(data_plane_message::Message::Hello(_)) | None => {
                tracing::debug!(node_id = node, "ignoring an unexpected sync message");
            }
        }
    }
}

/// The message that carries `wire` (`snap` whole, or a delta to it) with `nonce`: packed for a
/// DP that unpacks snapshots when it is big enough to gain, else as it is.
async fn snapshot_message(
    snap: &Arc<crate::snapshot::Snapshot>,
    mut wire: WireSnapshot,
    nonce: String,
    unpacks: bool,
) -> control_plane_message::Message {
    let packed = match unpacks {
        false => None,
        true if !wire.delta => snap.packed_whole().await,
        // A delta is packed for its stream alone (streams at another base need another), on a
        // blocking thread when it is big; the common one-route delta is not packed at all.
        true if !packing::worth_packing(&wire) => None,
        true => {
            let delta = wire.clone();
            tokio::task::spawn_blocking(move || packing::pack(&delta))
                .await
                .ok()
                .flatten()
        }
    };
    match packed {
        Some(zstd) => {
            control_plane_message::Message::PackedSnapshot(PackedSnapshot { zstd, nonce })
        }
        None => {
            wire.nonce = nonce;
            control_plane_message::Message::Snapshot(wire)
        }
    }
}

/// What to send for `next` after `sent` went out on the same stream: a delta when there is a
/// base of the same store and it is smaller than the whole, else the whole snapshot.
fn wire_snapshot(
    sent: Option<&crate::snapshot::Snapshot>,
    next: &crate::snapshot::Snapshot,
) -> WireSnapshot {
    let whole = || next.wire_whole();
    let Some(base) = sent.filter(|b| b.store_id == next.store_id) else {
        return whole();
    };
    let delta = next.delta_from(base);
    let (changed, removed) = &*delta;
    // Most of the config changed: the whole snapshot says it in fewer bytes.
    if (changed.len() + removed.len()) * 2 > next.resources.len().max(1) {
        return whole();
    }
    WireSnapshot {
        version: next.version,
        resources: changed.clone(),
        store_id: next.store_id.clone(),
        delta: true,
        base_version: base.version,
        removed: removed.clone(),
        ..WireSnapshot::default()
    }
}
