//! What the rate-limiting plugins (`limit-count`, `limit-req`, `limit-conn`, `rate-limiting`)
//! share: how a request's limit key is named (`key_type` + `key`, APISIX's shape), the counter
//! store (`policy` and the Redis settings) and the algorithms.

use serde::{Deserialize, Serialize};

use crate::model::error::{Result, ValidationError};
use crate::model::vars::Var;

/// How `key` is read (APISIX's `key_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    /// `key` is one variable name (`remote_addr`, `consumer_name`, `http_x_user`…).
    #[default]
    Var,
    /// `key` is text with `$variables` in it (`"$remote_addr $http_user_agent"`).
    VarCombination,
    /// Every request shares one counter.
    Constant,
}

/// Where counters live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// In this data plane's memory: each DP counts on its own, so N DPs admit up to N× the limit.
    #[default]
    Local,
    /// One Redis server shared by every DP: the limit holds cluster-wide.
    Redis,
    /// A Redis Cluster (`redis_cluster_nodes`).
    RedisCluster,
}

/// The counting algorithm (see `data-plane/src/ratelimit/`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// One counter per aligned window; up to 2× the limit can pass around a window boundary.
    #[default]
    FixedWindow,
    /// One timestamp per admitted request: exact, memory grows with the limit.
    SlidingWindowLog,
    /// The previous window's count weighted by how much of it still overlaps, plus the current.
    SlidingWindowCounter,
    /// A bucket of `count` tokens refilled at `count / time_window` per second.
    TokenBucket,
    /// Requests leave at `count / time_window` per second; up to `count` wait their turn.
    LeakyBucket,
}

/// A variable a limit key can be made of: the route `vars` variables, plus who the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVar {
    Request(Var),
    /// The authenticated consumer; the client address when nobody authenticated (as APISIX).
    ConsumerName,
    ConsumerGroupId,
    CredentialId,
    RouteId,
    RemotePort,
}

/// Parses one variable name of a limit key.
pub fn parse_key_var(name: &str) -> Result<KeyVar> {
    Ok(match name {
        "consumer_name" => KeyVar::ConsumerName,
        "consumer_group_id" => KeyVar::ConsumerGroupId,
        "credential_id" => KeyVar::CredentialId,
        "route_id" => KeyVar::RouteId,
        "remote_port" => KeyVar::RemotePort,
        other => KeyVar::Request(crate::model::vars::parse_var(other).map_err(|e| {
            ValidationError::new(
                "key",
                format!(
                    "{}; also consumer_name, consumer_group_id, credential_id, route_id, remote_port",
                    e.message
                ),
            )
        })?),
    })
}

/// One piece of a `var_combination` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Text(String),
    Var(KeyVar),
}

/// A parsed limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    Constant,
    Var(KeyVar),
    Combination(Vec<KeyPart>),
}

impl LimitKey {
    /// Parses `key` as `key_type` says. Errors name `key`.
    pub fn parse(key_type: KeyType, key: &str) -> Result<LimitKey> {
        match key_type {
            KeyType::Constant => Ok(LimitKey::Constant),
            KeyType::Var => {
                // APISIX accepts `$remote_addr` as well as `remote_addr` here.
                let name = key.strip_prefix('$').unwrap_or(key);
                parse_key_var(name).map(LimitKey::Var)
            }
            KeyType::VarCombination => {
                let mut parts = Vec::new();
                let mut rest = key;
                while let Some(at) = rest.find('$') {
                    if at > 0 {
                        parts.push(KeyPart::Text(rest[..at].to_string()));
                    }
                    let after = &rest[at + 1..];
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    if end == 0 {
                        return Err(ValidationError::new(
                            "key",
                            "'$' must be followed by a variable name",
                        ));
                    }
                    parts.push(KeyPart::Var(parse_key_var(&after[..end])?));
                    rest = &after[end..];
                }
                if !rest.is_empty() {
                    parts.push(KeyPart::Text(rest.to_string()));
                }
                if !parts.iter().any(|p| matches!(p, KeyPart::Var(_))) {
                    return Err(ValidationError::new(
                        "key",
                        "a var_combination key needs at least one $variable",
                    ));
                }
                Ok(LimitKey::Combination(parts))
            }
        }
    }
}

/// What a Redis-backed limit does while Redis fails (Postern's `degrade`, which overrides
/// `allow_degradation` / `fault_tolerant` when set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Degrade {
    /// Let requests through unlimited.
    Open,
    /// Answer 503.
    Closed,
    /// Limit each data plane locally to limit ÷ live data planes (as the control plane counts
    /// them) until Redis answers again.
    Local,
}

impl Degrade {
    /// `degrade` if set, else the plugin's own boolean (`allow_degradation`, `fault_tolerant`).
    pub fn resolve(degrade: Option<Degrade>, fail_open: bool) -> Degrade {
        degrade.unwrap_or(if fail_open {
            Degrade::Open
        } else {
            Degrade::Closed
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Degrade::Open => "fail_open",
            Degrade::Closed => "fail_closed",
            Degrade::Local => "local",
        }
    }
}

/// The Redis settings of a limit, whichever plugin shape they came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisSettings {
    pub cluster: bool,
    /// `host:port` of the server, or every seed node of a cluster.
    pub nodes: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: u32,
    /// Longest a limit decision may wait for Redis, in milliseconds.
    pub timeout_ms: u64,
}

/// Checks a status code for a rejection.
pub fn check_rejected_code(field: &str, code: u16) -> Result<()> {
    if !(200..=599).contains(&code) {
        return Err(ValidationError::new(field, "must be 200-599"));
    }
    Ok(())
}

/// Checks APISIX's flat Redis fields and turns them into settings (`None` for `policy: local`).
#[allow(clippy::too_many_arguments)]
pub fn apisix_redis(
    policy: Policy,
    host: Option<&str>,
    port: u16,
    username: Option<&str>,
    password: Option<&str>,
    database: u32,
    timeout_ms: u64,
    cluster_nodes: &[String],
) -> Result<Option<RedisSettings>> {
    if timeout_ms == 0 {
        return Err(ValidationError::new(
            "redis_timeout",
            "must be at least 1 ms",
        ));
    }
    let nodes = match policy {
        Policy::Local => return Ok(None),
        Policy::Redis => {
            let host = host.filter(|h| !h.is_empty()).ok_or_else(|| {
                ValidationError::new("redis_host", "required when policy is redis")
            })?;
            if port == 0 {
                return Err(ValidationError::new("redis_port", "must be 1-65535"));
            }
            vec![host_port(host, port)]
        }
        Policy::RedisCluster => {
            if cluster_nodes.is_empty() {
                return Err(ValidationError::new(
                    "redis_cluster_nodes",
                    "required when policy is redis-cluster (host:port of at least one node)",
                ));
            }
            for (i, n) in cluster_nodes.iter().enumerate() {
                if !n
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
                {
                    return Err(ValidationError::new(
                        format!("redis_cluster_nodes.{i}"),
                        "expected host:port",
                    ));
                }
            }
            cluster_nodes.to_vec()
        }
    };
    Ok(Some(RedisSettings {
        cluster: policy == Policy::RedisCluster,
        nodes,
        username: username.map(str::to_string),
        password: password.filter(|p| !p.is_empty()).map(str::to_string),
        database,
        timeout_ms,
    }))
}

/// `host:port`, bracketing an IPv6 literal.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub(crate) fn default_key() -> String {
    "remote_addr".to_string()
}

pub(crate) fn default_rejected_code() -> u16 {
    503
}

pub(crate) fn default_redis_port() -> u16 {
    6379
}

pub(crate) fn default_redis_timeout() -> u64 {
    1000
}

pub(crate) fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse() {
        assert_eq!(
            LimitKey::parse(KeyType::Var, "remote_addr").unwrap(),
            LimitKey::Var(KeyVar::Request(Var::RemoteAddr))
        );
        assert_eq!(
            LimitKey::parse(KeyType::Var, "consumer_name").unwrap(),
            LimitKey::Var(KeyVar::ConsumerName)
        );
        assert_eq!(
            LimitKey::parse(KeyType::Var, "http_x_user").unwrap(),
            LimitKey::Var(KeyVar::Request(Var::Header("x-user".into())))
        );
        assert_eq!(
            LimitKey::parse(KeyType::VarCombination, "$remote_addr:$arg_k").unwrap(),
            LimitKey::Combination(vec![
                KeyPart::Var(KeyVar::Request(Var::RemoteAddr)),
                KeyPart::Text(":".into()),
                KeyPart::Var(KeyVar::Request(Var::Arg("k".into()))),
            ])
        );
        // Variable names are nginx's: letters, digits and `_`; anything else ends one.
        assert_eq!(
            LimitKey::parse(KeyType::VarCombination, "$remote_addr-$http_x_user!").unwrap(),
            LimitKey::Combination(vec![
                KeyPart::Var(KeyVar::Request(Var::RemoteAddr)),
                KeyPart::Text("-".into()),
                KeyPart::Var(KeyVar::Request(Var::Header("x-user".into()))),
                KeyPart::Text("!".into()),
            ])
        );
        assert_eq!(
            LimitKey::parse(KeyType::Constant, "whatever").unwrap(),
            LimitKey::Constant
        );
        for (kt, key) in [
            (KeyType::Var, "nonsense"),
            (KeyType::VarCombination, "no vars"),
            (KeyType::VarCombination, "$ x"),
            (KeyType::VarCombination, "$nonsense"),
        ] {
            let e = LimitKey::parse(kt, key).unwrap_err();
            assert_eq!(e.field, "key", "{key}");
        }
    }

    #[test]
    fn redis_settings_are_checked() {
        let ok = apisix_redis(Policy::Redis, Some("r"), 6379, None, None, 0, 1000, &[]);
        assert_eq!(ok.unwrap().unwrap().nodes, vec!["r:6379".to_string()]);
        let e = apisix_redis(Policy::Redis, None, 6379, None, None, 0, 1000, &[]).unwrap_err();
        assert_eq!(e.field, "redis_host");
        let e =
            apisix_redis(Policy::RedisCluster, None, 6379, None, None, 0, 1000, &[]).unwrap_err();
        assert_eq!(e.field, "redis_cluster_nodes");
        let e = apisix_redis(
            Policy::RedisCluster,
            None,
            6379,
            None,
            None,
            0,
            1000,
            &["nope".into()],
        )
        .unwrap_err();
        assert_eq!(e.field, "redis_cluster_nodes.0");
        let e = apisix_redis(Policy::Local, None, 6379, None, None, 0, 0, &[]).unwrap_err();
        assert_eq!(e.field, "redis_timeout");
        assert!(
            apisix_redis(Policy::Local, None, 6379, None, None, 0, 10, &[])
                .unwrap()
                .is_none()
        );
    }
}
