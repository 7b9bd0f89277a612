//! `api-breaker`: a circuit breaker per route, as in APISIX. After `unhealthy.failures`
//! consecutive unhealthy statuses the route answers `break_response_code` itself, without calling
//! the upstream, for 2 s, then 4, 8 … up to `max_breaker_sec`; after that, requests go through
//! again (half-open) and `healthy.successes` consecutive healthy statuses close the breaker.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use super::header_ops::{HeaderTarget, check_header_name};
use crate::model::error::{Result, ValidationError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiBreakerConfig {
    /// Status answered while the breaker is open (200-599). Required.
    pub break_response_code: u16,
    /// Body answered while open [default: none].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_response_body: Option<String>,
    /// Headers answered while open, as APISIX writes them: `[{"key": …, "value": …}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub break_response_headers: Vec<HeaderPair>,
    /// Longest the breaker stays open, in seconds (at least 3) [default: 300].
    #[serde(default = "default_max_breaker_sec")]
    pub max_breaker_sec: u64,
    #[serde(default)]
    pub unhealthy: Unhealthy,
    #[serde(default)]
    pub healthy: Healthy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderPair {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unhealthy {
    /// Statuses that count as failures (500-599) [default: [500]].
    #[serde(default = "default_unhealthy_statuses")]
    pub http_statuses: Vec<u16>,
    /// Consecutive failures that open the breaker (at least 1) [default: 3].
    #[serde(default = "three")]
    pub failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthy {
    /// Statuses that count as successes (200-499) [default: [200]].
    #[serde(default = "default_healthy_statuses")]
    pub http_statuses: Vec<u16>,
    /// Consecutive successes, once half-open, that close the breaker (at least 1) [default: 3].
    #[serde(default = "three")]
    pub successes: u32,
}

impl Default for Unhealthy {
    fn default() -> Self {
        Unhealthy {
            http_statuses: default_unhealthy_statuses(),
            failures: 3,
        }
    }
}

impl Default for Healthy {
    fn default() -> Self {
        Healthy {
            http_statuses: default_healthy_statuses(),
            successes: 3,
        }
    }
}

fn default_max_breaker_sec() -> u64 {
    300
}
fn default_unhealthy_statuses() -> Vec<u16> {
    vec![500]
}
fn default_healthy_statuses() -> Vec<u16> {
    vec![200]
}
fn three() -> u32 {
    3
}

/// Largest `max_breaker_sec` accepted: one day.
pub const MAX_BREAKER_SEC: u64 = 86_400;

fn check_statuses(
    field: &str,
    statuses: &[u16],
    range: std::ops::RangeInclusive<u16>,
) -> Result<()> {
    if statuses.is_empty() {
        return Err(ValidationError::new(
            field,
            "at least one status is required",
        ));
    }
    for (i, s) in statuses.iter().enumerate() {
        if !range.contains(s) {
            return Err(ValidationError::new(
                format!("{field}.{i}"),
                format!("must be {}-{}", range.start(), range.end()),
            ));
        }
        if statuses[..i].contains(s) {
            return Err(ValidationError::new(
                format!("{field}.{i}"),
                format!("{s} is listed twice"),
            ));
        }
    }
    Ok(())
}

impl PluginConfig for ApiBreakerConfig {
    fn validate(&self) -> Result<()> {
        if !(200..=599).contains(&self.break_response_code) {
            return Err(ValidationError::new(
                "break_response_code",
                "must be 200-599",
            ));
        }
        if !(3..=MAX_BREAKER_SEC).contains(&self.max_breaker_sec) {
            return Err(ValidationError::new(
                "max_breaker_sec",
                format!("must be 3-{MAX_BREAKER_SEC}"),
            ));
        }
        for (i, h) in self.break_response_headers.iter().enumerate() {
            check_header_name(&h.key, HeaderTarget::Response)
                .map_err(|e| e.under(&format!("break_response_headers.{i}.key")))?;
            if h.value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                return Err(ValidationError::new(
                    format!("break_response_headers.{i}.value"),
                    "not a valid header value",
                ));
            }
        }
        check_statuses(
            "unhealthy.http_statuses",
            &self.unhealthy.http_statuses,
            500..=599,
        )?;
        check_statuses(
            "healthy.http_statuses",
            &self.healthy.http_statuses,
            200..=499,
        )?;
        if self.unhealthy.failures == 0 {
            return Err(ValidationError::new(
                "unhealthy.failures",
                "must be at least 1",
            ));
        }
        if self.healthy.successes == 0 {
            return Err(ValidationError::new(
                "healthy.successes",
                "must be at least 1",
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
    fn guide_configs_parse_with_apisix_defaults() {
        // The guide's YAML example, as JSON.
        let c: ApiBreakerConfig = parse(&json!({
            "break_response_code": 503,
            "break_response_body": "{\"error\":\"circuit open\",\"retry_after\":30}",
            "break_response_headers": [
                {"key": "Content-Type", "value": "application/json"},
                {"key": "Retry-After", "value": "30"}
            ],
            "unhealthy": {"http_statuses": [500, 502, 503], "failures": 3},
            "healthy": {"http_statuses": [200, 201], "successes": 2},
            "max_breaker_sec": 300
        }))
        .unwrap();
        assert_eq!(c.break_response_headers.len(), 2);
        assert_eq!(c.healthy.successes, 2);
        // The guide's Admin API example.
        let c: ApiBreakerConfig = parse(&json!({
            "break_response_code": 503,
            "unhealthy": {"http_statuses": [500, 502, 503], "failures": 3},
            "healthy": {"http_statuses": [200], "successes": 2},
            "max_breaker_sec": 60
        }))
        .unwrap();
        assert_eq!(c.max_breaker_sec, 60);
        let d: ApiBreakerConfig = parse(&json!({"break_response_code": 502})).unwrap();
        assert_eq!(d.max_breaker_sec, 300);
        assert_eq!(d.unhealthy, Unhealthy::default());
        assert_eq!(d.healthy.http_statuses, vec![200]);
        assert_eq!(d.healthy.successes, 3);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (json!({}), "break_response_code"),
            (json!({"break_response_code": 199}), "break_response_code"),
            (
                json!({"break_response_code": 503, "max_breaker_sec": 2}),
                "max_breaker_sec",
            ),
            (
                json!({"break_response_code": 503, "unhealthy": {"http_statuses": [404]}}),
                "unhealthy.http_statuses.0",
            ),
            (
                json!({"break_response_code": 503, "healthy": {"http_statuses": [200, 200]}}),
                "healthy.http_statuses.1",
            ),
            (
                json!({"break_response_code": 503, "healthy": {"http_statuses": []}}),
                "healthy.http_statuses",
            ),
            (
                json!({"break_response_code": 503, "unhealthy": {"failures": 0}}),
                "unhealthy.failures",
            ),
            (
                json!({"break_response_code": 503, "healthy": {"successes": 0}}),
                "healthy.successes",
            ),
            (
                json!({"break_response_code": 503, "break_response_headers": [{"key": "a b", "value": "x"}]}),
                "break_response_headers.0.key",
            ),
            (
                json!({"break_response_code": 503, "unhealthy": {"failure": 3}}),
                "unhealthy",
            ),
        ];
        for (config, field) in cases {
            let e = parse::<ApiBreakerConfig>(&config).unwrap_err();
            // serde reports a missing field in the message, with an empty path.
            let named =
                e.field.starts_with(field) || (e.field.is_empty() && e.message.contains(field));
            assert!(named, "{config}: {e}");
        }
    }
}
