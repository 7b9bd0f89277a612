//! Upstream connections owned by each client connection (`data-plane/src/proxy/owned_conns.rs`):
//! the requests of one client connection reuse one upstream connection, another client
//! connection gets its own, and an upstream that closes its side is simply reconnected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use postern_tests::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP/1.1 upstream that answers every request with the number of the connection it came
/// on (1, 2, ...); `/close` answers with `Connection: close` and closes. Returns its address and
/// the count of connections accepted.
async fn numbering_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request head at a time (GETs without bodies).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let close = head.starts_with("GET /close ");
                    let body = n.to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n{body}",
                        body.len(),
                        if close { "Connection: close\r\n" } else { "" }
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// `n` GETs of `path` in a row on `client` (one keepalive connection): the bodies.
async fn bodies(client: &reqwest::Client, proxy: SocketAddr, path: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let resp = client
            .get(format!("http://{proxy}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        out.push(resp.text().await.unwrap());
    }
    out
}

fn one_connection_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

#[tokio::test]
async fn each_client_connection_keeps_its_own_upstream_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let (proxy, status) = (cp.proxy.unwrap(), cp.status.unwrap());
    let (upstream, accepted) = numbering_upstream().await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/all",
            json!({"uri": "/*", "upstream": {"nodes": {upstream.to_string(): 1}}}),
        )
        .await;
    wait_applied(status, rev).await;

    // One client connection, 20 requests: one upstream connection carries them all.
    let first = one_connection_client();
    let a = bodies(&first, proxy, "/a", 20).await;
    assert!(a.iter().all(|b| b == &a[0]), "{a:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // Another client connection gets a connection of its own, and keeps it.
    let second = one_connection_client();
    let b = bodies(&second, proxy, "/b", 10).await;
    assert!(b.iter().all(|x| x == &b[0]), "{b:?}");
    assert_ne!(a[0], b[0]);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // ... while the first one's is still there for it.
    assert_eq!(bodies(&first, proxy, "/a", 5).await, vec![a[0].clone(); 5]);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // The upstream closes its connection: the next request opens a new one, nothing fails.
    bodies(&first, proxy, "/close", 1).await;
    let after = bodies(&first, proxy, "/a", 5).await;
    assert!(after.iter().all(|x| x == &after[0]), "{after:?}");
    assert_ne!(after[0], a[0]);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}
