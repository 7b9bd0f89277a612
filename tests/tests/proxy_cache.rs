//! `proxy-cache` through real data planes, against an upstream that counts the requests it
//! gets and numbers its answers (so a HIT's body can be told from a fresh one).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use postern_tests::*;
use serde_json::{Value, json};

/// An upstream that counts requests and answers `<path> #<n> <consumer> <accept>`. Query
/// arguments shape the answer: `cc` (Cache-Control), `vary`, `expires`, `sleep` (ms before
/// answering), `size` (a body of that many bytes instead), `fail` (status 500).
struct Origin {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let args: HashMap<String, String> = req
                                .uri()
                                .query()
                                .map(|q| {
                                    q.split('&')
                                        .filter_map(|kv| kv.split_once('='))
                                        .map(|(k, v)| (k.to_string(), decode(v)))
                                        .collect()
                                })
                                .unwrap_or_default();
                            if let Some(ms) = args.get("sleep") {
                                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap()))
                                    .await;
                            }
                            let h = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("-")
                                    .to_string()
                            };
                            let body = match args.get("size") {
                                Some(s) => "x".repeat(s.parse().unwrap()),
                                None => format!(
                                    "{} #{n} {} {}",
                                    req.uri().path(),
                                    h("x-consumer-username"),
                                    h("accept")
                                ),
                            };
                            let mut resp = hyper::Response::builder();
                            if args.contains_key("fail") {
                                resp = resp.status(500);
                            }
                            if let Some(cc) = args.get("cc") {
                                resp = resp.header("cache-control", cc);
                            }
                            if let Some(v) = args.get("vary") {
                                resp = resp.header("vary", v);
                            }
                            if let Some(v) = args.get("expires") {
                                resp = resp.header("expires", v);
                            }
                            Ok::<_, std::convert::Infallible>(
                                resp.body(Full::new(Bytes::from(body))).unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Percent-decoding of a query value (`+` is a space).
fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// `(status, X-Postern-Cache-Status, body)`.
async fn fetch(proxy: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(format!("http://{proxy}{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-postern-cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, cache, resp.text().await.unwrap())
}

/// A dev CP (with its in-process DP) serving `/c/*` through `proxy-cache` with `config`.
async fn cached_route(dir: &std::path::Path, origin: &Origin, config: Value) -> ControlPlane {
    let cp = ControlPlane::start_dev(dir).await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/c",
            json!({"uri": "/c/*", "upstream": {"nodes": {origin.addr.to_string(): 1}},
                   "plugins": {"proxy-cache": config}}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;
    cp
}

#[tokio::test]
async fn a_miss_then_hits_with_the_same_body() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let cp = cached_route(dir.path(), &origin, json!({})).await;
    let proxy = cp.proxy.unwrap();
    let (status, cache, first) = fetch(proxy, "/c/a?x=1", &[]).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    for _ in 0..3 {
        let (status, cache, body) = fetch(proxy, "/c/a?x=1", &[]).await;
        assert_eq!((status, cache.as_str(), &body), (200, "HIT", &first));
    }
    assert_eq!(origin.hits(), 1);
    // Another query string is another key; POST is not cached at all.
    assert_eq!(fetch(proxy, "/c/a?x=2", &[]).await.1, "MISS");
    let post = reqwest::Client::new()
        .post(format!("http://{proxy}/c/a?x=1"))
        .send()
        .await
        .unwrap();
    assert!(post.headers().get("x-postern-cache-status").is_none());
    assert_eq!(origin.hits(), 3);
    // HEAD is cached on its own, with the length of the body it does not carry.
    let client = reqwest::Client::new();
    for want in ["MISS", "HIT"] {
        let resp = client
            .head(format!("http://{proxy}/c/head"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-postern-cache-status"], want);
        assert_eq!(resp.headers()["content-length"], "16");
    }
    assert_eq!(origin.hits(), 4);
    let metrics = reqwest::get(format!("http://{}/metrics", cp.status.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "postern_cache_hits_total{route=\"c\"} 4",
        "postern_cache_misses_total{route=\"c\"} 3",
        "postern_cache_stores_total{route=\"c\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let cp = cached_route(dir.path(), &origin, json!({"cache_ttl": 1})).await;
    let proxy = cp.proxy.unwrap();
    let (_, cache, first) = fetch(proxy, "/c/t", &[]).await;
    assert_eq!(cache, "MISS");
    assert_eq!(fetch(proxy, "/c/t", &[]).await.1, "HIT");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, cache, again) = fetch(proxy, "/c/t", &[]).await;
    assert_eq!(cache, "EXPIRED");
    assert_ne!(again, first);
    assert_eq!(fetch(proxy, "/c/t", &[]).await.1, "HIT");
    // The upstream's max-age wins over cache_ttl (and over Expires).
    let (_, cache, _) = fetch(proxy, "/c/m?cc=max-age%3D1", &[]).await;
    assert_eq!(cache, "MISS");
    assert_eq!(fetch(proxy, "/c/m?cc=max-age%3D1", &[]).await.1, "HIT");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fetch(proxy, "/c/m?cc=max-age%3D1", &[]).await.1, "EXPIRED");
    assert_eq!(origin.hits(), 4);
}

#[tokio::test]
async fn an_expired_entry_is_served_when_the_upstream_fails() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    // The key is the path only, so `?fail=1` asks for the same entry.
    let cp = cached_route(
        dir.path(),
        &origin,
        json!({"cache_ttl": 1, "cache_key": ["$uri"], "stale_on_error": true}),
    )
    .await;
    let proxy = cp.proxy.unwrap();
    let (_, c, first) = fetch(proxy, "/c/s", &[]).await;
    assert_eq!(c, "MISS");
    // Fresh: the upstream is not asked, failing or not.
    assert_eq!(
        fetch(proxy, "/c/s?fail=1", &[]).await,
        (200, "HIT".into(), first.clone())
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        fetch(proxy, "/c/s?fail=1", &[]).await,
        (200, "STALE".into(), first.clone())
    );
    assert_eq!(origin.hits(), 2);
    // The upstream answers again: the entry is refreshed.
    let (status, c, fresh) = fetch(proxy, "/c/s", &[]).await;
    assert_eq!((status, c.as_str()), (200, "EXPIRED"));
    assert_ne!(fresh, first);
    // Without stale_on_error the error goes through.
    let cp2 = cached_route(
        &dir.path().join("two"),
        &origin,
        json!({"cache_ttl": 1, "cache_key": ["$uri"]}),
    )
    .await;
    let proxy = cp2.proxy.unwrap();
    fetch(proxy, "/c/s", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, c, _) = fetch(proxy, "/c/s?fail=1", &[]).await;
    assert_eq!((status, c.as_str()), (500, "EXPIRED"));
}

#[tokio::test]
async fn vary_headers_make_variants() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let cp = cached_route(dir.path(), &origin, json!({})).await;
    let proxy = cp.proxy.unwrap();
    let path = "/c/v?vary=Accept";
    let json_h = [("accept", "application/json")];
    let xml_h = [("accept", "application/xml")];
    let (_, c1, json_body) = fetch(proxy, path, &json_h).await;
    let (_, c2, xml_body) = fetch(proxy, path, &xml_h).await;
    assert_eq!((c1.as_str(), c2.as_str()), ("MISS", "MISS"));
    assert!(json_body.ends_with("application/json"), "{json_body}");
    assert!(xml_body.ends_with("application/xml"), "{xml_body}");
    assert_eq!(
        fetch(proxy, path, &json_h).await,
        (200, "HIT".into(), json_body)
    );
    assert_eq!(
        fetch(proxy, path, &xml_h).await,
        (200, "HIT".into(), xml_body)
    );
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn responses_that_must_not_be_stored_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let cp = cached_route(
        dir.path(),
        &origin,
        json!({"cache_bypass": ["$arg_bypass", "$http_x_bypass"], "no_cache": ["$http_x_no_cache"],
               "cache_max_body": 1000, "hide_cache_headers": true}),
    )
    .await;
    let proxy = cp.proxy.unwrap();
    // (path, request headers): each asked twice, both times from the upstream.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        ("/c/s?cc=no-store", &[], "MISS"),
        ("/c/s?cc=private%2C+max-age%3D60", &[], "MISS"),
        ("/c/s?cc=no-cache", &[], "MISS"),
        ("/c/s?size=5000", &[], "MISS"),
        ("/c/s?n=1", &[("x-no-cache", "1")], "MISS"),
        ("/c/s?n=2&bypass=1", &[], "BYPASS"),
    ];
    for (path, headers, want) in cases {
        let before = origin.hits();
        let (_, c1, b1) = fetch(proxy, path, headers).await;
        let (_, c2, b2) = fetch(proxy, path, headers).await;
        assert_eq!((c1.as_str(), c2.as_str()), (want, want), "{path}");
        assert_eq!(origin.hits(), before + 2, "{path}");
        if path.contains("size") {
            assert_eq!(b1.len(), 5000);
            assert_eq!(b2.len(), 5000);
        } else {
            assert_ne!(b1, b2, "{path}");
        }
    }
    // A bypass is not read from the cache but refreshes it (as nginx's proxy_cache_bypass).
    let (_, c, old) = fetch(proxy, "/c/r", &[]).await;
    assert_eq!(c, "MISS");
    let (_, c, fresh) = fetch(proxy, "/c/r", &[("x-bypass", "yes")]).await;
    assert_eq!(c, "BYPASS");
    assert_ne!(fresh, old);
    assert_eq!(fetch(proxy, "/c/r", &[]).await, (200, "HIT".into(), fresh));
    // `bypass=0` does not bypass; hide_cache_headers hides the upstream's Cache-Control.
    let path = "/c/s?n=3&bypass=0&cc=max-age%3D60";
    assert_eq!(fetch(proxy, path, &[]).await.1, "MISS");
    let resp = reqwest::get(format!("http://{proxy}{path}")).await.unwrap();
    assert_eq!(resp.headers()["x-postern-cache-status"], "HIT");
    assert!(resp.headers().get("cache-control").is_none());
    assert!(resp.headers().get("age").is_some());
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_upstream_request() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let cp = cached_route(dir.path(), &origin, json!({})).await;
    let proxy = cp.proxy.unwrap();
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let resp = client
                    .get(format!("http://{proxy}/c/herd?sleep=300"))
                    .send()
                    .await
                    .unwrap();
                let cache = resp.headers()["x-postern-cache-status"]
                    .to_str()
                    .unwrap()
                    .to_string();
                (resp.status().as_u16(), cache, resp.text().await.unwrap())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(origin.hits(), 1, "one upstream request for 100 misses");
    let body = &results[0].2;
    assert!(results.iter().all(|(s, _, b)| *s == 200 && b == body));
    let misses = results.iter().filter(|r| r.1 == "MISS").count();
    assert_eq!(misses, 1, "the one that went upstream; the others waited");

    // A key whose response cannot be stored: after the first such answer, concurrent misses
    // no longer wait for each other (one round trip, not two).
    let path = "/c/nostore?sleep=500&cc=no-store";
    assert_eq!(fetch(proxy, path, &[]).await.1, "MISS");
    let before = origin.hits();
    let started = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { fetch(proxy, path, &[]).await }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().1, "MISS");
    }
    let elapsed = started.elapsed();
    assert_eq!(origin.hits(), before + 10);
    assert!(elapsed < Duration::from_millis(900), "{elapsed:?}");
}

#[tokio::test]
async fn consumers_never_see_each_other_s_responses() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    for (name, key) in [("alice", "alice-cache-key-1"), ("bob", "bob-cache-key-1")] {
        admin
            .put_ok(
                &format!("/admin/consumers/{name}"),
                json!({"plugins": {"key-auth": {"key": key}}}),
            )
            .await;
    }
    let rev = admin
        .put_ok(
            "/admin/routes/c",
            json!({"uri": "/c/*", "upstream": {"nodes": {origin.addr.to_string(): 1}},
                   "plugins": {"key-auth": {}, "proxy-cache": {}}}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;
    let proxy = cp.proxy.unwrap();
    let alice = [("apikey", "alice-cache-key-1")];
    let bob = [("apikey", "bob-cache-key-1")];
    let (_, c, a1) = fetch(proxy, "/c/me", &alice).await;
    assert_eq!(c, "MISS");
    assert!(a1.contains("alice"), "{a1}");
    // Same key, other consumer: a variant of its own.
    let (_, c, b1) = fetch(proxy, "/c/me", &bob).await;
    assert_eq!(c, "MISS");
    assert!(b1.contains("bob"), "{b1}");
    assert_eq!(fetch(proxy, "/c/me", &alice).await, (200, "HIT".into(), a1));
    assert_eq!(fetch(proxy, "/c/me", &bob).await, (200, "HIT".into(), b1));
    // No key: refused before the cache is looked at.
    let (status, c, _) = fetch(proxy, "/c/me", &[]).await;
    assert_eq!((status, c.as_str()), (401, ""));
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn the_disk_store_keeps_entries_in_files() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let cache_dir = dir.path().join("proxy-cache");
    let cp = cached_route(
        dir.path(),
        &origin,
        json!({"cache_strategy": "disk", "cache_dir": cache_dir.display().to_string(),
               "cache_size": 10000, "cache_max_body": 3000}),
    )
    .await;
    let proxy = cp.proxy.unwrap();
    let files = || walk(&cache_dir).into_iter().filter(|p| p.is_file()).count();
    let (_, c, first) = fetch(proxy, "/c/d", &[]).await;
    assert_eq!(c, "MISS");
    let second = wait_for("the entry's file", Duration::from_secs(5), || async {
        let r = fetch(proxy, "/c/d", &[]).await;
        (r.1 == "HIT").then_some(r.2)
    })
    .await;
    assert_eq!(second, first);
    assert_eq!(files(), 1);
    // Bounded: six 2,500-byte bodies do not all fit a 10,000-byte store.
    for i in 0..6 {
        fetch(proxy, &format!("/c/big{i}?size=2500"), &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bytes: u64 = walk(&cache_dir)
        .iter()
        .filter(|p| p.is_file())
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(bytes <= 10_000, "{bytes} bytes on disk");
    assert!(files() < 7, "{} files", files());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn bad_configs_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let cases = [
        (
            json!({"cache_strategy": "redis"}),
            "plugins.proxy-cache.cache_strategy",
        ),
        (
            json!({"cache_strategy": "disk"}),
            "plugins.proxy-cache.cache_dir",
        ),
        (
            json!({"cache_key": ["$host", "$bogus"]}),
            "plugins.proxy-cache.cache_key.1",
        ),
        (
            json!({"cache_method": ["GET", "POST"]}),
            "plugins.proxy-cache.cache_method.1",
        ),
        (
            json!({"cache_http_status": [700]}),
            "plugins.proxy-cache.cache_http_status.0",
        ),
        (json!({"cache_ttl": 0}), "plugins.proxy-cache.cache_ttl"),
        (
            json!({"no_cache": ["$arg_"]}),
            "plugins.proxy-cache.no_cache.0",
        ),
    ];
    for (config, field) in cases {
        let body = json!({"uri": "/x", "upstream": {"nodes": {"127.0.0.1:1": 1}},
                          "plugins": {"proxy-cache": config}});
        let (status, resp) = admin
            .request(
                reqwest::Method::PUT,
                "/admin/routes/bad",
                Some(&body.to_string()),
            )
            .await
            .unwrap();
        assert_eq!(status, 400, "{config}: {resp}");
        assert_eq!(resp["field"], field, "{config}: {resp}");
    }
    let (status, _) = admin.get("/admin/routes/bad").await.unwrap();
    assert_eq!(status, 404, "nothing was written");
}

/// Purges go through the store to every DP: two separate DPs drop the entry within a second.
#[tokio::test]
async fn a_purge_reaches_every_data_plane_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let dp1 = DataPlane::start(dir.path(), "dp-1", &cp.sync_url()).await;
    let dp2 = DataPlane::start(dir.path(), "dp-2", &cp.sync_url()).await;
    let rev = admin
        .put_ok(
            "/admin/routes/c",
            json!({"uri": "/c/*", "upstream": {"nodes": {origin.addr.to_string(): 1}},
                   "plugins": {"proxy-cache": {"cache_key": ["$uri"]}}}),
        )
        .await;
    for dp in [&dp1, &dp2] {
        wait_applied(dp.status, rev).await;
        for path in ["/c/p1", "/c/p2"] {
            assert_eq!(fetch(dp.proxy, path, &[]).await.1, "MISS");
            assert_eq!(fetch(dp.proxy, path, &[]).await.1, "HIT");
        }
    }
    let hits = origin.hits();

    // One key.
    let started = Instant::now();
    let (status, resp) = admin
        .request(
            reqwest::Method::DELETE,
            "/admin/routes/c/cache?key=/c/p1",
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{resp}");
    let purge_rev = resp["revision"].as_u64().unwrap();
    for dp in [&dp1, &dp2] {
        wait_applied(dp.status, purge_rev).await;
    }
    let elapsed = started.elapsed();
    println!("purge of one key applied on 2 DPs in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    for dp in [&dp1, &dp2] {
        assert_eq!(fetch(dp.proxy, "/c/p1", &[]).await.1, "MISS");
        assert_eq!(fetch(dp.proxy, "/c/p2", &[]).await.1, "HIT");
    }
    assert_eq!(origin.hits(), hits + 2);

    // The whole route.
    let started = Instant::now();
    let (status, resp) = admin
        .request(reqwest::Method::DELETE, "/admin/routes/c/cache", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{resp}");
    let purge_rev = resp["revision"].as_u64().unwrap();
    for dp in [&dp1, &dp2] {
        wait_applied(dp.status, purge_rev).await;
    }
    let elapsed = started.elapsed();
    println!("purge of the whole route applied on 2 DPs in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    for dp in [&dp1, &dp2] {
        for path in ["/c/p1", "/c/p2"] {
            assert_eq!(fetch(dp.proxy, path, &[]).await.1, "MISS", "{path}");
        }
    }
    // `PURGE` with the key in the body, through the APISIX alias.
    let (status, resp) = admin
        .request(
            reqwest::Method::from_bytes(b"PURGE").unwrap(),
            "/apisix/admin/routes/c/cache",
            Some(r#"{"key": "/c/p2"}"#),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["purge"]["key"], "/c/p2");
    let purge_rev = resp["revision"].as_u64().unwrap();
    for dp in [&dp1, &dp2] {
        wait_applied(dp.status, purge_rev).await;
        assert_eq!(fetch(dp.proxy, "/c/p1", &[]).await.1, "HIT");
        assert_eq!(fetch(dp.proxy, "/c/p2", &[]).await.1, "MISS");
    }
    // A purge of a route that does not exist is a 404, and writes nothing.
    let (status, _) = admin
        .request(reqwest::Method::DELETE, "/admin/routes/nope/cache", None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (_, purges) = admin.get("/admin/cache_purges").await.unwrap();
    assert_eq!(purges["total"], 3, "{purges}");
}
