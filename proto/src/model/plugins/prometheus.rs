//! `prometheus`: accepted so APISIX configs (the guide's global rule) load as written. Postern
//! collects metrics for every route whether or not the plugin is set (they cost a few atomic
//! adds); the plugin's one option, `prefer_name`, labels the route's series with its `name`
//! instead of its id.

use serde::{Deserialize, Serialize};

use super::PluginConfig;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Label series with the route's `name` (when it has one) rather than its id [default: false].
    #[serde(default)]
    pub prefer_name: bool,
}

impl PluginConfig for PrometheusConfig {}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::plugins::parse;

    #[test]
    fn configs() {
        assert!(!parse::<PrometheusConfig>(&json!({})).unwrap().prefer_name);
        assert!(
            parse::<PrometheusConfig>(&json!({"prefer_name": true}))
                .unwrap()
                .prefer_name
        );
        let e = parse::<PrometheusConfig>(&json!({"prefer_name": "yes"})).unwrap_err();
        assert_eq!(e.field, "prefer_name");
        assert!(parse::<PrometheusConfig>(&json!({"export_uri": "/m"})).is_err());
    }
}
