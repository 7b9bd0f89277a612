//! `upstream.checks`: active and passive health checks, in APISIX's shape and with its defaults.
//! Active checks probe every node on a timer (`healthy.interval` for healthy nodes,
//! `unhealthy.interval` for unhealthy ones); passive checks judge nodes from real responses.
//! A node that is unhealthy gets no traffic.

use serde::{Deserialize, Serialize};

use super::error::{Result, ValidationError};
use super::validate::check_host;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthChecks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveCheck>,
    /// Postern extension: what happens when every node is unhealthy: `fail_open` spreads
    /// requests over all nodes as if none were checked (APISIX's behaviour), `reject` answers
    /// 503 [default: fail_open].
    #[serde(default, skip_serializing_if = "AllUnhealthy::is_default")]
    pub on_all_unhealthy: AllUnhealthy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllUnhealthy {
    #[default]
    FailOpen,
    Reject,
}

impl AllUnhealthy {
    fn is_default(&self) -> bool {
        *self == AllUnhealthy::FailOpen
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    #[default]
    Http,
    Https,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveCheck {
    /// `http` (GET `http_path`, judge the status), `tcp` (connect only) [default: http].
    #[serde(rename = "type", default)]
    pub check_type: CheckType,
    /// Seconds a probe may take [default: 1].
    #[serde(default = "one_f64")]
    pub timeout: f64,
    /// Accepted for APISIX compatibility; probes of one upstream run concurrently [default: 10].
    #[serde(default = "ten")]
    pub concurrency: u32,
    /// `Host` header of HTTP probes [default: the node's address].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port to probe instead of the node's [default: the node's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path of HTTP probes [default: /].
    #[serde(default = "root")]
    pub http_path: String,
    /// Verify the node's certificate in `https` probes [default: true] (with the upstream's
    /// `tls.ca` and `tls.sni` when it has them).
    #[serde(default = "yes")]
    pub https_verify_certificate: bool,
    /// Extra request headers of HTTP probes, `"Name: value"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub req_headers: Vec<String>,
    #[serde(default)]
    pub healthy: ActiveHealthy,
    #[serde(default)]
    pub unhealthy: ActiveUnhealthy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthy {
    /// Seconds between probes of a healthy node [default: 1].
    #[serde(default = "one")]
    pub interval: u32,
    /// Probe statuses that count as successes [default: [200, 302]].
    #[serde(default = "active_healthy_statuses")]
    pub http_statuses: Vec<u16>,
    /// Consecutive successes that make an unhealthy node healthy [default: 2].
    #[serde(default = "two")]
    pub successes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveUnhealthy {
    /// Seconds between probes of an unhealthy node [default: 1].
    #[serde(default = "one")]
    pub interval: u32,
    /// Probe statuses that count as HTTP failures [default: 429, 404, 500-505].
    #[serde(default = "active_unhealthy_statuses")]
    pub http_statuses: Vec<u16>,
    /// Consecutive HTTP failures that make a node unhealthy [default: 5].
    #[serde(default = "five")]
    pub http_failures: u32,
    /// Consecutive connect failures that make a node unhealthy [default: 2].
    #[serde(default = "two")]
    pub tcp_failures: u32,
    /// Consecutive probe timeouts that make a node unhealthy [default: 3].
    #[serde(default = "three")]
    pub timeouts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveCheck {
    /// Only `http` is meaningful for proxied traffic [default: http].
    #[serde(rename = "type", default)]
    pub check_type: CheckType,
    #[serde(default)]
    pub healthy: PassiveHealthy,
    #[serde(default)]
    pub unhealthy: PassiveUnhealthy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthy {
    /// Response statuses that count as successes [default: 200-208, 226, 300-308].
    #[serde(default = "passive_healthy_statuses")]
    pub http_statuses: Vec<u16>,
    /// Consecutive successes that make a node healthy [default: 5].
    #[serde(default = "five")]
    pub successes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveUnhealthy {
    /// Response statuses that count as HTTP failures [default: 429, 500, 503].
    #[serde(default = "passive_unhealthy_statuses")]
    pub http_statuses: Vec<u16>,
    /// Consecutive HTTP failures that make a node unhealthy [default: 5].
    #[serde(default = "five")]
    pub http_failures: u32,
    /// Consecutive connect failures that make a node unhealthy [default: 2].
    #[serde(default = "two")]
    pub tcp_failures: u32,
    /// Consecutive timeouts that make a node unhealthy [default: 7].
    #[serde(default = "seven")]
    pub timeouts: u32,
}

impl Default for ActiveHealthy {
    fn default() -> Self {
        ActiveHealthy {
            interval: 1,
            http_statuses: active_healthy_statuses(),
            successes: 2,
        }
    }
}
impl Default for ActiveUnhealthy {
    fn default() -> Self {
        ActiveUnhealthy {
            interval: 1,
            http_statuses: active_unhealthy_statuses(),
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 3,
        }
    }
}
impl Default for PassiveHealthy {
    fn default() -> Self {
        PassiveHealthy {
            http_statuses: passive_healthy_statuses(),
            successes: 5,
        }
    }
}
impl Default for PassiveUnhealthy {
    fn default() -> Self {
        PassiveUnhealthy {
            http_statuses: passive_unhealthy_statuses(),
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 7,
        }
    }
}

fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn five() -> u32 {
    5
}
fn seven() -> u32 {
    7
}
fn ten() -> u32 {
    10
}
fn one_f64() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn root() -> String {
    "/".to_string()
}
fn active_healthy_statuses() -> Vec<u16> {
    vec![200, 302]
}
fn active_unhealthy_statuses() -> Vec<u16> {
    vec![429, 404, 500, 501, 502, 503, 504, 505]
}
fn passive_healthy_statuses() -> Vec<u16> {
    vec![
        200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 306, 307,
        308,
    ]
}
fn passive_unhealthy_statuses() -> Vec<u16> {
    vec![429, 500, 503]
}

/// Counters are 1-254 in APISIX.
fn check_count(field: &str, n: u32, min: u32) -> Result<()> {
    if (min..=254).contains(&n) {
        Ok(())
    } else {
        Err(ValidationError::new(field, format!("must be {min}-254")))
    }
}

fn check_statuses(field: &str, statuses: &[u16]) -> Result<()> {
    match statuses.iter().position(|s| !(200..=599).contains(s)) {
        Some(i) => Err(ValidationError::new(
            format!("{field}.{i}"),
            "must be 200-599",
        )),
        None => Ok(()),
    }
}

impl HealthChecks {
    pub fn validate(&self) -> Result<()> {
        if let Some(a) = &self.active {
            a.validate().map_err(|e| e.under("active"))?;
        }
        if let Some(p) = &self.passive {
            if self.active.is_none() {
                // As in APISIX: a node marked down by passive checks alone would never return.
                return Err(ValidationError::new(
                    "active",
                    "passive checks need active checks too (to bring nodes back)",
                ));
            }
            p.validate().map_err(|e| e.under("passive"))?;
        }
        Ok(())
    }
}

impl ActiveCheck {
    fn validate(&self) -> Result<()> {
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= 60.0) {
            return Err(ValidationError::new(
                "timeout",
                "must be in (0, 60] seconds",
            ));
        }
        if let Some(h) = &self.host {
            check_host(h).map_err(|e| e.under("host"))?;
        }
        if self.port == Some(0) {
            return Err(ValidationError::new("port", "must be 1-65535"));
        }
        if !self.http_path.starts_with('/')
            || http::uri::PathAndQuery::try_from(self.http_path.as_str()).is_err()
        {
            return Err(ValidationError::new(
                "http_path",
                "must be a path starting with '/'",
            ));
        }
        for (i, h) in self.req_headers.iter().enumerate() {
            let ok = h.split_once(':').is_some_and(|(n, v)| {
                http::HeaderName::from_bytes(n.trim().as_bytes()).is_ok()
                    && http::HeaderValue::from_str(v.trim()).is_ok()
            });
            if !ok {
                return Err(ValidationError::new(
                    format!("req_headers.{i}"),
                    "expected 'Name: value'",
                ));
            }
        }
        for (field, v) in [
            ("healthy.interval", self.healthy.interval),
            ("unhealthy.interval", self.unhealthy.interval),
        ] {
            if !(1..=3600).contains(&v) {
                return Err(ValidationError::new(field, "must be 1-3600 seconds"));
            }
        }
        check_statuses("healthy.http_statuses", &self.healthy.http_statuses)?;
        check_statuses("unhealthy.http_statuses", &self.unhealthy.http_statuses)?;
        check_count("healthy.successes", self.healthy.successes, 1)?;
        check_count("unhealthy.http_failures", self.unhealthy.http_failures, 1)?;
        check_count("unhealthy.tcp_failures", self.unhealthy.tcp_failures, 1)?;
        check_count("unhealthy.timeouts", self.unhealthy.timeouts, 1)?;
        Ok(())
    }
}

impl PassiveCheck {
    fn validate(&self) -> Result<()> {
        check_statuses("healthy.http_statuses", &self.healthy.http_statuses)?;
        check_statuses("unhealthy.http_statuses", &self.unhealthy.http_statuses)?;
        // 0 disables that counter, as in APISIX.
        check_count("healthy.successes", self.healthy.successes, 0)?;
        check_count("unhealthy.http_failures", self.unhealthy.http_failures, 0)?;
        check_count("unhealthy.tcp_failures", self.unhealthy.tcp_failures, 0)?;
        check_count("unhealthy.timeouts", self.unhealthy.timeouts, 0)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: serde_json::Value) -> Result<HealthChecks> {
        let c: HealthChecks = crate::model::decode(&v)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn the_guides_checks_parse_as_written() {
        let c = parse(json!({
            "active": {
                "type": "http",
                "http_path": "/health",
                "healthy": {"interval": 5, "successes": 2},
                "unhealthy": {"interval": 3, "http_failures": 3, "tcp_failures": 3}
            },
            "passive": {
                "healthy": {"http_statuses": [200, 201], "successes": 3},
                "unhealthy": {"http_statuses": [500, 502, 503], "http_failures": 5, "tcp_failures": 2}
            }
        }))
        .unwrap();
        let a = c.active.unwrap();
        assert_eq!((a.healthy.interval, a.unhealthy.interval), (5, 3));
        assert_eq!(a.timeout, 1.0);
        assert_eq!(a.unhealthy.timeouts, 3);
        assert_eq!(c.passive.unwrap().unhealthy.timeouts, 7);
    }

    #[test]
    fn bad_checks_name_the_field() {
        let cases = [
            (json!({"passive": {}}), "active"),
            (json!({"active": {"type": "ftp"}}), "active.type"),
            (
                json!({"active": {"http_path": "health"}}),
                "active.http_path",
            ),
            (
                json!({"active": {"healthy": {"interval": 0}}}),
                "active.healthy.interval",
            ),
            (
                json!({"active": {"unhealthy": {"http_failures": 0}}}),
                "active.unhealthy.http_failures",
            ),
            (
                json!({"active": {"healthy": {"http_statuses": [99]}}}),
                "active.healthy.http_statuses.0",
            ),
            (json!({"active": {"timeout": 0}}), "active.timeout"),
            (
                json!({"active": {"req_headers": ["nope"]}}),
                "active.req_headers.0",
            ),
            (json!({"active": {"healty": {}}}), "active"),
        ];
        for (v, field) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert!(e.field.starts_with(field), "{v}: {e}");
        }
    }
}
