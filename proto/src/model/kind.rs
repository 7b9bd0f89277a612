use std::fmt;
use std::str::FromStr;

/// The resource kinds of the Admin API, named as in its paths (`/admin/<kind>/<id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    Upstreams,
    /// Protobuf definitions for `grpc-transcode`. References nothing; routes and services
    /// reference them (`plugins.grpc-transcode.proto_id`).
    Protos,
    Services,
    Routes,
    /// Plugins run on every route; named `global_rules` as in APISIX. References nothing.
    GlobalRules,
    /// Groups of consumers (`consumer-restriction` by `consumer_group_id`). References nothing.
    ConsumerGroups,
    /// API users and their credentials; the id is the `username`. References consumer groups.
    Consumers,
    /// Revoked JWT ids, consumers and credentials. References nothing (a revocation may name a
    /// consumer that is gone or not there yet).
    Revocations,
    /// TLS certificates for the proxy's TLS listener, chosen by SNI. References nothing.
    Ssls,
    /// `proxy-cache` purges (one key or a whole route), written by `DELETE
    /// /admin/routes/<id>/cache`. References nothing (the route may be deleted meanwhile).
    CachePurges,
}

impl ResourceKind {
    /// Every kind, in dependency order: a kind only references kinds before it.
    pub const ALL: [ResourceKind; 10] = [
        ResourceKind::Upstreams,
        ResourceKind::Protos,
        ResourceKind::Services,
        ResourceKind::Routes,
        ResourceKind::GlobalRules,
        ResourceKind::ConsumerGroups,
        ResourceKind::Consumers,
        ResourceKind::Revocations,
        ResourceKind::Ssls,
        ResourceKind::CachePurges,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Upstreams => "upstreams",
            ResourceKind::Protos => "protos",
            ResourceKind::Services => "services",
            ResourceKind::Routes => "routes",
            ResourceKind::GlobalRules => "global_rules",
            ResourceKind::ConsumerGroups => "consumer_groups",
            ResourceKind::Consumers => "consumers",
            ResourceKind::Revocations => "revocations",
            ResourceKind::Ssls => "ssls",
            ResourceKind::CachePurges => "cache_purges",
        }
    }
}

impl serde::Serialize for ResourceKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ResourceKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown resource kind '{0}'")]
pub struct UnknownKind(pub String);

impl FromStr for ResourceKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResourceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// One resource naming another by id (`route.upstream_id` → `upstreams/<id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference<'a> {
    /// The field that holds the id, e.g. `upstream_id`.
    pub field: &'static str,
    pub kind: ResourceKind,
    pub id: &'a str,
}
