//! Postern data plane: syncs snapshots from the control plane, compiles each into a
//! `CompiledConfig` swapped in atomically, and proxies requests with it.

pub mod balancer;
pub mod router;
