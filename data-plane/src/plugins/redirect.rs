//! `redirect`: answers with a redirect in the rewrite phase (see the config type in
//! `postern_proto::model::plugins::redirect`).
//!
//! The proxy listens on plain HTTP only for now, so with `http_to_https` every request counts as
//! `http` and is redirected, unless `X-Forwarded-Proto: https` says a TLS terminator in front
//! already did the HTTPS part (as APISIX trusts that header). `$uri` is the normalised path as
//! the router saw it, still percent-encoded (nginx's `$uri` is decoded).

use bytes::Bytes;
use http::header::{HOST, LOCATION};
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::parse;
use postern_proto::model::plugins::redirect::{
    RedirectConfig, RedirectTarget, ReplacementPart, UriPart, UriVar,
};
use serde_json::Value;

use super::{Flow, Plugin, PluginResponse, RequestCtx};

pub struct Redirect {
    target: RedirectTarget,
    ret_code: StatusCode,
    encode_uri: bool,
    append_query_string: bool,
}

impl Redirect {
    pub fn new(config: &Value) -> Result<Redirect, ValidationError> {
        let c: RedirectConfig = parse(config)?;
        let ret_code = StatusCode::from_u16(c.ret_code)
            .map_err(|_| ValidationError::new("ret_code", "not a status code"))?;
        Ok(Redirect {
            target: c.target()?,
            ret_code,
            encode_uri: c.encode_uri,
            append_query_string: c.append_query_string,
        })
    }

    fn answer(&self, status: StatusCode, location: &str) -> Flow {
        let Ok(location) = HeaderValue::from_str(location) else {
            return Flow::Respond(PluginResponse::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the redirect target is not a valid header value",
            ));
        };
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, location);
        Flow::Respond(PluginResponse {
            status,
            headers,
            body: Bytes::new(),
        })
    }
}

/// The host the client asked for (nginx's `$host`): from `Host`, else the absolute request
/// target, lower-cased and without port; `None` when absent or not a plain host.
fn host_of(req: &http::request::Parts) -> Option<String> {
    let raw = match req.headers.get(HOST) {
        Some(h) => h.to_str().ok()?,
        None => req.uri.authority()?.as_str(),
    };
    let authority: Authority = raw.parse().ok()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    Some(authority.host().to_ascii_lowercase())
}

fn request_uri(req: &http::request::Parts) -> &str {
    req.uri.path_and_query().map_or("/", |pq| pq.as_str())
}

fn variable(var: UriVar, req: &http::request::Parts, out: &mut String) {
    match var {
        UriVar::Uri => out.push_str(req.uri.path()),
        UriVar::RequestUri => out.push_str(request_uri(req)),
        UriVar::Host => out.push_str(&host_of(req).unwrap_or_default()),
        UriVar::Args => out.push_str(req.uri.query().unwrap_or("")),
        UriVar::IsArgs => {
            if req.uri.query().is_some() {
                out.push('?')
            }
        }
        UriVar::Scheme => out.push_str("http"),
    }
}

/// Percent-encodes, before any `?`, the bytes not allowed in a URI (as nginx's `escape_uri`
/// for `encode_uri`, except that `%` is kept: paths here are already percent-encoded).
fn encode_uri(location: &str) -> String {
    let (path, query) = match location.find('?') {
        Some(i) => location.split_at(i),
        None => (location, ""),
    };
    let mut out = String::with_capacity(location.len());
    for b in path.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'%'
                    | b'['
                    | b']'
            );
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(query);
    out
}

impl Plugin for Redirect {
    fn name(&self) -> &'static str {
        "redirect"
    }

    fn rewrite(&self, req: &mut http::request::Parts, _ctx: &mut RequestCtx) -> Flow {
        let mut location = match &self.target {
            RedirectTarget::HttpToHttps => {
                let forwarded_https = req
                    .headers
                    .get("x-forwarded-proto")
                    .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
                if forwarded_https {
                    return Flow::Continue;
                }
                let Some(host) = host_of(req) else {
                    return Flow::Respond(PluginResponse::error(
                        StatusCode::BAD_REQUEST,
                        "a redirect to https needs the Host header",
                    ));
                };
                // 308 keeps the method and body, which a 301 lets clients turn into a GET.
                let status = if req.method == Method::GET || req.method == Method::HEAD {
                    StatusCode::MOVED_PERMANENTLY
                } else {
                    StatusCode::PERMANENT_REDIRECT
                };
                return self.answer(status, &format!("https://{host}{}", request_uri(req)));
            }
            RedirectTarget::Uri(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        UriPart::Literal(l) => out.push_str(l),
                        UriPart::Var(v) => variable(*v, req, &mut out),
                    }
                }
                out
            }
            RedirectTarget::Regex(re, replacement) => {
                let path = req.uri.path();
                let Some(caps) = re.captures(path) else {
                    return Flow::Continue;
                };
                let Some(whole) = caps.get(0) else {
                    return Flow::Continue;
                };
                let mut out = String::from(&path[..whole.start()]);
                for part in replacement {
                    match part {
                        ReplacementPart::Literal(l) => out.push_str(l),
                        ReplacementPart::Group(i) => {
                            out.push_str(caps.get(*i).map_or("", |m| m.as_str()))
                        }
                    }
                }
                out.push_str(&path[whole.end()..]);
                out
            }
        };
        if self.encode_uri {
            location = encode_uri(&location);
        }
        if self.append_query_string
            && let Some(query) = req.uri.query()
        {
            location.push(if location.contains('?') { '&' } else { '?' });
            location.push_str(query);
        }
        self.answer(self.ret_code, &location)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn redirects_as_configured() {
        let to_https = json!({"http_to_https": true});
        let regex = json!({"regex_uri": ["^/old/(?P<rest>.*)$", "/new/${rest}"], "ret_code": 301});
        // (config, method, target, headers, expected status (None = proxied), Location)
        type Case = (
            Value,
            &'static str,
            &'static str,
            Vec<(&'static str, &'static str)>,
            Option<u16>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                to_https.clone(),
                "GET",
                "/a/b?x=1&y",
                vec![("host", "api.example:9080")],
                Some(301),
                "https://api.example/a/b?x=1&y",
            ),
            (
                to_https.clone(),
                "HEAD",
                "/",
                vec![("host", "API.Example")],
                Some(301),
                "https://api.example/",
            ),
            (
                to_https.clone(),
                "POST",
                "/form",
                vec![("host", "api.example")],
                Some(308),
                "https://api.example/form",
            ),
            (
                to_https.clone(),
                "GET",
                "/",
                vec![("host", "[::1]:9080")],
                Some(301),
                "https://[::1]/",
            ),
            (
                to_https.clone(),
                "GET",
                "/a",
                vec![("host", "api.example"), ("x-forwarded-proto", "HTTPS")],
                None,
                "",
            ),
            (
                to_https.clone(),
                "GET",
                "/a",
                vec![("host", "api.example"), ("x-forwarded-proto", "http")],
                Some(301),
                "https://api.example/a",
            ),
            (to_https.clone(), "GET", "/a", vec![], Some(400), ""),
            (
                to_https.clone(),
                "GET",
                "/a",
                vec![("host", "user@evil.example")],
                Some(400),
                "",
            ),
            // `ret_code` does not apply to http_to_https.
            (
                json!({"http_to_https": true, "ret_code": 307}),
                "GET",
                "/",
                vec![("host", "h")],
                Some(301),
                "https://h/",
            ),
            (
                json!({"uri": "/login"}),
                "GET",
                "/x?a=1",
                vec![],
                Some(302),
                "/login",
            ),
            (
                json!({"uri": "/login", "append_query_string": true}),
                "GET",
                "/x?a=1",
                vec![],
                Some(302),
                "/login?a=1",
            ),
            (
                json!({"uri": "/login?from=x", "append_query_string": true}),
                "GET",
                "/x?a=1",
                vec![],
                Some(302),
                "/login?from=x&a=1",
            ),
            (
                json!({"uri": "/login", "append_query_string": true}),
                "GET",
                "/x",
                vec![],
                Some(302),
                "/login",
            ),
            (
                json!({"uri": "https://new.example$request_uri", "ret_code": 301}),
                "GET",
                "/p/q?z=2",
                vec![],
                Some(301),
                "https://new.example/p/q?z=2",
            ),
            (
                json!({"uri": "https://$host/v2${uri}$is_args$args", "ret_code": 307}),
                "PUT",
                "/p?z=2",
                vec![("host", "a.example:80")],
                Some(307),
                "https://a.example/v2/p?z=2",
            ),
            (
                json!({"uri": "/v2$uri$is_args$args"}),
                "GET",
                "/p",
                vec![],
                Some(302),
                "/v2/p",
            ),
            (
                json!({"uri": "/\\$uri"}),
                "GET",
                "/p",
                vec![],
                Some(302),
                "/$uri",
            ),
            (
                regex.clone(),
                "GET",
                "/old/a/b?k=v",
                vec![],
                Some(301),
                "/new/a/b",
            ),
            (regex.clone(), "GET", "/other/a", vec![], None, ""),
            // Only the matched part is replaced, as ngx.re.sub does.
            (
                json!({"regex_uri": ["/v1/", "/v2/"]}),
                "GET",
                "/api/v1/x",
                vec![],
                Some(302),
                "/api/v2/x",
            ),
            (
                json!({"regex_uri": ["^/(a)(b)?", "/$2-$1-$$"]}),
                "GET",
                "/ac",
                vec![],
                Some(302),
                "/-a-$c",
            ),
            (
                json!({"uri": "/a b/ü\"x?q=a b", "encode_uri": true}),
                "GET",
                "/",
                vec![],
                Some(302),
                "/a%20b/%C3%BC%22x?q=a b",
            ),
            (
                json!({"uri": "/already%20encoded", "encode_uri": true}),
                "GET",
                "/",
                vec![],
                Some(302),
                "/already%20encoded",
            ),
        ];
        for (config, method, target, headers, status, location) in cases {
            let p = Redirect::new(&config).unwrap();
            let mut builder = http::Request::builder().method(method).uri(target);
            for (n, v) in &headers {
                builder = builder.header(*n, *v);
            }
            let (mut parts, _) = builder.body(()).unwrap().into_parts();
            let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
            let what = format!("{config} {method} {target} {headers:?}");
            match (p.rewrite(&mut parts, &mut ctx), status) {
                (Flow::Continue, None) => {}
                (Flow::Respond(r), Some(s)) => {
                    assert_eq!(r.status.as_u16(), s, "{what}");
                    if (300..400).contains(&s) {
                        assert_eq!(r.headers[LOCATION], location, "{what}");
                        assert!(r.body.is_empty(), "{what}");
                    }
                }
                (Flow::Continue, Some(s)) => panic!("{what}: proxied, want {s}"),
                (Flow::Respond(r), None) => panic!("{what}: answered {}, want proxied", r.status),
            }
        }
    }
}
