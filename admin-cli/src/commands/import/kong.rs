//! Kong declarative config (`_format_version: '3.0'`) → Postern.
//!
//! - a service with `url` (or protocol/host/port/path) → an upstream `<service>` with one node
//!   plus a service `<service>` using it; a service whose host names a Kong upstream uses that
//!   upstream instead (Kong upstreams with targets → Postern upstreams);
//! - a route's `paths` are prefixes in Kong: `/api/v1/users` → uris `/api/v1/users` and
//!   `/api/v1/users/*`; Kong's `strip_path` (default on) and the service's path become a
//!   `proxy-rewrite` so the upstream sees the same path as behind Kong;
//! - plugins: rate-limiting (same shape), jwt → jwt-auth, key-auth, acl → consumer-restriction
//!   (groups resolved to consumer names), cors, request-termination, openid-connect; global
//!   plugins → the global rule `kong-global`;
//! - consumers with keyauth_credentials / jwt_secrets → consumers with key-auth / jwt-auth.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::{Map, Value, json};

use super::{Imported, Out};

type Obj = Map<String, Value>;

pub fn import(input: &Value) -> anyhow::Result<Imported> {
    let Some(top) = input.as_object() else {
        bail!("a Kong declarative file is a YAML mapping");
    };
    match top.get("_format_version").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.") || v.starts_with("2.") => {}
        Some(v) => bail!("_format_version {v}: only Kong 2.x/3.x declarative files are read"),
        None => bail!("no _format_version: not a Kong declarative file"),
    }
    let mut k = Kong {
        out: Out::default(),
        groups: BTreeMap::new(),
        upstream_names: list(top, "upstreams")
            .filter_map(|u| u.get("name").and_then(Value::as_str).map(str::to_string))
            .collect(),
        services: BTreeMap::new(),
        routes: BTreeMap::new(),
        global: Obj::new(),
    };
    for (key, value) in top {
        if !matches!(
            key.as_str(),
            "_format_version"
                | "_transform"
                | "_workspace"
                | "services"
                | "routes"
                | "upstreams"
                | "consumers"
                | "plugins"
        ) {
            k.out
                .note(key, format!("not mapped ({})", super::short(value)));
        }
    }
    // Consumers first: acl plugins need their groups.
    for c in list(top, "consumers") {
        k.consumer(c);
    }
    for u in list(top, "upstreams") {
        k.upstream(u);
    }
    for s in list(top, "services") {
        k.service(s);
    }
    for r in list(top, "routes") {
        let service = match r.get("service") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o
                .get("name")
                .or(o.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        k.route(r, service.as_deref());
    }
    for p in list(top, "plugins") {
        k.attached_plugin(p);
    }
    Ok(k.finish())
}

fn list<'a>(obj: &'a Obj, key: &str) -> impl Iterator<Item = &'a Obj> {
    obj.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
}

fn name_of(obj: &Obj) -> Option<String> {
    obj.get("name")
        .or(obj.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

struct Service {
    value: Obj,
    /// Kong's `path` of the service, prefixed to what reaches the upstream.
    path: String,
}

struct Kong {
    out: Out,
    /// Kong acl group → the consumers in it.
    groups: BTreeMap<String, Vec<String>>,
    upstream_names: Vec<String>,
    services: BTreeMap<String, Service>,
    routes: BTreeMap<String, Obj>,
    global: Obj,
}

impl Kong {
    fn finish(mut self) -> Imported {
        for (_, s) in std::mem::take(&mut self.services) {
            self.out.push("services", Value::Object(s.value));
        }
        for (_, r) in std::mem::take(&mut self.routes) {
            self.out.push("routes", Value::Object(r));
        }
        if !self.global.is_empty() {
            let plugins = std::mem::take(&mut self.global);
            self.out.push(
                "global_rules",
                json!({"id": "kong-global", "plugins": plugins}),
            );
        }
        self.out.finish()
    }

    fn consumer(&mut self, c: &Obj) {
        let Some(username) = c
            .get("username")
            .or(c.get("custom_id"))
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            self.out
                .note("consumers", "a consumer without username; skipped");
            return;
        };
        let at = format!("consumers/{username}");
        let mut plugins = Obj::new();
        let creds = |key: &str| -> Vec<Obj> {
            c.get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .cloned()
                .collect()
        };
        let keys = creds("keyauth_credentials");
        if let Some(first) = keys.first() {
            plugins.insert("key-auth".into(), json!({"key": first.get("key")}));
            if keys.len() > 1 {
                self.out.note(
                    &at,
                    format!(
                        "{} more key-auth keys not mapped (one key per consumer)",
                        keys.len() - 1
                    ),
                );
            }
        }
        let jwts = creds("jwt_secrets");
        if let Some(first) = jwts.first() {
            let mut conf = Obj::new();
            for (from, to) in [
                ("key", "key"),
                ("secret", "secret"),
                ("algorithm", "algorithm"),
                ("rsa_public_key", "public_key"),
            ] {
                if let Some(v) = first.get(from) {
                    conf.insert(to.into(), v.clone());
                }
            }
            plugins.insert("jwt-auth".into(), Value::Object(conf));
            if jwts.len() > 1 {
                self.out.note(
                    &at,
                    format!(
                        "{} more jwt secrets not mapped (one per consumer)",
                        jwts.len() - 1
                    ),
                );
            }
        }
        for acl in creds("acls") {
            if let Some(g) = acl.get("group").and_then(Value::as_str) {
                self.groups
                    .entry(g.to_string())
                    .or_default()
                    .push(username.clone());
            }
        }
        let mut consumer = json!({"id": username, "username": username});
        if !plugins.is_empty() {
            consumer["plugins"] = Value::Object(plugins);
        }
        self.out.rest(
            &at,
            c,
            &[
                "username",
                "custom_id",
                "keyauth_credentials",
                "jwt_secrets",
                "acls",
                "id",
            ],
        );
        self.out.push("consumers", consumer);
    }

    fn upstream(&mut self, u: &Obj) {
        let Some(name) = name_of(u) else {
            self.out
                .note("upstreams", "an upstream without name; skipped");
            return;
        };
        let at = format!("upstreams/{name}");
        let mut nodes = Obj::new();
        for t in list(u, "targets") {
            let Some(target) = t.get("target").and_then(Value::as_str) else {
                continue;
            };
            // Kong's default target port is 8000.
            let target = if target.contains(':') {
                target.to_string()
            } else {
                format!("{target}:8000")
            };
            nodes.insert(target, t.get("weight").cloned().unwrap_or(json!(100)));
        }
        match u.get("algorithm").and_then(Value::as_str) {
            None | Some("round-robin") => {}
            Some(other) => self.out.note(
                &at,
                format!("algorithm {other} not mapped: Postern balances round-robin"),
            ),
        }
        self.out
            .rest(&at, u, &["name", "id", "targets", "algorithm"]);
        self.out.push(
            "upstreams",
            json!({"id": name, "name": name, "nodes": nodes}),
        );
    }

    fn service(&mut self, s: &Obj) {
        let Some(name) = name_of(s) else {
            self.out.note("services", "a service without name; skipped");
            return;
        };
        let at = format!("services/{name}");
        let (scheme, host, port, path) = match s.get("url").and_then(Value::as_str) {
            Some(url) => match parse_url(url) {
                Some(parts) => parts,
                None => {
                    self.out
                        .note(&at, format!("url {url} cannot be read; skipped"));
                    return;
                }
            },
            None => {
                let scheme = s
                    .get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("http")
                    .to_string();
                let Some(host) = s.get("host").and_then(Value::as_str) else {
                    self.out.note(&at, "no url or host; skipped");
                    return;
                };
                let port = s
                    .get("port")
                    .and_then(Value::as_u64)
                    .unwrap_or(if scheme == "https" { 443 } else { 80 });
                let path = s
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                (scheme, host.to_string(), port as u16, path)
            }
        };
        let mut value = Obj::new();
        value.insert("id".into(), json!(name));
        value.insert("name".into(), json!(name));
        if self.upstream_names.contains(&host) {
            value.insert("upstream_id".into(), json!(host));
        } else {
            let mut up = json!({
                "id": name,
                "nodes": {format!("{host}:{port}"): 1},
                // Kong sends the service's host upstream unless a route preserves the client's.
                "pass_host": "node",
            });
            if scheme == "https" {
                up["scheme"] = json!("https");
            } else if scheme != "http" {
                self.out.note(
                    &at,
                    format!("protocol {scheme} not mapped (http/https only)"),
                );
            }
            let mut timeout = Obj::new();
            for (from, to) in [
                ("connect_timeout", "connect"),
                ("write_timeout", "send"),
                ("read_timeout", "read"),
            ] {
                if let Some(ms) = s.get(from).and_then(Value::as_f64) {
                    timeout.insert(to.into(), json!(ms / 1000.0));
                }
            }
            if !timeout.is_empty() {
                up["timeout"] = Value::Object(timeout);
            }
            self.out.push("upstreams", up);
            value.insert("upstream_id".into(), json!(name));
        }
        let mut plugins = Obj::new();
        for p in list(s, "plugins") {
            if let Some((n, conf)) = self.plugin(p, &at) {
                plugins.insert(n, conf);
            }
        }
        if !plugins.is_empty() {
            value.insert("plugins".into(), Value::Object(plugins));
        }
        self.out.rest(
            &at,
            s,
            &[
                "name",
                "id",
                "url",
                "protocol",
                "host",
                "port",
                "path",
                "routes",
                "plugins",
                "connect_timeout",
                "write_timeout",
                "read_timeout",
            ],
        );
        self.services.insert(
            name.clone(),
            Service {
                value,
                path: path.trim_end_matches('/').to_string(),
            },
        );
        for r in list(s, "routes") {
            self.route(r, Some(&name));
        }
    }

    fn route(&mut self, r: &Obj, service: Option<&str>) {
        let Some(name) = name_of(r) else {
            self.out.note("routes", "a route without name; skipped");
            return;
        };
        let at = format!("routes/{name}");
        let mut value = Obj::new();
        value.insert("id".into(), json!(name));
        value.insert("name".into(), json!(name));
        let paths: Vec<String> = r
            .get("paths")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|p| {
                let regex = p.starts_with('~');
                if regex {
                    self.out.note(&at, format!("regex path {p} not mapped"));
                }
                !regex
            })
            .map(str::to_string)
            .collect();
        let uris: Vec<String> = paths.iter().flat_map(|p| prefix_uris(p)).collect();
        value.insert(
            "uris".into(),
            json!(if uris.is_empty() {
                vec!["/*".to_string()]
            } else {
                uris
            }),
        );
        for field in ["methods", "hosts"] {
            if let Some(v) = r
                .get(field)
                .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
            {
                value.insert(field.into(), v.clone());
            }
        }
        let service_path = service
            .and_then(|s| self.services.get(s))
            .map(|s| s.path.clone())
            .unwrap_or_default();
        let strip = r.get("strip_path").and_then(Value::as_bool).unwrap_or(true);
        let mut plugins = Obj::new();
        if let Some(rewrite) = path_rewrite(&paths, strip, &service_path) {
            plugins.insert("proxy-rewrite".into(), json!({"regex_uri": rewrite}));
        }
        match service {
            Some(s) if self.services.contains_key(s) => {
                value.insert("service_id".into(), json!(s));
            }
            Some(s) => self.out.note(
                &at,
                format!("service {s} not found; the route has no upstream"),
            ),
            None => self.out.note(&at, "no service; the route has no upstream"),
        }
        if r.get("preserve_host").and_then(Value::as_bool) == Some(true) {
            self.out.note(
                &at,
                "preserve_host: set pass_host: pass on the service's upstream by hand",
            );
        }
        if let Some(protocols) = r.get("protocols").and_then(Value::as_array)
            && protocols
                .iter()
                .any(|p| !matches!(p.as_str(), Some("http" | "https")))
        {
            self.out.note(
                &at,
                format!(
                    "protocols {} not mapped (http/https only)",
                    Value::Array(protocols.clone())
                ),
            );
        }
        for p in list(r, "plugins") {
            if let Some((n, conf)) = self.plugin(p, &at) {
                plugins.insert(n, conf);
            }
        }
        if !plugins.is_empty() {
            value.insert("plugins".into(), Value::Object(plugins));
        }
        self.out.rest(
            &at,
            r,
            &[
                "name",
                "id",
                "paths",
                "methods",
                "hosts",
                "strip_path",
                "service",
                "plugins",
                "preserve_host",
                "protocols",
            ],
        );
        self.routes.insert(name, value);
    }

    /// A top-level plugin: on the service or route it names, else global.
    fn attached_plugin(&mut self, p: &Obj) {
        let target = |key: &str| match p.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => name_of(o),
            _ => None,
        };
        let (service, route) = (target("service"), target("route"));
        if let Some(c) = target("consumer") {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
            self.out.note(
                &format!("plugins/{name}"),
                format!("scoped to consumer {c}: not mapped"),
            );
            return;
        }
        let at = match (&service, &route) {
            (_, Some(r)) => format!("routes/{r}"),
            (Some(s), None) => format!("services/{s}"),
            (None, None) => "global_rules/kong-global".to_string(),
        };
        let Some((name, conf)) = self.plugin(p, &at) else {
            return;
        };
        let plugins = match (&service, &route) {
            (_, Some(r)) => self
                .routes
                .get_mut(r)
                .map(|v| v.entry("plugins").or_insert_with(|| json!({}))),
            (Some(s), None) => self
                .services
                .get_mut(s)
                .map(|v| v.value.entry("plugins").or_insert_with(|| json!({}))),
            (None, None) => {
                self.global.insert(name, conf);
                return;
            }
        };
        match plugins.and_then(Value::as_object_mut) {
            Some(map) => {
                map.insert(name, conf);
            }
            None => self
                .out
                .note(&at, format!("plugin {name}: its target does not exist")),
        }
    }

    /// Maps one Kong plugin to Postern's name and config; `None` (noted) when it cannot.
    fn plugin(&mut self, p: &Obj, owner: &str) -> Option<(String, Value)> {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
        let at = format!("{owner}.plugins.{name}");
        if p.get("enabled").and_then(Value::as_bool) == Some(false) {
            self.out.note(&at, "disabled in Kong; left out");
            return None;
        }
        let empty = Obj::new();
        let c = p.get("config").and_then(Value::as_object).unwrap_or(&empty);
        let mut conf = Obj::new();
        let copy = |conf: &mut Obj, from: &str, to: &str| {
            if let Some(v) = c.get(from).filter(|v| !v.is_null()) {
                conf.insert(to.into(), v.clone());
            }
        };
        let (postern, handled): (&str, Vec<&str>) = match name {
            // Postern's rate-limiting takes Kong's shape as is.
            "rate-limiting" => return Some((name.to_string(), Value::Object(c.clone()))),
            "jwt" => {
                for (from, to) in [
                    ("header_names", "header"),
                    ("uri_param_names", "query"),
                    ("cookie_names", "cookie"),
                ] {
                    if let Some(first) = c
                        .get(from)
                        .and_then(Value::as_array)
                        .and_then(|a| a.first())
                    {
                        conf.insert(to.into(), first.clone());
                    }
                }
                (
                    "jwt-auth",
                    vec!["header_names", "uri_param_names", "cookie_names"],
                )
            }
            "key-auth" => {
                if let Some(first) = c
                    .get("key_names")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                {
                    conf.insert("header".into(), first.clone());
                    conf.insert("query".into(), first.clone());
                }
                copy(&mut conf, "hide_credentials", "hide_credentials");
                (
                    "key-auth",
                    vec![
                        "key_names",
                        "hide_credentials",
                        "key_in_header",
                        "key_in_query",
                    ],
                )
            }
            "acl" => {
                for (from, to) in [("allow", "whitelist"), ("deny", "blacklist")] {
                    let Some(groups) = c.get(from).and_then(Value::as_array) else {
                        continue;
                    };
                    let mut names: Vec<String> = groups
                        .iter()
                        .filter_map(Value::as_str)
                        .flat_map(|g| self.groups.get(g).cloned().unwrap_or_default())
                        .collect();
                    names.sort();
                    names.dedup();
                    if names.is_empty() {
                        self.out.note(
                            &at,
                            format!(
                                "{from}: no consumer is in groups {}",
                                Value::Array(groups.clone())
                            ),
                        );
                    }
                    conf.insert(to.into(), json!(names));
                }
                ("consumer-restriction", vec!["allow", "deny"])
            }
            "cors" => {
                let join = |key: &str, default: &str| {
                    c.get(key)
                        .and_then(Value::as_array)
                        .filter(|a| !a.is_empty())
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_else(|| default.to_string())
                };
                conf.insert("allow_origins".into(), json!(join("origins", "*")));
                conf.insert(
                    "allow_methods".into(),
                    json!(join(
                        "methods",
                        "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
                    )),
                );
                conf.insert("allow_headers".into(), json!(join("headers", "*")));
                if c.get("exposed_headers").is_some_and(|v| !v.is_null()) {
                    conf.insert("expose_headers".into(), json!(join("exposed_headers", "")));
                }
                copy(&mut conf, "credentials", "allow_credential");
                copy(&mut conf, "max_age", "max_age");
                (
                    "cors",
                    vec![
                        "origins",
                        "methods",
                        "headers",
                        "exposed_headers",
                        "credentials",
                        "max_age",
                    ],
                )
            }
            "request-termination" => {
                for f in ["status_code", "message", "body", "content_type"] {
                    copy(&mut conf, f, f);
                }
                (
                    "request-termination",
                    vec!["status_code", "message", "body", "content_type"],
                )
            }
            "openid-connect" => {
                if let Some(issuer) = c.get("issuer").and_then(Value::as_str) {
                    let base = issuer
                        .trim_end_matches('/')
                        .trim_end_matches("/.well-known/openid-configuration");
                    conf.insert(
                        "discovery".into(),
                        json!(format!("{base}/.well-known/openid-configuration")),
                    );
                }
                // Postern's openid-connect takes Kong's field names as they are.
                for f in [
                    "client_id",
                    "client_secret",
                    "introspection_endpoint",
                    "token_endpoint_auth_method",
                    "scopes_required",
                    "cache_ttl",
                    "upstream_headers_claims",
                    "upstream_headers_names",
                    "auth_methods",
                    "hide_credentials",
                    "consumer_claim",
                    "consumer_optional",
                ] {
                    copy(&mut conf, f, f);
                }
                copy(&mut conf, "audience_required", "audience");
                if let Some(uri) = c.get("redirect_uri") {
                    // Kong takes a list, APISIX one URI.
                    let first = uri.as_array().and_then(|a| a.first()).unwrap_or(uri);
                    conf.insert("redirect_uri".into(), first.clone());
                }
                if let Some(scopes) = c.get("scopes").and_then(Value::as_array) {
                    let s: Vec<&str> = scopes.iter().filter_map(Value::as_str).collect();
                    conf.insert("scope".into(), json!(s.join(" ")));
                }
                if let Some(ms) = c.get("timeout").and_then(Value::as_u64) {
                    // Kong: milliseconds; Postern: seconds (1-60).
                    conf.insert("timeout".into(), json!(ms.div_ceil(1000).clamp(1, 60)));
                }
                if c.get("scopes_required")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.len() > 1)
                {
                    self.out.note(
                        &at,
                        "scopes_required: Postern requires every listed scope (Kong: any one)"
                            .to_string(),
                    );
                }
                (
                    "openid-connect",
                    vec![
                        "issuer",
                        "client_id",
                        "client_secret",
                        "introspection_endpoint",
                        "token_endpoint_auth_method",
                        "redirect_uri",
                        "scopes_required",
                        "scopes",
                        "cache_ttl",
                        "upstream_headers_claims",
                        "upstream_headers_names",
                        "auth_methods",
                        "hide_credentials",
                        "audience_required",
                        "timeout",
                        "consumer_claim",
                        "consumer_optional",
                    ],
                )
            }
            other => {
                self.out.note(
                    &at,
                    format!("plugin {other} has no Postern mapping; left out"),
                );
                return None;
            }
        };
        // Keys the mapping did not use, unless they are null/defaults Kong writes out anyway.
        for (k, v) in c {
            if !handled.contains(&k.as_str()) && !v.is_null() {
                self.out
                    .note(&at, format!("`{k}: {}` not mapped", super::short(v)));
            }
        }
        Some((postern.to_string(), Value::Object(conf)))
    }
}

/// A Kong path prefix as Postern uris: the path itself and everything under it.
fn prefix_uris(p: &str) -> Vec<String> {
    if p.is_empty() || p == "/" {
        vec!["/*".to_string()]
    } else if let Some(base) = p.strip_suffix('/') {
        vec![base.to_string(), format!("{p}*")]
    } else {
        vec![p.to_string(), format!("{p}/*")]
    }
}

/// The `proxy-rewrite` `regex_uri` that reproduces Kong's upstream path: with `strip_path` the
/// matched prefix is removed; the service's path goes in front.
fn path_rewrite(paths: &[String], strip: bool, service_path: &str) -> Option<Vec<String>> {
    let prefixes: Vec<String> = paths
        .iter()
        .map(|p| p.trim_end_matches('/'))
        .filter(|p| !p.is_empty())
        .map(regex_escape)
        .collect();
    if strip && !prefixes.is_empty() {
        Some(vec![
            format!("^(?:{})/?(.*)", prefixes.join("|")),
            format!("{service_path}/$1"),
        ])
    } else if !service_path.is_empty() {
        Some(vec!["^(/.*)".to_string(), format!("{service_path}$1")])
    } else {
        None
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        if "\\.+*?()|[]{}^$".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// `http://host:8080/path` → (scheme, host, port, path).
fn parse_url(url: &str) -> Option<(String, String, u16, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, String::new()),
    };
    let default = if scheme == "https" { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().ok()?),
        None => (authority.to_string(), default),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_string(), host, port, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guide's kong.yml ("Token Bucket Algorithm"), indented as Kong documents it.
    pub const GUIDE_KONG: &str = include_str!("../../../tests/kong-guide.yml");

    #[test]
    fn guide_kong_file_imports() {
        let input: Value = serde_yaml_ng::from_str(GUIDE_KONG).unwrap();
        let got = import(&input).unwrap();
        assert_eq!(
            got.doc,
            json!({"postern_backup": 1, "resources": {
                "upstreams": [{"id": "user-service", "nodes": {"user-service:8080": 1}, "pass_host": "node"}],
                "protos": [],
                "services": [{"id": "user-service", "name": "user-service", "upstream_id": "user-service", "plugins": {
                    "rate-limiting": {
                        "minute": 100, "hour": 1000, "policy": "redis",
                        "redis": {"host": "redis-cluster", "port": 6379, "password": null, "database": 0, "timeout": 2000},
                        "header_name": null, "hide_client_headers": false, "limit_by": "consumer", "fault_tolerant": true
                    }
                }}],
                "routes": [{"id": "user-route", "name": "user-route",
                    "uris": ["/api/v1/users", "/api/v1/users/*"],
                    "plugins": {"proxy-rewrite": {"regex_uri": ["^(?:/api/v1/users)/?(.*)", "/$1"]}},
                    "service_id": "user-service"}],
                "global_rules": [],
                "consumer_groups": [],
                "consumers": [],
                "revocations": [],
                "ssls": [],
                "cache_purges": []
            }})
        );
        assert!(got.unmapped.is_empty(), "{:?}", got.unmapped);
    }

    #[test]
    fn plugins_consumers_and_upstreams_map() {
        let input: Value = serde_yaml_ng::from_str(
            r#"
_format_version: '3.0'
upstreams:
  - name: orders-up
    algorithm: least-connections
    targets: [{target: "10.0.0.1:9000", weight: 50}, {target: "10.0.0.2"}]
    healthchecks: {active: {}}
services:
  - name: orders
    host: orders-up
    path: /v2
    routes:
      - name: orders-route
        paths: [/orders/]
        strip_path: false
        methods: [GET]
        plugins:
          - name: acl
            config: {allow: [admins], hide_groups_header: true}
          - name: key-auth
            config: {key_names: [x-key], hide_credentials: true}
          - name: jwt
            config: {header_names: [authorization], claims_to_verify: [exp]}
          - name: bot-detection
  - name: old
    url: https://legacy.internal:8443/base/
    connect_timeout: 5000
    routes:
      - name: legacy
        paths: [/legacy]
        plugins:
          - name: request-termination
            config: {status_code: 410, message: Gone}
consumers:
  - username: alice
    keyauth_credentials: [{key: k1}, {key: k2}]
    jwt_secrets: [{key: iss-a, secret: s, algorithm: HS256}]
    acls: [{group: admins}]
  - username: bob
plugins:
  - name: cors
    config: {origins: ["https://a.example", "https://b.example"], credentials: true, max_age: 600, preflight_continue: false}
  - name: openid-connect
    service: old
    config: {issuer: "https://auth.example.com/realms/p", client_id: c, client_secret: s, redirect_uri: ["https://x/cb"], scopes_required: [openid, api:read], auth_methods: [password], cache_ttl: 300, upstream_headers_claims: [sub], upstream_headers_names: [X-User-ID], timeout: 2500, consumer_claim: null}
  - name: rate-limiting
    consumer: bob
    config: {minute: 1}
certificates: []
"#,
        )
        .unwrap();
        let got = import(&input).unwrap();
        let r = &got.doc["resources"];
        assert_eq!(
            r["upstreams"],
            json!([
                {"id": "orders-up", "name": "orders-up", "nodes": {"10.0.0.1:9000": 50, "10.0.0.2:8000": 100}},
                {"id": "old", "nodes": {"legacy.internal:8443": 1}, "pass_host": "node", "scheme": "https", "timeout": {"connect": 5.0}}
            ])
        );
        assert_eq!(
            r["services"],
            json!([
                {"id": "old", "name": "old", "upstream_id": "old", "plugins": {"openid-connect": {
                    "discovery": "https://auth.example.com/realms/p/.well-known/openid-configuration",
                    "client_id": "c", "client_secret": "s", "redirect_uri": "https://x/cb",
                    "scopes_required": ["openid", "api:read"], "auth_methods": ["password"],
                    "cache_ttl": 300, "upstream_headers_claims": ["sub"],
                    "upstream_headers_names": ["X-User-ID"], "timeout": 3}}},
                {"id": "orders", "name": "orders", "upstream_id": "orders-up"}
            ])
        );
        assert_eq!(
            r["routes"],
            json!([
                {"id": "legacy", "name": "legacy", "uris": ["/legacy", "/legacy/*"], "service_id": "old", "plugins": {
                    "proxy-rewrite": {"regex_uri": ["^(?:/legacy)/?(.*)", "/base/$1"]},
                    "request-termination": {"status_code": 410, "message": "Gone"}}},
                {"id": "orders-route", "name": "orders-route", "uris": ["/orders", "/orders/*"], "methods": ["GET"],
                 "service_id": "orders", "plugins": {
                    "proxy-rewrite": {"regex_uri": ["^(/.*)", "/v2$1"]},
                    "consumer-restriction": {"whitelist": ["alice"]},
                    "key-auth": {"header": "x-key", "query": "x-key", "hide_credentials": true},
                    "jwt-auth": {"header": "authorization"}}}
            ])
        );
        assert_eq!(
            r["global_rules"],
            json!([{"id": "kong-global", "plugins": {"cors": {
                "allow_origins": "https://a.example,https://b.example",
                "allow_methods": "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT",
                "allow_headers": "*", "allow_credential": true, "max_age": 600}}}])
        );
        assert_eq!(
            r["consumers"],
            json!([
                {"id": "alice", "username": "alice", "plugins": {
                    "key-auth": {"key": "k1"},
                    "jwt-auth": {"key": "iss-a", "secret": "s", "algorithm": "HS256"}}},
                {"id": "bob", "username": "bob"}
            ])
        );
        let mut unmapped = got.unmapped.clone();
        unmapped.sort();
        let wanted = [
            "certificates: not mapped ([])",
            "consumers/alice: 1 more key-auth keys not mapped (one key per consumer)",
            "global_rules/kong-global.plugins.cors: `preflight_continue: false` not mapped",
            "plugins/rate-limiting: scoped to consumer bob: not mapped",
            "routes/orders-route.plugins.acl: `hide_groups_header: true` not mapped",
            "routes/orders-route.plugins.bot-detection: plugin bot-detection has no Postern mapping; left out",
            "routes/orders-route.plugins.jwt: `claims_to_verify: [\"exp\"]` not mapped",
            "services/old.plugins.openid-connect: scopes_required: Postern requires every listed scope (Kong: any one)",
            "upstreams/orders-up: `healthchecks: {\"active\":{}}` not mapped",
            "upstreams/orders-up: algorithm least-connections not mapped: Postern balances round-robin",
        ];
        assert_eq!(unmapped, wanted);
    }

    #[test]
    fn prefixes_and_urls() {
        assert_eq!(prefix_uris("/a/b"), ["/a/b", "/a/b/*"]);
        assert_eq!(prefix_uris("/a/"), ["/a", "/a/*"]);
        assert_eq!(prefix_uris("/"), ["/*"]);
        assert_eq!(
            parse_url("http://svc:8080/x"),
            Some(("http".into(), "svc".into(), 8080, "/x".into()))
        );
        assert_eq!(
            parse_url("https://svc"),
            Some(("https".into(), "svc".into(), 443, String::new()))
        );
        assert_eq!(parse_url("svc"), None);
        assert_eq!(regex_escape("/v1.0"), "/v1\\.0");
    }
}
