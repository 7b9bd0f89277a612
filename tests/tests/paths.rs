//! Path normalisation against a path-based deny: every spelling of `/admin` is routed as
//! `/admin`, and the upstream receives the same normalised path the router saw.

use postern_tests::*;
use serde_json::json;

#[tokio::test]
async fn path_confusion_cannot_reach_a_denied_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("backend").await;
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let proxy = cp.proxy.unwrap();
    admin
        .put_ok("/admin/routes/deny", json!({"uri": "/admin*", "priority": 10, "plugins": {"request-termination": {"status_code": 403, "message": "denied"}}}))
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/all",
            json!({"uri": "/*", "upstream": {"nodes": {backend.to_string(): 1}}}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;

    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
    for path in [
        "/admin",
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/%2E%2E/admin",
        "//admin",
        "/%61dmin",
        "/admin%2Fx",
        "/./admin",
        "/api/..//admin/x",
    ] {
        let resp = raw_request(proxy, get(path).as_bytes()).await;
        assert_eq!(raw_status(&resp), 403, "{path}: {resp}");
    }
    // What the upstream sees is the normalised path, query kept.
    for (path, seen) in [
        ("/api/./x?q=%2e", "/api/x?q=%2e"),
        ("//api//x", "/api/x"),
        ("/api/%7euser", "/api/~user"),
        ("/a%2fb", "/a%2Fb"),
    ] {
        let resp = raw_request(proxy, get(path).as_bytes()).await;
        assert_eq!(raw_status(&resp), 200, "{path}: {resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains(&format!("x-seen-path: {}", seen.to_ascii_lowercase())),
            "{path} → {resp}"
        );
    }
    // Malformed encodings are refused.
    for path in ["/a%zz", "/a%", "/a%00"] {
        let resp = raw_request(proxy, get(path).as_bytes()).await;
        assert_eq!(raw_status(&resp), 400, "{path}: {resp}");
    }
}
