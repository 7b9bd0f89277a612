//! `proxy-rewrite`: changes the request for the upstream (see the config type in
//! `postern_proto::model::plugins::proxy_rewrite`). Runs in `rewrite`, so later plugins and the
//! upstream see the new path, method and headers; the route was matched on the old ones.

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, StatusCode, Uri};
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::parse;
use postern_proto::model::plugins::proxy_rewrite::{ProxyRewriteConfig, UriTemplate};
use regex::Regex;
use serde_json::Value;

use super::header_ops::HeaderOps;
use super::{Flow, Plugin, PluginResponse, RequestCtx};

pub struct ProxyRewrite {
    /// `uri`: the new path (and query, when it has one), parsed once.
    uri: Option<PathAndQuery>,
    /// `regex_uri`, compiled once per snapshot.
    regex_uri: Vec<(Regex, UriTemplate)>,
    host: Option<HeaderValue>,
    method: Option<Method>,
    headers: HeaderOps,
}

impl ProxyRewrite {
    pub fn new(config: &Value) -> Result<ProxyRewrite, ValidationError> {
        let c: ProxyRewriteConfig = parse(config)?;
        let uri = c
            .uri
            .as_deref()
            .map(|u| {
                PathAndQuery::try_from(u)
                    .map_err(|_| ValidationError::new("uri", "not a valid request path"))
            })
            .transpose()?;
        let host = c
            .host
            .as_deref()
            .map(|h| {
                HeaderValue::from_str(h)
                    .map_err(|_| ValidationError::new("host", "not a valid Host header"))
            })
            .transpose()?;
        let method = c
            .method
            .as_deref()
            .map(|m| {
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| ValidationError::new("method", "not a valid method"))
            })
            .transpose()?;
        Ok(ProxyRewrite {
            uri,
            regex_uri: c.compile_regex_uri()?,
            host,
            method,
            headers: HeaderOps::compile(c.headers.as_ref())?,
        })
    }

    /// The upstream path and query for `uri`, or `None` when it stays as it is. The client's
    /// query string is kept unless the new target has its own.
    fn new_target(&self, uri: &Uri) -> Option<Result<PathAndQuery, http::uri::InvalidUri>> {
        let query = uri.query();
        if let Some(fixed) = &self.uri {
            return Some(match query {
                Some(q) if fixed.query().is_none() => {
                    PathAndQuery::from_maybe_shared(Bytes::from(format!("{}?{q}", fixed.path())))
                }
                _ => Ok(fixed.clone()),
            });
        }
        let path = uri.path();
        for (re, template) in &self.regex_uri {
            let Some(caps) = re.captures(path) else {
                continue;
            };
            let whole = caps.get(0)?;
            let extra = query.map_or(0, |q| q.len() + 1);
            let mut target = String::with_capacity(path.len() + template.literal_len() + extra + 1);
            // As NGINX's `ngx.re.sub`: the first match is replaced, the rest of the path stays.
            target.push_str(&path[..whole.start()]);
            template.expand(&caps, &mut target);
            target.push_str(&path[whole.end()..]);
            if !target.starts_with('/') {
                target.insert(0, '/');
            }
            if let Some(q) = query
                && !target.contains('?')
            {
                target.push('?');
                target.push_str(q);
            }
            return Some(PathAndQuery::from_maybe_shared(Bytes::from(target)));
        }
        None
    }
}

impl Plugin for ProxyRewrite {
    fn name(&self) -> &'static str {
        "proxy-rewrite"
    }

    fn rewrite(&self, req: &mut http::request::Parts, ctx: &mut RequestCtx) -> Flow {
        if let Some(target) = self.new_target(&req.uri) {
            let rewritten = target.ok().and_then(|path_and_query| {
                let mut parts = req.uri.clone().into_parts();
                parts.path_and_query = Some(path_and_query);
                Uri::from_parts(parts).ok()
            });
            match rewritten {
                Some(uri) => req.uri = uri,
                None => {
                    tracing::debug!(
                        route = %ctx.route_id,
                        path = req.uri.path(),
                        "proxy-rewrite made an invalid path"
                    );
                    return Flow::Respond(PluginResponse::error(
                        StatusCode::BAD_REQUEST,
                        "the rewritten request path is not valid",
                    ));
                }
            }
        }
        if let Some(method) = &self.method {
            req.method = method.clone();
        }
        if let Some(host) = &self.host {
            ctx.upstream_host = Some(host.clone());
        }
        self.headers.apply(&mut req.headers);
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(config: &Value, req: http::Request<()>) -> (http::request::Parts, RequestCtx) {
        let p = ProxyRewrite::new(config).unwrap_or_else(|e| panic!("{config}: {e}"));
        let (mut parts, _) = req.into_parts();
        let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
        let Flow::Continue = p.rewrite(&mut parts, &mut ctx) else {
            panic!("{config}: answered")
        };
        (parts, ctx)
    }

    #[test]
    fn rewrites_the_path() {
        let web = json!({"regex_uri": ["^/api/web/(.*)", "/$1"]});
        let pairs = json!({"regex_uri": ["^/v1/(.*)", "/one/$1", "^/v(\\d)/(.*)", "/n${1}/$2"]});
        let cases = [
            // The guide's BFF prefix strip; the query string rides along.
            (&web, "/api/web/x?y=1", "/x?y=1"),
            (&web, "/api/web/a/b", "/a/b"),
            (&web, "/api/web/", "/"),
            // No match: untouched.
            (&web, "/api/mobile/x?y=1", "/api/mobile/x?y=1"),
            // Pairs in order, first match wins.
            (&pairs, "/v1/x", "/one/x"),
            (&pairs, "/v2/x", "/n2/x"),
            // Only the match is replaced, as with ngx.re.sub.
            (
                &json!({"regex_uri": ["/old/", "/new/"]}),
                "/a/old/b/old/",
                "/a/new/b/old/",
            ),
            // A query in the replacement replaces the client's.
            (
                &json!({"regex_uri": ["^/s/(.*)", "/search?q=$1"]}),
                "/s/rust?page=2",
                "/search?q=rust",
            ),
            // A result without a leading slash gets one.
            (
                &json!({"regex_uri": ["^/api/(.*)", "$1"]}),
                "/api/x?a",
                "/x?a",
            ),
            (
                &json!({"regex_uri": ["^/p/(\\d+)(/.*)?$", "/items/$1$2"]}),
                "/p/7",
                "/items/7",
            ),
            // `uri`: fixed path; the client's query is kept unless `uri` has one.
            (
                &json!({"uri": "/v2/items"}),
                "/old?b=1&c=2",
                "/v2/items?b=1&c=2",
            ),
            (&json!({"uri": "/v2/items"}), "/old", "/v2/items"),
            (&json!({"uri": "/v2?src=gw"}), "/old?b=1", "/v2?src=gw"),
            // `uri` wins over `regex_uri`.
            (
                &json!({"uri": "/fixed", "regex_uri": ["^/(.*)", "/r/$1"]}),
                "/x",
                "/fixed",
            ),
        ];
        for (config, path, want) in cases {
            let req = http::Request::get(path).body(()).unwrap();
            let (parts, _) = run(config, req);
            assert_eq!(parts.uri.to_string(), want, "{config} {path}");
        }
    }

    #[test]
    fn rewrites_host_method_and_headers() {
        let config = json!({
            "host": "svc.internal:8443",
            "method": "POST",
            "headers": {
                "add": {"X-Multi": "2"},
                "set": {"X-Api-Version": "v1"},
                "remove": ["X-Drop"]
            }
        });
        let req = http::Request::get("http://a.example/p?q")
            .header("x-multi", "1")
            .header("x-drop", "d")
            .header("x-api-version", "v0")
            .body(())
            .unwrap();
        let (parts, ctx) = run(&config, req);
        assert_eq!(parts.method, Method::POST);
        assert_eq!(ctx.upstream_host.as_ref().unwrap(), "svc.internal:8443");
        let multi: Vec<_> = parts.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["1", "2"]);
        assert_eq!(parts.headers["x-api-version"], "v1");
        assert!(!parts.headers.contains_key("x-drop"));
        // Nothing else changes: path, Host as the client sent it.
        assert_eq!(parts.uri.path(), "/p");

        // The older flat shape: set, empty = remove.
        let req = http::Request::get("/p")
            .header("x-drop", "d")
            .body(())
            .unwrap();
        let (parts, ctx) = run(&json!({"headers": {"X-New": "n", "X-Drop": ""}}), req);
        assert_eq!(parts.headers["x-new"], "n");
        assert!(!parts.headers.contains_key("x-drop"));
        assert!(ctx.upstream_host.is_none());
        assert_eq!(parts.method, Method::GET);
    }

    #[test]
    fn an_unusable_result_is_a_400() {
        // A capture from the path placed in the query, where `<` is not allowed... the path
        // normaliser keeps such bytes out in practice; the plugin still must not panic.
        let p = ProxyRewrite::new(&json!({"regex_uri": ["^/(.*)$", "/q?x=$1"]})).unwrap();
        let (mut parts, _) = http::Request::get("/a\"b").body(()).unwrap().into_parts();
        let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
        match p.rewrite(&mut parts, &mut ctx) {
            Flow::Respond(r) => assert_eq!(r.status, StatusCode::BAD_REQUEST),
            Flow::Continue => panic!("continued with {}", parts.uri),
        }
    }
}
