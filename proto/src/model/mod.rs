//! The configuration model: one serde type per resource kind, each with `validate()`, plus the
//! checks that span resources (references between them).

mod cache_purge;
pub mod checks;
mod consumer;
mod error;
mod global_rule;
mod kind;
pub mod plugins;
pub mod protos;
mod revocation;
mod route;
pub mod secrets;
mod service;
mod ssl;
mod upstream;
pub mod validate;
pub mod vars;

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use cache_purge::{CachePurgeConfig, PURGE_LIFETIME_SECS};
pub use consumer::{CREDENTIAL_PLUGINS, ConsumerConfig, ConsumerGroupConfig, CredentialClaim};
pub use error::{Result, ValidationError};
pub use global_rule::GlobalRuleConfig;
pub use kind::{Reference, ResourceKind, UnknownKind};
pub use protos::ProtoConfig;
pub use revocation::{RevocationConfig, RevocationType};
pub use route::RouteConfig;
pub use service::ServiceConfig;
pub use ssl::SslConfig;
pub use upstream::{
    BalancerType, HashOn, KeepalivePool, MAX_WEIGHT, Node, NodeConfig, Nodes, PassHost, Scheme,
    Timeout, UpstreamConfig, UpstreamTls, parse_address,
};

/// One validated resource of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Upstream(UpstreamConfig),
    Proto(ProtoConfig),
    Service(ServiceConfig),
    Route(RouteConfig),
    GlobalRule(GlobalRuleConfig),
    ConsumerGroup(ConsumerGroupConfig),
    Consumer(ConsumerConfig),
    Revocation(RevocationConfig),
    Ssl(SslConfig),
    CachePurge(CachePurgeConfig),
}

impl Resource {
    /// Parses and validates a resource body. Every error names the offending field.
    pub fn parse(kind: ResourceKind, body: &Value) -> Result<Resource> {
        let r = match kind {
            ResourceKind::Upstreams => Resource::Upstream(decode::<UpstreamConfig>(body)?),
            ResourceKind::Protos => {
                // Compiled here, once: the descriptors travel with the parsed resource.
                let mut p = decode::<ProtoConfig>(body)?;
                p.compile()?;
                Resource::Proto(p)
            }
            ResourceKind::Services => Resource::Service(decode::<ServiceConfig>(body)?),
            ResourceKind::Routes => Resource::Route(decode::<RouteConfig>(body)?),
            ResourceKind::GlobalRules => Resource::GlobalRule(decode::<GlobalRuleConfig>(body)?),
            ResourceKind::ConsumerGroups => {
                Resource::ConsumerGroup(decode::<ConsumerGroupConfig>(body)?)
            }
            ResourceKind::Consumers => Resource::Consumer(decode::<ConsumerConfig>(body)?),
            ResourceKind::Revocations => Resource::Revocation(decode::<RevocationConfig>(body)?),
            ResourceKind::Ssls => Resource::Ssl(decode::<SslConfig>(body)?),
            ResourceKind::CachePurges => Resource::CachePurge(decode::<CachePurgeConfig>(body)?),
        };
        match &r {
            Resource::Upstream(u) => u.validate()?,
            Resource::Proto(_) => {}
            Resource::Service(s) => s.validate()?,
            Resource::Route(rt) => rt.validate()?,
            Resource::GlobalRule(g) => g.validate()?,
            Resource::ConsumerGroup(g) => g.validate()?,
            Resource::Consumer(c) => c.validate()?,
            Resource::Revocation(r) => r.validate()?,
            Resource::Ssl(s) => s.validate()?,
            Resource::CachePurge(p) => p.validate()?,
        }
        Ok(r)
    }

    /// The resources this one names by id, which must exist while it does.
    pub fn references(&self) -> Vec<Reference<'_>> {
        match self {
            Resource::Upstream(_)
            | Resource::Proto(_)
            | Resource::GlobalRule(_)
            | Resource::ConsumerGroup(_)
            | Resource::Revocation(_)
            | Resource::Ssl(_)
            | Resource::CachePurge(_) => Vec::new(),
            Resource::Consumer(c) => c.references().collect(),
            Resource::Service(s) => s.references().collect(),
            Resource::Route(r) => r.references().collect(),
        }
    }

    /// Credentials named in this resource that no other resource may hold (checked by the
    /// stores in the write's transaction).
    pub fn claims(&self) -> Vec<CredentialClaim<'_>> {
        match self {
            Resource::Consumer(c) => c.claims(),
            _ => Vec::new(),
        }
    }
}

/// Deserialises with the path of the first error, so `{"upstream":{"nodes":{"x":"a"}}}` reports
/// `upstream.nodes.x` rather than just "invalid type".
pub(crate) fn decode<T: DeserializeOwned>(body: &Value) -> Result<T> {
    if !body.is_object() {
        return Err(ValidationError::new("", "the body must be a JSON object"));
    }
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        let message = e.into_inner().to_string();
        // serde names an unknown or missing field only in its message; put it in the path too.
        let field = match unknown_field_name(&message) {
            Some(name) if field.is_empty() => name.to_string(),
            Some(name) if !field.ends_with(name) => format!("{field}.{name}"),
            _ => field,
        };
        ValidationError::new(field, message)
    })
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next()
}

/// A whole configuration, as one snapshot carries it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSet {
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Compiled (see [`ProtoConfig::pool`]).
    pub protos: BTreeMap<String, ProtoConfig>,
    pub services: BTreeMap<String, ServiceConfig>,
    pub routes: BTreeMap<String, RouteConfig>,
    /// By id: their plugins are merged in this order, before a route's service's and its own.
    pub global_rules: BTreeMap<String, GlobalRuleConfig>,
    pub consumer_groups: BTreeMap<String, ConsumerGroupConfig>,
    /// By username.
    pub consumers: BTreeMap<String, ConsumerConfig>,
    pub revocations: BTreeMap<String, RevocationConfig>,
    pub ssls: BTreeMap<String, SslConfig>,
    pub cache_purges: BTreeMap<String, CachePurgeConfig>,
}

impl ConfigSet {
    /// Adds one resource; `id` is the resource's key (the body's own `id`, if any, must agree).
    pub fn insert(&mut self, id: &str, resource: Resource) {
        let id = id.to_string();
        match resource {
            Resource::Upstream(u) => {
                self.upstreams.insert(id, u);
            }
            Resource::Proto(p) => {
                self.protos.insert(id, p);
            }
            Resource::Service(s) => {
                self.services.insert(id, s);
            }
            Resource::Route(r) => {
                self.routes.insert(id, r);
            }
            Resource::GlobalRule(g) => {
                self.global_rules.insert(id, g);
            }
            Resource::ConsumerGroup(g) => {
                self.consumer_groups.insert(id, g);
            }
            Resource::Consumer(c) => {
                self.consumers.insert(id, c);
            }
            Resource::Revocation(r) => {
                self.revocations.insert(id, r);
            }
            Resource::Ssl(s) => {
                self.ssls.insert(id, s);
            }
            Resource::CachePurge(p) => {
                self.cache_purges.insert(id, p);
            }
        }
    }

    /// Checks that every reference points at a resource that exists (a snapshot is served only
    /// when it is consistent as a whole).
    pub fn check_references(&self) -> Result<()> {
        let services = self.services.iter().map(|(id, s)| {
            (
                ResourceKind::Services,
                id,
                s.references().collect::<Vec<_>>(),
            )
        });
        let routes = self
            .routes
            .iter()
            .map(|(id, r)| (ResourceKind::Routes, id, r.references().collect::<Vec<_>>()));
        let consumers = self.consumers.iter().map(|(id, c)| {
            (
                ResourceKind::Consumers,
                id,
                c.references().collect::<Vec<_>>(),
            )
        });
        for (kind, id, refs) in services.chain(routes).chain(consumers) {
            self.check_refs(kind, id, refs)?;
        }
        self.check_credentials()?;
        self.check_transcodes()
    }

    /// What [`ConfigSet::check_references`] checks of a route, for one that is not in the set:
    /// its references resolve among the set's resources, and its `grpc-transcode` names a
    /// method its proto has. (A data plane checks the routes it compiles one at a time.)
    pub fn check_route(&self, id: &str, route: &RouteConfig) -> Result<()> {
        self.check_refs(ResourceKind::Routes, id, route.references())?;
        self.check_transcode(ResourceKind::Routes, id, &route.plugins)
    }

    fn check_refs<'a>(
        &self,
        kind: ResourceKind,
        id: &str,
        refs: impl IntoIterator<Item = Reference<'a>>,
    ) -> Result<()> {
        let exists = |kind: ResourceKind, id: &str| match kind {
            ResourceKind::Upstreams => self.upstreams.contains_key(id),
            ResourceKind::Protos => self.protos.contains_key(id),
            ResourceKind::Services => self.services.contains_key(id),
            ResourceKind::Routes => self.routes.contains_key(id),
            ResourceKind::GlobalRules => self.global_rules.contains_key(id),
            ResourceKind::ConsumerGroups => self.consumer_groups.contains_key(id),
            ResourceKind::Consumers => self.consumers.contains_key(id),
            ResourceKind::Revocations => self.revocations.contains_key(id),
            ResourceKind::Ssls => self.ssls.contains_key(id),
            ResourceKind::CachePurges => self.cache_purges.contains_key(id),
        };
        for r in refs {
            if !exists(r.kind, r.id) {
                return Err(ValidationError::new(
                    format!("{kind}/{id}.{}", r.field),
                    format!("references {} '{}' which does not exist", r.kind, r.id),
                ));
            }
        }
        Ok(())
    }

    /// Every `grpc-transcode` (on a route or a service) names a unary method its proto has.
    pub fn check_transcodes(&self) -> Result<()> {
        let services = self
            .services
            .iter()
            .map(|(id, s)| (ResourceKind::Services, id, &s.plugins));
        let routes = self
            .routes
            .iter()
            .map(|(id, r)| (ResourceKind::Routes, id, &r.plugins));
        for (kind, id, plugins) in services.chain(routes) {
            self.check_transcode(kind, id, plugins)?;
        }
        Ok(())
    }

    fn check_transcode(
        &self,
        kind: ResourceKind,
        id: &str,
        plugins: &BTreeMap<String, serde_json::Value>,
    ) -> Result<()> {
        let Some(config) = plugins.get("grpc-transcode") else {
            return Ok(());
        };
        let at = format!("{kind}/{id}.plugins.grpc-transcode");
        let config = plugins::parse::<plugins::grpc_transcode::GrpcTranscodeConfig>(config)
            .map_err(|e| e.under(&at))?;
        let pool = self
            .protos
            .get(&config.proto_id)
            .and_then(ProtoConfig::pool)
            .ok_or_else(|| {
                ValidationError::new(
                    format!("{at}.proto_id"),
                    format!(
                        "references protos '{}' which does not exist",
                        config.proto_id
                    ),
                )
            })?;
        protos::find_method(pool, &config.service, &config.method).map_err(|e| {
            ValidationError::new(
                format!("{at}.{}", e.field),
                format!("{} (protos/{})", e.message, config.proto_id),
            )
        })?;
        Ok(())
    }

    /// A credential (jwt-auth key, key-auth key) belongs to one consumer only: otherwise which
    /// consumer a request is would depend on lookup order. The Admin API refuses the second one
    /// (409) in the write's transaction; this catches a store that holds such a pair anyway.
    fn check_credentials(&self) -> Result<()> {
        let mut seen: std::collections::HashMap<(&str, &str), &str> =
            std::collections::HashMap::new();
        for (username, consumer) in &self.consumers {
            for claim in consumer.claims() {
                if let Some(other) = seen.insert((claim.plugin, claim.value), username) {
                    // The value itself may be a secret (key-auth): never in the message.
                    return Err(ValidationError::new(
                        format!("consumers/{username}.{}", claim.field),
                        format!(
                            "the same {} credential is held by consumers/{other}",
                            claim.plugin
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
