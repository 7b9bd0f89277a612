//! Header hygiene and request limits, each case as raw bytes through a real data plane.

use postern_tests::*;
use serde_json::json;

async fn gateway() -> (tempfile::TempDir, ControlPlane, std::net::SocketAddr) {
    gateway_to(upstream("backend").await).await
}

/// A dev control plane whose proxy sends everything (`/*`) to `backend`.
async fn gateway_to(
    backend: std::net::SocketAddr,
) -> (tempfile::TempDir, ControlPlane, std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/all",
            json!({"uri": "/*", "upstream": {"nodes": {backend.to_string(): 1}}}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;
    let proxy = cp.proxy.unwrap();
    (dir, cp, proxy)
}

fn request(head_lines: &[&str]) -> Vec<u8> {
    let mut s = String::new();
    for l in head_lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

#[tokio::test]
async fn limits_and_malformed_requests() {
    let (_dir, _cp, proxy) = gateway().await;
    let big_header = format!("X-Big: {}", "a".repeat(70 * 1024));
    let many: Vec<String> = (0..150).map(|i| format!("X-H{i}: v")).collect();
    let long_uri = format!("GET /{} HTTP/1.1", "a".repeat(9000));
    let mut many_headers = vec!["GET / HTTP/1.1", "Host: a"];
    many_headers.extend(many.iter().map(String::as_str));
    many_headers.push("Connection: close");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "ok",
            request(&["GET /x HTTP/1.1", "Host: a", "Connection: close"]),
            200,
        ),
        (
            "header too large",
            request(&[
                "GET / HTTP/1.1",
                "Host: a",
                &big_header,
                "Connection: close",
            ]),
            431,
        ),
        ("too many headers", request(&many_headers), 431),
        (
            "uri too long",
            request(&[&long_uri, "Host: a", "Connection: close"]),
            414,
        ),
        (
            "two content-lengths",
            request(&[
                "POST / HTTP/1.1",
                "Host: a",
                "Content-Length: 1",
                "Content-Length: 2",
                "Connection: close",
            ]),
            400,
        ),
        (
            "NUL in a header",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\nConnection: close\r\n\r\n".to_vec(),
            400,
        ),
        (
            "bare CR in a header",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\nConnection: close\r\n\r\n".to_vec(),
            400,
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\nConnection: close\r\n\r\n".to_vec(),
            400,
        ),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\nConnection: close\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (name, bytes, want) in cases {
        let resp = raw_request(proxy, &bytes).await;
        assert_eq!(raw_status(&resp), want, "{name}: {resp:.300}");
    }
}

#[tokio::test]
async fn hop_by_hop_and_identity_headers() {
    let (_dir, _cp, proxy) = gateway().await;
    let resp = raw_request(
        proxy,
        &request(&[
            "GET /x HTTP/1.1",
            "Host: a.example",
            "X-Forwarded-For: 6.6.6.6",
            "X-Forwarded-Proto: https",
            "Connection: close, X-Forwarded-For, X-Forwarded-Proto",
        ]),
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let lower = resp.to_ascii_lowercase();
    // The client's own XFF went with the Connection header; the gateway's is added after.
    assert!(lower.contains("x-seen-xff: 127.0.0.1\r\n"), "{resp}");
    assert!(
        lower.contains("x-seen-connection: \r\n"),
        "no Connection header reaches the upstream: {resp}"
    );
}

/// An upstream that records the path of every request it gets.
async fn recording_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = serve_upstream(move |req: hyper::Request<hyper::body::Incoming>| {
        log.lock().unwrap().push(req.uri().path().to_string());
        async { hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok"))) }
    })
    .await;
    (addr, seen)
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_the_connection_closed() {
    let (backend, seen) = recording_upstream().await;
    let (_dir, _cp, proxy) = gateway_to(backend).await;

    // A body that one reading ends early, hiding a second request; a third request pipelined
    // behind. Both header orders, after an ordinary keepalive request on the same connection.
    let smuggled_body = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    for (name, framing) in [
        (
            "CL then TE",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked",
                smuggled_body.len()
            ),
        ),
        (
            "TE then CL",
            format!(
                "Transfer-Encoding: chunked\r\nContent-Length: {}",
                smuggled_body.len()
            ),
        ),
    ] {
        seen.lock().unwrap().clear();
        let bytes = format!(
            "GET /first HTTP/1.1\r\nHost: a\r\n\r\n\
             POST /ambiguous HTTP/1.1\r\nHost: a\r\n{framing}\r\n\r\n{smuggled_body}\
             GET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        );
        let resp = raw_request(proxy, bytes.as_bytes()).await;
        let statuses: Vec<&str> = resp
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &resp[i + 9..i + 12])
            .collect();
        assert_eq!(
            statuses,
            ["200", "400"],
            "{name}: the first is served, the ambiguous one refused, nothing after: {resp}"
        );
        assert!(
            resp.to_ascii_lowercase().contains("connection: close"),
            "{name}: {resp}"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            ["/first"],
            "{name}: only the first request reached the upstream"
        );
    }

    // The same bytes without Content-Length are ordinary chunked requests.
    seen.lock().unwrap().clear();
    let bytes = "POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n\
                 GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let resp = raw_request(proxy, bytes.as_bytes()).await;
    assert_eq!(resp.matches("HTTP/1.1 200").count(), 2, "{resp}");
    assert_eq!(*seen.lock().unwrap(), ["/chunked", "/after"]);
}
