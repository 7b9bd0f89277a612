//! `response-rewrite`: change the response the client gets — status, headers, body — whoever
//! produced it (the upstream, or another plugin's answer).

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};

use super::PluginConfig;
use super::header_ops::{HeaderRewrite, HeaderTarget};
use crate::model::error::{Result, ValidationError};

/// Standard alphabet; padding optional.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRewriteConfig {
    /// Status to answer with instead (200-598, as in APISIX).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Body to answer with instead. `Content-Length` follows it; the old body's
    /// `Content-Encoding`, `ETag` and `Last-Modified` are dropped (as APISIX does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `body` is base64 (for binary bodies) [default: false].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_base64: bool,
    /// Response headers to add, set or remove (see `header_ops`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderRewrite>,
}

impl ResponseRewriteConfig {
    /// The replacement body as bytes (`body`, base64-decoded when `body_base64`).
    pub fn body_bytes(&self) -> Result<Option<Vec<u8>>> {
        match (&self.body, self.body_base64) {
            (None, false) => Ok(None),
            (Some(body), false) => Ok(Some(body.clone().into_bytes())),
            (Some(body), true) if !body.is_empty() => BASE64
                .decode(body.trim())
                .map(Some)
                .map_err(|e| ValidationError::new("body", format!("not valid base64: {e}"))),
            (_, true) => Err(ValidationError::new(
                "body",
                "body_base64 needs a non-empty base64 'body'",
            )),
        }
    }
}

impl PluginConfig for ResponseRewriteConfig {
    fn validate(&self) -> Result<()> {
        if let Some(s) = self.status_code
            && !(200..=598).contains(&s)
        {
            return Err(ValidationError::new("status_code", "must be 200-598"));
        }
        self.body_bytes()?;
        if let Some(h) = &self.headers {
            h.validate(HeaderTarget::Response)
                .map_err(|e| e.under("headers"))?;
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
    fn bodies() {
        let cases = [
            (json!({"body": "plain"}), Some(&b"plain"[..])),
            (
                json!({"body": "aGVsbG8=", "body_base64": true}),
                Some(&b"hello"[..]),
            ),
            (
                json!({"body": "aGVsbG8", "body_base64": true}),
                Some(&b"hello"[..]),
            ),
            (json!({"body": ""}), Some(&b""[..])),
            (json!({"status_code": 200}), None),
        ];
        for (config, want) in cases {
            let c: ResponseRewriteConfig = parse(&config).unwrap();
            assert_eq!(c.body_bytes().unwrap().as_deref(), want, "{config}");
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (json!({"status_code": 199}), "status_code"),
            (json!({"status_code": 599}), "status_code"),
            (json!({"status_code": "200"}), "status_code"),
            (json!({"body": "***", "body_base64": true}), "body"),
            (json!({"body_base64": true}), "body"),
            (
                json!({"headers": {"set": {"X-A": "$upstream_addr"}}}),
                "headers.set.X-A",
            ),
            (json!({"headers": {"add": ["X-A 1"]}}), "headers"),
            (
                json!({"headers": {"remove": ["Content-Length"]}}),
                "headers.remove.0",
            ),
            (json!({"vars": [["status", "==", 200]]}), "vars"),
            (json!({"filters": []}), "filters"),
        ];
        for (config, field) in cases {
            let e = crate::model::decode::<ResponseRewriteConfig>(&config)
                .and_then(|c| c.validate())
                .expect_err(&config.to_string());
            assert_eq!(e.field, field, "{config}: {e}");
        }
    }
}
