//! `consumer-restriction`: after an auth plugin identified the caller, allow or refuse it by
//! consumer name, consumer group or route, with APISIX's config shape.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use crate::model::error::{Result, ValidationError};

/// What the lists hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RestrictionType {
    #[default]
    ConsumerName,
    ConsumerGroupId,
    RouteId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerRestrictionConfig {
    /// `consumer_name` | `consumer_group_id` | `route_id` [default: `consumer_name`].
    #[serde(default, rename = "type")]
    pub kind: RestrictionType,
    /// Only these may pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whitelist: Option<Vec<String>>,
    /// These may not pass (checked before `whitelist`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blacklist: Option<Vec<String>>,
    /// Status for a refused caller [default: 403].
    #[serde(default = "default_code")]
    pub rejected_code: u16,
    /// Body message for a refused caller [default: "The <type> is forbidden."].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_msg: Option<String>,
}

fn default_code() -> u16 {
    403
}

impl PluginConfig for ConsumerRestrictionConfig {
    fn validate(&self) -> Result<()> {
        if self.whitelist.is_none() && self.blacklist.is_none() {
            return Err(ValidationError::new(
                "whitelist",
                "give a whitelist or a blacklist (or both)",
            ));
        }
        for (field, list) in [
            ("whitelist", &self.whitelist),
            ("blacklist", &self.blacklist),
        ] {
            if list.as_ref().is_some_and(|l| l.is_empty()) {
                return Err(ValidationError::new(field, "must not be empty"));
            }
        }
        if !(200..=599).contains(&self.rejected_code) {
            return Err(ValidationError::new("rejected_code", "must be 200-599"));
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
    fn the_guides_config_parses_and_bad_ones_name_the_field() {
        let c: ConsumerRestrictionConfig = parse(&json!({
            "type": "consumer_group_id",
            "whitelist": ["premium-users", "admin-group"],
            "rejected_code": 403,
            "rejected_msg": "Access denied: insufficient permissions"
        }))
        .unwrap();
        assert_eq!(c.kind, RestrictionType::ConsumerGroupId);
        let bad = [
            (json!({}), "whitelist"),
            (json!({"whitelist": []}), "whitelist"),
            (
                json!({"blacklist": ["a"], "rejected_code": 99}),
                "rejected_code",
            ),
            (json!({"type": "ip", "whitelist": ["a"]}), "type"),
            (json!({"whitelist": ["a"], "x": 1}), "x"),
        ];
        for (c, field) in bad {
            let e = parse::<ConsumerRestrictionConfig>(&c).expect_err(&c.to_string());
            assert_eq!(e.field, field, "{c}: {e}");
        }
    }
}
