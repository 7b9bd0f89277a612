use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{Result, ValidationError};
use super::plugins::validate_plugins;
use super::validate::{check_id, check_text};

/// A global rule (APISIX's `global_rules`): plugins that run on every route, before the route's
/// own. Layers merge global rules (in id order), then the route's service, then the route; for a
/// plugin configured in more than one layer the later layer's config wins (APISIX would run both
/// the global rule's and the route's instance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalRuleConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Required and non-empty: a global rule is only its plugins.
    #[serde(default)]
    pub plugins: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
}

impl GlobalRuleConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.id {
            check_id(id).map_err(|e| e.under("id"))?;
        }
        check_text("name", self.name.as_deref())?;
        check_text("desc", self.desc.as_deref())?;
        if self.plugins.is_empty() {
            return Err(ValidationError::new(
                "plugins",
                "a global rule needs at least one plugin",
            ));
        }
        if self.plugins.contains_key("grpc-transcode") {
            // One gRPC method for every route makes no sense, and a global rule holds no
            // references (a proto could not be kept from deletion under it).
            return Err(ValidationError::new(
                "plugins.grpc-transcode",
                "grpc-transcode belongs on a route or a service, not a global rule",
            ));
        }
        validate_plugins(&self.plugins).map_err(|e| e.under("plugins"))
    }
}
