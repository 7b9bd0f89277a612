use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{Result, ValidationError};
use super::kind::{Reference, ResourceKind};
use super::plugins::{plugin_references, validate_plugins};
use super::upstream::UpstreamConfig;
use super::validate::{check_host_pattern, check_id, check_text};

/// A service: an upstream and plugins shared by the routes that name it in `service_id`.
/// A route's own `upstream`/`upstream_id` and plugins override the service's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, Value>,
    /// Routes of this service without hosts of their own match only these hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
}

impl ServiceConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.id {
            check_id(id).map_err(|e| e.under("id"))?;
        }
        check_text("name", self.name.as_deref())?;
        check_text("desc", self.desc.as_deref())?;
        if let Some(u) = &self.upstream {
            if self.upstream_id.is_some() {
                return Err(ValidationError::new(
                    "upstream_id",
                    "give either 'upstream' or 'upstream_id', not both",
                ));
            }
            u.validate().map_err(|e| e.under("upstream"))?;
        }
        if let Some(id) = &self.upstream_id {
            check_id(id).map_err(|e| e.under("upstream_id"))?;
        }
        for (i, h) in self.hosts.iter().flatten().enumerate() {
            check_host_pattern(h).map_err(|e| e.under(&format!("hosts.{i}")))?;
        }
        validate_plugins(&self.plugins).map_err(|e| e.under("plugins"))
    }

    /// The resources this service names by id.
    pub fn references(&self) -> impl Iterator<Item = Reference<'_>> {
        let upstream = self.upstream_id.as_deref().map(|id| Reference {
            field: "upstream_id",
            kind: ResourceKind::Upstreams,
            id,
        });
        upstream.into_iter().chain(plugin_references(&self.plugins))
    }
}
