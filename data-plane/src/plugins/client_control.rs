//! `client-control`: request body size limit (see the config type in
//! `postern_proto::model::plugins::client_control`).
//!
//! A declared `Content-Length` over the limit is answered 413 in the rewrite phase, before the
//! body is read. The limit is also handed to the proxy in `RequestCtx::max_body_size`: it wraps
//! the body it forwards so that a body without a length (chunked) is cut off once it passes the
//! limit, and answers 413 when that happened before the upstream answered.

use http::StatusCode;
use http::header::CONTENT_LENGTH;
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::client_control::ClientControlConfig;
use postern_proto::model::plugins::parse;
use serde_json::Value;

use super::{Flow, Plugin, PluginResponse, RequestCtx};

/// The message of every 413 for a body over the limit (the proxy's own uses the same).
pub const TOO_LARGE: &str = "request body too large";

pub struct ClientControl {
    max_body_size: Option<u64>,
}

impl ClientControl {
    pub fn new(config: &Value) -> Result<ClientControl, ValidationError> {
        let c: ClientControlConfig = parse(config)?;
        Ok(ClientControl {
            max_body_size: c.max_body_size,
        })
    }
}

impl Plugin for ClientControl {
    fn name(&self) -> &'static str {
        "client-control"
    }

    fn rewrite(&self, req: &mut http::request::Parts, ctx: &mut RequestCtx) -> Flow {
        let Some(max) = self.max_body_size else {
            return Flow::Continue;
        };
        // hyper has already refused a malformed or ambiguous Content-Length.
        let declared = req
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return Flow::Respond(PluginResponse::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                TOO_LARGE,
            ));
        }
        ctx.max_body_size = Some(ctx.max_body_size.map_or(max, |m| m.min(max)));
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn limits_declared_and_streamed_bodies() {
        // (config, Content-Length, answered 413, limit handed to the proxy)
        let cases = [
            (json!({}), Some("10"), false, None),
            (json!({"max_body_size": 100}), None, false, Some(100)),
            (json!({"max_body_size": 100}), Some("100"), false, Some(100)),
            (json!({"max_body_size": 100}), Some("101"), true, None),
            (
                json!({"max_body_size": 100}),
                Some("18446744073709551615"),
                true,
                None,
            ),
            (json!({"max_body_size": 0}), Some("0"), false, Some(0)),
            (json!({"max_body_size": 0}), Some("1"), true, None),
            (json!({"max_body_size": 0}), None, false, Some(0)),
        ];
        for (config, length, rejected, handed) in cases {
            let p = ClientControl::new(&config).unwrap();
            let mut builder = http::Request::builder().method("POST").uri("/up");
            if let Some(l) = length {
                builder = builder.header(CONTENT_LENGTH, l);
            }
            let (mut parts, _) = builder.body(()).unwrap().into_parts();
            let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
            let what = format!("{config} {length:?}");
            match p.rewrite(&mut parts, &mut ctx) {
                Flow::Respond(r) => {
                    assert!(rejected, "{what}: answered {}", r.status);
                    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{what}");
                    assert_eq!(r.body, r#"{"error_msg":"request body too large"}"#);
                }
                Flow::Continue => {
                    assert!(!rejected, "{what}: not answered");
                    assert_eq!(ctx.max_body_size, handed, "{what}");
                }
            }
        }
    }
}
