//! `limit-conn`: at most `conn` requests in flight per key, APISIX's shape. Up to `burst` more
//! are delayed before they go on; beyond that, rejected. Counted in each data plane's memory.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use super::limits::{KeyType, LimitKey, Policy, check_rejected_code, default_rejected_code};
use crate::model::error::{Result, ValidationError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConnConfig {
    /// Concurrent requests admitted without delay.
    pub conn: u64,
    /// Concurrent requests above `conn` that are delayed rather than rejected.
    pub burst: u64,
    /// Seconds a request above `conn` is delayed (per multiple of `conn` in flight).
    pub default_conn_delay: f64,
    /// Delay excess requests by exactly `default_conn_delay` [default: false].
    #[serde(default)]
    pub only_use_default_delay: bool,
    #[serde(default)]
    pub key_type: KeyType,
    pub key: String,
    #[serde(default = "default_rejected_code")]
    pub rejected_code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_msg: Option<String>,
    /// Only `local`: in-flight requests are counted in each data plane.
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub allow_degradation: bool,
}

impl LimitConnConfig {
    pub fn limit_key(&self) -> Result<LimitKey> {
        LimitKey::parse(self.key_type, &self.key)
    }
}

impl PluginConfig for LimitConnConfig {
    fn validate(&self) -> Result<()> {
        if self.conn == 0 {
            return Err(ValidationError::new("conn", "must be at least 1"));
        }
        if !(self.default_conn_delay.is_finite() && self.default_conn_delay > 0.0) {
            return Err(ValidationError::new(
                "default_conn_delay",
                "must be greater than 0",
            ));
        }
        if self.policy != Policy::Local {
            return Err(ValidationError::new(
                "policy",
                "limit-conn counts in-flight requests per data plane: only 'local' is supported",
            ));
        }
        check_rejected_code("rejected_code", self.rejected_code)?;
        self.limit_key()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::plugins::parse;

    #[test]
    fn parses_and_rejects() {
        parse::<LimitConnConfig>(
            &json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}),
        )
        .unwrap();
        for (config, field) in [
            (
                json!({"conn": 0, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}),
                "conn",
            ),
            (
                json!({"conn": 1, "burst": 0, "default_conn_delay": 0, "key": "remote_addr"}),
                "default_conn_delay",
            ),
            (
                json!({"conn": 1, "burst": 0, "default_conn_delay": 1, "key": "remote_addr", "policy": "redis"}),
                "policy",
            ),
        ] {
            let e = parse::<LimitConnConfig>(&config).unwrap_err();
            assert_eq!(e.field, field, "{config}: {e}");
        }
    }
}
