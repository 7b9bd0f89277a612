//! `proxy-rewrite`, `request-id` and `response-rewrite` through a real data plane, configured as
//! the guide's BFF routes are: the prefix strip reaches the upstream, the request id reaches both
//! the upstream and the client, and the rewritten response reaches the client. Bad configs are
//! a 400 at the Admin API naming the field.

use postern_tests::*;
use reqwest::Method;
use serde_json::json;

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .enumerate()
            .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == b'-'))
}

#[tokio::test]
async fn guide_bff_rewrites_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("backend").await;
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let proxy = cp.proxy.unwrap();
    let up = json!({"type": "roundrobin", "nodes": {backend.to_string(): 1},
                    "timeout": {"connect": 3, "send": 10, "read": 30}});

    // The guide's three BFF routes, less the auth and rate-limit plugins.
    admin
        .put_ok(
            "/admin/routes/web-bff",
            json!({"uri": "/api/web/*", "name": "web-bff-route", "upstream": up, "plugins": {
                "proxy-rewrite": {"regex_uri": ["^/api/web/(.*)", "/$1"]},
                "request-id": {"header_name": "X-Request-ID"}
            }}),
        )
        .await;
    admin
        .put_ok(
            "/admin/routes/mobile-bff",
            json!({"uri": "/api/mobile/*", "name": "mobile-bff-route", "upstream": up, "plugins": {
                "proxy-rewrite": {"regex_uri": ["^/api/mobile/(.*)", "/$1"]},
                "response-rewrite": {"headers": {"set": {"X-Content-Optimized": "mobile"}}}
            }}),
        )
        .await;
    admin
        .put_ok(
            "/admin/routes/iot-bff",
            json!({"uri": "/api/iot/*", "name": "iot-bff-route", "upstream": up, "plugins": {
                "proxy-rewrite": {"regex_uri": ["^/api/iot/(.*)", "/$1"]}
            }}),
        )
        .await;
    // Everything else the three plugins do, on one route.
    let rev = admin
        .put_ok(
            "/admin/routes/legacy",
            json!({"uri": "/legacy/*", "upstream": up, "plugins": {
                "proxy-rewrite": {
                    "uri": "/v2/items",
                    "host": "items.internal",
                    "method": "POST",
                    "headers": {"add": {"X-Custom": "gw"}, "remove": ["X-Drop"]}
                },
                "request-id": {"algorithm": "ulid", "include_in_response": false},
                "response-rewrite": {
                    "status_code": 203,
                    "body": "aGVsbG8=",
                    "body_base64": true,
                    "headers": {"add": ["X-Gw: postern"], "remove": ["X-Seen-Xff"]}
                }
            }}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;
    let http = reqwest::Client::new();

    // Web: prefix stripped, query kept; an id in the response and at the upstream, the same.
    let resp = http
        .get(format!("http://{proxy}/api/web/x?y=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-path"], "/x?y=1");
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(is_uuid(&id), "{id}");
    assert_eq!(resp.headers()["x-seen-request-id"], id.as_str());
    assert_eq!(resp.text().await.unwrap(), "backend");
    let resp = http
        .get(format!("http://{proxy}/api/web/x?y=1"))
        .send()
        .await
        .unwrap();
    assert_ne!(
        resp.headers()["x-request-id"],
        id.as_str(),
        "a new id per request"
    );

    // The client's own sane id is kept; an unreasonable one is replaced.
    let resp = http
        .get(format!("http://{proxy}/api/web/orders/7"))
        .header("X-Request-ID", "client-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-seen-path"], "/orders/7");
    assert_eq!(resp.headers()["x-request-id"], "client-42");
    assert_eq!(resp.headers()["x-seen-request-id"], "client-42");
    let resp = http
        .get(format!("http://{proxy}/api/web/orders/7"))
        .header("X-Request-ID", "x".repeat(200))
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(is_uuid(&id), "{id}");
    assert_eq!(resp.headers()["x-seen-request-id"], id.as_str());

    // Mobile: prefix stripped, the header set on the response.
    let resp = http
        .get(format!("http://{proxy}/api/mobile/feed?page=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-path"], "/feed?page=2");
    assert_eq!(resp.headers()["x-content-optimized"], "mobile");
    assert!(!resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.text().await.unwrap(), "backend");

    // IoT: prefix stripped, nothing else.
    let resp = http
        .get(format!("http://{proxy}/api/iot/devices/d1/telemetry"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-seen-path"], "/devices/d1/telemetry");
    assert!(!resp.headers().contains_key("x-content-optimized"));

    // Legacy: fixed uri (query kept), Host over pass_host, method, headers; the response's
    // status, headers and body replaced (with a Content-Length for the new body).
    let resp = http
        .get(format!("http://{proxy}/legacy/anything?q=1"))
        .header("X-Custom", "client")
        .header("X-Drop", "secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 203);
    let h = resp.headers();
    assert_eq!(h["x-seen-path"], "/v2/items?q=1");
    assert_eq!(h["x-seen-host"], "items.internal");
    assert_eq!(h["x-seen-method"], "POST");
    assert_eq!(h["x-seen-custom"], "client,gw");
    let ulid = h["x-seen-request-id"].to_str().unwrap();
    assert_eq!(ulid.len(), 26, "{ulid}");
    assert!(
        !h.contains_key("x-request-id"),
        "include_in_response: false"
    );
    assert!(!h.contains_key("x-seen-xff"));
    assert_eq!(h["x-gw"], "postern");
    assert_eq!(h["content-length"], "5");
    assert_eq!(resp.text().await.unwrap(), "hello");
}

#[tokio::test]
async fn bad_rewrite_configs_are_400s_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let up = json!({"nodes": {"127.0.0.1:3000": 1}});
    let before = admin.revision().await;
    let cases = [
        (
            json!({"proxy-rewrite": {"regex_uri": ["^/api/web/(.*", "/$1"]}}),
            "plugins.proxy-rewrite.regex_uri.0",
        ),
        (
            json!({"proxy-rewrite": {"regex_uri": ["^/api/web/(.*)", "/$2"]}}),
            "plugins.proxy-rewrite.regex_uri.1",
        ),
        (
            json!({"proxy-rewrite": {"uri": "no-slash"}}),
            "plugins.proxy-rewrite.uri",
        ),
        (
            json!({"proxy-rewrite": {"headers": {"set": {"Bad Name": "1"}}}}),
            "plugins.proxy-rewrite.headers.set.Bad Name",
        ),
        (
            json!({"response-rewrite": {"status_code": 600}}),
            "plugins.response-rewrite.status_code",
        ),
        (
            json!({"response-rewrite": {"body": "not base64!", "body_base64": true}}),
            "plugins.response-rewrite.body",
        ),
        (
            json!({"request-id": {"header_name": "X Request Id"}}),
            "plugins.request-id.header_name",
        ),
    ];
    for (plugins, field) in cases {
        let body = json!({"uri": "/api/web/*", "upstream": up, "plugins": plugins}).to_string();
        let (status, v) = admin
            .request(Method::PUT, "/admin/routes/r1", Some(&body))
            .await
            .unwrap();
        assert_eq!(status, 400, "{plugins}: {v}");
        assert_eq!(v["field"], field, "{plugins}: {v}");
    }
    assert_eq!(admin.revision().await, before, "nothing was stored");
}
