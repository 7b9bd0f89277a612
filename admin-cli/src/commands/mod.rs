//! One module per group of subcommands.

pub mod config;
pub mod diff;
pub mod import;
pub mod status;
