//! Wires the control plane together: store, admin key, snapshot builder, sync server, Admin API
//! and (with `--dev`) an in-process data plane.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::admin_key::{self, KeySource};
use crate::config::{CpConfig, StoreUrl, SyncTls};
use crate::snapshot::{self, SnapshotHub};
use crate::store::{ConfigStore, EtcdStore, PostgresStore, SqliteStore};
use crate::sync::{DataPlaneRegistry, SyncService};

/// How often the sync server pings each DP; a DP that does not answer within the timeout is
/// dropped, so a half-open connection is noticed in well under 30 s.
const SYNC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const SYNC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn open_store(url: &StoreUrl) -> anyhow::Result<Arc<dyn ConfigStore>> {
    Ok(match url {
        StoreUrl::Postgres(url) => Arc::new(
            PostgresStore::connect(url)
                .await
                .context("connecting to the Postgres store")?,
        ),
        StoreUrl::Etcd { endpoints, prefix } => Arc::new(
            EtcdStore::connect(endpoints, prefix)
                .await
                .with_context(|| {
                    format!("connecting to the etcd store at {}", endpoints.join(","))
                })?,
        ),
        StoreUrl::Sqlite(path) => Arc::new(
            SqliteStore::open(path)
                .await
                .with_context(|| format!("opening the SQLite store at {}", path.display()))?,
        ),
    })
}

fn read_pem(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn server_tls(tls: &SyncTls) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let identity = Identity::from_pem(read_pem(&tls.cert)?, read_pem(&tls.key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca {
        // A client CA makes client certificates mandatory: an unknown DP cannot even connect.
        config = config.client_ca_root(Certificate::from_pem(read_pem(ca)?));
    }
    Ok(config)
}

/// Runs the control plane until `shutdown` is cancelled.
pub async fn run(config: CpConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = open_store(&config.store).await?;
    let (mut keys, source) =
        admin_key::load_or_generate(config.admin_key.as_deref(), &config.data_dir)?;
    if let Some(file) = &config.admin_keys_file {
        keys.add_file(file)?;
    }
    match source {
        KeySource::Given => tracing::info!("admin key taken from --admin-key / POSTERN_ADMIN_KEY"),
        KeySource::Stored(path) => {
            tracing::info!(path = %path.display(), "admin key read from the data dir")
        }
        KeySource::Generated(path, key) => {
            // Printed once, on stderr, so it does not end up in JSON log pipelines by accident.
            eprintln!(
                "\n  Generated an admin API key (saved to {}, mode 0600):\n\n    {key}\n\n  Send it as the X-API-KEY header. It is not shown again.\n",
                path.display()
            );
        }
    }

    let hub = SnapshotHub::new();
    let registry = Arc::new(DataPlaneRegistry::default());
    let builder = tokio::spawn(snapshot::run_builder(
        store.clone(),
        hub.clone(),
        shutdown.clone(),
    ));

    let sync_listener = TcpListener::bind(config.sync_listen)
        .await
        .with_context(|| format!("binding the sync listener on {}", config.sync_listen))?;
    let sync_addr = sync_listener.local_addr()?;
    let sync_server =
        SyncService::new(hub.subscribe(), registry.clone(), shutdown.clone()).into_server();
    let mut sync_builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.sync_tls {
        sync_builder = sync_builder
            .tls_config(server_tls(tls)?)
            .context("TLS for the sync listener")?;
    }
    let sync = tokio::spawn(
        sync_builder
            .http2_keepalive_interval(Some(SYNC_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(SYNC_KEEPALIVE_TIMEOUT))
            .tcp_nodelay(true)
            .add_service(sync_server)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(sync_listener),
                shutdown.clone().cancelled_owned(),
            ),
    );
    tracing::info!(
        address = %sync_addr,
        store = store.backend(),
        tls = config.sync_tls.is_some(),
        mutual_tls = config.sync_tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "sync server listening"
    );

    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the Admin API on {}", config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    let admin_tls = match &config.admin_tls {
        Some((cert, key)) => Some(admin::listener::tls_config(cert, key)?),
        None => None,
    };
    if !admin_addr.ip().is_loopback() && admin_tls.is_none() {
        tracing::warn!(address = %admin_addr, "THE ADMIN API LISTENS BEYOND LOOPBACK WITHOUT TLS: keys travel in clear text. Use --admin-tls-cert/--admin-tls-key, or keep it on loopback or a private network, and set --admin-allow");
    }
    let app = admin::app(AdminState {
        store: store.clone(),
        keys: Arc::new(keys),
        registry,
        hub,
    });
    let admin = tokio::spawn(admin::listener::serve(
        admin_listener,
        app,
        admin_tls.clone(),
        Arc::new(config.admin_allow.clone()),
        shutdown.clone(),
    ));
    tracing::info!(address = %admin_addr, tls = admin_tls.is_some(), allow = config.admin_allow.len(), "Admin API listening");

    let dev_dp = if config.dev {
        // With TLS, the in-process DP connects like any other: the CP's certificate doubles as
        // its client identity, verified against --tls-ca.
        let dp_tls = match &config.sync_tls {
            None => None,
            Some(t) => Some(postern_data_plane::config::ClientTls {
                ca: t
                    .client_ca
                    .clone()
                    .context("--dev with TLS needs --tls-ca")?,
                cert: Some(t.cert.clone()),
                key: Some(t.key.clone()),
                server_name: Some(sync_addr.ip().to_string()),
            }),
        };
        let scheme = if dp_tls.is_some() { "https" } else { "http" };
        let dp = postern_data_plane::config::DpConfig {
            control_plane: format!("{scheme}://{sync_addr}"),
            tls: dp_tls,
            proxy_listen: config.proxy_listen,
            status_listen: config.status_listen,
            cache_dir: config.data_dir.join("dp-cache"),
            ..postern_data_plane::config::DpConfig::default()
        };
        // A DP that cannot start (its port taken) must not leave a CP that looks healthy and
        // serves nothing: stop the whole process with the DP's error.
        let stop = shutdown.clone();
        Some(tokio::spawn(async move {
            let res = postern_data_plane::run(dp, stop.clone()).await;
            if let Err(e) = &res {
                tracing::error!(
                    error = format!("{e:#}"),
                    "the in-process data plane failed; stopping"
                );
                stop.cancel();
            }
            res
        }))
    } else {
        None
    };

    let (sync_res, admin_res) = tokio::join!(sync, admin);
    sync_res?.context("sync server")?;
    admin_res.context("Admin API")?;
    let _ = builder.await;
    if let Some(dp) = dev_dp {
        dp.await??;
    }
    Ok(())
}
