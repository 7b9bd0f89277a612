//! Upstream resilience through a real data plane: `api-breaker` (opens, answers fast without
//! touching the upstream, backs off doubling, closes on recovery), the guide's case 4 (one
//! hanging upstream does not slow the others; it gets 504 after its read timeout, then the
//! breaker's 503), connect timeouts and retries, the bulkhead, active and passive health checks,
//! and `chash` stickiness.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use postern_tests::*;
use serde_json::{Value, json};

/// A test upstream whose answers the test steers: `status` for traffic, `health` for
/// `GET /health`, `delay_ms` before answering traffic; counts the traffic it receives.
#[derive(Default)]
struct Knobs {
    status: AtomicU16,
    health: AtomicU16,
    delay_ms: AtomicU64,
    hits: AtomicU64,
    /// TCP connections accepted.
    conns: AtomicU64,
}

struct Backend {
    addr: SocketAddr,
    knobs: Arc<Knobs>,
}

impl Backend {
    async fn start() -> Backend {
        let knobs = Arc::new(Knobs::default());
        knobs.status.store(200, Ordering::SeqCst);
        knobs.health.store(200, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let k = knobs.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                k.conns.fetch_add(1, Ordering::SeqCst);
                let k = k.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let k = k.clone();
                        async move {
                            let status = if req.uri().path() == "/health" {
                                k.health.load(Ordering::SeqCst)
                            } else {
                                k.hits.fetch_add(1, Ordering::SeqCst);
                                let delay = k.delay_ms.load(Ordering::SeqCst);
                                if delay > 0 {
                                    tokio::time::sleep(Duration::from_millis(delay)).await;
                                }
                                k.status.load(Ordering::SeqCst)
                            };
                            let resp = hyper::Response::builder()
                                .status(status)
                                .header("x-node", addr.to_string())
                                .body(Full::new(Bytes::from_static(b"backend")))
                                .expect("response");
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend { addr, knobs }
    }

    fn set_status(&self, s: u16) {
        self.knobs.status.store(s, Ordering::SeqCst);
    }
    fn set_health(&self, s: u16) {
        self.knobs.health.store(s, Ordering::SeqCst);
    }
    fn hits(&self) -> u64 {
        self.knobs.hits.load(Ordering::SeqCst)
    }
}

struct Answer {
    status: u16,
    node: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
    took: Duration,
}

async fn call(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Answer {
    let started = Instant::now();
    let mut req = client.get(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.expect("request through the proxy");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let node = headers
        .get("x-node")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.text().await.unwrap_or_default();
    Answer {
        status,
        node,
        headers,
        body,
        took: started.elapsed(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn dev_gateway(dir: &std::path::Path) -> ControlPlane {
    ControlPlane::start_dev(dir).await
}

async fn apply(cp: &ControlPlane, puts: &[(&str, Value)]) {
    let admin = cp.client();
    let mut rev = 0;
    for (path, body) in puts {
        rev = admin.put_ok(path, body.clone()).await;
    }
    wait_applied(cp.status.expect("dev DP"), rev).await;
}

async fn upstream_status(cp: &ControlPlane) -> Value {
    let url = format!("http://{}/status/upstreams", cp.status.expect("dev DP"));
    reqwest::get(url)
        .await
        .expect("status listener")
        .json()
        .await
        .expect("json")
}

/// Whether the status page says node `addr` is healthy.
async fn node_healthy(cp: &ControlPlane, addr: SocketAddr) -> Option<bool> {
    let status = upstream_status(cp).await;
    status["upstreams"]
        .as_array()?
        .iter()
        .flat_map(|u| u["nodes"].as_array().cloned().unwrap_or_default())
        .find(|n| n["address"] == addr.to_string())
        .and_then(|n| n["healthy"].as_bool())
}

#[tokio::test]
async fn breaker_opens_answers_fast_backs_off_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_status(500);
    let cp = dev_gateway(dir.path()).await;
    // The guide's api-breaker config, as written.
    apply(
        &cp,
        &[(
            "/admin/routes/pay",
            json!({
                "uri": "/api/v1/payments/*",
                "plugins": {"api-breaker": {
                    "break_response_code": 503,
                    "break_response_body": "{\"error\":\"circuit open\",\"retry_after\":30}",
                    "break_response_headers": [
                        {"key": "Content-Type", "value": "application/json"},
                        {"key": "Retry-After", "value": "30"}
                    ],
                    "unhealthy": {"http_statuses": [500, 502, 503], "failures": 3},
                    "healthy": {"http_statuses": [200, 201], "successes": 2},
                    "max_breaker_sec": 300
                }},
                "upstream": {"type": "roundrobin", "nodes": {backend.addr.to_string(): 1}}
            }),
        )],
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/payments/charge", cp.proxy.unwrap());
    for i in 0..3 {
        assert_eq!(call(&client, &url, &[]).await.status, 500, "failure {i}");
    }
    assert_eq!(backend.hits(), 3);
    // Open: the configured answer, without touching the upstream.
    let mut took = Vec::new();
    for _ in 0..50 {
        let a = call(&client, &url, &[]).await;
        assert_eq!(a.status, 503);
        assert_eq!(a.body, r#"{"error":"circuit open","retry_after":30}"#);
        assert_eq!(a.headers["content-type"], "application/json");
        assert_eq!(a.headers["retry-after"], "30");
        took.push(a.took);
    }
    assert_eq!(
        backend.hits(),
        3,
        "an open breaker never calls the upstream"
    );
    took.sort();
    let (p50, p99) = (percentile(&took, 0.5), percentile(&took, 0.99));
    println!(
        "open breaker answer latency (client-measured, debug build): p50 {p50:?}, p99 {p99:?}"
    );
    assert!(p50 < Duration::from_millis(5), "p50 {p50:?}");
    let status = upstream_status(&cp).await;
    assert!(
        status["breaker_transitions"]["opened"].as_u64() >= Some(1),
        "{status}"
    );
    assert!(
        status["breaker_transitions"]["rejected_requests"].as_u64() >= Some(50),
        "{status}"
    );

    // After 2 s: half-open, one probe goes through, fails, re-opens for 4 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(call(&client, &url, &[]).await.status, 500);
    assert_eq!(backend.hits(), 4);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        call(&client, &url, &[]).await.status,
        503,
        "second period is longer than 2 s"
    );
    assert_eq!(backend.hits(), 4);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    // Recovered upstream: two successes close it.
    backend.set_status(200);
    assert_eq!(
        call(&client, &url, &[]).await.status,
        200,
        "second period ends at 4 s"
    );
    assert_eq!(call(&client, &url, &[]).await.status, 200);
    backend.set_status(500);
    // Closed again, with a fresh count: two failures do not open it.
    assert_eq!(call(&client, &url, &[]).await.status, 500);
    assert_eq!(call(&client, &url, &[]).await.status, 500);
    backend.set_status(200);
    assert_eq!(call(&client, &url, &[]).await.status, 200);
    assert_eq!(backend.hits(), 9);
}

#[tokio::test]
async fn a_hanging_upstream_does_not_slow_other_routes() {
    let dir = tempfile::tempdir().unwrap();
    let hanging = Backend::start().await;
    hanging.knobs.delay_ms.store(60_000, Ordering::SeqCst);
    let healthy = Backend::start().await;
    let cp = dev_gateway(dir.path()).await;
    apply(
        &cp,
        &[
            (
                "/admin/routes/pay",
                json!({
                    "uri": "/pay/*",
                    "plugins": {"api-breaker": {
                        "break_response_code": 503,
                        "unhealthy": {"http_statuses": [500, 502, 503, 504], "failures": 3},
                        "healthy": {"http_statuses": [200], "successes": 2},
                        "max_breaker_sec": 60
                    }},
                    "upstream": {
                        "nodes": {hanging.addr.to_string(): 1},
                        "timeout": {"connect": 3, "send": 10, "read": 1}
                    }
                }),
            ),
            (
                "/admin/routes/ok",
                json!({"uri": "/ok/*", "upstream": {"nodes": {healthy.addr.to_string(): 1}}}),
            ),
        ],
    )
    .await;
    let proxy = cp.proxy.unwrap();
    let client = reqwest::Client::new();
    // The first hanging requests: 504 after the 1 s read timeout.
    let pay = format!("http://{proxy}/pay/charge");
    let mut first = Vec::new();
    for _ in 0..3 {
        let c = client.clone();
        let u = pay.clone();
        first.push(tokio::spawn(async move { call(&c, &u, &[]).await }));
    }
    for h in first {
        let a = h.await.unwrap();
        assert_eq!(a.status, 504, "{}", a.body);
        assert!(
            a.took >= Duration::from_millis(950) && a.took < Duration::from_millis(2500),
            "504 after the read timeout, took {:?}",
            a.took
        );
        println!("hanging route: 504 after {:?}", a.took);
    }
    // Steady load on the hanging route for 3 s while the other route is measured. The breaker
    // answers most of it; when an open period ends, the requests let through (half-open, as in
    // APISIX) hang until their 504 and re-open it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..16 {
        let (c, u, stop) = (client.clone(), pay.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            // Steady load: each client sends again 5 ms after its answer (up to ~3,000 req/s
            // in all while the breaker answers).
            while !stop.load(Ordering::SeqCst) {
                statuses.push(call(&c, &u, &[]).await.status);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        }));
    }
    let ok = format!("http://{proxy}/ok/x");
    let mut took = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let a = call(&client, &ok, &[]).await;
        assert_eq!(a.status, 200);
        took.push(a.took);
    }
    stop.store(true, Ordering::SeqCst);
    let mut statuses = Vec::new();
    for h in load {
        statuses.extend(h.await.unwrap());
    }
    took.sort();
    let (p50, p99) = (percentile(&took, 0.5), percentile(&took, 0.99));
    let count = |s: u16| statuses.iter().filter(|&&x| x == s).count();
    println!(
        "healthy route during 3 s of load on the hanging one: p50 {p50:?}, p99 {p99:?}, max {:?} ({} requests); hanging route: {} answers: {} × 503 (breaker), {} × 504 (read timeout); upstream reached {} times",
        took.last().unwrap(),
        took.len(),
        statuses.len(),
        count(503),
        count(504),
        hanging.hits()
    );
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");
    assert_eq!(count(503) + count(504), statuses.len(), "{statuses:?}");
    assert!(count(503) > count(504), "mostly answered by the breaker");
}

#[tokio::test]
async fn connect_failures_timeouts_retries_and_bulkhead() {
    let dir = tempfile::tempdir().unwrap();
    let good = Backend::start().await;
    let closed = free_addr();
    // A listener whose accept queue is full: connects to it hang.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let full_addr = full.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(full_addr),
        )
        .await
        {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
    }
    let slow = Backend::start().await;
    slow.knobs.delay_ms.store(1500, Ordering::SeqCst);
    let cp = dev_gateway(dir.path()).await;
    let t = json!({"connect": 0.5, "send": 5, "read": 5});
    apply(
        &cp,
        &[
            (
                "/admin/routes/refused",
                json!({"uri": "/refused", "upstream": {"nodes": {closed.to_string(): 1}, "timeout": t, "retries": 0}}),
            ),
            (
                "/admin/routes/refused-twice",
                json!({"uri": "/refused-twice", "upstream": {"nodes": [
                    {"host": "127.0.0.1", "port": closed.port(), "weight": 1},
                    {"host": "127.0.0.1", "port": free_addr().port(), "weight": 1}
                ], "timeout": t}}),
            ),
            (
                "/admin/routes/hangs",
                json!({"uri": "/hangs", "upstream": {"nodes": {full_addr.to_string(): 1}, "timeout": t}}),
            ),
            (
                "/admin/routes/retry",
                json!({"uri": "/retry", "methods": ["GET", "POST"], "upstream": {"nodes": [
                    {"host": "127.0.0.1", "port": closed.port(), "weight": 100},
                    {"host": "127.0.0.1", "port": good.addr.port(), "weight": 1}
                ], "timeout": t}}),
            ),
            (
                "/admin/routes/post",
                json!({"uri": "/post", "methods": ["POST"], "upstream": {"nodes": [
                    {"host": "127.0.0.1", "port": closed.port(), "weight": 1},
                    {"host": "127.0.0.1", "port": good.addr.port(), "weight": 1}
                ], "timeout": t}}),
            ),
            (
                "/admin/routes/bulkhead",
                json!({"uri": "/bulkhead", "upstream": {"nodes": {slow.addr.to_string(): 1}, "max_concurrent": 2}}),
            ),
        ],
    )
    .await;
    let proxy = cp.proxy.unwrap();
    let client = reqwest::Client::new();
    let a = call(&client, &format!("http://{proxy}/refused"), &[]).await;
    assert_eq!(a.status, 502, "refused → 502");
    assert!(a.took < Duration::from_millis(500), "{:?}", a.took);
    // Both nodes refuse: the retry fails too, and the answer is the last failure's.
    let a = call(&client, &format!("http://{proxy}/refused-twice"), &[]).await;
    assert_eq!(a.status, 502, "{}", a.body);
    let a = call(&client, &format!("http://{proxy}/hangs"), &[]).await;
    assert_eq!(a.status, 504, "connect timeout → 504: {}", a.body);
    assert!(
        a.took >= Duration::from_millis(450) && a.took < Duration::from_millis(2000),
        "the 0.5 s connect timeout, took {:?}",
        a.took
    );
    println!("connect timeout 0.5 s → 504 after {:?}", a.took);
    // The heavy node refuses: a GET is retried on the other node (retries default: nodes - 1).
    for _ in 0..5 {
        let a = call(&client, &format!("http://{proxy}/retry"), &[]).await;
        assert_eq!(a.status, 200, "retried on the good node");
    }
    // A POST with a body is not retried (the body was streamed away): the first goes to the
    // refusing node (round robin starts with the first node) and gets its 502.
    let post = |c: reqwest::Client| async move {
        c.post(format!("http://{proxy}/post"))
            .body("payload")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post(client.clone()).await, 502, "not retried");
    assert_eq!(
        post(client.clone()).await,
        200,
        "the next one goes to the good node"
    );
    // Bulkhead: 2 in flight on the slow upstream; the rest are answered 503 at once.
    let mut calls = Vec::new();
    for i in 0..5 {
        let c = client.clone();
        let u = format!("http://{proxy}/bulkhead");
        calls.push(tokio::spawn(async move {
            // Let the first two get in first.
            tokio::time::sleep(Duration::from_millis(if i < 2 { 0 } else { 300 })).await;
            call(&c, &u, &[]).await
        }));
    }
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let rejected: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(
        (ok, rejected.len()),
        (2, 3),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    for a in rejected {
        assert!(
            a.took < Duration::from_millis(200),
            "503 at once, took {:?}",
            a.took
        );
    }
    drop(held);
}

#[tokio::test]
async fn an_upstream_stalling_mid_body_is_cut_after_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // Sends the head and 5 of 100 body bytes, then nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let cp = dev_gateway(dir.path()).await;
    apply(
        &cp,
        &[(
            "/admin/routes/stall",
            json!({"uri": "/stall", "upstream": {"nodes": {addr.to_string(): 1}, "timeout": {"connect": 1, "send": 1, "read": 1}}}),
        )],
    )
    .await;
    let started = Instant::now();
    let resp = reqwest::get(format!("http://{}/stall", cp.proxy.unwrap()))
        .await
        .expect("the head arrives");
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.bytes().await;
    let took = started.elapsed();
    assert!(body.is_err(), "the body is cut, not completed: {body:?}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "cut after the 1 s read timeout, took {took:?}"
    );
    println!("stalled body cut after {took:?}");
    // The stalled call no longer counts as in flight.
    let status = upstream_status(&cp).await;
    assert_eq!(status["upstreams"][0]["in_flight"], 0, "{status}");
}

#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_gets_504_after_the_send_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    // Accepts, never reads: once the socket buffers are full the proxy cannot send more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let cp = dev_gateway(dir.path()).await;
    apply(
        &cp,
        &[(
            "/admin/routes/upload",
            json!({"uri": "/upload", "upstream": {"nodes": {addr.to_string(): 1}, "timeout": {"connect": 1, "send": 1, "read": 30}}}),
        )],
    )
    .await;
    // A raw client, so it can read the answer while its body is still being written.
    let stream = tokio::net::TcpStream::connect(cp.proxy.unwrap())
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let size: usize = 256 << 20;
    let head = format!("POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n");
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < size {
            wr.write_all(&chunk).await?;
            sent += chunk.len();
        }
        Ok::<_, std::io::Error>(sent)
    });
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let took = started.elapsed();
    writer.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    println!(
        "upstream stopped reading: 504 after {took:?} (send timeout 1 s, after the socket buffers filled)"
    );
}

#[tokio::test]
async fn keepalive_pool_caps_requests_per_connection_and_idle_time() {
    let dir = tempfile::tempdir().unwrap();
    let pooled = Backend::start().await;
    let shared = Backend::start().await;
    let cp = dev_gateway(dir.path()).await;
    apply(
        &cp,
        &[
            (
                "/admin/routes/pooled",
                json!({"uri": "/pooled", "upstream": {"nodes": {pooled.addr.to_string(): 1},
                    "keepalive_pool": {"size": 4, "idle_timeout": 0.5, "requests": 2}}}),
            ),
            (
                "/admin/routes/shared",
                json!({"uri": "/shared", "upstream": {"nodes": {shared.addr.to_string(): 1}}}),
            ),
        ],
    )
    .await;
    let proxy = cp.proxy.unwrap();
    let client = reqwest::Client::new();
    for path in ["pooled", "shared"] {
        for _ in 0..6 {
            assert_eq!(
                call(&client, &format!("http://{proxy}/{path}"), &[])
                    .await
                    .status,
                200
            );
            // Let the connection go back to the pool before the next request.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    let conns = |b: &Backend| b.knobs.conns.load(Ordering::SeqCst);
    assert_eq!(conns(&shared), 1, "the shared pool reuses one connection");
    assert_eq!(conns(&pooled), 3, "2 requests per connection");
    // Idle past idle_timeout: the connection is closed, the next request opens a new one.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        call(&client, &format!("http://{proxy}/pooled"), &[])
            .await
            .status,
        200
    );
    assert_eq!(conns(&pooled), 4);
    assert_eq!(
        call(&client, &format!("http://{proxy}/shared"), &[])
            .await
            .status,
        200
    );
    assert_eq!(conns(&shared), 1);
}

/// Requests until the answer spread is decided: which nodes served `n` requests.
async fn spread(
    client: &reqwest::Client,
    url: &str,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let a = call(client, url, &[]).await;
        if let Some(node) = a.node {
            *seen.entry(node).or_default() += 1;
        }
    }
    seen
}

#[tokio::test]
async fn active_checks_take_a_node_out_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = Backend::start().await;
    let b = Backend::start().await;
    let cp = dev_gateway(dir.path()).await;
    apply(
        &cp,
        &[
            (
                "/admin/upstreams/u1",
                json!({
                    "type": "roundrobin",
                    "nodes": {a.addr.to_string(): 1, b.addr.to_string(): 1},
                    "checks": {"active": {
                        "type": "http", "http_path": "/health", "timeout": 0.5,
                        "healthy": {"interval": 1, "successes": 2},
                        "unhealthy": {"interval": 1, "http_failures": 2, "tcp_failures": 2}
                    }}
                }),
            ),
            (
                "/admin/routes/r1",
                json!({"uri": "/svc/*", "upstream_id": "u1"}),
            ),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/svc/x", cp.proxy.unwrap());
    assert_eq!(spread(&client, &url, 10).await.len(), 2);
    b.set_health(500);
    let started = Instant::now();
    wait_for("b marked unhealthy", Duration::from_secs(6), || async {
        (node_healthy(&cp, b.addr).await == Some(false)).then_some(())
    })
    .await;
    println!("active check: node out after {:?}", started.elapsed());
    let seen = spread(&client, &url, 20).await;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec![&a.addr.to_string()],
        "{seen:?}"
    );
    b.set_health(200);
    let started = Instant::now();
    wait_for("b healthy again", Duration::from_secs(6), || async {
        (node_healthy(&cp, b.addr).await == Some(true)).then_some(())
    })
    .await;
    println!("active check: node back after {:?}", started.elapsed());
    assert_eq!(spread(&client, &url, 10).await.len(), 2);
    // An unrelated config change keeps the checker and the health it learnt.
    b.set_health(500);
    wait_for("b marked unhealthy", Duration::from_secs(6), || async {
        (node_healthy(&cp, b.addr).await == Some(false)).then_some(())
    })
    .await;
    apply(
        &cp,
        &[(
            "/admin/routes/r2",
            json!({"uri": "/other/*", "upstream_id": "u1"}),
        )],
    )
    .await;
    assert_eq!(
        node_healthy(&cp, b.addr).await,
        Some(false),
        "health survives the snapshot"
    );
    // Both nodes down: fail open, traffic goes to both.
    a.set_health(500);
    wait_for("a marked unhealthy", Duration::from_secs(6), || async {
        (node_healthy(&cp, a.addr).await == Some(false)).then_some(())
    })
    .await;
    assert_eq!(
        spread(&client, &url, 10).await.len(),
        2,
        "all unhealthy: fail open"
    );
    // The same with `on_all_unhealthy: reject`: 503. (A changed upstream is a new one: its
    // checker starts over with healthy nodes and marks them down again.)
    let mut u1 = json!({
        "type": "roundrobin",
        "nodes": {a.addr.to_string(): 1, b.addr.to_string(): 1},
        "checks": {"active": {
            "type": "http", "http_path": "/health", "timeout": 0.5,
            "healthy": {"interval": 1, "successes": 2},
            "unhealthy": {"interval": 1, "http_failures": 2, "tcp_failures": 2}
        }}
    });
    u1["checks"]["on_all_unhealthy"] = json!("reject");
    apply(&cp, &[("/admin/upstreams/u1", u1)]).await;
    wait_for("both marked unhealthy", Duration::from_secs(6), || async {
        let both = node_healthy(&cp, a.addr).await == Some(false)
            && node_healthy(&cp, b.addr).await == Some(false);
        both.then_some(())
    })
    .await;
    assert_eq!(
        call(&client, &url, &[]).await.status,
        503,
        "all unhealthy: reject"
    );
    let status = upstream_status(&cp).await;
    assert!(
        status["health_checks"]["marked_unhealthy"].as_u64() >= Some(4),
        "{status}"
    );
}

#[tokio::test]
async fn passive_checks_take_a_node_out_and_active_ones_bring_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = Backend::start().await;
    let b = Backend::start().await;
    let cp = dev_gateway(dir.path()).await;
    apply(
        &cp,
        &[(
            "/admin/routes/r1",
            json!({"uri": "/svc/*", "upstream": {
                "nodes": {a.addr.to_string(): 1, b.addr.to_string(): 1},
                "retries": 0,
                "checks": {
                    // Active probes only judge 200 as healthy and never mark a node down.
                    "active": {"http_path": "/health", "healthy": {"interval": 1, "successes": 1, "http_statuses": [200]},
                               "unhealthy": {"interval": 1, "http_failures": 254, "http_statuses": [599]}},
                    "passive": {"healthy": {"http_statuses": [200], "successes": 3},
                                "unhealthy": {"http_statuses": [500], "http_failures": 3}}
                }
            }}),
        )],
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/svc/x", cp.proxy.unwrap());
    b.set_status(500);
    b.set_health(503);
    // Round robin alternates: b fails three times within six requests.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(call(&client, &url, &[]).await.status);
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 500).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(node_healthy(&cp, b.addr).await, Some(false));
    let seen = spread(&client, &url, 20).await;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec![&a.addr.to_string()],
        "{seen:?}"
    );
    b.set_status(200);
    b.set_health(200);
    wait_for("b healthy again", Duration::from_secs(5), || async {
        (node_healthy(&cp, b.addr).await == Some(true)).then_some(())
    })
    .await;
    assert_eq!(spread(&client, &url, 10).await.len(), 2);
}

#[tokio::test]
async fn chash_keeps_each_key_on_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let map: serde_json::Map<String, Value> = nodes
        .iter()
        .map(|n| (n.addr.to_string(), json!(1)))
        .collect();
    let cp = dev_gateway(dir.path()).await;
    apply(
        &cp,
        &[
            (
                "/admin/routes/by-user",
                json!({"uri": "/user/*", "upstream": {"type": "chash", "hash_on": "header", "key": "x-user", "nodes": map}}),
            ),
            // The guide's shape, as written.
            (
                "/admin/routes/by-addr",
                json!({"uri": "/addr/*", "upstream": {"type": "chash", "key": "remote_addr", "nodes": map}}),
            ),
            (
                "/admin/routes/least",
                json!({"uri": "/least/*", "upstream": {"type": "least_conn", "nodes": map}}),
            ),
            (
                "/admin/routes/ewma",
                json!({"uri": "/ewma/*", "upstream": {"type": "ewma", "nodes": map}}),
            ),
        ],
    )
    .await;
    let proxy = cp.proxy.unwrap();
    let client = reqwest::Client::new();
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..30 {
        let user = format!("user-{user}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let a = call(
                &client,
                &format!("http://{proxy}/user/x"),
                &[("x-user", &user)],
            )
            .await;
            seen.insert(a.node.expect("x-node"));
        }
        assert_eq!(seen.len(), 1, "{user} stuck to one node: {seen:?}");
        owners.extend(seen);
    }
    assert_eq!(owners.len(), 3, "30 users spread over the 3 nodes");
    let by_addr = spread(&client, &format!("http://{proxy}/addr/x"), 10).await;
    assert_eq!(
        by_addr.len(),
        1,
        "one client address, one node: {by_addr:?}"
    );
    // least_conn and ewma serve from every idle node.
    for path in ["least", "ewma"] {
        let seen = spread(&client, &format!("http://{proxy}/{path}/x"), 60).await;
        assert_eq!(seen.values().sum::<usize>(), 60, "{path}");
        println!("{path}: {seen:?}");
    }
    // least_conn: with one node busy, new requests avoid it. Slow calls are started until one
    // sits on node 0 (the only slow node; calls to the others end at once).
    nodes[0].knobs.delay_ms.store(1500, Ordering::SeqCst);
    let mut busy = Vec::new();
    let node0 = nodes[0].addr.to_string();
    for _ in 0..20 {
        let c = client.clone();
        let u = format!("http://{proxy}/least/slow");
        busy.push(tokio::spawn(async move { call(&c, &u, &[]).await }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        if in_flight(&cp, "least", &node0).await > 0 {
            break;
        }
    }
    assert!(in_flight(&cp, "least", &node0).await > 0);
    let seen = spread(&client, &format!("http://{proxy}/least/x"), 10).await;
    assert!(
        !seen.contains_key(&node0),
        "the busy node gets nothing new: {seen:?}"
    );
    for b in busy {
        b.await.unwrap();
    }
}

/// In-flight requests on node `addr` of route `route`'s inline upstream.
async fn in_flight(cp: &ControlPlane, route: &str, addr: &str) -> u64 {
    let status = upstream_status(cp).await;
    status["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["owner"] == "routes" && u["id"] == route)
        .flat_map(|u| u["nodes"].as_array().cloned().unwrap_or_default())
        .find(|n| n["address"] == addr)
        .and_then(|n| n["in_flight"].as_u64())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_guides_upstreams_and_breaker_are_accepted_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let cp = dev_gateway(dir.path()).await;
    let admin = cp.client();
    // "Load Balancing Strategies", upstreams 1-3, as JSON.
    admin
        .put_ok(
            "/apisix/admin/upstreams/1",
            json!({
                "type": "roundrobin",
                "nodes": {"service-a-v1:8080": 8, "service-a-v2:8080": 2},
                "checks": {
                    "active": {
                        "type": "http",
                        "http_path": "/health",
                        "healthy": {"interval": 5, "successes": 2},
                        "unhealthy": {"interval": 3, "http_failures": 3, "tcp_failures": 3}
                    },
                    "passive": {
                        "healthy": {"http_statuses": [200, 201], "successes": 3},
                        "unhealthy": {"http_statuses": [500, 502, 503], "http_failures": 5, "tcp_failures": 2}
                    }
                }
            }),
        )
        .await;
    admin
        .put_ok(
            "/apisix/admin/upstreams/2",
            json!({"type": "chash", "key": "remote_addr", "nodes": {
                "session-service-1:8080": 1, "session-service-2:8080": 1, "session-service-3:8080": 1}}),
        )
        .await;
    admin
        .put_ok(
            "/apisix/admin/upstreams/3",
            json!({"type": "least_conn", "nodes": {"compute-service-1:8080": 1, "compute-service-2:8080": 1}}),
        )
        .await;
    // "Circuit Breaker Configuration", and the Admin API example's api-breaker.
    admin
        .put_ok(
            "/apisix/admin/routes/pay",
            json!({"uri": "/api/v1/payments/*",
                "plugins": {"api-breaker": {
                    "break_response_code": 503,
                    "break_response_body": "{\"error\":\"circuit open\",\"retry_after\":30}",
                    "break_response_headers": [{"key": "Content-Type", "value": "application/json"}, {"key": "Retry-After", "value": "30"}],
                    "unhealthy": {"http_statuses": [500, 502, 503], "failures": 3},
                    "healthy": {"http_statuses": [200, 201], "successes": 2},
                    "max_breaker_sec": 300}},
                "upstream": {"type": "roundrobin", "nodes": {"payment-service:8080": 1}}}),
        )
        .await;
    let rev = admin
        .put_ok(
            "/apisix/admin/routes/1",
            json!({"uri": "/api/v1/products/*",
                "upstream": {"type": "roundrobin", "nodes": {"product-service.default.svc:8080": 1}},
                "plugins": {"api-breaker": {
                    "break_response_code": 503,
                    "unhealthy": {"http_statuses": [500, 502, 503], "failures": 3},
                    "healthy": {"http_statuses": [200], "successes": 2},
                    "max_breaker_sec": 60}}}),
        )
        .await;
    // The data plane compiles all of it (ACK, not NACK).
    wait_applied(cp.status.unwrap(), rev).await;
    // A config APISIX would refuse is refused, naming the field.
    let (status, body) = admin
        .request(
            reqwest::Method::PUT,
            "/admin/routes/bad",
            Some(
                &json!({"uri": "/x", "upstream": {"nodes": {"h:80": 1}},
                "plugins": {"api-breaker": {"break_response_code": 503, "max_breaker_sec": 1}}})
                .to_string(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body["field"]
            .as_str()
            .unwrap_or("")
            .ends_with("max_breaker_sec"),
        "{body}"
    );
}

/// `chash` with `hash_on: consumer`: each consumer sticks to one node, and (all coming from one
/// address here) different consumers spread over the nodes, so the hash is the consumer's name.
/// The nodes' ports, and so the ring, differ per run: with 8 consumers all of them landed on one
/// node in about 1 run of 600; with 24 it is about 1 in 10^10.
#[tokio::test]
async fn chash_on_consumer_sticks_each_consumer_to_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let (proxy, status) = (cp.proxy.unwrap(), cp.status.unwrap());
    let nodes = [
        upstream("n1").await,
        upstream("n2").await,
        upstream("n3").await,
    ];
    let admin = cp.client();
    let names: Vec<String> = (0..24).map(|i| format!("tenant-{i}")).collect();
    for name in &names {
        admin
            .put_ok(
                &format!("/admin/consumers/{name}"),
                json!({"username": name, "plugins": {"key-auth": {"key": format!("key-of-{name}")}}}),
            )
            .await;
    }
    let node_map: serde_json::Map<String, serde_json::Value> =
        nodes.iter().map(|n| (n.to_string(), json!(1))).collect();
    let rev = admin
        .put_ok(
            "/admin/routes/by-consumer",
            json!({
                "uri": "/t",
                "plugins": {"key-auth": {}},
                "upstream": {"type": "chash", "hash_on": "consumer", "nodes": node_map}
            }),
        )
        .await;
    wait_applied(status, rev).await;
    let http = reqwest::Client::new();
    let mut seen = std::collections::BTreeSet::new();
    for name in &names {
        let mut bodies = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let resp = http
                .get(format!("http://{proxy}/t"))
                .header("apikey", format!("key-of-{name}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            bodies.insert(resp.text().await.unwrap());
        }
        assert_eq!(bodies.len(), 1, "{name} went to {bodies:?}");
        seen.extend(bodies);
    }
    assert!(seen.len() > 1, "every consumer on one node: {seen:?}");
}

/// A node given as a host name is resolved by the connector (each new connection), falling
/// back over the name's addresses: `localhost` works whether it lists `::1` (nothing listens
/// there) before `127.0.0.1` or not.
#[tokio::test]
async fn a_node_given_by_name_is_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("by name").await;
    let cp = dev_gateway(dir.path()).await;
    apply(
        &cp,
        &[(
            "/admin/routes/named",
            json!({"uri": "/named", "upstream": {
                "nodes": {format!("localhost:{}", backend.port()): 1}}}),
        )],
    )
    .await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let a = call(&client, &format!("http://{}/named", cp.proxy.unwrap()), &[]).await;
        assert_eq!((a.status, a.body.as_str()), (200, "by name"));
    }
}

/// `max_queue`: over `max_concurrent`, up to `max_queue` requests wait (at most
/// `queue_timeout`) for a place instead of a 503 at once; beyond the queue, 503 at once.
#[tokio::test]
async fn a_bulkhead_queue_waits_a_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Backend::start().await;
    slow.knobs.delay_ms.store(400, Ordering::SeqCst);
    let cp = dev_gateway(dir.path()).await;
    apply(
        &cp,
        &[
            (
                "/admin/routes/queued",
                json!({"uri": "/queued", "upstream": {"nodes": {slow.addr.to_string(): 1},
                    "max_concurrent": 1, "max_queue": 1, "queue_timeout": 2}}),
            ),
            (
                "/admin/routes/short-queue",
                json!({"uri": "/short-queue", "upstream": {"nodes": {slow.addr.to_string(): 1},
                    "max_concurrent": 1, "max_queue": 5, "queue_timeout": 0.1}}),
            ),
        ],
    )
    .await;
    let proxy = cp.proxy.unwrap();
    let client = reqwest::Client::new();
    let run = |path: &'static str, n: usize| {
        let client = client.clone();
        async move {
            let mut calls = Vec::new();
            for i in 0..n {
                let (c, u) = (client.clone(), format!("http://{proxy}{path}"));
                calls.push(tokio::spawn(async move {
                    // The first one takes the place, the next one the queue.
                    tokio::time::sleep(Duration::from_millis(100 * i as u64)).await;
                    call(&c, &u, &[]).await
                }));
            }
            let mut out = Vec::new();
            for c in calls {
                out.push(c.await.unwrap());
            }
            out
        }
    };
    // One in flight, one waiting (and served after ~400 ms), the third refused at once.
    let answers = run("/queued", 3).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 503], "{statuses:?}");
    assert!(
        answers[1].took >= Duration::from_millis(250),
        "{:?}",
        answers[1].took
    );
    assert!(
        answers[2].took < Duration::from_millis(200),
        "{:?}",
        answers[2].took
    );
    // A queue wait longer than queue_timeout ends in 503 after it.
    let answers = run("/short-queue", 2).await;
    assert_eq!((answers[0].status, answers[1].status), (200, 503));
    assert!(
        answers[1].took >= Duration::from_millis(90)
            && answers[1].took < Duration::from_millis(1000),
        "{:?}",
        answers[1].took
    );

    let (status, body) = cp
        .client()
        .request(
            reqwest::Method::PUT,
            "/admin/upstreams/bad",
            Some(r#"{"nodes": {"127.0.0.1:1": 1}, "max_queue": 3}"#),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("max_queue"), "{body}");
}

/// Upstream calls on one client connection share a kept timer (`Proxy::timed`): one set for
/// an earlier call's deadline must be moved on when it fires early, and moved in when the
/// next call's deadline is sooner.
#[tokio::test]
async fn read_timeouts_hold_call_after_call_on_one_client_connection() {
    let dir = tempfile::tempdir().unwrap();
    let fast = Backend::start().await;
    let slow = Backend::start().await;
    slow.knobs.delay_ms.store(1_800, Ordering::SeqCst);
    let hanging = Backend::start().await;
    hanging.knobs.delay_ms.store(60_000, Ordering::SeqCst);
    let cp = dev_gateway(dir.path()).await;
    let route = |uri: &str, node: &Backend, read: u64| {
        json!({"uri": uri, "upstream": {
            "nodes": {node.addr.to_string(): 1},
            "timeout": {"connect": 3, "send": 10, "read": read}
        }})
    };
    apply(
        &cp,
        &[
            ("/admin/routes/fast", route("/fast", &fast, 1)),
            ("/admin/routes/slow", route("/slow", &slow, 3)),
            ("/admin/routes/hang", route("/hang", &hanging, 1)),
        ],
    )
    .await;
    let proxy = cp.proxy.unwrap();
    // One connection for all: requests in sequence on a client that keeps one.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    assert_eq!(
        call(&client, &format!("http://{proxy}/fast"), &[])
            .await
            .status,
        200
    );
    // The timer the first call left is set 1 s after it; this call may take 3 s and takes 1.8.
    let slow_answer = call(&client, &format!("http://{proxy}/slow"), &[]).await;
    assert_eq!(slow_answer.status, 200, "{}", slow_answer.body);
    assert!(
        slow_answer.took >= Duration::from_millis(1_700),
        "{:?}",
        slow_answer.took
    );
    // The timer is now set 3 s after the slow call; this call's deadline is 1 s away.
    let hang = call(&client, &format!("http://{proxy}/hang"), &[]).await;
    assert_eq!(hang.status, 504, "{}", hang.body);
    assert!(
        hang.took >= Duration::from_millis(950) && hang.took < Duration::from_millis(2_500),
        "504 after the 1 s read timeout, took {:?}",
        hang.took
    );
    println!(
        "slow call answered after {:?}; hanging call 504 after {:?}",
        slow_answer.took, hang.took
    );
    assert_eq!(fast.knobs.conns.load(Ordering::SeqCst), 1);
}
