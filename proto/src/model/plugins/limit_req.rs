//! `limit-req`: APISIX's leaky bucket. Requests leave at `rate` per second; up to `burst` more
//! wait their turn (delayed, or admitted at once with `nodelay`); anything beyond is rejected.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use super::limits::{
    KeyType, LimitKey, Policy, RedisSettings, apisix_redis, check_rejected_code,
    default_redis_port, default_redis_timeout, default_rejected_code,
};
use crate::model::error::{Result, ValidationError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitReqConfig {
    /// Requests per second.
    pub rate: f64,
    /// Requests above `rate` that may wait (or pass at once with `nodelay`).
    pub burst: f64,
    #[serde(default)]
    pub key_type: KeyType,
    pub key: String,
    /// Admit requests within `burst` at once instead of delaying them to the rate.
    #[serde(default)]
    pub nodelay: bool,
    #[serde(default = "default_rejected_code")]
    pub rejected_code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_msg: Option<String>,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_host: Option<String>,
    #[serde(default = "default_redis_port")]
    pub redis_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_password: Option<String>,
    #[serde(default)]
    pub redis_database: u32,
    #[serde(default = "default_redis_timeout")]
    pub redis_timeout: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis_cluster_nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_cluster_name: Option<String>,
    #[serde(default)]
    pub allow_degradation: bool,
    /// Postern extension: `open`, `closed` or `local` while Redis fails (see
    /// [`super::limits::Degrade`]); overrides the boolean above when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degrade: Option<super::limits::Degrade>,
}

impl LimitReqConfig {
    pub fn limit_key(&self) -> Result<LimitKey> {
        LimitKey::parse(self.key_type, &self.key)
    }

    pub fn redis(&self) -> Result<Option<RedisSettings>> {
        apisix_redis(
            self.policy,
            self.redis_host.as_deref(),
            self.redis_port,
            self.redis_username.as_deref(),
            self.redis_password.as_deref(),
            self.redis_database,
            self.redis_timeout,
            &self.redis_cluster_nodes,
        )
    }
}

impl PluginConfig for LimitReqConfig {
    fn validate(&self) -> Result<()> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(ValidationError::new("rate", "must be greater than 0"));
        }
        if !(self.burst.is_finite() && self.burst >= 0.0) {
            return Err(ValidationError::new("burst", "must be 0 or more"));
        }
        check_rejected_code("rejected_code", self.rejected_code)?;
        self.limit_key()?;
        self.redis()?;
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
        let c: LimitReqConfig =
            parse(&json!({"rate": 1, "burst": 2, "key": "remote_addr", "rejected_code": 429}))
                .unwrap();
        assert!(!c.nodelay);
        for (config, field) in [
            (json!({"rate": 0, "burst": 2, "key": "remote_addr"}), "rate"),
            (
                json!({"rate": 1, "burst": -1, "key": "remote_addr"}),
                "burst",
            ),
            (json!({"rate": 1, "burst": 1, "key": "x"}), "key"),
            (json!({"rate": 1, "burst": 1}), ""),
        ] {
            let e = parse::<LimitReqConfig>(&config).unwrap_err();
            assert!(e.field.starts_with(field), "{config}: {e}");
        }
    }
}
