//! The README's quick start, end to end: a `--dev` control plane, an upstream and a route
//! written through the Admin API, and a request through the in-process data plane.

use std::time::{Duration, Instant};

use postern_tests::*;
use serde_json::json;

#[tokio::test]
async fn quick_start_proxies_to_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("hello from the backend").await;
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let proxy = cp.proxy.unwrap();

    // An empty store is a config too: the DP becomes ready with version 0 and answers 404.
    wait_applied(cp.status.unwrap(), 0).await;
    assert_eq!(get_via(proxy, "/anything", None).await.unwrap().0, 404);

    admin
        .put_ok(
            "/admin/upstreams/u1",
            json!({"type": "roundrobin", "nodes": {backend.to_string(): 1}}),
        )
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/api/v1/products/*", "methods": ["GET"], "host": "a.example", "upstream_id": "u1"}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;

    let (status, body) = get_via(proxy, "/api/v1/products/42?x=1", Some("a.example"))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from the backend"));

    // The upstream saw the original path and query, the client's Host, and X-Forwarded-For.
    let resp = reqwest::Client::new()
        .get(format!("http://{proxy}/api/v1/products/42?x=1"))
        .header("host", "a.example")
        .header("connection", "x-forwarded-for")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-seen-path"], "/api/v1/products/42?x=1");
    assert_eq!(resp.headers()["x-seen-host"], "a.example");
    assert_eq!(resp.headers()["x-seen-xff"], "127.0.0.1");

    // Not matched: wrong host, wrong method, wrong path → 404 JSON.
    for (method, path, host) in [
        ("GET", "/api/v1/products/42", "b.example"),
        ("POST", "/api/v1/products/42", "a.example"),
        ("GET", "/api/v1/other", "a.example"),
    ] {
        let resp = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("http://{proxy}{path}"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{method} {host}{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error_msg"], "404 Route Not Found");
    }

    // The APISIX alias path writes the same store.
    let (code, v) = admin.get("/apisix/admin/routes/r1").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(v["value"]["upstream_id"], "u1");
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_504() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    // Nothing listens on this port: connection refused → 502.
    let closed = free_addr();
    // Accepts but never answers: read timeout → 504.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    admin
        .put_ok(
            "/admin/routes/refused",
            json!({"uri": "/refused", "upstream": {"nodes": {closed.to_string(): 1}}}),
        )
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/slow",
            json!({"uri": "/slow", "upstream": {"nodes": {silent_addr.to_string(): 1},
                   "timeout": {"connect": 1, "send": 1, "read": 0.5}}}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;
    let proxy = cp.proxy.unwrap();
    assert_eq!(get_via(proxy, "/refused", None).await.unwrap().0, 502);
    let started = Instant::now();
    assert_eq!(get_via(proxy, "/slow", None).await.unwrap().0, 504);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "504 took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn route_change_propagates_to_the_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let old = upstream("old").await;
    let new = upstream("new").await;
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let proxy = cp.proxy.unwrap();
    let rev = admin
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/p", "upstream": {"nodes": {old.to_string(): 1}}}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;
    assert_eq!(get_via(proxy, "/p", None).await.unwrap().1, "old");

    let mut figures = Vec::new();
    for round in 0..5 {
        let target = if round % 2 == 0 {
            (new, "new")
        } else {
            (old, "old")
        };
        let started = Instant::now();
        admin
            .put_ok(
                "/admin/routes/r1",
                json!({"uri": "/p", "upstream": {"nodes": {target.0.to_string(): 1}}}),
            )
            .await;
        wait_for(
            "the new upstream to serve",
            Duration::from_secs(5),
            || async {
                let (_, body) = get_via(proxy, "/p", None).await.ok()?;
                (body == target.1).then_some(())
            },
        )
        .await;
        figures.push(started.elapsed());
    }
    let worst = figures.iter().max().unwrap();
    println!(
        "propagation (Admin API PUT → DP serving the new upstream): {figures:?}, worst {worst:?}"
    );
    assert!(
        *worst < Duration::from_secs(1),
        "propagation took {worst:?}"
    );
}
