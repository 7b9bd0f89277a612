//! What the data plane tells operators: Prometheus metrics and the access log. Both are fed at
//! the end of each response by [`MeteredBody`], which sees the status, the bytes sent and the
//! full duration.

pub mod access_log;
mod metered_body;
pub mod metrics;
pub mod otlp;

pub use metered_body::MeteredBody;
