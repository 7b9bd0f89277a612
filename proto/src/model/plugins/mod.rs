//! The plugin registry of the config model: which plugin names exist, the order they run in, and
//! how each one's config is parsed and checked. One file per plugin holds its config type; its
//! behaviour lives in the data plane (`data-plane/src/plugins/<name>.rs`).

pub mod api_breaker;
pub mod client_control;
pub mod consumer_restriction;
pub mod cors;
pub mod grpc_transcode;
pub mod header_ops;
pub mod jwt_auth;
pub mod key_auth;
pub mod limit_conn;
pub mod limit_count;
pub mod limit_req;
pub mod limits;
pub mod openid_connect;
pub mod opentelemetry;
pub mod prometheus;
pub mod proxy_cache;
pub mod proxy_rewrite;
pub mod rate_limiting;
pub mod redirect;
pub mod request_id;
pub mod request_termination;
pub mod response_rewrite;

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{Result, ValidationError};

/// One known plugin: its name as users write it, its priority and its config check.
pub struct PluginSpec {
    pub name: &'static str,
    /// Higher runs first within a phase, as in APISIX (whose numbers are kept where a plugin has
    /// an APISIX twin, so mixed configs order the same way).
    pub priority: i32,
    pub validate: fn(&Value) -> Result<()>,
}

/// A plugin config type: serde shape plus the checks serde cannot express.
pub trait PluginConfig: DeserializeOwned {
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// Parses and checks one plugin's config; errors name the field inside it.
pub fn parse<T: PluginConfig>(config: &Value) -> Result<T> {
    let parsed: T = super::decode(config)?;
    parsed.validate()?;
    Ok(parsed)
}

fn check<T: PluginConfig>(config: &Value) -> Result<()> {
    parse::<T>(config).map(|_| ())
}

/// Every plugin this version of Postern can run, highest priority first. The data plane has one
/// implementation per entry; a name missing here is rejected at the Admin API, never ignored.
pub const PLUGINS: &[PluginSpec] = &[
    PluginSpec {
        name: "client-control",
        priority: 22000,
        validate: check::<client_control::ClientControlConfig>,
    },
    PluginSpec {
        name: "request-id",
        priority: 12015,
        validate: check::<request_id::RequestIdConfig>,
    },
    PluginSpec {
        name: "opentelemetry",
        priority: 12009,
        validate: check::<opentelemetry::OpenTelemetryConfig>,
    },
    PluginSpec {
        name: "cors",
        priority: 4000,
        validate: check::<cors::CorsConfig>,
    },
    PluginSpec {
        name: "request-termination",
        priority: 2990,
        validate: check::<request_termination::RequestTerminationConfig>,
    },
    PluginSpec {
        name: "openid-connect",
        priority: 2599,
        validate: check::<openid_connect::OpenIdConnectConfig>,
    },
    PluginSpec {
        name: "jwt-auth",
        priority: 2510,
        validate: check::<jwt_auth::JwtAuthConfig>,
    },
    PluginSpec {
        name: "key-auth",
        priority: 2500,
        validate: check::<key_auth::KeyAuthConfig>,
    },
    PluginSpec {
        name: "consumer-restriction",
        priority: 2400,
        validate: check::<consumer_restriction::ConsumerRestrictionConfig>,
    },
    PluginSpec {
        name: "proxy-cache",
        priority: 1085,
        validate: check::<proxy_cache::ProxyCacheConfig>,
    },
    PluginSpec {
        name: "proxy-rewrite",
        priority: 1008,
        validate: check::<proxy_rewrite::ProxyRewriteConfig>,
    },
    PluginSpec {
        name: "api-breaker",
        priority: 1005,
        validate: check::<api_breaker::ApiBreakerConfig>,
    },
    PluginSpec {
        name: "limit-conn",
        priority: 1003,
        validate: check::<limit_conn::LimitConnConfig>,
    },
    PluginSpec {
        name: "limit-count",
        priority: 1002,
        validate: check::<limit_count::LimitCountConfig>,
    },
    PluginSpec {
        name: "limit-req",
        priority: 1001,
        validate: check::<limit_req::LimitReqConfig>,
    },
    // Kong's priority is 910; 1000 keeps it with its APISIX siblings.
    PluginSpec {
        name: "rate-limiting",
        priority: 1000,
        validate: check::<rate_limiting::RateLimitingConfig>,
    },
    PluginSpec {
        name: "redirect",
        priority: 900,
        validate: check::<redirect::RedirectConfig>,
    },
    PluginSpec {
        name: "response-rewrite",
        priority: 899,
        validate: check::<response_rewrite::ResponseRewriteConfig>,
    },
    PluginSpec {
        name: "grpc-transcode",
        priority: 506,
        validate: check::<grpc_transcode::GrpcTranscodeConfig>,
    },
    PluginSpec {
        name: "prometheus",
        priority: 500,
        validate: check::<prometheus::PrometheusConfig>,
    },
];

/// The resources a plugin map names by id: `grpc-transcode`'s `proto_id`. Read from the raw
/// config (validated before this is asked).
pub fn plugin_references(
    plugins: &BTreeMap<String, Value>,
) -> impl Iterator<Item = super::Reference<'_>> {
    plugins
        .get("grpc-transcode")
        .and_then(|c| c.get("proto_id"))
        .and_then(Value::as_str)
        .map(|id| super::Reference {
            field: "plugins.grpc-transcode.proto_id",
            kind: super::ResourceKind::Protos,
            id,
        })
        .into_iter()
}

pub fn find_plugin(name: &str) -> Option<&'static PluginSpec> {
    PLUGINS.iter().find(|p| p.name == name)
}

pub fn validate_plugins(plugins: &BTreeMap<String, Value>) -> Result<()> {
    for (name, config) in plugins {
        let spec = find_plugin(name).ok_or_else(|| {
            let known: Vec<_> = PLUGINS.iter().map(|p| p.name).collect();
            ValidationError::new(
                name.as_str(),
                format!("unknown plugin '{name}' (known: {})", known.join(", ")),
            )
        })?;
        (spec.validate)(config).map_err(|e| e.under(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_unique() {
        for pair in PLUGINS.windows(2) {
            assert!(
                pair[0].priority > pair[1].priority,
                "{} / {}",
                pair[0].name,
                pair[1].name
            );
        }
    }
}
