//! `rate-limiting`: one plugin name, two shapes.
//!
//! * **Kong's**: counts per `second`, `minute`, `hour`, `day`, `month` (30 days) and `year`
//!   (365 days) — any of them at once, all enforced, in fixed windows; `limit_by` picks the
//!   caller (`consumer`, `credential`, `ip`, `header`, `path`, `service`).
//! * **The BFF routes' shape** (`rate`, `burst`, `key_type`, `key`): a token bucket refilled at
//!   `rate` tokens per second that holds `rate + burst` tokens, so a caller may send one second's
//!   worth plus `burst` at once, then `rate` per second.
//!
//! Both take `policy` (`local`, `redis`; Kong's `cluster` is treated as `redis`), `redis`,
//! `fault_tolerant` (let requests through when Redis fails) [default: true],
//! `hide_client_headers`, `error_code` [default: 429] and `error_message`. A config that mixes
//! the two shapes is rejected.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use super::limits::{KeyType, KeyVar, LimitKey, RedisSettings, check_rejected_code, host_port};
use crate::model::error::{Result, ValidationError};
use crate::model::vars::Var;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitingConfig {
    // Kong's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hour: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub year: Option<u64>,
    /// Who is counted [default: consumer; falls back to the client address].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_by: Option<LimitBy>,
    /// The header whose value is the key, for `limit_by: header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_name: Option<String>,
    /// The path counted, for `limit_by: path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,

    // The BFF shape.
    /// Tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Tokens the bucket holds above `rate` [default: 0].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
    /// `var`, `var_combination`, `constant`, or the shorthands `remote_addr` and
    /// `consumer_name` [default: var].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<BffKeyType>,
    /// [default: remote_addr]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,

    // Both shapes.
    /// `local` [default], `redis`, or `cluster` (the same as `redis` here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<KongPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<KongRedis>,
    /// When Redis fails, let requests through [default: true].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_tolerant: Option<bool>,
    /// Postern extension: `open`, `closed` or `local` while Redis fails (see
    /// [`super::limits::Degrade`]); overrides the boolean above when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degrade: Option<super::limits::Degrade>,
    /// Send no rate-limit headers [default: false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hide_client_headers: Option<bool>,
    /// Status of a rejected request [default: 429].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u16>,
    /// [default: "API rate limit exceeded"]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitBy {
    Consumer,
    Credential,
    Ip,
    Header,
    Path,
    Service,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KongPolicy {
    Local,
    Redis,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BffKeyType {
    Var,
    VarCombination,
    Constant,
    RemoteAddr,
    ConsumerName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KongRedis {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<u32>,
    /// Milliseconds [default: 2000, as Kong].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// Which shape a config is, with its parts checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// `(window seconds, limit)` for every period given, shortest first.
    Kong {
        windows: Vec<(&'static str, u64, u64)>,
        limit_by: LimitBy,
    },
    Bucket {
        rate: f64,
        capacity: f64,
        key: LimitKey,
    },
}

const KONG_FIELDS: [&str; 9] = [
    "second",
    "minute",
    "hour",
    "day",
    "month",
    "year",
    "limit_by",
    "header_name",
    "path",
];
const BFF_FIELDS: [&str; 4] = ["rate", "burst", "key_type", "key"];

impl RateLimitingConfig {
    fn kong_fields(&self) -> Vec<&'static str> {
        let present = [
            self.second.is_some(),
            self.minute.is_some(),
            self.hour.is_some(),
            self.day.is_some(),
            self.month.is_some(),
            self.year.is_some(),
            self.limit_by.is_some(),
            self.header_name.is_some(),
            self.path.is_some(),
        ];
        KONG_FIELDS
            .iter()
            .zip(present)
            .filter_map(|(n, p)| p.then_some(*n))
            .collect()
    }

    fn bff_fields(&self) -> Vec<&'static str> {
        let present = [
            self.rate.is_some(),
            self.burst.is_some(),
            self.key_type.is_some(),
            self.key.is_some(),
        ];
        BFF_FIELDS
            .iter()
            .zip(present)
            .filter_map(|(n, p)| p.then_some(*n))
            .collect()
    }

    /// The shape, checked.
    pub fn shape(&self) -> Result<Shape> {
        let kong = self.kong_fields();
        let bff = self.bff_fields();
        if !kong.is_empty() && !bff.is_empty() {
            return Err(ValidationError::new(
                bff[0],
                format!(
                    "mixes Kong's shape ({}) with the rate/burst shape ({}): use one",
                    kong.join(", "),
                    bff.join(", ")
                ),
            ));
        }
        if !bff.is_empty() {
            let rate = self.rate.ok_or_else(|| {
                ValidationError::new("rate", "required with burst, key_type or key")
            })?;
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ValidationError::new("rate", "must be greater than 0"));
            }
            let burst = self.burst.unwrap_or(0.0);
            if !(burst.is_finite() && burst >= 0.0) {
                return Err(ValidationError::new("burst", "must be 0 or more"));
            }
            let key = self.key.as_deref().unwrap_or("remote_addr");
            let key = match self.key_type.unwrap_or(BffKeyType::Var) {
                BffKeyType::Var => LimitKey::parse(KeyType::Var, key)?,
                BffKeyType::VarCombination => LimitKey::parse(KeyType::VarCombination, key)?,
                BffKeyType::Constant => LimitKey::Constant,
                BffKeyType::RemoteAddr => LimitKey::Var(KeyVar::Request(Var::RemoteAddr)),
                BffKeyType::ConsumerName => LimitKey::Var(KeyVar::ConsumerName),
            };
            return Ok(Shape::Bucket {
                rate,
                capacity: rate + burst,
                key,
            });
        }
        let periods = [
            ("second", 1, self.second),
            ("minute", 60, self.minute),
            ("hour", 3600, self.hour),
            ("day", 86_400, self.day),
            ("month", 30 * 86_400, self.month),
            ("year", 365 * 86_400, self.year),
        ];
        let mut windows = Vec::new();
        for (name, secs, limit) in periods {
            if let Some(limit) = limit {
                if limit == 0 {
                    return Err(ValidationError::new(name, "must be at least 1"));
                }
                windows.push((name, secs, limit));
            }
        }
        if windows.is_empty() {
            return Err(ValidationError::new(
                "",
                "give at least one of second, minute, hour, day, month, year (Kong's shape) \
                 or rate (with burst, key_type, key)",
            ));
        }
        let limit_by = self.limit_by.unwrap_or(LimitBy::Consumer);
        let header_ok = self
            .header_name
            .as_deref()
            .is_some_and(|h| !h.is_empty() && http_token(h));
        if limit_by == LimitBy::Header && !header_ok {
            return Err(ValidationError::new(
                "header_name",
                "a header name is required with limit_by: header",
            ));
        }
        if limit_by == LimitBy::Path && !self.path.as_deref().is_some_and(|p| p.starts_with('/')) {
            return Err(ValidationError::new(
                "path",
                "a path starting with '/' is required with limit_by: path",
            ));
        }
        Ok(Shape::Kong { windows, limit_by })
    }

    /// The Redis settings, `None` for `policy: local`.
    pub fn redis_settings(&self) -> Result<Option<RedisSettings>> {
        match self.policy.unwrap_or(KongPolicy::Local) {
            KongPolicy::Local => Ok(None),
            KongPolicy::Redis | KongPolicy::Cluster => {
                let r = self.redis.as_ref().ok_or_else(|| {
                    ValidationError::new("redis", "required when policy is redis or cluster")
                })?;
                let host = r.host.as_deref().filter(|h| !h.is_empty()).ok_or_else(|| {
                    ValidationError::new("redis.host", "required when policy is redis")
                })?;
                let port = r.port.unwrap_or(6379);
                if port == 0 {
                    return Err(ValidationError::new("redis.port", "must be 1-65535"));
                }
                let timeout_ms = r.timeout.unwrap_or(2000);
                if timeout_ms == 0 {
                    return Err(ValidationError::new(
                        "redis.timeout",
                        "must be at least 1 ms",
                    ));
                }
                Ok(Some(RedisSettings {
                    cluster: false,
                    nodes: vec![host_port(host, port)],
                    username: r.username.clone(),
                    password: r.password.clone().filter(|p| !p.is_empty()),
                    database: r.database.unwrap_or(0),
                    timeout_ms,
                }))
            }
        }
    }

    pub fn error_code(&self) -> u16 {
        self.error_code.unwrap_or(429)
    }
}

fn http_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl PluginConfig for RateLimitingConfig {
    fn validate(&self) -> Result<()> {
        self.shape()?;
        self.redis_settings()?;
        check_rejected_code("error_code", self.error_code())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::plugins::parse;

    #[test]
    fn kongs_guide_config_parses() {
        let c: RateLimitingConfig = parse(&json!({
            "minute": 100, "hour": 1000, "policy": "redis",
            "redis": {"host": "redis-cluster", "port": 6379, "password": null, "database": 0, "timeout": 2000},
            "header_name": null, "hide_client_headers": false, "limit_by": "consumer",
            "fault_tolerant": true
        }))
        .unwrap();
        assert_eq!(
            c.shape().unwrap(),
            Shape::Kong {
                windows: vec![("minute", 60, 100), ("hour", 3600, 1000)],
                limit_by: LimitBy::Consumer
            }
        );
        let r = c.redis_settings().unwrap().unwrap();
        assert_eq!(r.nodes, vec!["redis-cluster:6379"]);
        assert_eq!(r.timeout_ms, 2000);
    }

    #[test]
    fn bff_configs_parse() {
        let c: RateLimitingConfig =
            parse(&json!({"rate": 200, "burst": 50, "key_type": "consumer_name"})).unwrap();
        assert_eq!(
            c.shape().unwrap(),
            Shape::Bucket {
                rate: 200.0,
                capacity: 250.0,
                key: LimitKey::Var(KeyVar::ConsumerName)
            }
        );
        let c: RateLimitingConfig =
            parse(&json!({"rate": 500, "burst": 100, "key_type": "var", "key": "remote_addr"}))
                .unwrap();
        assert!(matches!(c.shape().unwrap(), Shape::Bucket { .. }));
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (config, field) in [
            (json!({"minute": 1, "rate": 1}), "rate"),
            (json!({"limit_by": "ip", "burst": 1}), "burst"),
            (json!({}), ""),
            (json!({"burst": 1}), "rate"),
            (json!({"minute": 0}), "minute"),
            (json!({"minute": 1, "limit_by": "header"}), "header_name"),
            (json!({"minute": 1, "limit_by": "path"}), "path"),
            (json!({"minute": 1, "policy": "redis"}), "redis"),
            (
                json!({"minute": 1, "policy": "redis", "redis": {}}),
                "redis.host",
            ),
            (json!({"minute": 1, "error_code": 42}), "error_code"),
            (json!({"minute": 1, "nope": 1}), ""),
        ] {
            let e = parse::<RateLimitingConfig>(&config).unwrap_err();
            assert!(e.field.starts_with(field), "{config}: {e}");
        }
        let e = parse::<RateLimitingConfig>(&json!({"minute": 1, "rate": 1})).unwrap_err();
        assert!(e.message.contains("mixes"), "{e}");
    }
}
