//! One module per group of subcommands.

pub mod config;
pub mod diff;
pub mod explain;
pub mod import;
pub mod status;
