//! Route-table benchmark: how long a snapshot of N routes takes to compile on a data plane (the
//! whole compile: JSON parse, validation, plugin chains, router), and what one route lookup
//! costs as N grows. Run with `bench/routes.sh` (or `cargo bench -p postern-data-plane --bench
//! route_table`); prints a Markdown table.
//!
//! The table mixes what real configs hold: exact paths, `:param` paths, prefixes, routes bound
//! to a host, a few `~` regular expressions, and a plugin on every tenth route. Lookups cycle
//! through paths that hit each kind, plus misses.

use std::hint::black_box;
use std::time::{Duration, Instant};

use http::Method;
use postern_data_plane::compile::compile;
use postern_proto::sync::{Resource, Snapshot};
use serde_json::json;

fn resource(kind: &str, id: &str, body: serde_json::Value) -> Resource {
    Resource {
        kind: kind.into(),
        id: id.into(),
        mod_revision: 1,
        body: serde_json::to_vec(&body).expect("json").into(),
    }
}

/// Route `i` of the table, and a request path that it (and only it) should answer.
fn route(i: usize) -> (serde_json::Value, String, Option<String>) {
    let mut r = match i % 20 {
        0..=7 => json!({"uri": format!("/svc{i}/items")}),
        8..=13 => json!({"uri": format!("/svc{i}/users/:id")}),
        14..=17 => json!({"uri": format!("/svc{i}/*")}),
        18 => json!({"uri": format!("/svc{i}/*"), "host": format!("t{i}.example.com")}),
        _ => json!({"uri": format!(r"~/svc{i}/v\d+/")}),
    };
    r["upstream_id"] = json!("u");
    if i.is_multiple_of(10) {
        r["plugins"] = json!({"proxy-rewrite": {"headers": {"set": {"x-route": format!("r{i}")}}}});
    }
    let (path, host) = match i % 20 {
        0..=7 => (format!("/svc{i}/items"), None),
        8..=13 => (format!("/svc{i}/users/42"), None),
        14..=17 => (format!("/svc{i}/a/b"), None),
        18 => (format!("/svc{i}/x"), Some(format!("t{i}.example.com"))),
        _ => (format!("/svc{i}/v2/x"), None),
    };
    (r, path, host)
}

fn snapshot(n: usize) -> (Snapshot, Vec<(String, Option<String>)>) {
    let mut resources = vec![resource(
        "upstreams",
        "u",
        json!({"nodes": {"127.0.0.1:9": 1}}),
    )];
    let mut requests = Vec::with_capacity(n);
    for i in 0..n {
        let (body, path, host) = route(i);
        resources.push(resource("routes", &format!("r{i}"), body));
        requests.push((path, host));
    }
    let snapshot = Snapshot {
        version: 1,
        nonce: String::new(),
        resources,
        store_id: "bench".into(),
        ..Snapshot::default()
    };
    (snapshot, requests)
}

fn per_op(total: Duration, ops: usize) -> f64 {
    total.as_nanos() as f64 / ops as f64
}

fn main() {
    let sizes: Vec<usize> = std::env::var("ROUTES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1_000, 10_000, 50_000]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    // "hit, all routes": requests spread over every route (memory traffic grows with the table);
    // "hit, 20 paths": the same 20 paths (one per route kind) again and again, the router's
    // own work with the table's hot part in cache.
    println!("| routes | compile (ms) | hit, all routes (ns) | hit, 20 paths (ns) | miss (ns) |");
    println!("|---:|---:|---:|---:|---:|");
    for n in sizes {
        let (snap, requests) = snapshot(n);
        // Best of three: the first compile also pays for warming the allocator.
        let mut compile_time = Duration::MAX;
        let mut config = None;
        for _ in 0..3 {
            let started = Instant::now();
            let c = compile(&snap, None).expect("the benchmark's snapshot compiles");
            compile_time = compile_time.min(started.elapsed());
            config = Some(c);
        }
        let config = config.expect("compiled");

        // Every request must land on its own route, or the figures mean nothing.
        for (i, (path, host)) in requests.iter().enumerate() {
            let got = config
                .router
                .find(&Method::GET, host.as_deref(), path)
                .map(|k| config.routes[k].id.to_string());
            assert_eq!(
                got,
                Some(format!("r{i}")),
                "{host:?} {path} should match route r{i}"
            );
        }
        let lookups = 2_000_000usize;
        let started = Instant::now();
        for k in 0..lookups {
            let (path, host) = &requests[(k * 7919) % n];
            black_box(
                config
                    .router
                    .find(&Method::GET, host.as_deref(), black_box(path)),
            );
        }
        let hit = per_op(started.elapsed(), lookups);
        let started = Instant::now();
        for k in 0..lookups {
            let (path, host) = &requests[k % 20.min(n)];
            black_box(
                config
                    .router
                    .find(&Method::GET, host.as_deref(), black_box(path)),
            );
        }
        let hot = per_op(started.elapsed(), lookups);
        let misses = ["/nowhere", "/svc1/unknown/deep/path", "/svc/x"];
        let started = Instant::now();
        for k in 0..lookups {
            let got = config
                .router
                .find(&Method::GET, None, black_box(misses[k % misses.len()]));
            assert!(got.is_none());
        }
        let miss = per_op(started.elapsed(), lookups);
        println!(
            "| {n} | {:.1} | {hit:.0} | {hot:.0} | {miss:.0} |",
            compile_time.as_secs_f64() * 1e3
        );
    }
}
