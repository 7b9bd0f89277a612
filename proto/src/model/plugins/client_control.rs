//! `client-control`: limits on what a client may send, as APISIX's plugin of the same name. For
//! now the request body size: a declared `Content-Length` over the limit is answered 413 at once,
//! and a body without one (chunked) is cut off and answered 413 when it outgrows the limit.

use serde::{Deserialize, Serialize};

use super::PluginConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientControlConfig {
    /// Largest request body in bytes; 0 allows no body at all (unlike nginx's
    /// `client_max_body_size 0`, which means no limit). No limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<u64>,
}

impl PluginConfig for ClientControlConfig {}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::plugins::parse;

    #[test]
    fn configs() {
        for (config, want) in [
            (json!({}), Some(None)),
            (json!({"max_body_size": 0}), Some(Some(0))),
            (json!({"max_body_size": 1048576}), Some(Some(1048576))),
            (json!({"max_body_size": -1}), None),
            (json!({"max_body_size": "1m"}), None),
            (json!({"max_body_size": 1.5}), None),
        ] {
            match (parse::<ClientControlConfig>(&config), want) {
                (Ok(c), Some(max)) => assert_eq!(c.max_body_size, max, "{config}"),
                (Err(e), None) => assert_eq!(e.field, "max_body_size", "{config}"),
                (got, want) => panic!("{config}: got {got:?}, want {want:?}"),
            }
        }
        let e = parse::<ClientControlConfig>(&json!({"max_body": 1})).unwrap_err();
        assert_eq!(e.field, "max_body");
    }
}
