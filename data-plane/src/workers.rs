//! Thread per core: `--workers N` proxy threads, each running its own single-threaded tokio
//! runtime with its own accept loop on its own listening socket (`SO_REUSEPORT`, so the kernel
//! spreads new connections over them). A client connection, its requests and the upstream
//! connections it owns (`proxy::owned_conns`) then stay on one thread: no work stealing, no
//! cross-thread wake-ups per request. Sync, status, health checks and the TLS listener stay on
//! the process's main runtime.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::proxy::Proxy;

/// Pending connections the kernel queues per listening socket.
const BACKLOG: u32 = 1024;

/// `n` listening sockets on `addr` (port 0: the port the first one got). One worker: a plain
/// socket, as before; several: each with `SO_REUSEPORT`.
pub fn bind(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        socket.set_reuseaddr(true)?;
        if n > 1 {
            socket.set_reuseport(true)?;
        }
        socket
            .bind(addr)
            .with_context(|| format!("binding the proxy on {addr}"))?;
        let listener = socket.listen(BACKLOG)?;
        addr = listener.local_addr()?;
        // Registered with whichever runtime accepts on it (`TcpListener::from_std`).
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// Serves `listeners`, one thread and runtime each, until `stop` (then each drains as
/// `Proxy::serve` does). Resolves when every worker has finished.
pub async fn serve(
    proxy: Arc<Proxy>,
    listeners: Vec<std::net::TcpListener>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut threads = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let (proxy, stop) = (proxy.clone(), stop.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a proxy worker's runtime")?;
        let thread = std::thread::Builder::new()
            .name(format!("proxy-worker-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => proxy.serve(listener, None, stop).await,
                        Err(e) => tracing::error!(error = %e, "proxy worker cannot listen"),
                    }
                })
            })
            .context("starting a proxy worker thread")?;
        threads.push(thread);
    }
    // Joining blocks: off the async threads.
    tokio::task::spawn_blocking(move || {
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a proxy worker panicked");
            }
        }
    })
    .await
    .context("waiting for the proxy workers")
}
