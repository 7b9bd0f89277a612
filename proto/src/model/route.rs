use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{Result, ValidationError};
use super::kind::{Reference, ResourceKind};
use super::plugins::{plugin_references, validate_plugins};
use super::upstream::{Timeout, UpstreamConfig};
use super::validate::{check_host_pattern, check_id, check_method, check_text, check_uri};
use super::vars::parse_vars;

/// A route: what requests it matches and where they go, in APISIX's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Exact path, or a prefix when it ends with `*` (`/api/*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uris: Option<Vec<String>>,
    /// Allowed methods; absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// Higher wins among routes that match the same path.
    #[serde(default)]
    pub priority: i32,
    /// Request conditions, all of which must hold (APISIX `vars`; see [`super::vars`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    /// Route-level timeouts override the upstream's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// 1 = enabled (default), 0 = disabled (never matches).
    #[serde(default = "enabled")]
    pub status: u8,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
}

fn enabled() -> u8 {
    1
}

impl RouteConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.id {
            check_id(id).map_err(|e| e.under("id"))?;
        }
        check_text("name", self.name.as_deref())?;
        check_text("desc", self.desc.as_deref())?;
        if self.uri.is_none() && self.uris.as_ref().is_none_or(|u| u.is_empty()) {
            return Err(ValidationError::new("uri", "a route needs 'uri' or 'uris'"));
        }
        if self.uri.is_some() && self.uris.is_some() {
            return Err(ValidationError::new(
                "uris",
                "give either 'uri' or 'uris', not both",
            ));
        }
        if let Some(uri) = &self.uri {
            check_uri(uri).map_err(|e| e.under("uri"))?;
        }
        for (i, uri) in self.uris.iter().flatten().enumerate() {
            check_uri(uri).map_err(|e| e.under(&format!("uris.{i}")))?;
        }
        for (i, m) in self.methods.iter().flatten().enumerate() {
            check_method(m).map_err(|e| e.under(&format!("methods.{i}")))?;
        }
        if self.host.is_some() && self.hosts.is_some() {
            return Err(ValidationError::new(
                "hosts",
                "give either 'host' or 'hosts', not both",
            ));
        }
        if let Some(h) = &self.host {
            check_host_pattern(h).map_err(|e| e.under("host"))?;
        }
        for (i, h) in self.hosts.iter().flatten().enumerate() {
            check_host_pattern(h).map_err(|e| e.under(&format!("hosts.{i}")))?;
        }
        if let Some(vars) = &self.vars {
            parse_vars(vars).map_err(|e| e.under("vars"))?;
        }
        if self.status > 1 {
            return Err(ValidationError::new(
                "status",
                "must be 0 (disabled) or 1 (enabled)",
            ));
        }
        if let Some(t) = &self.timeout {
            t.validate().map_err(|e| e.under("timeout"))?;
        }
        if let Some(u) = &self.upstream {
            if self.upstream_id.is_some() {
                return Err(ValidationError::new(
                    "upstream_id",
                    "give either 'upstream' or 'upstream_id', not both",
                ));
            }
            u.validate().map_err(|e| e.under("upstream"))?;
        }
        for (field, id) in [
            ("upstream_id", &self.upstream_id),
            ("service_id", &self.service_id),
        ] {
            if let Some(id) = id {
                check_id(id).map_err(|e| e.under(field))?;
            }
        }
        if self.upstream.is_none()
            && self.upstream_id.is_none()
            && self.service_id.is_none()
            && self.plugins.is_empty()
        {
            return Err(ValidationError::new(
                "upstream",
                "a route needs 'upstream', 'upstream_id' or 'service_id' (or plugins that answer it)",
            ));
        }
        validate_plugins(&self.plugins).map_err(|e| e.under("plugins"))
    }

    /// The resources this route names by id.
    pub fn references(&self) -> impl Iterator<Item = Reference<'_>> {
        let upstream = self.upstream_id.as_deref().map(|id| Reference {
            field: "upstream_id",
            kind: ResourceKind::Upstreams,
            id,
        });
        let service = self.service_id.as_deref().map(|id| Reference {
            field: "service_id",
            kind: ResourceKind::Services,
            id,
        });
        upstream
            .into_iter()
            .chain(service)
            .chain(plugin_references(&self.plugins))
    }

    /// Every path this route matches on (`uri` or `uris`).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.uri
            .iter()
            .chain(self.uris.iter().flatten())
            .map(String::as_str)
    }

    /// Every host pattern this route is limited to (`host` or `hosts`); empty = any host.
    pub fn host_patterns(&self) -> impl Iterator<Item = &str> {
        self.host
            .iter()
            .chain(self.hosts.iter().flatten())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::model::{Resource, ResourceKind, Result};

    fn parse(body: Value) -> Result<Resource> {
        Resource::parse(ResourceKind::Routes, &body)
    }

    #[test]
    fn vars_and_param_uris_parse() {
        let body = json!({
            "uri": "/users/:id",
            "vars": [
                ["http_x_client", "==", "mobile"],
                ["arg_page", ">", "1"],
                ["cookie_session", "~~", "^a"],
                ["remote_addr", "in", ["127.0.0.1"]],
                ["http_x", "!", "==", "a"]
            ],
            "upstream": {"nodes": {"127.0.0.1:80": 1}}
        });
        let Ok(Resource::Route(r)) = parse(body.clone()) else {
            panic!("route should parse")
        };
        assert_eq!(r.vars.as_ref().map(Vec::len), Some(5));
        // Round-trips in the same shape.
        assert_eq!(serde_json::to_value(&r).unwrap()["vars"], body["vars"]);
    }

    #[test]
    fn bad_vars_and_params_name_the_field() {
        let up = json!({"nodes": {"127.0.0.1:80": 1}});
        let cases = [
            (
                json!({"uri": "/a", "upstream": up, "vars": [["http_x", "=", "a"]]}),
                "vars.0.1",
            ),
            (
                json!({"uri": "/a", "upstream": up,
                       "vars": [["http_x", "==", "a"], ["uri", "~~", "(unclosed"]]}),
                "vars.1.2",
            ),
            (
                json!({"uri": "/a", "upstream": up, "vars": [["bogus", "==", "a"]]}),
                "vars.0.0",
            ),
            (
                json!({"uri": "/a", "upstream": up, "vars": ["http_x"]}),
                "vars.0",
            ),
            (
                json!({"uri": "/a", "upstream": up, "vars": {"a": 1}}),
                "vars",
            ),
            (json!({"uri": "/users/:", "upstream": up}), "uri"),
            (json!({"uri": "/users/a:b", "upstream": up}), "uri"),
            (json!({"uris": ["/a", "/u/:1"], "upstream": up}), "uris.1"),
        ];
        for (body, field) in cases {
            let e = parse(body.clone()).expect_err("should be rejected");
            assert_eq!(e.field, field, "{body} -> {e}");
        }
    }
}
