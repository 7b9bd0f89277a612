//! `request-id`: give every request an id, in a request header for the upstream and (by default)
//! in the response, so one request can be followed through every log it touches.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use super::header_ops::{HeaderTarget, check_header_name};
use crate::model::error::Result;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    /// Header carrying the id [default: X-Request-Id]. A sane id the client already sent in it
    /// (printable ASCII, at most 128 characters) is kept, as APISIX keeps it.
    #[serde(default = "default_header_name")]
    pub header_name: String,
    /// Also send the id back to the client, unless the upstream's response already carries
    /// that header [default: true].
    #[serde(default = "yes")]
    pub include_in_response: bool,
    /// How ids are made [default: uuid].
    #[serde(default)]
    pub algorithm: RequestIdAlgorithm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestIdAlgorithm {
    /// Random UUID (version 4), lower-case with hyphens.
    #[default]
    Uuid,
    /// ULID: 26 characters of Crockford base32, sortable by creation time (millisecond).
    Ulid,
}

fn default_header_name() -> String {
    "X-Request-Id".to_string()
}

fn yes() -> bool {
    true
}

impl PluginConfig for RequestIdConfig {
    fn validate(&self) -> Result<()> {
        check_header_name(&self.header_name, HeaderTarget::Request)
            .map_err(|e| e.under("header_name"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::plugins::parse;

    #[test]
    fn defaults_and_guide_config() {
        let c: RequestIdConfig = parse(&json!({})).unwrap();
        assert_eq!(c.header_name, "X-Request-Id");
        assert!(c.include_in_response);
        assert_eq!(c.algorithm, RequestIdAlgorithm::Uuid);
        let c: RequestIdConfig = parse(&json!({"header_name": "X-Request-ID"})).unwrap();
        assert_eq!(c.header_name, "X-Request-ID");
        let c: RequestIdConfig =
            parse(&json!({"algorithm": "ulid", "include_in_response": false})).unwrap();
        assert_eq!(c.algorithm, RequestIdAlgorithm::Ulid);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (json!({"header_name": "bad name"}), "header_name"),
            (json!({"header_name": ""}), "header_name"),
            (json!({"header_name": "Host"}), "header_name"),
            (json!({"algorithm": "nanoid"}), "algorithm"),
            (json!({"include_in_response": "yes"}), "include_in_response"),
            (json!({"range_id": {}}), "range_id"),
        ];
        for (config, field) in cases {
            let e = crate::model::decode::<RequestIdConfig>(&config)
                .and_then(|c| c.validate())
                .expect_err(&config.to_string());
            assert_eq!(e.field, field, "{config}: {e}");
        }
    }
}
