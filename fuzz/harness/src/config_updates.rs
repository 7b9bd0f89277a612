//! A sequence of config updates checked against invariants (Envoy's xDS fuzz idea): each step
//! puts or deletes one resource; a step is accepted when the control plane's rules accept it
//! (the body validates, the whole set's references resolve); after each accepted step the
//! snapshot the CP would publish must compile on a data plane (a config the CP accepts is never
//! NACKed), and compiling it on top of the previous config (upstream reuse) must route like
//! compiling it from nothing.

use std::collections::BTreeMap;

use http::Method;
use postern_data_plane::compile::{CompiledConfig, compile};
use postern_proto::model::{ConfigSet, Resource, ResourceKind};
use postern_proto::sync;
use serde_json::{Value, json};

use crate::bytes::Gen;

const IDS: [&str; 3] = ["a", "b", "c"];
const KINDS: [ResourceKind; 5] = [
    ResourceKind::Upstreams,
    ResourceKind::Services,
    ResourceKind::Routes,
    ResourceKind::GlobalRules,
    ResourceKind::Consumers,
];
const URIS: [&str; 9] = [
    "/",
    "/a",
    "/a/b",
    "/a/*",
    "/users/:id",
    "/~^/re$",
    "/a/./b",
    "a",
    "/%41",
];

fn plugins(g: &mut Gen) -> Value {
    let choices = [
        json!({"request-termination": {}}),
        json!({"request-termination": {"status_code": 410, "body": "gone"}}),
        json!({"request-termination": {"status_code": 99}}),
        json!({"proxy-rewrite": {"uri": "/x"}}),
        json!({"proxy-rewrite": {"regex_uri": ["^/(.*)", "/$1"]}}),
        json!({"proxy-rewrite": {"regex_uri": ["(", "/"]}}),
        json!({"response-rewrite": {"status_code": 600}}),
        json!({"response-rewrite": {"headers": {"set": {"x-a": "b"}}}}),
        json!({"cors": {}}),
        json!({"key-auth": {}}),
        json!({"redirect": {"uri": "/r"}}),
        json!({"limit-count": {"count": 1, "time_window": 60}}),
    ];
    let mut out = serde_json::Map::new();
    for _ in 0..1 + g.int(2) {
        if let Value::Object(p) = g.pick(&choices) {
            out.extend(p);
        }
    }
    Value::Object(out)
}

fn upstream(g: &mut Gen) -> Value {
    let host = g.pick(&["127.0.0.1", "a.example", "::1", "[::1]", "", "h h"]);
    let port = g.pick(&[80u32, 1, 0, 65535, 70000]);
    let weight = g.pick(&[1u32, 0, 100, 65536]);
    let nodes = if g.bool() {
        json!({ format!("{host}:{port}"): weight })
    } else {
        json!([{"host": host, "port": port, "weight": weight}])
    };
    let mut u =
        json!({"nodes": nodes, "type": g.pick(&["roundrobin", "chash", "least_conn", "ewma"])});
    if u["type"] == "chash" && g.bool() {
        u["hash_on"] = json!("vars");
        u["key"] = json!(g.pick(&["remote_addr", "uri", "nope"]));
    }
    if g.bool() {
        u["timeout"] = json!({"connect": g.int(3), "send": 1, "read": 1});
    }
    u
}

fn body(g: &mut Gen, kind: ResourceKind, id: &str) -> Value {
    match kind {
        ResourceKind::Upstreams => upstream(g),
        ResourceKind::Services => {
            let mut s = json!({});
            match g.int(3) {
                0 => s["upstream"] = upstream(g),
                1 => s["upstream_id"] = json!(g.pick(&IDS)),
                _ => s["plugins"] = plugins(g),
            }
            if g.bool() {
                s["hosts"] = json!([g.pick(&["a.example", "*.example", "", "A"])]);
            }
            s
        }
        ResourceKind::Routes => {
            let mut r = json!({"uri": g.pick(&URIS), "priority": g.int(3)});
            match g.int(4) {
                0 => r["upstream"] = upstream(g),
                1 => r["upstream_id"] = json!(g.pick(&IDS)),
                2 => r["service_id"] = json!(g.pick(&IDS)),
                _ => {}
            }
            if g.bool() {
                r["plugins"] = plugins(g);
            }
            if g.bool() {
                r["methods"] = json!([g.pick(&["GET", "POST", "get", "BREW"])]);
            }
            if g.bool() {
                r["vars"] = json!([[
                    g.pick(&["arg_a", "http_x", "nope"]),
                    g.pick(&["==", "~~", "in", "?"]),
                    "1"
                ]]);
            }
            r
        }
        ResourceKind::GlobalRules => json!({"plugins": plugins(g)}),
        // A credential per consumer (the store refuses a key another consumer holds).
        _ => json!({"plugins": {"key-auth": {"key": format!("key-of-{id}")}}}),
    }
}

/// The body as the Admin API stores it: with its id (and, for consumers, the username).
fn stored(kind: ResourceKind, id: &str, mut value: Value) -> Value {
    value["id"] = json!(id);
    if kind == ResourceKind::Consumers {
        value["username"] = json!(id);
    }
    value
}

/// The whole set, if every body validates and every reference resolves.
fn accepted(config: &BTreeMap<(ResourceKind, String), Value>) -> Option<ConfigSet> {
    let mut set = ConfigSet::default();
    for ((kind, id), value) in config {
        set.insert(id, Resource::parse(*kind, value).ok()?);
    }
    set.check_references().ok()?;
    Some(set)
}

fn snapshot(config: &BTreeMap<(ResourceKind, String), Value>, version: u64) -> sync::Snapshot {
    sync::Snapshot {
        version,
        nonce: String::new(),
        store_id: "fuzz".into(),
        resources: config
            .iter()
            .map(|((kind, id), value)| sync::Resource {
                kind: kind.as_str().to_string(),
                id: id.clone(),
                mod_revision: version,
                body: serde_json::to_vec(value).unwrap().into(),
            })
            .collect(),
        ..sync::Snapshot::default()
    }
}

pub fn config_updates(data: &[u8]) {
    run(data);
}

/// Applies the steps of `data`; returns how many were accepted (and compiled).
fn run(data: &[u8]) -> usize {
    let mut accepted_steps = 0;
    let mut g = Gen::new(data);
    let mut config: BTreeMap<(ResourceKind, String), Value> = BTreeMap::new();
    let mut previous: Option<CompiledConfig> = None;
    let mut previous_snap: Option<sync::Snapshot> = None;
    for version in 1..=24 {
        if g.done() {
            break;
        }
        let kind = g.pick(&KINDS);
        let id = g.pick(&IDS).to_string();
        let mut next = config.clone();
        if g.int(4) == 0 {
            next.remove(&(kind, id));
        } else {
            let value = stored(kind, &id, body(&mut g, kind, &id));
            next.insert((kind, id), value);
        }
        if accepted(&next).is_none() {
            continue;
        }
        config = next;
        let snap = snapshot(&config, version);
        // What a sync stream ships (a delta on the previous snapshot) rebuilds this one exactly.
        if let Some(prev) = &previous_snap {
            let (changed, removed) = postern_proto::delta::diff(&prev.resources, &snap.resources);
            let rebuilt = postern_proto::delta::apply(&prev.resources, changed, &removed);
            let bodies = |r: &[sync::Resource]| {
                r.iter()
                    .map(|r| (r.kind.clone(), r.id.clone(), r.body.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                bodies(&rebuilt),
                bodies(&snap.resources),
                "delta round trip"
            );
        }
        previous_snap = Some(snap.clone());
        let compiled = match compile(&snap, previous.as_ref()) {
            Ok(c) => c,
            Err(e) => panic!("accepted config does not compile: {e}\n{config:#?}"),
        };
        let fresh = compile(&snap, None).expect("compiles without a previous config");
        for uri in URIS {
            // The route, its plugins and its upstream's nodes: a route taken over from the
            // previous compile must be what compiling it afresh gives.
            let id = |c: &CompiledConfig| {
                c.router.find(&Method::GET, None, uri).map(|i| {
                    let r = &c.routes[i];
                    let nodes: Vec<String> = r
                        .upstream
                        .iter()
                        .flat_map(|u| u.nodes.iter().map(|n| n.authority.to_string()))
                        .collect();
                    let plugins: Vec<String> = r.plugins.names().map(str::to_string).collect();
                    (r.id.clone(), plugins, nodes, r.timeouts)
                })
            };
            assert_eq!(id(&compiled), id(&fresh), "{uri} routes differently");
        }
        previous = Some(compiled);
        accepted_steps += 1;
    }
    accepted_steps
}

#[cfg(test)]
mod tests {
    /// The invariants are reached: the seed's steps make configs that are accepted, compiled
    /// and routed (random bytes, checked in a loop, do the same often enough to matter).
    #[test]
    fn the_seed_makes_configs_that_compile() {
        let path = format!(
            "{}/../seeds/config_updates/mixed",
            env!("CARGO_MANIFEST_DIR")
        );
        let steps = super::run(&std::fs::read(path).unwrap());
        println!("{steps} accepted steps");
        assert!(steps >= 3, "only {steps} accepted steps");
    }
}
