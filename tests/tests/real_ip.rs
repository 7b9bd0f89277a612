//! The client address behind trusted proxies: believed from X-Forwarded-For only when the peer
//! is a trusted proxy, and never left of an untrusted hop.

use postern_tests::*;
use serde_json::json;

async fn status(proxy: std::net::SocketAddr, xff: &str) -> u16 {
    let req = format!(
        "GET /only HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
    );
    raw_status(&raw_request(proxy, req.as_bytes()).await)
}

#[tokio::test]
async fn remote_addr_comes_from_trusted_proxies_only() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("ok").await;
    let cp = ControlPlane::start(dir.path()).await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/only",
            json!({"uri": "/only", "vars": [["remote_addr", "==", "203.0.113.9"]], "upstream": {"nodes": {backend.to_string(): 1}}}),
        )
        .await;
    let trusting = DataPlane::start_with(
        dir.path(),
        "dp-trusting",
        &cp.sync_url(),
        &["--trusted-proxies", "127.0.0.0/8"],
    )
    .await;
    let plain = DataPlane::start(dir.path(), "dp-plain", &cp.sync_url()).await;
    wait_applied(trusting.status, rev).await;
    wait_applied(plain.status, rev).await;

    // Behind a trusted proxy (the test's 127.0.0.1), the client is the rightmost untrusted hop.
    assert_eq!(status(trusting.proxy, "203.0.113.9").await, 200);
    assert_eq!(
        status(trusting.proxy, "6.6.6.6, 203.0.113.9, 127.0.0.5").await,
        200
    );
    assert_eq!(
        status(trusting.proxy, "203.0.113.9, 6.6.6.6").await,
        404,
        "a spoofed left entry is not believed"
    );
    // Without trusted proxies, X-Forwarded-For never changes who the client is.
    assert_eq!(status(plain.proxy, "203.0.113.9").await, 404);
}
