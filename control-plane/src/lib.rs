//! Postern control plane: the Admin API over a config store, the snapshot builder and the gRPC
//! sync server that streams snapshots to data planes.

pub mod admin;
pub mod admin_key;
pub mod config;
pub mod metrics;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod sync;

/// A poisoned lock only means a panic elsewhere mid-update of plain data; keep going.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
