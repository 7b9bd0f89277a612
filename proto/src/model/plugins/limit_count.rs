//! `limit-count`: at most `count` requests per `time_window` seconds per key, APISIX's shape, plus
//! `algorithm` to pick how the window is counted. With `policy: redis` every data plane shares the
//! counters, so the limit holds however many data planes there are.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use super::limits::{
    Algorithm, KeyType, LimitKey, Policy, RedisSettings, apisix_redis, check_rejected_code,
    default_key, default_redis_port, default_redis_timeout, default_rejected_code, yes,
};
use crate::model::error::{Result, ValidationError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitCountConfig {
    /// Requests admitted per window (per key).
    pub count: u64,
    /// The window, in seconds.
    pub time_window: u64,
    /// How `key` is read [default: var].
    #[serde(default)]
    pub key_type: KeyType,
    /// What identifies a caller [default: remote_addr].
    #[serde(default = "default_key")]
    pub key: String,
    /// Status of a rejected request [default: 503, as APISIX].
    #[serde(default = "default_rejected_code")]
    pub rejected_code: u16,
    /// `error_msg` of a rejected request's body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_msg: Option<String>,
    /// Where counters live [default: local].
    #[serde(default)]
    pub policy: Policy,
    /// How the window is counted [default: fixed_window].
    #[serde(default)]
    pub algorithm: Algorithm,
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
    /// Longest a decision waits for Redis, in milliseconds [default: 1000].
    #[serde(default = "default_redis_timeout")]
    pub redis_timeout: u64,
    /// `host:port` of Redis Cluster nodes, for `policy: redis-cluster`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis_cluster_nodes: Vec<String>,
    /// A label for the cluster (APISIX requires it; Postern only accepts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_cluster_name: Option<String>,
    /// Send `X-RateLimit-Limit`, `-Remaining` and `-Reset` [default: true].
    #[serde(default = "yes")]
    pub show_limit_quota_header: bool,
    /// When Redis fails, let requests through instead of answering 503 [default: false].
    #[serde(default)]
    pub allow_degradation: bool,
    /// Postern extension: `open`, `closed` or `local` while Redis fails (see
    /// [`super::limits::Degrade`]); overrides the boolean above when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degrade: Option<super::limits::Degrade>,
}

impl LimitCountConfig {
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

impl PluginConfig for LimitCountConfig {
    fn validate(&self) -> Result<()> {
        if self.count == 0 {
            return Err(ValidationError::new("count", "must be at least 1"));
        }
        if self.time_window == 0 {
            return Err(ValidationError::new("time_window", "must be at least 1"));
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
    fn the_guides_config_parses() {
        let c: LimitCountConfig = parse(&json!({
            "count": 200,
            "time_window": 60,
            "rejected_code": 429,
            "rejected_msg": "Rate limit exceeded. Please retry later.",
            "policy": "redis",
            "redis_host": "redis.default.svc",
            "redis_port": 6379,
            "key_type": "var",
            "key": "consumer_name"
        }))
        .unwrap();
        assert_eq!(c.algorithm, Algorithm::FixedWindow);
        assert!(c.show_limit_quota_header);
        assert!(!c.allow_degradation);
        assert_eq!(c.redis_timeout, 1000);
        assert_eq!(
            c.redis().unwrap().unwrap().nodes,
            vec!["redis.default.svc:6379"]
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (json!({"count": 0, "time_window": 1}), "count"),
            (json!({"count": 1, "time_window": 0}), "time_window"),
            (json!({"time_window": 1}), ""),
            (
                json!({"count": 1, "time_window": 1, "rejected_code": 99}),
                "rejected_code",
            ),
            (json!({"count": 1, "time_window": 1, "key": "nope"}), "key"),
            (
                json!({"count": 1, "time_window": 1, "policy": "redis"}),
                "redis_host",
            ),
            (
                json!({"count": 1, "time_window": 1, "algorithm": "magic"}),
                "algorithm",
            ),
            (json!({"count": 1, "time_window": 1, "nope": 1}), ""),
        ];
        for (config, field) in cases {
            let e = parse::<LimitCountConfig>(&config).unwrap_err();
            assert!(e.field.starts_with(field), "{config}: {e}");
        }
    }
}
