//! A route's `vars`, compiled once per snapshot and evaluated against each request that reaches
//! the route's candidates (see `postern_proto::model::vars` for the language). Evaluation does
//! not allocate except to percent-decode an argument that needs it, to lowercase a Host with
//! capitals, and to print `remote_addr`.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderName;
use http::header::{COOKIE, HOST};
use postern_proto::model::ValidationError;
use postern_proto::model::vars::{Var, VarOp, parse_vars};
use serde_json::Value;

/// What a condition (or a limit key) reads, resolved for fast lookup.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Header(HeaderName),
    Arg(Box<str>),
    Cookie(Box<str>),
    RemoteAddr,
    Uri,
    RequestMethod,
    Host,
}

/// One compiled `[var, (!), op, value]`.
#[derive(Debug, Clone)]
pub struct Condition {
    source: Source,
    negate: bool,
    op: VarOp,
}

/// All of a route's conditions; empty = the route has no `vars`.
#[derive(Debug, Clone, Default)]
pub struct Conditions(Box<[Condition]>);

/// The request as conditions see it.
#[derive(Clone, Copy)]
pub struct RequestVars<'a> {
    pub parts: &'a http::request::Parts,
    /// The client's address (the TCP peer).
    pub client: IpAddr,
}

impl Conditions {
    /// Compiles a route's `vars` (already validated by the model; errors name the element, to be
    /// put under `vars`).
    pub fn compile(vars: &[Value]) -> Result<Conditions, ValidationError> {
        let parsed = parse_vars(vars)?;
        let mut out = Vec::with_capacity(parsed.len());
        for (i, expr) in parsed.into_iter().enumerate() {
            let source = Source::new(expr.var)
                .ok_or_else(|| ValidationError::new(format!("{i}.0"), "not a valid header name"))?;
            out.push(Condition {
                source,
                negate: expr.negate,
                op: expr.op,
            });
        }
        Ok(Conditions(out.into_boxed_slice()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether every condition holds for `req` (true when there are none).
    pub fn matches(&self, req: &RequestVars<'_>) -> bool {
        self.0.iter().all(|c| c.holds(req))
    }
}

impl Condition {
    fn holds(&self, req: &RequestVars<'_>) -> bool {
        let result = match &self.op {
            VarOp::Has(want) => self.any_item(req, |item| item == want),
            op => match (op, self.value(req)) {
                // A missing variable differs from everything.
                (VarOp::Ne(_), None) => true,
                (_, None) => false,
                (VarOp::Eq(want), Some(v)) => *v == **want,
                (VarOp::Ne(want), Some(v)) => *v != **want,
                (VarOp::Gt(n), Some(v)) => number(&v).is_some_and(|v| v > *n),
                (VarOp::Lt(n), Some(v)) => number(&v).is_some_and(|v| v < *n),
                (VarOp::Regex(re), Some(v)) => re.is_match(&v),
                (VarOp::In(list), Some(v)) => list.iter().any(|w| **w == *v),
                (VarOp::Has(_), Some(_)) => false,
            },
        };
        result != self.negate
    }

    fn value<'a>(&'a self, req: &RequestVars<'a>) -> Option<Cow<'a, str>> {
        self.source.value(req)
    }

    /// `has`: the variable as a list. Headers are split on commas (every occurrence), an
    /// argument counts each time it is given, anything else is a one-item list.
    fn any_item(&self, req: &RequestVars<'_>, mut f: impl FnMut(&str) -> bool) -> bool {
        match &self.source {
            Source::Header(name) => req
                .parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|item| f(item.trim())),
            Source::Arg(name) => args(req.parts, name).any(|v| f(&v)),
            _ => self.value(req).is_some_and(|v| f(&v)),
        }
    }
}

impl Source {
    /// Resolves a parsed variable; `None` when a header name is not one HTTP allows.
    pub(crate) fn new(var: Var) -> Option<Source> {
        Some(match var {
            Var::Header(h) => Source::Header(HeaderName::from_bytes(h.as_bytes()).ok()?),
            Var::Arg(a) => Source::Arg(a.into()),
            Var::Cookie(c) => Source::Cookie(c.into()),
            Var::RemoteAddr => Source::RemoteAddr,
            Var::Uri => Source::Uri,
            Var::RequestMethod => Source::RequestMethod,
            Var::Host => Source::Host,
        })
    }

    /// The variable's value; for a repeated header, argument or cookie, the first one.
    pub(crate) fn value<'a>(&'a self, req: &RequestVars<'a>) -> Option<Cow<'a, str>> {
        let parts = req.parts;
        match self {
            Source::Header(name) => parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(Cow::Borrowed),
            Source::Arg(name) => args(parts, name).next(),
            Source::Cookie(name) => cookie(parts, name).map(Cow::Borrowed),
            Source::RemoteAddr => Some(Cow::Owned(req.client.to_canonical().to_string())),
            Source::Uri => Some(Cow::Borrowed(parts.uri.path())),
            Source::RequestMethod => Some(Cow::Borrowed(parts.method.as_str())),
            Source::Host => host(parts),
        }
    }
}

/// A finite number, or `None` for anything else.
fn number(v: &str) -> Option<f64> {
    v.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Every value of query argument `name`, percent-decoded (`+` is a space).
fn args<'a>(parts: &'a http::request::Parts, name: &'a str) -> impl Iterator<Item = Cow<'a, str>> {
    parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == name).then(|| decode(v))
        })
}

/// Percent-decodes a query component; invalid escapes stay as they are.
fn decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |at: usize| b.get(at).and_then(|&h| (h as char).to_digit(16));
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                out.push(c);
            }
            _ => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The first cookie called `name`, from any `Cookie` header.
fn cookie<'a>(parts: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// Lowercase Host without port or trailing dot (from the header, else the request target).
fn host(parts: &http::request::Parts) -> Option<Cow<'_, str>> {
    let raw = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))?;
    let name = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |i| &raw[..=i])
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conditions(v: Value) -> Conditions {
        Conditions::compile(v.as_array().expect("array")).expect("valid vars")
    }

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    /// Evaluates one condition against a GET with these headers from 127.0.0.1.
    fn holds(cond: Value, uri: &str, headers: &[(&str, &str)]) -> bool {
        let p = parts("GET", uri, headers);
        let req = RequestVars {
            parts: &p,
            client: "127.0.0.1".parse().expect("ip"),
        };
        conditions(json!([cond])).matches(&req)
    }

    #[test]
    fn eq_and_ne() {
        let h = [("X-Client", "mobile")];
        assert!(holds(json!(["http_x_client", "==", "mobile"]), "/", &h));
        assert!(!holds(json!(["http_x_client", "==", "Mobile"]), "/", &h));
        assert!(!holds(json!(["http_x_client", "==", "mobile"]), "/", &[]));
        assert!(holds(json!(["http_x_client", "~=", "web"]), "/", &h));
        assert!(!holds(json!(["http_x_client", "~=", "mobile"]), "/", &h));
        // A missing variable is unequal to everything.
        assert!(holds(json!(["http_x_client", "~=", "mobile"]), "/", &[]));
        assert!(holds(json!(["arg_n", "==", 5]), "/?n=5", &[]));
    }

    #[test]
    fn numeric_comparisons() {
        assert!(holds(json!(["arg_page", ">", "1"]), "/?page=2", &[]));
        assert!(!holds(json!(["arg_page", ">", "1"]), "/?page=1", &[]));
        assert!(holds(json!(["arg_page", ">", 1]), "/?page=1.5", &[]));
        assert!(holds(json!(["arg_page", "<", 10]), "/?page=-3", &[]));
        assert!(!holds(json!(["arg_page", "<", 10]), "/?page=10", &[]));
        // Non-numeric or missing values are false either way.
        assert!(!holds(json!(["arg_page", ">", 1]), "/?page=abc", &[]));
        assert!(!holds(json!(["arg_page", "<", 1]), "/?page=abc", &[]));
        assert!(!holds(json!(["arg_page", "<", 1]), "/?page=inf", &[]));
        assert!(!holds(json!(["arg_page", "<", 1]), "/", &[]));
    }

    #[test]
    fn regex_operators() {
        let c = [("Cookie", "theme=dark; session=abc123")];
        assert!(holds(json!(["cookie_session", "~~", "^a"]), "/", &c));
        assert!(!holds(json!(["cookie_session", "~~", "^A"]), "/", &c));
        assert!(holds(json!(["cookie_session", "~*", "^A"]), "/", &c));
        assert!(holds(json!(["cookie_theme", "~~", "ar"]), "/", &c));
        assert!(!holds(json!(["cookie_missing", "~~", ".*"]), "/", &c));
        assert!(holds(
            json!(["uri", "~~", "^/api/v[0-9]+/"]),
            "/api/v2/x",
            &[]
        ));
    }

    #[test]
    fn in_operator() {
        assert!(holds(
            json!(["remote_addr", "in", ["10.0.0.1", "127.0.0.1"]]),
            "/",
            &[]
        ));
        assert!(!holds(json!(["remote_addr", "in", ["10.0.0.1"]]), "/", &[]));
        assert!(holds(
            json!(["request_method", "in", ["GET", "HEAD"]]),
            "/",
            &[]
        ));
        assert!(!holds(json!(["arg_x", "in", ["a"]]), "/", &[]));
    }

    #[test]
    fn has_operator() {
        let h = [
            ("Accept", "text/html, application/json"),
            ("Accept", "image/png"),
        ];
        assert!(holds(
            json!(["http_accept", "has", "application/json"]),
            "/",
            &h
        ));
        assert!(holds(json!(["http_accept", "has", "image/png"]), "/", &h));
        assert!(!holds(json!(["http_accept", "has", "text/plain"]), "/", &h));
        assert!(holds(json!(["arg_tag", "has", "b"]), "/?tag=a&tag=b", &[]));
        assert!(!holds(json!(["arg_tag", "has", "c"]), "/?tag=a&tag=b", &[]));
        assert!(holds(json!(["uri", "has", "/x"]), "/x", &[]));
        assert!(!holds(json!(["http_accept", "has", "a"]), "/", &[]));
    }

    #[test]
    fn negation() {
        let h = [("X", "a")];
        assert!(!holds(json!(["http_x", "!", "==", "a"]), "/", &h));
        assert!(holds(json!(["http_x", "!", "==", "b"]), "/", &h));
        assert!(holds(json!(["http_x", "!", "~~", "^b"]), "/", &h));
        assert!(holds(json!(["http_x", "!", "in", ["b", "c"]]), "/", &h));
        assert!(holds(json!(["http_y", "!", "==", "a"]), "/", &h));
        assert!(!holds(json!(["http_y", "!", "~=", "a"]), "/", &h));
    }

    #[test]
    fn variables() {
        let h = [
            ("Host", "API.Example.com:8080"),
            ("X-Forwarded-For", "1.2.3.4"),
        ];
        assert!(holds(json!(["host", "==", "api.example.com"]), "/", &h));
        assert!(holds(
            json!(["http_x_forwarded_for", "==", "1.2.3.4"]),
            "/",
            &h
        ));
        assert!(holds(json!(["uri", "==", "/a/b"]), "/a/b?x=1", &[]));
        assert!(holds(json!(["request_method", "==", "GET"]), "/", &[]));
        // Arguments: percent-decoded (`+` is a space), first occurrence, names decoded too.
        assert!(holds(
            json!(["arg_q", "==", "a b/c"]),
            "/?q=a+b%2Fc&q=2",
            &[]
        ));
        assert!(holds(json!(["arg_my key", "==", "1"]), "/?my%20key=1", &[]));
        assert!(holds(json!(["arg_flag", "==", ""]), "/?flag", &[]));
        assert!(holds(json!(["arg_bad", "==", "%zz"]), "/?bad=%zz", &[]));
    }

    #[test]
    fn all_conditions_must_hold() {
        let c = conditions(json!([
            ["http_x_client", "==", "mobile"],
            ["arg_page", ">", "1"],
        ]));
        let client = "127.0.0.1".parse().expect("ip");
        let both = parts("GET", "/?page=2", &[("x-client", "mobile")]);
        let one = parts("GET", "/?page=1", &[("x-client", "mobile")]);
        assert!(c.matches(&RequestVars {
            parts: &both,
            client
        }));
        assert!(!c.matches(&RequestVars {
            parts: &one,
            client
        }));
        assert!(Conditions::default().matches(&RequestVars {
            parts: &one,
            client
        }));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn ipv4_mapped_clients_read_as_ipv4() {
        let p = parts("GET", "/", &[]);
        let req = RequestVars {
            parts: &p,
            client: "::ffff:127.0.0.1".parse().expect("ip"),
        };
        assert!(conditions(json!([["remote_addr", "==", "127.0.0.1"]])).matches(&req));
    }
}
