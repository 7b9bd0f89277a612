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
