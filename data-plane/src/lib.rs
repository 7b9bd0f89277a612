//! Postern data plane: syncs snapshots from the control plane, compiles each into a
//! `CompiledConfig` swapped in atomically, and proxies requests with it.

pub mod balancer;
pub mod cache;
pub mod compile;
pub mod config;
pub mod health;
pub mod memory;
pub mod observability;
pub mod plugins;
pub mod proxy;
pub mod ratelimit;
pub mod router;
pub mod state;
pub mod status;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod workers;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cache::SnapshotCache;
use crate::config::DpConfig;
use crate::observability::access_log::AccessLog;
use crate::proxy::{Proxy, ProxySettings};
use crate::state::DpState;
use crate::sync::SyncClient;

/// Runs a data plane until `shutdown` is cancelled.
pub async fn run(config: DpConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state = Arc::new(DpState::new(config.node_id.clone()));
    let proxy_listeners = workers::bind(config.proxy_listen, config.workers)?;
    let status_listener = TcpListener::bind(config.status_listen)
        .await
        .with_context(|| format!("binding the status listener on {}", config.status_listen))?;
    let proxy_addr = proxy_listeners[0].local_addr()?;
    tracing::info!(node_id = %config.node_id, proxy = %proxy_addr, workers = config.workers, status = %status_listener.local_addr()?, "data plane starting");

    let cache = Arc::new(SnapshotCache::new(&config.cache_dir));
    start_from_cache(&cache, &state);

    let stop_accepting = CancellationToken::new();
    let stop_rest = CancellationToken::new();
    let (cache_tx, cache_rx) = watch::channel(None);
    let cache_task = tokio::spawn(sync::run_cache_writer(
        cache,
        cache_rx,
        sync::CACHE_WRITE_INTERVAL,
        stop_rest.clone(),
    ));

    let sync = SyncClient {
        control_planes: config::split_control_planes(&config.control_plane),
        proxy_address: proxy_addr.to_string(),
        state: state.clone(),
        tls: config.tls.as_ref().map(sync::client_tls).transpose()?,
        cache: Some(cache_tx),
    };
    if let Some(endpoint) = &config.otlp_endpoint {
        observability::otlp::start(endpoint, &config.otlp_service_name, &config.node_id)?;
        tracing::info!(%endpoint, "exporting opentelemetry spans over OTLP/gRPC");
    }
    let access_log = match config.access_log.clone() {
        Some(target) => Some(
            AccessLog::start(target.clone(), config.access_log_fields.clone())
                .await
                .with_context(|| format!("opening the access log {target:?}"))?,
        ),
        None => None,
    };

    // Shutdown in steps: `/readyz` turns 503 at once, traffic is still served for the shutdown
    // delay (load balancers take the DP out meanwhile), then the proxy stops accepting and
    // drains; sync, status and the cache writer stop last.
    tokio::spawn({
        let (state, stop_accepting, delay) =
            (state.clone(), stop_accepting.clone(), config.shutdown_delay);
        async move {
            shutdown.cancelled().await;
            state.set_draining();
            tracing::info!(shutdown_delay = ?delay, "shutting down: /readyz now answers 503");
            tokio::time::sleep(delay).await;
            stop_accepting.cancel();
        }
    });
    let sync_task = tokio::spawn(sync.run(stop_rest.clone()));
    let status_task = tokio::spawn(status::serve(
        status_listener,
        state.clone(),
        stop_rest.clone(),
    ));
    let settings = ProxySettings {
        encoded_slash: config.encoded_slash,
        trusted_proxies: config.trusted_proxies,
        access_log,
        drain_timeout: config.drain_timeout,
    };
    let tls_listener = match config.proxy_listen_tls {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the TLS proxy on {addr}"))?,
        ),
        None => None,
    };
    let tls = tokio_rustls::TlsAcceptor::from(tls::server_config(state.clone())?);
    let proxy = Arc::new(Proxy::new(state, settings));
    let tls_task = tls_listener.map(|listener| {
        tracing::info!(address = ?listener.local_addr().ok(), "TLS proxy listening");
        tokio::spawn(
            proxy
                .clone()
                .serve(listener, Some(tls), stop_accepting.clone()),
        )
    });
    let served = workers::serve(proxy, proxy_listeners, stop_accepting).await;
    if let Some(t) = tls_task {
        let _ = t.await;
    }
    stop_rest.cancel();
    let _ = tokio::join!(sync_task, status_task, cache_task);
    tracing::info!("data plane stopped");
    served
}

/// Serves the cached snapshot, if there is a usable one, until a control plane answers. A missing
/// or damaged cache is logged and skipped: the DP then waits for the control plane as usual.
fn start_from_cache(cache: &SnapshotCache, state: &DpState) {
    match cache.load() {
        Ok(None) => tracing::info!(path = %cache.path().display(), "no snapshot cache yet"),
        Ok(Some(snapshot)) => match compile::compile(&snapshot, None) {
            Ok(config) => {
                tracing::info!(version = snapshot.version, path = %cache.path().display(), "serving the cached snapshot until the control plane answers");
                state.apply_cached(config);
            }
            Err(e) => {
                tracing::error!(path = %cache.path().display(), error = %e, "ignoring the snapshot cache: it does not compile")
            }
        },
        Err(e) => tracing::error!(error = %e, "ignoring the snapshot cache"),
    }
}
