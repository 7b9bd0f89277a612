//! `cors`: answers CORS preflights itself and adds the CORS headers to the responses of allowed
//! origins (see the config type in `postern_proto::model::plugins::cors`).
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered 200
//!   with an empty body in the rewrite phase; the upstream never sees it. Other `OPTIONS`
//!   requests are proxied.
//! - An allowed origin gets `Access-Control-Allow-Origin` (the origin itself, or `*` when any
//!   origin is allowed without credentials) and the other `Access-Control-*` headers, on the
//!   preflight answer and on every other response (upstream's or a plugin's), replacing any the
//!   upstream sent.
//! - A refused origin gets no CORS headers (the browser then blocks the response); the request
//!   itself is still proxied, as CORS is enforced by browsers, not servers.
//! - When the answer depends on the origin (anything but a plain `*`), every response gets
//!   `Vary: Origin` appended, so caches keep one copy per origin.

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::cors::{CorsConfig, anchored, origin_list};
use postern_proto::model::plugins::parse;
use regex::RegexSet;
use serde_json::Value;

use super::{Flow, Plugin, PluginResponse, RequestCtx, StagedHeaders};

/// What `allow_methods: "**"` stands for, as in APISIX.
const ALL_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";

enum Origins {
    /// `*`: any origin, answered with `*` (not echoed).
    Any,
    /// `**`: any origin, echoed (so credentials work).
    Echo,
    /// These origins (compared ASCII-case-insensitively), echoed.
    List(Vec<String>),
    /// Origins matching one of these (anchored) regexes, echoed.
    Regex(RegexSet),
}

enum AllowHeaders {
    Fixed(HeaderValue),
    /// `**`: echo the preflight's `Access-Control-Request-Headers`.
    Echo,
}

pub struct Cors {
    origins: Origins,
    allow_methods: HeaderValue,
    allow_headers: AllowHeaders,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
    allow_credential: bool,
}

fn header_value(field: &str, value: &str) -> Result<HeaderValue, ValidationError> {
    HeaderValue::from_str(value)
        .map_err(|_| ValidationError::new(field, "not a valid header value"))
}

impl Cors {
    pub fn new(config: &Value) -> Result<Cors, ValidationError> {
        let c: CorsConfig = parse(config)?;
        let origins = match (&c.allow_origins_by_regex, origin_list(&c.allow_origins)) {
            (Some(patterns), _) => Origins::Regex(
                RegexSet::new(patterns.iter().map(|p| anchored(p))).map_err(|e| {
                    ValidationError::new(
                        "allow_origins_by_regex",
                        format!("not a valid regex: {e}"),
                    )
                })?,
            ),
            (None, Some(list)) => Origins::List(list.into_iter().map(str::to_string).collect()),
            (None, None) if c.allow_origins.trim() == "**" => Origins::Echo,
            (None, None) => Origins::Any,
        };
        let allow_methods = match c.allow_methods.trim() {
            "**" => HeaderValue::from_static(ALL_METHODS),
            m => header_value("allow_methods", m)?,
        };
        let allow_headers = match c.allow_headers.trim() {
            "**" => AllowHeaders::Echo,
            h => AllowHeaders::Fixed(header_value("allow_headers", h)?),
        };
        let expose_headers = match c.expose_headers.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(e) => Some(header_value("expose_headers", e)?),
        };
        Ok(Cors {
            origins,
            allow_methods,
            allow_headers,
            expose_headers,
            max_age: HeaderValue::from(c.max_age),
            allow_credential: c.allow_credential,
        })
    }

    /// The `Access-Control-Allow-Origin` value for this request, `None` when its origin is not
    /// allowed. Requests without `Origin` are not cross-origin: only a plain `*` config answers
    /// them (its answer is the same for everyone).
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        if let Origins::Any = self.origins {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = origin?;
        let text = origin.to_str().ok()?;
        let allowed = match &self.origins {
            Origins::Any | Origins::Echo => true,
            Origins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(text)),
            Origins::Regex(set) => set.is_match(text),
        };
        allowed.then(|| origin.clone())
    }

    fn add_headers(
        &self,
        allow_origin: HeaderValue,
        req: &http::request::Parts,
        out: &mut StagedHeaders,
    ) {
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        out.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if let Some(expose) = &self.expose_headers {
            out.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
        match &self.allow_headers {
            AllowHeaders::Fixed(v) => {
                out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            AllowHeaders::Echo => {
                if let Some(v) = req.headers.get(ACCESS_CONTROL_REQUEST_HEADERS) {
                    out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
                }
            }
        }
        if self.allow_credential {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

/// Appends `token` to the `Vary` header unless it is already listed (or `Vary: *`).
fn append_vary(headers: &mut HeaderMap, token: &'static str) {
    let listed = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.eq_ignore_ascii_case(token));
    if !listed {
        headers.append(VARY, HeaderValue::from_static(token));
    }
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn rewrite(&self, req: &mut http::request::Parts, ctx: &mut RequestCtx) -> Flow {
        // Decided here, on the request as the client sent it: later plugins may change headers.
        let origin = req.headers.get(ORIGIN);
        let preflight = req.method == Method::OPTIONS
            && origin.is_some()
            && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        if let Some(allow) = self.allow_origin(origin) {
            self.add_headers(allow, req, &mut ctx.response_headers);
        }
        if preflight {
            return Flow::Respond(PluginResponse {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::new(),
            });
        }
        Flow::Continue
    }

    fn response(&self, resp: &mut http::response::Parts, _ctx: &mut RequestCtx) {
        if !matches!(self.origins, Origins::Any) {
            append_vary(&mut resp.headers, "Origin");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(config: &Value, method: &str, headers: &[(&str, &str)]) -> (Option<u16>, HeaderMap) {
        let p = Cors::new(config).unwrap();
        let mut builder = http::Request::builder().method(method).uri("/x");
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        let (mut parts, _) = builder.body(()).unwrap().into_parts();
        let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
        let status = match p.rewrite(&mut parts, &mut ctx) {
            Flow::Respond(r) => {
                assert!(r.body.is_empty());
                Some(r.status.as_u16())
            }
            Flow::Continue => None,
        };
        // The response head as the chain would finish it: the plugin's phase, then the headers
        // the rewrite phase left in the context.
        let (mut head, _) = http::Response::builder()
            .header("vary", "Accept-Encoding")
            .body(())
            .unwrap()
            .into_parts();
        p.response(&mut head, &mut ctx);
        ctx.response_headers.apply_to(&mut head.headers);
        (status, head.headers)
    }

    #[test]
    fn preflights_and_simple_requests() {
        let pre = |origin: &'static str| {
            vec![
                ("origin", origin),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-a, x-b"),
            ]
        };
        let simple = |origin: &'static str| vec![("origin", origin)];
        let creds = json!({"allow_origins": "https://a.example,https://b.example", "allow_methods": "GET,PUT", "allow_headers": "**", "expose_headers": "x-total", "max_age": 600, "allow_credential": true});
        // (config, method, request headers, answered, expected headers; "-" = absent)
        type Case = (
            Value,
            &'static str,
            Vec<(&'static str, &'static str)>,
            Option<u16>,
            Vec<(&'static str, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                json!({}),
                "OPTIONS",
                pre("https://any.example"),
                Some(200),
                vec![
                    ("access-control-allow-origin", "*"),
                    ("access-control-allow-methods", "*"),
                    ("access-control-allow-headers", "*"),
                    ("access-control-max-age", "5"),
                    ("access-control-expose-headers", "-"),
                    ("access-control-allow-credentials", "-"),
                    ("vary", "Accept-Encoding"),
                ],
            ),
            (
                json!({}),
                "GET",
                simple("https://any.example"),
                None,
                vec![
                    ("access-control-allow-origin", "*"),
                    ("vary", "Accept-Encoding"),
                ],
            ),
            // Not a CORS request: a plain `*` still answers (same for everyone).
            (
                json!({}),
                "GET",
                vec![],
                None,
                vec![("access-control-allow-origin", "*")],
            ),
            // OPTIONS without Access-Control-Request-Method is not a preflight: proxied.
            (
                json!({}),
                "OPTIONS",
                simple("https://any.example"),
                None,
                vec![("access-control-allow-origin", "*")],
            ),
            (
                creds.clone(),
                "OPTIONS",
                pre("https://b.example"),
                Some(200),
                vec![
                    ("access-control-allow-origin", "https://b.example"),
                    ("access-control-allow-methods", "GET,PUT"),
                    ("access-control-allow-headers", "x-a, x-b"),
                    ("access-control-max-age", "600"),
                    ("access-control-expose-headers", "x-total"),
                    ("access-control-allow-credentials", "true"),
                    ("vary", "Accept-Encoding, Origin"),
                ],
            ),
            // A refused origin: the preflight is still answered, without CORS headers.
            (
                creds.clone(),
                "OPTIONS",
                pre("https://evil.example"),
                Some(200),
                vec![
                    ("access-control-allow-origin", "-"),
                    ("access-control-allow-methods", "-"),
                    ("access-control-allow-credentials", "-"),
                    ("vary", "Accept-Encoding, Origin"),
                ],
            ),
            (
                creds.clone(),
                "POST",
                simple("https://a.example"),
                None,
                vec![
                    ("access-control-allow-origin", "https://a.example"),
                    ("access-control-allow-headers", "-"),
                    ("access-control-expose-headers", "x-total"),
                    ("access-control-allow-credentials", "true"),
                ],
            ),
            (
                creds.clone(),
                "POST",
                simple("https://a.example.evil"),
                None,
                vec![
                    ("access-control-allow-origin", "-"),
                    ("vary", "Accept-Encoding, Origin"),
                ],
            ),
            (
                creds.clone(),
                "GET",
                vec![],
                None,
                vec![("access-control-allow-origin", "-")],
            ),
            (
                json!({"allow_origins": "https://A.example"}),
                "GET",
                simple("https://a.example"),
                None,
                vec![("access-control-allow-origin", "https://a.example")],
            ),
            (
                json!({"allow_origins": "**", "allow_methods": "**", "allow_headers": "**", "allow_credential": true}),
                "OPTIONS",
                pre("https://whoever.example"),
                Some(200),
                vec![
                    ("access-control-allow-origin", "https://whoever.example"),
                    ("access-control-allow-methods", ALL_METHODS),
                    ("access-control-allow-headers", "x-a, x-b"),
                    ("access-control-allow-credentials", "true"),
                ],
            ),
            (
                json!({"allow_origins_by_regex": [r"https://.*\.example\.com", "http://localhost:[0-9]+"]}),
                "GET",
                simple("https://a.example.com"),
                None,
                vec![
                    ("access-control-allow-origin", "https://a.example.com"),
                    ("vary", "Accept-Encoding, Origin"),
                ],
            ),
            (
                json!({"allow_origins_by_regex": [r"https://.*\.example\.com", "http://localhost:[0-9]+"]}),
                "GET",
                simple("http://localhost:3000"),
                None,
                vec![("access-control-allow-origin", "http://localhost:3000")],
            ),
            (
                json!({"allow_origins_by_regex": [r"https://.*\.example\.com"]}),
                "GET",
                simple("https://a.example.com.evil.net"),
                None,
                vec![("access-control-allow-origin", "-")],
            ),
            // Regexes replace the origin list: the default `*` is not consulted.
            (
                json!({"allow_origins_by_regex": [r"https://.*\.example\.com"]}),
                "OPTIONS",
                pre("https://other.example"),
                Some(200),
                vec![("access-control-allow-origin", "-")],
            ),
            (
                json!({"expose_headers": ""}),
                "GET",
                simple("https://a.example"),
                None,
                vec![("access-control-expose-headers", "-")],
            ),
        ];
        for (config, method, headers, answered, want) in cases {
            let (status, got) = run(&config, method, &headers);
            let what = format!("{config} {method} {headers:?}");
            assert_eq!(status, answered, "{what}");
            for (name, value) in want {
                let got: Vec<_> = got
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                let got = got.join(", ");
                if value == "-" {
                    assert_eq!(got, "", "{what}: {name}");
                } else {
                    assert_eq!(got, value, "{what}: {name}");
                }
            }
        }
    }

    #[test]
    fn vary_is_not_repeated() {
        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("origin, accept"));
        append_vary(&mut h, "Origin");
        assert_eq!(h.get_all(VARY).iter().count(), 1);
        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("*"));
        append_vary(&mut h, "Origin");
        assert_eq!(h[VARY], "*");
    }
}
