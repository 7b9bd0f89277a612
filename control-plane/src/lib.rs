//! Postern control plane: the Admin API over a config store, the snapshot builder and the gRPC
//! sync server that streams snapshots to data planes.

pub mod store;
