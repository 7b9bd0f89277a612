//! `request-termination`: answers every request of the route itself (see the config type in
//! `postern_proto::model::plugins::request_termination`).

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::parse;
use postern_proto::model::plugins::request_termination::RequestTerminationConfig;
use serde_json::Value;

use super::{Flow, Plugin, PluginResponse, RequestCtx};

pub struct RequestTermination {
    response: PluginResponse,
}

impl RequestTermination {
    pub fn new(config: &Value) -> Result<RequestTermination, ValidationError> {
        let c: RequestTerminationConfig = parse(config)?;
        let status = StatusCode::from_u16(c.status_code)
            .map_err(|_| ValidationError::new("status_code", "not a status code"))?;
        let mut response = match (c.body, c.message) {
            (Some(body), _) => {
                let json = serde_json::from_str::<Value>(&body).is_ok();
                let mut r = PluginResponse::json(status, Bytes::from(body));
                if !json {
                    r.headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                }
                r
            }
            (None, Some(message)) => PluginResponse::error(status, &message),
            (None, None) => {
                PluginResponse::error(status, status.canonical_reason().unwrap_or("terminated"))
            }
        };
        if let Some(ct) = c.content_type {
            let v = HeaderValue::from_str(&ct)
                .map_err(|_| ValidationError::new("content_type", "not a valid header value"))?;
            response.headers.insert(header::CONTENT_TYPE, v);
        }
        Ok(RequestTermination { response })
    }
}

impl Plugin for RequestTermination {
    fn name(&self) -> &'static str {
        "request-termination"
    }

    fn rewrite(&self, _req: &mut http::request::Parts, _ctx: &mut RequestCtx) -> Flow {
        Flow::Respond(self.response.clone())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn answers_as_configured() {
        let cases = [
            (
                json!({}),
                503,
                "application/json",
                r#"{"error_msg":"Service Unavailable"}"#,
            ),
            (
                json!({"status_code": 410, "message": "gone"}),
                410,
                "application/json",
                r#"{"error_msg":"gone"}"#,
            ),
            (
                json!({"status_code": 200, "body": "{\"a\":1}"}),
                200,
                "application/json",
                r#"{"a":1}"#,
            ),
            (
                json!({"status_code": 503, "body": "maintenance"}),
                503,
                "text/plain; charset=utf-8",
                "maintenance",
            ),
            (
                json!({"body": "<p>x</p>", "content_type": "text/html"}),
                503,
                "text/html",
                "<p>x</p>",
            ),
        ];
        for (config, status, ct, body) in cases {
            let p = RequestTermination::new(&config).unwrap();
            let (mut parts, _) = http::Request::new(()).into_parts();
            let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
            let Flow::Respond(r) = p.rewrite(&mut parts, &mut ctx) else {
                panic!("{config}: did not answer")
            };
            assert_eq!(r.status.as_u16(), status, "{config}");
            assert_eq!(r.headers[header::CONTENT_TYPE], ct, "{config}");
            assert_eq!(r.body, body, "{config}");
        }
    }
}
