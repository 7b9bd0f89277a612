//! `response-rewrite`: changes the response head and body for the client (see the config type in
//! `postern_proto::model::plugins::response_rewrite`). Runs in `response`, on the upstream's
//! answer and on answers other plugins gave alike.

use bytes::Bytes;
use http::{HeaderName, StatusCode, header};
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::parse;
use postern_proto::model::plugins::response_rewrite::ResponseRewriteConfig;
use serde_json::Value;

use super::header_ops::HeaderOps;
use super::{Plugin, RequestCtx};

/// What describes the old body and is wrong for a new one (APISIX clears the same).
const BODY_HEADERS: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::ETAG,
    header::LAST_MODIFIED,
];

pub struct ResponseRewrite {
    status: Option<StatusCode>,
    /// Decoded once; each request shares it.
    body: Option<Bytes>,
    headers: HeaderOps,
}

impl ResponseRewrite {
    pub fn new(config: &Value) -> Result<ResponseRewrite, ValidationError> {
        let c: ResponseRewriteConfig = parse(config)?;
        let status = c
            .status_code
            .map(|s| {
                StatusCode::from_u16(s)
                    .map_err(|_| ValidationError::new("status_code", "not a status code"))
            })
            .transpose()?;
        Ok(ResponseRewrite {
            status,
            body: c.body_bytes()?.map(Bytes::from),
            headers: HeaderOps::compile(c.headers.as_ref())?,
        })
    }
}

impl Plugin for ResponseRewrite {
    fn name(&self) -> &'static str {
        "response-rewrite"
    }

    /// Status, then the body (dropping the old body's headers), then `headers`, so a configured
    /// header wins over both — APISIX's order.
    fn response(&self, resp: &mut http::response::Parts, ctx: &mut RequestCtx) {
        if let Some(status) = self.status {
            resp.status = status;
        }
        if let Some(body) = &self.body {
            for name in &BODY_HEADERS {
                resp.headers.remove(name);
            }
            // The proxy sets Content-Length from it and drops Transfer-Encoding.
            ctx.replace_body = Some(body.clone());
        }
        self.headers.apply(&mut resp.headers);
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    #[test]
    fn rewrites_the_response() {
        // (config, expected status, expected headers (None = absent), expected new body)
        type Case = (
            Value,
            u16,
            Vec<(&'static str, Option<&'static str>)>,
            Option<&'static [u8]>,
        );
        let cases: Vec<Case> = vec![
            // The guide's mobile BFF.
            (
                json!({"headers": {"set": {"X-Content-Optimized": "mobile"}}}),
                200,
                vec![
                    ("x-content-optimized", Some("mobile")),
                    ("etag", Some("\"v1\"")),
                ],
                None,
            ),
            (
                json!({"status_code": 404}),
                404,
                vec![("content-length", Some("7")), ("etag", Some("\"v1\""))],
                None,
            ),
            (
                json!({"body": "{\"ok\":true}", "status_code": 201}),
                201,
                vec![
                    ("content-type", Some("text/plain")),
                    ("content-length", None),
                    ("content-encoding", None),
                    ("etag", None),
                    ("last-modified", None),
                ],
                Some(b"{\"ok\":true}"),
            ),
            (
                json!({"body": "AAEC/w==", "body_base64": true}),
                200,
                vec![("content-type", Some("text/plain"))],
                Some(&[0, 1, 2, 255]),
            ),
            // Headers apply after the body's cleanup: a configured ETag stays.
            (
                json!({"body": "x",
                       "headers": {"set": {"ETag": "\"new\""}, "remove": ["Content-Type"]}}),
                200,
                vec![("etag", Some("\"new\"")), ("content-type", None)],
                Some(b"x"),
            ),
            // 3.x `add` as "Name: value" lines, next to an existing value.
            (
                json!({"headers": {"add": ["Set-Cookie: b=2; Path=/"]}}),
                200,
                vec![("set-cookie", Some("a=1"))],
                None,
            ),
            // Flat shape: empty removes.
            (
                json!({"headers": {"X-Powered-By": "", "X-Gw": "postern"}}),
                200,
                vec![("x-powered-by", None), ("x-gw", Some("postern"))],
                None,
            ),
        ];
        for (config, status, headers, body) in cases {
            let p = ResponseRewrite::new(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
            let (mut resp, _) = http::Response::builder()
                .header("content-type", "text/plain")
                .header("content-length", "7")
                .header("content-encoding", "gzip")
                .header("etag", "\"v1\"")
                .header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")
                .header("set-cookie", "a=1")
                .header("x-powered-by", "php")
                .body(())
                .unwrap()
                .into_parts();
            let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
            p.response(&mut resp, &mut ctx);
            assert_eq!(resp.status.as_u16(), status, "{config}");
            for (name, want) in headers {
                assert_eq!(
                    resp.headers.get(name),
                    want.map(HeaderValue::from_static).as_ref(),
                    "{config}: {name}"
                );
            }
            assert_eq!(ctx.replace_body.as_deref(), body, "{config}");
        }
        // `add` appends rather than replaces.
        let p = ResponseRewrite::new(&json!({"headers": {"add": ["Set-Cookie: b=2"]}})).unwrap();
        let (mut resp, _) = http::Response::builder()
            .header("set-cookie", "a=1")
            .body(())
            .unwrap()
            .into_parts();
        let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
        p.response(&mut resp, &mut ctx);
        let cookies: Vec<_> = resp.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }
}
