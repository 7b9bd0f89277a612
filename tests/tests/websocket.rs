//! WebSocket through the data plane: an echo server behind a route, a client through the proxy;
//! the tunnel survives a config change; and an upstream that answers an upgrade request with an
//! ordinary 200 never turns the client's connection into a tunnel.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use postern_tests::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that echoes every text message, prefixed with `echo: `.
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) => {
                            let reply = format!("echo: {}", t.as_str());
                            if ws.send(Message::text(reply)).await.is_err() {
                                return;
                            }
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_echo_survives_a_config_change() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let (proxy, status) = (cp.proxy.unwrap(), cp.status.unwrap());
    let node = echo_server().await;
    let admin = cp.client();
    let rev = admin
        .put_ok(
            "/admin/routes/ws",
            json!({"uri": "/ws", "upstream": {"nodes": {node.to_string(): 1}}}),
        )
        .await;
    wait_applied(status, rev).await;

    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{proxy}/ws"))
        .await
        .expect("WebSocket handshake through the gateway");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.into_text().unwrap().as_str(), "echo: hello");

    // A new snapshot (another route, and this route's own upstream changed) while it is open.
    let other = upstream("other").await;
    admin
        .put_ok(
            "/admin/routes/other",
            json!({"uri": "/other", "upstream": {"nodes": {other.to_string(): 1}}}),
        )
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/ws",
            json!({"uri": "/ws", "upstream": {"nodes": {other.to_string(): 1}}}),
        )
        .await;
    wait_applied(status, rev).await;
    ws.send(Message::text("still there?")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.into_text().unwrap().as_str(), "echo: still there?");
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn an_upgrade_answered_200_does_not_tunnel_a_pipelined_request() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let (proxy, status) = (cp.proxy.unwrap(), cp.status.unwrap());
    // An ordinary HTTP upstream: it answers the upgrade request with 200.
    let node = upstream("plain").await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/any",
            json!({"uri": "/*", "upstream": {"nodes": {node.to_string(): 1}}}),
        )
        .await;
    wait_applied(status, rev).await;
    let two = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
               Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
               GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let answer = raw_request(proxy, two.as_bytes()).await;
    // Two HTTP responses, each from the upstream as HTTP: the second request was parsed by the
    // gateway (routed, with its own path), not tunnelled as bytes.
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    assert!(answer.contains("x-seen-path: /second"), "{answer}");
    // (Not just "101": a request id may hold those digits.)
    assert!(!answer.contains("HTTP/1.1 101"), "{answer}");
}

/// SIGTERM with a WebSocket open: the tunnel keeps working through the drain period, and the
/// data plane exits 0 once it is over.
#[tokio::test]
async fn an_open_websocket_gets_the_drain_period() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let mut dp = DataPlane::start_with(
        dir.path(),
        "ws-drain",
        &cp.sync_url(),
        &["--drain-timeout", "2"],
    )
    .await;
    let node = echo_server().await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/ws",
            json!({"uri": "/ws", "upstream": {"nodes": {node.to_string(): 1}}}),
        )
        .await;
    wait_applied(dp.status, rev).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", dp.proxy))
        .await
        .unwrap();
    let signalled = std::time::Instant::now();
    let pid = dp.process.child.id();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws.send(Message::text("during the drain")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.into_text().unwrap().as_str(), "echo: during the drain");
    let status = wait_for("the data plane to exit", Duration::from_secs(10), || {
        let exited = dp.process.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    let took = signalled.elapsed();
    println!("SIGTERM with an open WebSocket: exit after {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "left before the drain period: {took:?}"
    );
}
