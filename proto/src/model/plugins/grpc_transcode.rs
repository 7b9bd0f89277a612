//! `grpc-transcode`: the route answers HTTP/JSON by calling one unary method of a gRPC upstream
//! (APISIX's names). The proto it names (`proto_id`) is a reference like `upstream_id`; that
//! its `service` and `method` exist there is checked against the compiled proto by
//! `ConfigSet::check_transcodes` (and by the Admin API when either side is written).

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use crate::model::error::{Result, ValidationError};
use crate::model::validate::check_id;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTranscodeConfig {
    /// Id of the `protos` resource (a string, like `upstream_id`; APISIX also takes a number).
    pub proto_id: String,
    /// Fully qualified service name: `package.Service`.
    pub service: String,
    pub method: String,
    /// Milliseconds the gRPC call may take (sent as `grpc-timeout`, and enforced here); 0 = the
    /// route's timeouts only.
    #[serde(default)]
    pub deadline: u64,
    /// How protobuf maps to JSON (APISIX's options that make sense here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pb_option: Vec<String>,
}

/// How 64-bit integers appear in responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int64As {
    Number,
    String,
}

/// Whether fields holding their default value appear in responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValues {
    /// proto3: shown (a REST client sees `"count": 0`); proto2: only fields that were set.
    Auto,
    /// Only fields that were set.
    Skip,
    /// Always.
    Show,
}

/// `pb_option` resolved: one choice per group, APISIX's defaults for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PbOptions {
    pub enum_as_name: bool,
    pub int64: Int64As,
    pub defaults: DefaultValues,
}

/// The option groups; at most one value of a group may be given.
const GROUPS: &[(&str, &[&str])] = &[
    ("enum", &["enum_as_name", "enum_as_value"]),
    ("int64", &["int64_as_number", "int64_as_string"]),
    (
        "default values",
        &[
            "auto_default_values",
            "no_default_values",
            "use_default_values",
        ],
    ),
    // Lua hooks do not exist here; `disable_hooks` (APISIX's default) is accepted as a no-op.
    ("hooks", &["disable_hooks"]),
];

impl GrpcTranscodeConfig {
    pub fn pb_options(&self) -> Result<PbOptions> {
        let mut options = PbOptions {
            enum_as_name: true,
            int64: Int64As::Number,
            defaults: DefaultValues::Auto,
        };
        let mut seen: Vec<&str> = Vec::new();
        for (i, opt) in self.pb_option.iter().enumerate() {
            let field = format!("pb_option.{i}");
            let Some((group, _)) = GROUPS
                .iter()
                .find(|(_, values)| values.contains(&opt.as_str()))
            else {
                let known: Vec<&str> = GROUPS.iter().flat_map(|(_, v)| v.iter().copied()).collect();
                return Err(ValidationError::new(
                    field,
                    format!(
                        "unknown or unsupported option '{opt}' (known: {})",
                        known.join(", ")
                    ),
                ));
            };
            if seen.contains(group) {
                return Err(ValidationError::new(
                    field,
                    format!("more than one {group} option"),
                ));
            }
            seen.push(group);
            match opt.as_str() {
                "enum_as_value" => options.enum_as_name = false,
                "int64_as_string" => options.int64 = Int64As::String,
                "no_default_values" => options.defaults = DefaultValues::Skip,
                "use_default_values" => options.defaults = DefaultValues::Show,
                _ => {}
            }
        }
        Ok(options)
    }
}

impl PluginConfig for GrpcTranscodeConfig {
    fn validate(&self) -> Result<()> {
        check_id(&self.proto_id).map_err(|e| e.under("proto_id"))?;
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 256
                && s.split('.').all(|p| {
                    !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
        };
        if !name_ok(&self.service) {
            return Err(ValidationError::new(
                "service",
                "a fully qualified service name, e.g. 'helloworld.Greeter'",
            ));
        }
        if !name_ok(&self.method) || self.method.contains('.') {
            return Err(ValidationError::new(
                "method",
                "a method name, e.g. 'SayHello'",
            ));
        }
        if self.deadline > 3_600_000 {
            return Err(ValidationError::new(
                "deadline",
                "milliseconds, at most 3600000 (1 h)",
            ));
        }
        self.pb_options().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::model::plugins::parse;

    #[test]
    fn configs() {
        let ok = parse::<GrpcTranscodeConfig>(&json!({
            "proto_id": "1", "service": "helloworld.Greeter", "method": "SayHello",
            "deadline": 500, "pb_option": ["enum_as_value", "int64_as_string", "disable_hooks"]
        }))
        .unwrap();
        assert_eq!(ok.proto_id, "1");
        assert_eq!(
            ok.pb_options().unwrap(),
            PbOptions {
                enum_as_name: false,
                int64: Int64As::String,
                defaults: DefaultValues::Auto
            }
        );
        let base = json!({"proto_id": "p", "service": "a.S", "method": "M"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        let cases = [
            (with("proto_id", json!("a b")), "proto_id"),
            (with("proto_id", json!(-1)), "proto_id"),
            (with("service", json!("a..S")), "service"),
            (with("method", json!("a.M")), "method"),
            (with("deadline", json!(-5)), "deadline"),
            (with("deadline", json!(7_200_000)), "deadline"),
            (
                with("pb_option", json!(["int64_as_hexstring"])),
                "pb_option.0",
            ),
            (
                with("pb_option", json!(["enum_as_name", "enum_as_value"])),
                "pb_option.1",
            ),
            (
                with("show_status_in_body", json!(true)),
                "show_status_in_body",
            ),
        ];
        for (body, field) in cases {
            let e = parse::<GrpcTranscodeConfig>(&body).expect_err(&body.to_string());
            assert_eq!(e.field, field, "{body} -> {e}");
        }
    }
}
