//! `opentelemetry`: a server span per request, exported over OTLP/gRPC to the collector the
//! data plane is started with (`--otlp-endpoint`), and W3C trace context passed to the upstream
//! with the gateway's span as its parent. APISIX's config shape, as in the guide's global rule.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use crate::model::error::{Result, ValidationError};
use crate::model::vars::parse_var;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenTelemetryConfig {
    #[serde(default)]
    pub sampler: Sampler,
    /// Request variables (`http_x_tenant`, `arg_page`, `remote_addr`, `route_id`…) recorded as
    /// span attributes under their own name. A name that is not a request variable (the guide's
    /// `service.version`) is accepted and records nothing, as in APISIX where it reads as nil.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_attributes: Vec<String>,
    /// Request headers whose name starts with one of these prefixes (case-insensitive) are
    /// recorded as attributes `http.request.header.<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_header_prefix_attributes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampler {
    pub name: SamplerName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<SamplerOptions>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            name: SamplerName::AlwaysOff,
            options: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerName {
    AlwaysOn,
    /// APISIX's default: spans are made (and context propagated) but none exported.
    AlwaysOff,
    TraceIdRatio,
    /// Follow the caller's sampled flag when a `traceparent` came in; otherwise sample by ratio.
    ParentBasedTraceidratio,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerOptions {
    /// Share of traces sampled, 0 to 1 [default: 0].
    #[serde(default)]
    pub fraction: f64,
    /// APISIX's parent-based root sampler: `{"name": "trace_id_ratio", "options": {"fraction"}}`;
    /// when given, its fraction decides traces that start here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Box<Sampler>>,
}

impl Sampler {
    /// The ratio for traces that start at the gateway.
    pub fn root_fraction(&self) -> f64 {
        match self.name {
            SamplerName::AlwaysOn => 1.0,
            SamplerName::AlwaysOff => 0.0,
            SamplerName::TraceIdRatio | SamplerName::ParentBasedTraceidratio => {
                match &self.options {
                    Some(SamplerOptions {
                        root: Some(root), ..
                    }) => root.root_fraction(),
                    Some(o) => o.fraction,
                    None => 0.0,
                }
            }
        }
    }

    fn check(&self) -> Result<()> {
        if let Some(o) = &self.options {
            if !(0.0..=1.0).contains(&o.fraction) {
                return Err(ValidationError::new(
                    "options.fraction",
                    "must be between 0 and 1",
                ));
            }
            if let Some(root) = &o.root {
                root.check().map_err(|e| e.under("options.root"))?;
            }
        }
        Ok(())
    }
}

impl PluginConfig for OpenTelemetryConfig {
    fn validate(&self) -> Result<()> {
        self.sampler.check().map_err(|e| e.under("sampler"))?;
        for (i, name) in self.additional_attributes.iter().enumerate() {
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                return Err(ValidationError::new(
                    format!("additional_attributes.{i}"),
                    "must be 1-128 printable characters",
                ));
            }
        }
        for (i, prefix) in self.additional_header_prefix_attributes.iter().enumerate() {
            let ok = !prefix.is_empty()
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !ok {
                return Err(ValidationError::new(
                    format!("additional_header_prefix_attributes.{i}"),
                    "must be the start of a header name",
                ));
            }
        }
        Ok(())
    }
}

/// Whether `name` is a request variable the data plane can read (else it records nothing).
pub fn is_request_var(name: &str) -> bool {
    name == "route_id" || parse_var(name).is_ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::plugins::parse;

    #[test]
    fn the_guides_config_as_written() {
        let c: OpenTelemetryConfig = parse(&json!({
            "sampler": {"name": "parent_based_traceidratio", "options": {"fraction": 0.1}},
            "additional_attributes": ["service.version"],
            "additional_header_prefix_attributes": ["X-Custom-"]
        }))
        .unwrap();
        assert_eq!(c.sampler.name, SamplerName::ParentBasedTraceidratio);
        assert_eq!(c.sampler.root_fraction(), 0.1);
        assert!(!is_request_var("service.version"));
        assert!(is_request_var("http_x_tenant"));
    }

    #[test]
    fn defaults_and_roots() {
        let c: OpenTelemetryConfig = parse(&json!({})).unwrap();
        assert_eq!(c.sampler.root_fraction(), 0.0);
        let c: OpenTelemetryConfig = parse(&json!({"sampler": {"name": "always_on"}})).unwrap();
        assert_eq!(c.sampler.root_fraction(), 1.0);
        let c: OpenTelemetryConfig = parse(&json!({"sampler": {
            "name": "parent_based_traceidratio",
            "options": {"root": {"name": "trace_id_ratio", "options": {"fraction": 0.25}}}
        }}))
        .unwrap();
        assert_eq!(c.sampler.root_fraction(), 0.25);
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (config, field) in [
            (
                json!({"sampler": {"name": "trace_id_ratio", "options": {"fraction": 1.5}}}),
                "sampler.options.fraction",
            ),
            (json!({"sampler": {"name": "sometimes"}}), "sampler.name"),
            (
                json!({"additional_header_prefix_attributes": ["X Custom"]}),
                "additional_header_prefix_attributes.0",
            ),
            (
                json!({"additional_attributes": [""]}),
                "additional_attributes.0",
            ),
        ] {
            let e = parse::<OpenTelemetryConfig>(&config).unwrap_err();
            assert_eq!(e.field, field, "{config}");
        }
    }
}
