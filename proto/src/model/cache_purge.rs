//! Cache purges: drop a route's `proxy-cache` entries, one key or all of them, on every data
//! plane. Written by `DELETE /admin/routes/<id>/cache`; they reach data planes with the next
//! snapshot like any change (so a purge is as fast as a config change, survives restarts and
//! needs no channel of its own). Each data plane applies a purge once, when it first sees it;
//! after `expires_at` data planes ignore it (entries stored since were fetched after it) and the
//! control plane deletes it at the next purge.

use serde::{Deserialize, Serialize};

use super::error::{Result, ValidationError};
use super::validate::check_id;

/// How long a purge is kept by default: longer than a data plane is expected to stay away.
pub const PURGE_LIFETIME_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachePurgeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The route whose cache is purged (it may be gone since: a purge references nothing).
    pub route_id: String,
    /// The resolved cache key to drop (every variant of it); absent = the whole route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Unix seconds after which data planes ignore it.
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
}

const MAX_KEY_LEN: usize = 8 * 1024;

impl CachePurgeConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.id {
            check_id(id).map_err(|e| e.under("id"))?;
        }
        check_id(&self.route_id).map_err(|e| e.under("route_id"))?;
        if let Some(k) = &self.key
            && (k.is_empty() || k.len() > MAX_KEY_LEN)
        {
            return Err(ValidationError::new(
                "key",
                format!("must be 1-{MAX_KEY_LEN} bytes"),
            ));
        }
        Ok(())
    }
}
