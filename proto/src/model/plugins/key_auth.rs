//! `key-auth`: the caller presents an API key in a header or query argument; the gateway finds
//! the consumer that holds it. [`KeyAuthConfig`] is the route side, [`KeyCredential`] the
//! consumer side (`consumers/<name>.plugins.key-auth`).

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use crate::model::error::{Result, ValidationError};
use crate::model::secrets::check_not_marker;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthConfig {
    /// Request header with the key [default: `apikey`].
    #[serde(default = "default_name")]
    pub header: String,
    /// Query argument with the key, used when the header is absent [default: `apikey`].
    #[serde(default = "default_name")]
    pub query: String,
    /// Remove the key (header and query argument) before the upstream sees the request
    /// [default: false].
    #[serde(default)]
    pub hide_credentials: bool,
}

fn default_name() -> String {
    "apikey".to_string()
}

impl PluginConfig for KeyAuthConfig {
    fn validate(&self) -> Result<()> {
        if http::HeaderName::from_bytes(self.header.as_bytes()).is_err() {
            return Err(ValidationError::new("header", "not a valid header name"));
        }
        if self.query.is_empty() {
            return Err(ValidationError::new("query", "must not be empty"));
        }
        Ok(())
    }
}

/// Shortest API key accepted: a key is a password that is never typed, so it can be long.
pub const MIN_KEY_LEN: usize = 8;
const MAX_KEY_LEN: usize = 1024;

/// Consumer side: the consumer's API key. Write-only: the Admin API shows it redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCredential {
    /// Unique across consumers; visible ASCII, 8-1024 bytes.
    pub key: String,
}

impl PluginConfig for KeyCredential {
    fn validate(&self) -> Result<()> {
        check_not_marker("key", Some(&self.key))?;
        let k = &self.key;
        if k.len() < MIN_KEY_LEN
            || k.len() > MAX_KEY_LEN
            || !k.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ValidationError::new(
                "key",
                format!("must be {MIN_KEY_LEN}-{MAX_KEY_LEN} visible ASCII characters"),
            ));
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
    fn configs() {
        let c: KeyAuthConfig = parse(&json!({})).unwrap();
        assert_eq!((c.header.as_str(), c.query.as_str()), ("apikey", "apikey"));
        assert!(parse::<KeyAuthConfig>(&json!({"header": "x y"})).is_err());
        parse::<KeyCredential>(&json!({"key": "iot-device-0001"})).unwrap();
        for bad in [
            json!({}),
            json!({"key": "short"}),
            json!({"key": "has space in it"}),
            json!({"key": "<redacted>"}),
            json!({"key": "long-enough", "x": 1}),
        ] {
            assert!(parse::<KeyCredential>(&bad).is_err(), "{bad}");
        }
    }
}
