//! Postern's contract crate: the config-sync gRPC service (generated from `proto/`), the config
//! model (serde types for every resource and plugin config) and its validation.
//!
//! The control plane validates Admin API bodies with this crate and the data plane validates
//! snapshots with the same code, so a config the CP accepts is a config the DP can compile.

pub mod delta;
pub mod model;
pub mod packing;

/// Generated gRPC types and service stubs for `postern.sync.v1`.
pub mod sync {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("postern.sync.v1");
}
