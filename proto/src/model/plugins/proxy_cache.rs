//! `proxy-cache`: caches upstream responses in each data plane, APISIX's names. The store is
//! `memory` (default) or `disk` (one file per entry under `cache_dir`), bounded by
//! `cache_size` bytes and evicted least recently used.
//!
//! `cache_key`, `cache_bypass` and `no_cache` are lists of pieces: `$name` is a variable (the
//! route `vars` variables, `$request_uri`, `$consumer_name`, `$route_id`…; a missing one is
//! empty), anything else is literal text. The key is the pieces' values concatenated.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use super::limits::{KeyVar, parse_key_var};
use crate::model::error::{Result, ValidationError};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStrategy {
    #[default]
    Memory,
    Disk,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyCacheConfig {
    #[serde(default)]
    pub cache_strategy: CacheStrategy,
    /// The directory of the `disk` store (required for it; one per data plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<String>,
    /// Bytes the store may hold (bodies, headers and keys) [default: 64 MiB].
    #[serde(default = "default_cache_size")]
    pub cache_size: u64,
    /// Largest body stored; bigger responses stream through uncached [default: 1 MiB].
    #[serde(default = "default_max_body")]
    pub cache_max_body: u64,
    #[serde(default = "default_cache_key")]
    pub cache_key: Vec<String>,
    #[serde(default)]
    pub cache_bypass: Vec<String>,
    #[serde(default = "default_methods")]
    pub cache_method: Vec<String>,
    #[serde(default = "default_statuses")]
    pub cache_http_status: Vec<u16>,
    /// Seconds an entry stays fresh when the upstream says nothing (or `cache_control` is off).
    #[serde(default = "default_ttl")]
    pub cache_ttl: u64,
    /// Follow the upstream's `Cache-Control` max-age / s-maxage and `Expires` [default: true].
    /// `no-store`, `private` and `no-cache` are always honoured.
    #[serde(default = "yes")]
    pub cache_control: bool,
    #[serde(default)]
    pub no_cache: Vec<String>,
    /// Remove `Cache-Control` and `Expires` from responses to clients.
    #[serde(default)]
    pub hide_cache_headers: bool,
    /// Answer an expired entry (`STALE`) when the upstream fails (5xx, unreachable, timeout)
    /// instead of the error [default: false].
    #[serde(default)]
    pub stale_on_error: bool,
}

/// One piece of a `cache_key`, `cache_bypass` or `no_cache` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachePart {
    Text(String),
    /// The path with its query string, as received (after normalisation).
    RequestUri,
    Var(KeyVar),
}

pub const MAX_CACHE_SIZE: u64 = 1 << 40;
const MAX_TTL: u64 = 365 * 24 * 3600;
const MAX_PARTS: usize = 32;

fn default_cache_size() -> u64 {
    64 << 20
}
fn default_max_body() -> u64 {
    1 << 20
}
fn default_cache_key() -> Vec<String> {
    vec!["$host".into(), "$request_uri".into()]
}
fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}
fn default_statuses() -> Vec<u16> {
    vec![200, 301, 404]
}
fn default_ttl() -> u64 {
    300
}
fn yes() -> bool {
    true
}

/// Parses one list of pieces; errors name `<field>.<index>`.
pub fn parse_parts(field: &str, items: &[String]) -> Result<Vec<CachePart>> {
    if items.len() > MAX_PARTS {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_PARTS} items"),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{field}.{i}");
            match item.strip_prefix('$') {
                Some("request_uri") => Ok(CachePart::RequestUri),
                Some(name) => parse_key_var(name)
                    .map(CachePart::Var)
                    .map_err(|e| ValidationError::new(at, format!("'{item}': {}", e.message))),
                None if item.is_empty() => Err(ValidationError::new(at, "must not be empty")),
                None => Ok(CachePart::Text(item.clone())),
            }
        })
        .collect()
}

impl ProxyCacheConfig {
    pub fn key_parts(&self) -> Result<Vec<CachePart>> {
        parse_parts("cache_key", &self.cache_key)
    }

    /// Whether the key names the caller (then the data plane adds nothing to it on
    /// authenticated routes).
    pub fn key_names_consumer(&self) -> bool {
        self.key_parts().is_ok_and(|parts| {
            parts
                .iter()
                .any(|p| matches!(p, CachePart::Var(KeyVar::ConsumerName)))
        })
    }
}

impl PluginConfig for ProxyCacheConfig {
    fn validate(&self) -> Result<()> {
        match (self.cache_strategy, &self.cache_dir) {
            (CacheStrategy::Disk, None) => {
                return Err(ValidationError::new(
                    "cache_dir",
                    "required with cache_strategy 'disk'",
                ));
            }
            (CacheStrategy::Disk, Some(d)) if d.is_empty() || d.contains('\0') => {
                return Err(ValidationError::new("cache_dir", "not a usable path"));
            }
            (CacheStrategy::Memory, Some(_)) => {
                return Err(ValidationError::new(
                    "cache_dir",
                    "only for cache_strategy 'disk'",
                ));
            }
            _ => {}
        }
        if self.cache_max_body == 0 {
            return Err(ValidationError::new("cache_max_body", "must be at least 1"));
        }
        if self.cache_size < self.cache_max_body || self.cache_size > MAX_CACHE_SIZE {
            return Err(ValidationError::new(
                "cache_size",
                format!(
                    "must be between cache_max_body ({}) and 1 TiB",
                    self.cache_max_body
                ),
            ));
        }
        if self.cache_key.is_empty() {
            return Err(ValidationError::new("cache_key", "must not be empty"));
        }
        self.key_parts()?;
        parse_parts("cache_bypass", &self.cache_bypass)?;
        parse_parts("no_cache", &self.no_cache)?;
        if self.cache_method.is_empty() {
            return Err(ValidationError::new("cache_method", "must not be empty"));
        }
        for (i, m) in self.cache_method.iter().enumerate() {
            if m != "GET" && m != "HEAD" {
                // A POST's answer depends on its body, which is not part of any key.
                return Err(ValidationError::new(
                    format!("cache_method.{i}"),
                    format!("'{m}': only GET and HEAD responses are cached"),
                ));
            }
        }
        if self.cache_http_status.is_empty() {
            return Err(ValidationError::new(
                "cache_http_status",
                "must not be empty",
            ));
        }
        for (i, s) in self.cache_http_status.iter().enumerate() {
            if !(200..=599).contains(s) {
                return Err(ValidationError::new(
                    format!("cache_http_status.{i}"),
                    format!("{s}: must be 200-599"),
                ));
            }
        }
        if self.cache_ttl == 0 || self.cache_ttl > MAX_TTL {
            return Err(ValidationError::new(
                "cache_ttl",
                format!("must be 1-{MAX_TTL} seconds"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::plugins::parse;

    #[test]
    fn defaults_are_apisix_s() {
        let c: ProxyCacheConfig = parse(&json!({})).unwrap();
        assert_eq!(c.cache_strategy, CacheStrategy::Memory);
        assert_eq!(c.cache_key, ["$host", "$request_uri"]);
        assert_eq!(c.cache_method, ["GET", "HEAD"]);
        assert_eq!(c.cache_http_status, [200, 301, 404]);
        assert_eq!(c.cache_ttl, 300);
        assert_eq!(c.cache_max_body, 1 << 20);
        assert!(c.cache_control && !c.hide_cache_headers && !c.stale_on_error);
        assert!(!c.key_names_consumer());
        let c: ProxyCacheConfig =
            parse(&json!({"cache_key": ["$uri", "-", "$consumer_name"]})).unwrap();
        assert!(c.key_names_consumer());
        assert_eq!(
            c.key_parts().unwrap(),
            [
                CachePart::Var(KeyVar::Request(crate::model::vars::Var::Uri)),
                CachePart::Text("-".into()),
                CachePart::Var(KeyVar::ConsumerName),
            ]
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (json!({"cache_strategy": "redis"}), "cache_strategy"),
            (json!({"cache_strategy": "disk"}), "cache_dir"),
            (json!({"cache_dir": "/tmp/x"}), "cache_dir"),
            (json!({"cache_key": []}), "cache_key"),
            (json!({"cache_key": ["$host", "$nope"]}), "cache_key.1"),
            (json!({"cache_key": [""]}), "cache_key.0"),
            (json!({"cache_bypass": ["$http_"]}), "cache_bypass.0"),
            (json!({"no_cache": ["$arg_"]}), "no_cache.0"),
            (json!({"cache_method": ["POST"]}), "cache_method.0"),
            (json!({"cache_method": []}), "cache_method"),
            (
                json!({"cache_http_status": [200, 99]}),
                "cache_http_status.1",
            ),
            (json!({"cache_ttl": 0}), "cache_ttl"),
            (json!({"cache_ttl": -1}), "cache_ttl"),
            (json!({"cache_max_body": 0}), "cache_max_body"),
            (
                json!({"cache_size": 10, "cache_max_body": 100}),
                "cache_size",
            ),
            (json!({"cache_zone": "disk_cache_one"}), "cache_zone"),
        ];
        for (config, field) in cases {
            let err = parse::<ProxyCacheConfig>(&config).unwrap_err();
            assert_eq!(err.field, field, "{config}: {err}");
        }
    }
}
