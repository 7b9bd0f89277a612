//! The sync client: keeps one stream open to the control plane, compiles every snapshot it
//! receives, swaps it in and answers ACK or NACK. Reconnects with capped, jittered backoff and
//! keeps serving the last config while the control plane is away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_proto::sync::config_sync_client::ConfigSyncClient;
use postern_proto::sync::{
    Ack, DataPlaneMessage, Hello, Nack, Snapshot, control_plane_message, data_plane_message,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::config::ClientTls;

use crate::cache::SnapshotCache;
use crate::compile::compile;
use crate::state::DpState;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the sync stream: a half-open connection is noticed within
/// interval + timeout (20 s) and the DP reconnects.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A delta of at most this many resources, to a config of at most this many routes, is
/// compiled on the sync task's own thread (`SyncClient::apply`); anything bigger on a blocking
/// thread, off the async threads (which also serve the TLS listener and the status endpoint).
const INLINE_MAX_CHANGES: usize = 4;
const INLINE_MAX_ROUTES: usize = 1_000;
/// Largest snapshot accepted.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// How often the DP looks whether its upstreams' node health changed (and reports it if so).
const HEALTH_REPORT_INTERVAL: Duration = Duration::from_secs(1);

pub struct SyncClient {
    /// Tried in turn: a DP whose control plane fails or shuts down moves to the next.
    pub control_planes: Vec<String>,
    pub proxy_address: String,
    pub state: Arc<DpState>,
    /// TLS to the control plane, for an `https://` URL.
    pub tls: Option<ClientTlsConfig>,
    /// Where each applied snapshot is written (latest wins), if anywhere.
    pub cache: Option<watch::Sender<Option<Arc<Snapshot>>>>,
}

impl SyncClient {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        let n = self.control_planes.len().max(1);
        // Which control plane is tried next, and how many failed in a row since the last
        // healthy stream.
        let (mut next, mut failed_in_a_row) = (0usize, 0usize);
        loop {
            let cp = &self.control_planes[next % n];
            let started = Instant::now();
            let result = tokio::select! {
                r = self.session(cp) => r,
                _ = shutdown.cancelled() => return,
            };
            match result {
                Ok(()) => tracing::warn!(%cp, "control plane closed the sync stream"),
                Err(e) => {
                    tracing::warn!(%cp, error = format!("{e:#}"), "sync with the control plane failed")
                }
            }
            next = (next + 1) % n;
            // A stream that lived a while was healthy: start the backoff over.
            if started.elapsed() > MAX_BACKOFF {
                backoff = MIN_BACKOFF;
                failed_in_a_row = 0;
            }
            failed_in_a_row += 1;
            // Another control plane not tried yet since the last healthy stream: go at once.
            // Once all failed, back off with full jitter, so a fleet of DPs does not reconnect
            // in lockstep after a CP restart.
            let delay = if failed_in_a_row < n {
                MIN_BACKOFF.mul_f64(fastrand::f64())
            } else {
                let d = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                d
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn session(&self, control_plane: &str) -> anyhow::Result<()> {
        let mut endpoint = Endpoint::from_shared(control_plane.to_string())?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect()
            .await?;
        // No gRPC compression either way: the DP says `unpacks_snapshots`, and the CP packs the
        // snapshots big enough to gain (`postern_proto::packing`). A CP of an older build then
        // sends every snapshot uncompressed, which works, in more bytes.
        let mut client = ConfigSyncClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(4);
        tx.send(message(data_plane_message::Message::Hello(Hello {
            node_id: self.state.node_id.clone(),
            hostname: hostname(),
            build_version: env!("CARGO_PKG_VERSION").to_string(),
            applied_version: self.state.applied_version().unwrap_or(0),
            proxy_address: self.proxy_address.clone(),
            unpacks_snapshots: true,
        })))
        .await?;
        let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        tracing::info!(cp = %control_plane, "connected to the control plane");
        self.state.set_connected(true);
        let result = async {
            // Node health goes to the CP when it changed, looked at once a second.
            let mut health_tick = tokio::time::interval(HEALTH_REPORT_INTERVAL);
            health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The CP starts each stream knowing no health: nothing to send until a check says
            // something.
            let mut last_report = postern_proto::sync::HealthReport::default();
            // The whole snapshot this stream stands at: the base of the next delta.
            let mut received: Option<Arc<Snapshot>> = None;
            loop {
                tokio::select! {
                    msg = inbound.message() => {
                        let Some(msg) = msg? else { break };
                        let snapshot = match msg.message {
                            Some(control_plane_message::Message::Snapshot(snapshot)) => Some(snapshot),
                            // Packed snapshots are the big ones: unpacked off the async threads.
                            Some(control_plane_message::Message::PackedSnapshot(packed)) => Some(
                                tokio::task::spawn_blocking(move || {
                                    postern_proto::packing::unpack(packed, MAX_MESSAGE_BYTES)
                                })
                                .await??,
                            ),
                            Some(control_plane_message::Message::Cluster(c)) => {
                                crate::ratelimit::set_live_data_planes(c.data_planes);
                                None
                            }
                            None => None,
                        };
                        if let Some(snapshot) = snapshot {
                            // A delta that does not follow on is a broken stream: a new one
                            // starts with a whole snapshot.
                            let unchanged = snapshot.delta
                                && snapshot.resources.is_empty()
                                && snapshot.removed.is_empty();
                            let changes = snapshot.resources.len() + snapshot.removed.len();
                            let small = snapshot.delta && changes <= INLINE_MAX_CHANGES;
                            let whole = Arc::new(assemble(received.as_deref(), snapshot)?);
                            let base = received.replace(whole.clone()).map(|b| b.version);
                            let relabelled = base
                                .filter(|_| unchanged)
                                .and_then(|base| self.relabel(base, &whole));
                            let answer = match relabelled {
                                Some(answer) => answer,
                                None => self.apply(whole, small).await,
                            };
                            tx.send(message(answer)).await?;
                        }
                    }
                    _ = health_tick.tick() => {
                        let Some(config) = self.state.current() else { continue };
                        let report = config.health_report();
                        if report != last_report {
                            last_report = report.clone();
                            tx.send(message(data_plane_message::Message::Health(report))).await?;
                        }
                    }
                }
            }
            Ok::<(), anyhow::Error>(())
        }
        .await;
        self.state.set_connected(false);
        result
    }

    /// A snapshot with exactly the resources of version `base`: when `base` is what is served,
    /// the new version is served by the same compiled config, with nothing compiled. `None`
    /// when `base` is not served (it was refused): the snapshot must then be compiled.
    fn relabel(&self, base: u64, snapshot: &Arc<Snapshot>) -> Option<data_plane_message::Message> {
        let serving = self.state.current()?;
        if serving.version != base || serving.store_id != snapshot.store_id {
            return None;
        }
        let version = snapshot.version;
        // The old config is this one under another version: dropping it frees nothing.
        drop(self.state.apply(serving.relabel(version)));
        if let Some(cache) = &self.cache {
            cache.send_replace(Some(snapshot.clone()));
        }
        tracing::info!(
            version,
            base,
            "config applied: nothing changed, nothing compiled"
        );
        Some(data_plane_message::Message::Ack(Ack {
            version,
            nonce: snapshot.nonce.clone(),
        }))
    }

    /// Compiles and swaps in one snapshot; the answer to send back. `small`: it came as a delta
    /// of a few resources.
    async fn apply(&self, snapshot: Arc<Snapshot>, small: bool) -> data_plane_message::Message {
        let (version, nonce) = (snapshot.version, snapshot.nonce.clone());
        let serving = self.state.current();
        if serving.is_some_and(|c| c.version == version && c.store_id == snapshot.store_id) {
            // Already serving it (after a reconnect, or from the disk cache): nothing to rebuild.
            self.state.confirm();
            return data_plane_message::Message::Ack(Ack { version, nonce });
        }
        let started = Instant::now();
        let previous = self.state.current();
        let input = snapshot.clone();
        let state = self.state.clone();
        // Compiling thousands of routes is CPU work: keep it off the async threads (the proxy
        // workers have their own, but these serve the TLS listener and the status endpoint).
        // The same thread swaps the result in and answers, then frees the old config
        // (thousands of routes) and returns the garbage to the OS (`mi_collect`, a few ms at
        // 10,000 routes; after a small change at most once a second,
        // `memory::release_after_change`), which the ACK need not wait for. Each collect's
        // unmapping interrupts every thread of the process, proxy workers too: under churn a
        // cost paid per Admin API write. A small change to a small config compiles in well under
        // a millisecond: on this thread, sparing the hop's two thread switches; there the ACK
        // does wait for the free of the old config (at most 1,000 routes) and for the collect
        // (at most once a second after small changes).
        let inline = small
            && previous
                .as_ref()
                .is_some_and(|p| p.routes.len() <= INLINE_MAX_ROUTES);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work = move || {
            // A failed compile may leave as much garbage as a whole one: counted as big.
            let (answer, old, rebuilt) = match compile(&input, previous.as_deref()) {
                // The sync task stopped waiting (the DP is shutting down): swap in nothing that
                // will not be acknowledged or cached, as when the swap was the sync task's.
                Ok(_) if tx.is_closed() => (Ok(0), None, usize::MAX),
                Ok(config) => {
                    let (routes, rebuilt) = (config.routes.len(), config.rebuilt_routes);
                    (Ok(routes), state.apply(config), rebuilt)
                }
                Err(e) => (Err(e), None, usize::MAX),
            };
            let _ = tx.send(answer);
            // `previous` is the served config too: both go before the collect, or it frees
            // nothing.
            drop((old, previous));
            crate::memory::release_after_change(rebuilt);
        };
        if inline {
            // A panic drops the sender and is answered as the blocking thread's would be.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        } else {
            tokio::task::spawn_blocking(work);
        }
        match rx.await {
            Ok(Ok(routes)) => {
                if let Some(cache) = &self.cache {
                    cache.send_replace(Some(snapshot));
                }
                tracing::info!(
                    version,
                    routes,
                    compile_ms = started.elapsed().as_secs_f64() * 1e3,
                    "config applied"
                );
                data_plane_message::Message::Ack(Ack { version, nonce })
            }
            Ok(Err(e)) => {
                crate::observability::metrics::METRICS.config_rejected.inc();
                tracing::error!(version, error = %e, "rejected a snapshot; still serving the previous config");
                data_plane_message::Message::Nack(Nack {
                    version,
                    nonce,
                    error: e.to_string(),
                })
            }
            Err(_) => {
                // The compile panicked (its message is in the log) and dropped the sender.
                crate::observability::metrics::METRICS.config_rejected.inc();
                data_plane_message::Message::Nack(Nack {
                    version,
                    nonce,
                    error: "compiler crashed (see the data plane's log)".to_string(),
                })
            }
        }
    }
}

/// The whole snapshot a message stands for: itself, or a delta applied to `received`, the whole
/// snapshot the stream stood at before.
fn assemble(received: Option<&Snapshot>, msg: Snapshot) -> anyhow::Result<Snapshot> {
    if !msg.delta {
        return Ok(msg);
    }
    let Some(base) =
        received.filter(|b| b.version == msg.base_version && b.store_id == msg.store_id)
    else {
        anyhow::bail!(
            "the control plane sent a delta on version {} but this stream is at {:?}",
            msg.base_version,
            received.map(|b| b.version)
        );
    };
    Ok(Snapshot {
        version: msg.version,
        nonce: msg.nonce,
        resources: postern_proto::delta::apply(&base.resources, msg.resources, &msg.removed),
        store_id: msg.store_id,
        ..Snapshot::default()
    })
}

/// Least time between two writes of the disk cache. Under config churn (many changes a
/// second) each write would be outdated within milliseconds, and a write (encode, two fsyncs)
/// costs the DP more CPU than applying a one-route change; so the cache may lag the served
/// config by up to this much, and is brought up to date when the DP stops.
pub const CACHE_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Writes the snapshots sent on `rx` to the disk cache off the sync path (an fsync must not
/// delay the ACK): the newest only, one write at a time, at most one per `min_interval`.
/// When `stop` is cancelled, writes the newest if it is not on disk yet, and returns.
pub async fn run_cache_writer(
    cache: Arc<SnapshotCache>,
    mut rx: watch::Receiver<Option<Arc<Snapshot>>>,
    min_interval: Duration,
    stop: CancellationToken,
) {
    let mut written: Option<u64> = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            changed = rx.changed() => if changed.is_err() { break },
        }
        let started = tokio::time::Instant::now();
        let newest = rx.borrow_and_update().clone();
        if let Some(snapshot) = newest {
            written = write_cache(&cache, snapshot).await.or(written);
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(started + min_interval) => {}
        }
    }
    let newest = rx.borrow().clone();
    if let Some(snapshot) = newest.filter(|s| Some(s.version) != written) {
        write_cache(&cache, snapshot).await;
    }
}

/// Writes one snapshot on a blocking thread; its version once it is on disk.
async fn write_cache(cache: &Arc<SnapshotCache>, snapshot: Arc<Snapshot>) -> Option<u64> {
    let cache = cache.clone();
    let version = snapshot.version;
    let stored = tokio::task::spawn_blocking(move || {
        let stored = cache.store(&snapshot);
        // Encoding a big snapshot takes as much scratch memory as the snapshot.
        crate::memory::release_free_memory();
        stored
    });
    match stored.await {
        Ok(Ok(())) => {
            tracing::debug!(version, "snapshot cached");
            Some(version)
        }
        Ok(Err(e)) => {
            tracing::warn!(version, error = %e, "cannot write the snapshot cache");
            None
        }
        Err(e) => {
            tracing::warn!(version, error = %e, "snapshot cache writer failed");
            None
        }
    }
}

/// Reads the PEM files of `tls` into tonic's client TLS config.
pub fn client_tls(tls: &ClientTls) -> anyhow::Result<ClientTlsConfig> {
    use anyhow::Context;
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

fn message(m: data_plane_message::Message) -> DataPlaneMessage {
    DataPlaneMessage { message: Some(m) }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: u64) -> Option<Arc<Snapshot>> {
        Some(Arc::new(Snapshot {
            version: v,
            store_id: "s1".into(),
            ..Snapshot::default()
        }))
    }

    fn on_disk(cache: &SnapshotCache) -> Option<u64> {
        cache.load().unwrap().map(|s| s.version)
    }

    #[tokio::test]
    async fn the_cache_is_written_at_most_once_an_interval_and_flushed_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(SnapshotCache::new(dir.path()));
        let (tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let writer = tokio::spawn(run_cache_writer(
            cache.clone(),
            rx,
            Duration::from_secs(30),
            stop.clone(),
        ));
        // The first snapshot is written at once.
        tx.send_replace(version(1));
        let started = Instant::now();
        while on_disk(&cache) != Some(1) {
            assert!(started.elapsed() < Duration::from_secs(10), "never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Two more within the interval: not written yet...
        tx.send_replace(version(2));
        tx.send_replace(version(3));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(on_disk(&cache), Some(1));
        // ...but the newest is when the DP stops.
        stop.cancel();
        writer.await.unwrap();
        assert_eq!(on_disk(&cache), Some(3));
    }
}
