//! Attacks that broke other gateways (Kong, APISIX, Envoy, HAProxy, Pingora), each as raw bytes
//! through a real data plane to an upstream that records every request it gets, so a case proves
//! both the answer and that nothing reached the upstream as a second request. One test per
//! family, each with its own gateway. `header_hygiene.rs` (431/414, NUL, bare CR, obs-fold, two
//! Content-Lengths, CL+TE) and `paths.rs` (path spellings against `request-termination`) hold
//! the older cases; what is here is not repeated there.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    /// The request target (path and query).
    target: String,
    headers: hyper::HeaderMap,
}

/// An upstream that records every request, reads its body, and answers 200 `ok` after `delay`.
async fn recording_upstream(delay: Duration) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    use http_body_util::BodyExt;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = serve_upstream(move |req: hyper::Request<hyper::body::Incoming>| {
        log.lock().unwrap().push(Seen {
            target: req.uri().to_string(),
            headers: req.headers().clone(),
        });
        async move {
            // As an application would before answering (a cut-off body fails here).
            let _ = req.into_body().collect().await;
            tokio::time::sleep(delay).await;
            hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
        }
    })
    .await;
    (addr, seen)
}

/// A dev control plane with its in-process data plane, and the recording upstream behind it.
struct Gateway {
    _dir: tempfile::TempDir,
    cp: ControlPlane,
    proxy: SocketAddr,
    upstream: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Gateway {
    async fn start() -> Gateway {
        Self::with_upstream_delay(Duration::ZERO).await
    }

    async fn with_upstream_delay(delay: Duration) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start_dev(dir.path()).await;
        let (upstream, seen) = recording_upstream(delay).await;
        let proxy = cp.proxy.unwrap();
        Gateway {
            _dir: dir,
            cp,
            proxy,
            upstream,
            seen,
        }
    }

    /// Writes `path` (a route or consumer) and waits until the data plane has it.
    async fn put(&self, path: &str, mut body: Value) {
        if body.get("uri").is_some() && body.get("upstream").is_none() {
            body["upstream"] = json!({"nodes": {self.upstream.to_string(): 1}});
        }
        let rev = self.cp.client().put_ok(path, body).await;
        wait_applied(self.cp.status.unwrap(), rev).await;
    }

    /// The targets the upstream received since the last call.
    fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn take_targets(&self) -> Vec<String> {
        self.take_seen().into_iter().map(|s| s.target).collect()
    }
}

/// What came back on one connection.
struct Answer {
    text: String,
    /// The gateway closed the connection (rather than the 5 s wait running out).
    closed: bool,
}

impl Answer {
    /// The status of every response on the connection, in order.
    fn statuses(&self) -> Vec<u16> {
        self.text
            .match_indices("HTTP/1.")
            .filter_map(|(i, _)| self.text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }
}

/// Sends `bytes` on a new connection and reads until the gateway closes it or 5 s pass.
async fn exchange(proxy: SocketAddr, bytes: &[u8]) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_answer(&mut stream, Duration::from_secs(5)).await
}

async fn read_answer(stream: &mut tokio::net::TcpStream, wait: Duration) -> Answer {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Answer {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

/// A request that smuggles `GET /smuggled` for a reader that ends its body early.
const HIDDEN: &str = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

#[tokio::test]
async fn smuggling_by_framing_is_refused_and_the_connection_closed() {
    let gw = Gateway::start().await;
    gw.put("/admin/routes/all", json!({"uri": "/*"})).await;

    // (name, the attacking request's head lines after the request line, its body, status)
    let cl = |v: &str| format!("Content-Length: {v}");
    let n = HIDDEN.len().to_string();
    let te = "Transfer-Encoding: chunked";
    let cases: Vec<(&str, &str, Vec<String>, String, u16)> = vec![
        (
            "CL +N",
            "HTTP/1.1",
            vec![cl(&format!("+{n}"))],
            HIDDEN.into(),
            400,
        ),
        ("CL 0xN", "HTTP/1.1", vec![cl("0x2c")], HIDDEN.into(), 400),
        ("CL empty", "HTTP/1.1", vec![cl("")], HIDDEN.into(), 400),
        ("CL 1,2", "HTTP/1.1", vec![cl("1, 2")], HIDDEN.into(), 400),
        (
            "TE space before colon",
            "HTTP/1.1",
            vec!["Transfer-Encoding : chunked".into(), cl(&n)],
            HIDDEN.into(),
            400,
        ),
        (
            "TE chunked, identity",
            "HTTP/1.1",
            vec!["Transfer-Encoding: chunked, identity".into()],
            HIDDEN.into(),
            400,
        ),
        (
            "TE identity, chunked",
            "HTTP/1.1",
            vec!["Transfer-Encoding: identity, chunked".into()],
            HIDDEN.into(),
            501,
        ),
        (
            "TE gzip, chunked",
            "HTTP/1.1",
            vec!["Transfer-Encoding: gzip, chunked".into()],
            HIDDEN.into(),
            501,
        ),
        (
            "TE in two headers",
            "HTTP/1.1",
            vec![te.into(), te.into()],
            HIDDEN.into(),
            400,
        ),
        (
            "TE identity then chunked in two headers",
            "HTTP/1.1",
            vec!["Transfer-Encoding: identity".into(), te.into()],
            HIDDEN.into(),
            400,
        ),
        (
            "TE vertical tab before chunked",
            "HTTP/1.1",
            vec!["Transfer-Encoding:\x0bchunked".into(), cl(&n)],
            HIDDEN.into(),
            400,
        ),
        (
            "TE form feed after chunked",
            "HTTP/1.1",
            vec!["Transfer-Encoding: chunked\x0c".into(), cl(&n)],
            HIDDEN.into(),
            400,
        ),
        (
            "TE xchunked",
            "HTTP/1.1",
            vec!["Transfer-Encoding: xchunked".into(), cl(&n)],
            HIDDEN.into(),
            400,
        ),
        (
            "TE obs-folded",
            "HTTP/1.1",
            vec!["Transfer-Encoding: identity\r\n chunked".into()],
            HIDDEN.into(),
            400,
        ),
        (
            "HTTP/1.0 with TE",
            "HTTP/1.0",
            vec![te.into()],
            HIDDEN.into(),
            400,
        ),
        (
            "chunk size overflow",
            "HTTP/1.1",
            vec![te.into()],
            format!("ffffffffffffffffff\r\nx\r\n{HIDDEN}"),
            400,
        ),
        (
            "chunk size not hex",
            "HTTP/1.1",
            vec![te.into()],
            format!("5g\r\nhello\r\n{HIDDEN}"),
            400,
        ),
        (
            "chunk size 0x",
            "HTTP/1.1",
            vec![te.into()],
            format!("0x5\r\nhello\r\n{HIDDEN}"),
            400,
        ),
        (
            "chunk extension with bare LF",
            "HTTP/1.1",
            vec![te.into()],
            format!("5;a=b\nhello\r\n{HIDDEN}"),
            400,
        ),
        (
            "chunk extension 32 KiB",
            "HTTP/1.1",
            vec![te.into()],
            format!("5;{}\r\nhello\r\n{HIDDEN}", "a".repeat(32 * 1024)),
            400,
        ),
        (
            "bare LF in chunk lines",
            "HTTP/1.1",
            vec![te.into()],
            format!("5\nhello\n{HIDDEN}"),
            400,
        ),
        (
            "chunk data longer than its size",
            "HTTP/1.1",
            vec![te.into()],
            format!("5\r\nhelloXX\r\n{HIDDEN}"),
            400,
        ),
    ];
    let mut failures = Vec::new();
    for (name, version, lines, body, want) in cases {
        let attack = format!(
            "POST /attack {version}\r\nHost: a\r\n{}\r\n\r\n{body}",
            lines.join("\r\n")
        );
        failures.extend(check_refused(&gw, name, &attack, want).await);
    }
    // Bare LF line endings in the head (HTTP/1.1 allows a recipient to accept them; the
    // gateway does not, as other parsers on the path may see one long line).
    for (name, attack) in [
        (
            "bare LF in the head",
            format!("POST /attack HTTP/1.1\nHost: a\nContent-Length: {n}\n\n{HIDDEN}"),
        ),
        (
            "bare LF after one header",
            format!("POST /attack HTTP/1.1\r\nHost: a\nContent-Length: {n}\r\n\r\n{HIDDEN}"),
        ),
        (
            "bare LF before CL with TE",
            format!(
                "POST /attack HTTP/1.1\r\nHost: a\r\nX: y\nContent-Length: {n}\r\n{te}\r\n\r\n{HIDDEN}"
            ),
        ),
    ] {
        failures.extend(check_refused(&gw, name, &attack, 400).await);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // A malformed chunk that arrives after the request went upstream: hyper finds it; the
    // upstream request is cut off (never followed by the hidden one) and the client gets 400,
    // the client's error: it does not count against the node (one TCP failure would take it
    // out here, and with it the whole upstream).
    gw.put(
        "/admin/routes/late",
        json!({"uri": "/late", "priority": 10, "upstream": {
            "nodes": {gw.upstream.to_string(): 1},
            // (Active checks must come with passive ones; TCP probes send no request to record.)
            "checks": {"active": {"type": "tcp"},
                       "passive": {"unhealthy": {"tcp_failures": 1}},
                       "on_all_unhealthy": "reject"}
        }}),
    )
    .await;
    gw.take_seen();
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(
            b"POST /late HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
    wait_for(
        "the upstream to get /late",
        Duration::from_secs(5),
        || async { (!gw.seen.lock().unwrap().is_empty()).then_some(()) },
    )
    .await;
    let rest = format!("zz\r\n{HIDDEN}GET /third HTTP/1.1\r\nHost: a\r\n\r\n");
    stream.write_all(rest.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(answer.statuses(), [400], "late bad chunk: {}", answer.text);
    assert!(answer.closed, "late bad chunk: connection left open");
    assert_eq!(gw.take_targets(), ["/late"], "late bad chunk");
    let answer = exchange(
        gw.proxy,
        b"GET /late HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        answer.statuses(),
        [200],
        "node after a late bad chunk: {}",
        answer.text
    );
    gw.take_seen();

    // Ordinary chunked bodies (with an extension) and keepalive still work.
    let ok = "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;name=value\r\nhello\r\n0\r\n\r\n\
              POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
              GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let answer = exchange(gw.proxy, ok.as_bytes()).await;
    assert_eq!(answer.statuses(), [200, 200, 200], "{}", answer.text);
    assert_eq!(gw.take_targets(), ["/a", "/b", "/c"]);
}

/// `attack` behind an ordinary request and before another on one connection: the first is
/// served, the attack refused with `want` and the connection closed; the upstream saw only the
/// first (not the attack, nor anything hidden in its body, nor what came after). What went
/// wrong, if anything.
async fn check_refused(gw: &Gateway, name: &str, attack: &str, want: u16) -> Option<String> {
    gw.take_seen();
    let bytes = format!(
        "GET /first HTTP/1.1\r\nHost: a\r\n\r\n{attack}GET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    );
    let answer = exchange(gw.proxy, bytes.as_bytes()).await;
    let targets = gw.take_targets();
    let statuses = answer.statuses();
    (statuses != [200, want] || !answer.closed || targets != ["/first"]).then(|| {
        format!(
            "{name}: want [200, {want}], closed, upstream saw [/first]; got {statuses:?}, \
             closed {}, upstream saw {targets:?}:\n{}",
            answer.closed, answer.text
        )
    })
}

#[tokio::test]
async fn what_the_gateway_does_not_forward_hides_no_request() {
    let gw = Gateway::start().await;
    gw.put(
        "/admin/routes/deny",
        json!({"uri": "/admin*", "priority": 10, "plugins": {"request-termination": {"status_code": 403, "message": "denied"}}}),
    )
    .await;
    gw.put(
        "/admin/routes/key",
        json!({"uri": "/key", "priority": 10, "plugins": {"key-auth": {}}}),
    )
    .await;
    gw.put(
        "/admin/routes/limited",
        json!({"uri": "/limited", "priority": 10, "plugins": {"limit-count": {"count": 1, "time_window": 3600, "rejected_code": 429}}}),
    )
    .await;
    gw.put("/admin/routes/all", json!({"uri": "/*"})).await;

    // An upgrade the upstream answers 200: the connection stays HTTP, so what follows is a
    // request of its own (routed, and here denied), never tunnelled to the upstream.
    gw.take_seen();
    let answer = exchange(
        gw.proxy,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\
          GET /admin/secret HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        answer.statuses(),
        [200, 403],
        "upgrade answered 200: {}",
        answer.text
    );
    assert_eq!(gw.take_targets(), ["/ws"], "upgrade answered 200");

    // A body the gateway answers itself: the request hidden in it is never executed.
    let hidden = "GET /hidden HTTP/1.1\r\nHost: a\r\n\r\n";
    let chunked = format!("{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len());
    // limit-count's one request in the window, so the next is refused.
    let answer = exchange(
        gw.proxy,
        b"GET /limited HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.statuses(), [200], "{}", answer.text);
    for (name, head, body, want) in [
        (
            "401 (key-auth), length",
            "POST /key",
            hidden.to_string(),
            401,
        ),
        ("401 (key-auth), chunked", "POST /key", chunked.clone(), 401),
        (
            "429 (limit-count), length",
            "POST /limited",
            hidden.to_string(),
            429,
        ),
        (
            "429 (limit-count), chunked",
            "POST /limited",
            chunked.clone(),
            429,
        ),
        (
            "403 (request-termination)",
            "POST /admin",
            hidden.to_string(),
            403,
        ),
    ] {
        gw.take_seen();
        let framing = if body == chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {}", body.len())
        };
        let bytes = format!(
            "{head} HTTP/1.1\r\nHost: a\r\n{framing}\r\n\r\n{body}\
             GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        );
        let answer = exchange(gw.proxy, bytes.as_bytes()).await;
        let statuses = answer.statuses();
        // Either the body was drained and `/after` served, or the connection closed.
        assert!(
            statuses == [want, 200] || (statuses == [want] && answer.closed),
            "{name}: {}",
            answer.text
        );
        let targets = gw.take_targets();
        println!("{name}: {statuses:?}, closed {}", answer.closed);
        assert!(
            !targets.iter().any(|t| t == "/hidden") && targets.len() == statuses.len() - 1,
            "{name}: the upstream saw {targets:?}"
        );
    }

    // 50 MiB declared to a route whose auth fails: 401 at once, without the body being read,
    // and the connection closed.
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /key HTTP/1.1\r\nHost: a\r\nContent-Length: 52428800\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&vec![b'x'; 64 * 1024]).await.unwrap();
    let answer = read_answer(&mut stream, Duration::from_secs(10)).await;
    let took = started.elapsed();
    println!("50 MiB declared to a failing key-auth: answered and closed in {took:?}");
    assert_eq!(answer.statuses(), [401], "50 MiB body: {}", answer.text);
    assert!(answer.closed, "50 MiB body: connection left open");
    assert!(took < Duration::from_secs(5), "50 MiB body: took {took:?}");
    assert!(gw.take_targets().is_empty());
}

#[tokio::test]
async fn path_spellings_meet_auth_and_the_upstream_as_one_path() {
    let gw = Gateway::start().await;
    gw.put(
        "/admin/routes/admin",
        json!({"uri": "/admin*", "priority": 10, "plugins": {"key-auth": {}}}),
    )
    .await;
    gw.put("/admin/routes/api", json!({"uri": "/api/*"})).await;
    gw.put(
        "/admin/consumers/ops",
        json!({"plugins": {"key-auth": {"key": "ops-key-0123456789"}}}),
    )
    .await;

    let get = |path: &str, key: Option<&str>| {
        let key = key.map_or(String::new(), |k| format!("apikey: {k}\r\n"));
        format!("GET {path} HTTP/1.1\r\nHost: a\r\n{key}Connection: close\r\n\r\n")
    };
    // (spelling, the one path routing, auth and the upstream see)
    for (path, normal) in [
        ("/api/../admin", "/admin"),
        ("/api/%2e%2e/admin", "/admin"),
        ("//admin", "/admin"),
        ("/admin%2Fx", "/admin%2Fx"),
        ("/%61dmin", "/admin"),
        ("/admin;x", "/admin;x"),
        ("/admin/.", "/admin/"),
        ("/api/./../admin/x/..", "/admin/"),
    ] {
        gw.take_seen();
        let answer = exchange(gw.proxy, get(path, None).as_bytes()).await;
        assert_eq!(
            answer.statuses(),
            [401],
            "{path} without a key: {}",
            answer.text
        );
        assert!(gw.take_targets().is_empty(), "{path}: reached the upstream");
        let answer = exchange(gw.proxy, get(path, Some("ops-key-0123456789")).as_bytes()).await;
        assert_eq!(
            answer.statuses(),
            [200],
            "{path} with a key: {}",
            answer.text
        );
        let seen = gw.take_seen();
        assert_eq!(seen.len(), 1, "{path}");
        assert_eq!(seen[0].target, normal, "{path}: the upstream's path");
        assert_eq!(seen[0].headers["x-consumer-username"], "ops", "{path}");
    }
    // Paths are case-sensitive (RFC 3986): `/ADMIN` is not `/admin*`; it matches no route
    // here, so nothing reaches the upstream. (An upstream that folds case must be denied
    // by a route of its own spelling, or with a `vars` regex.)
    let answer = exchange(gw.proxy, get("/ADMIN", None).as_bytes()).await;
    assert_eq!(answer.statuses(), [404], "/ADMIN: {}", answer.text);
    assert!(gw.take_targets().is_empty());
}

#[tokio::test]
async fn headers_the_upstream_trusts_come_from_the_gateway() {
    let gw = Gateway::start().await;
    gw.put(
        "/admin/routes/key",
        json!({"uri": "/key", "priority": 10, "plugins": {"key-auth": {}}}),
    )
    .await;
    gw.put(
        "/admin/routes/b",
        json!({"uri": "/host", "host": "b.example", "priority": 10, "plugins": {"request-termination": {"status_code": 403, "message": "b.example"}}}),
    )
    .await;
    gw.put("/admin/routes/all", json!({"uri": "/*"})).await;
    gw.put(
        "/admin/consumers/alice",
        json!({"plugins": {"key-auth": {"key": "alice-key-0123456789"}}}),
    )
    .await;

    gw.take_seen();

    // `Connection` naming the identity headers removes the client's, not the gateway's.
    let seen = one(
        &gw,
        "Connection: X-Consumer-Username",
        "GET /key HTTP/1.1\r\nHost: a\r\napikey: alice-key-0123456789\r\n\
         X-Consumer-Username: admin\r\nX-Credential-Identifier: forged\r\n\
         Connection: close, X-Consumer-Username, X-Credential-Identifier\r\n\r\n"
            .into(),
    )
    .await;
    assert_eq!(seen.headers["x-consumer-username"], "alice");
    assert_eq!(
        seen.headers.get_all("x-consumer-username").iter().count(),
        1
    );
    let credential = seen.headers.get("x-credential-identifier");
    assert!(
        credential.is_some_and(|c| c != "forged"),
        "credential id {credential:?}"
    );

    // Client-sent identity headers on a route without auth never reach the upstream.
    let seen = one(
        &gw,
        "forged identity",
        "GET /open HTTP/1.1\r\nHost: a\r\nX-Consumer-Username: admin\r\n\
         X-Consumer-Group: admins\r\nX-Credential-Identifier: forged\r\nConnection: close\r\n\r\n"
            .into(),
    )
    .await;
    for h in [
        "x-consumer-username",
        "x-consumer-group",
        "x-credential-identifier",
    ] {
        assert!(seen.headers.get(h).is_none(), "{h}: {:?}", seen.headers);
    }

    // X-Forwarded-For from a peer that is not a trusted proxy is replaced, not appended to.
    let seen = one(
        &gw,
        "spoofed X-Forwarded-For",
        "GET /open HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\n\
         X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nConnection: close\r\n\r\n"
            .into(),
    )
    .await;
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(seen.headers["x-forwarded-host"], "a");

    // Two Host headers: 400, nothing forwarded.
    let answer = exchange(
        gw.proxy,
        b"GET /open HTTP/1.1\r\nHost: a\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.statuses(), [400], "duplicate Host: {}", answer.text);
    assert!(gw.take_targets().is_empty(), "duplicate Host forwarded");

    // Absolute form: the target's authority is the host (RFC 9112 §3.2.2), for routing and for
    // the upstream alike; the Host header is replaced by it.
    let answer = exchange(
        gw.proxy,
        b"GET http://b.example/host HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        answer.statuses(),
        [403],
        "absolute form to b.example: {}",
        answer.text
    );
    let seen = one(
        &gw,
        "absolute form",
        "GET http://c.example/host HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(seen.headers["host"], "c.example");
    assert_eq!(seen.headers["x-forwarded-host"], "c.example");

    // HTTP/2: a `Host` sent beside `:authority` wins, for routing (not b.example's route) and
    // the upstream alike (HTTP/2 clients such as hyper's send the caller's Host that way).
    let (mut stream, mut buf) = h2_connect(gw.proxy).await;
    let fields = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/host"),
        (":authority", "b.example"),
        ("host", "c.example"),
    ];
    stream
        .write_all(&h2raw::headers(1, true, &fields))
        .await
        .unwrap();
    let (frames, _) = h2_read(&mut stream, &mut buf, Duration::from_secs(5), |frames| {
        frames.iter().any(|f| f.2 == 1 && f.0 == h2raw::HEADERS)
    })
    .await;
    let status = frames
        .iter()
        .find(|f| f.2 == 1 && f.0 == h2raw::HEADERS)
        .and_then(|f| h2raw::static_status(&f.3));
    assert_eq!(status, Some(200), "HTTP/2 Host c.example: {frames:?}");
    let seen = gw.take_seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["host"], "c.example");
}

/// One request that the gateway forwards: what the upstream saw of it.
async fn one(gw: &Gateway, name: &str, bytes: String) -> Seen {
    let answer = exchange(gw.proxy, bytes.as_bytes()).await;
    assert_eq!(answer.statuses(), [200], "{name}: {}", answer.text);
    let seen = gw.take_seen();
    assert_eq!(seen.len(), 1, "{name}");
    seen.into_iter().next().unwrap()
}

#[tokio::test]
async fn slowloris_is_cut_off_by_the_header_timeout() {
    let gw = Gateway::start().await;
    gw.put("/admin/routes/all", json!({"uri": "/*"})).await;
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ";
    // One byte a second, for ever: the gateway must end it (header timeout 30 s).
    let mut sent = 0usize;
    let cut = loop {
        let byte = head.get(sent).copied().unwrap_or(b'a');
        if stream.write_all(&[byte]).await.is_err() {
            break started.elapsed();
        }
        sent += 1;
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                // hyper may answer 408 before closing.
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            }
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "slowloris still connected after {:?} ({sent} bytes)",
            started.elapsed()
        );
    };
    println!("slowloris: cut off after {cut:?} ({sent} bytes sent)");
    assert!(cut >= Duration::from_secs(20), "cut off after {cut:?}");
    // The gateway still serves others.
    let answer = exchange(
        gw.proxy,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.statuses(), [200], "{}", answer.text);
}

/// Minimal HTTP/2 framing, written by hand so a client can break the rules the `h2` crate
/// enforces (more streams than the server allows).
mod h2raw {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const GOAWAY: u8 = 7;
    pub const END_STREAM: u8 = 1;
    pub const END_HEADERS: u8 = 4;
    pub const ACK: u8 = 1;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// `GET http://a/` as an HPACK block: static-table `:method GET`, `:scheme http`,
    /// `:path /`, and `:authority a` as a literal without indexing.
    pub fn get_request(stream: u32) -> Vec<u8> {
        frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &[0x82, 0x86, 0x84, 0x01, 0x01, b'a'],
        )
    }

    /// A header block of literal fields without indexing (names and values under 127 bytes,
    /// no Huffman coding), so any bytes can be sent.
    pub fn headers(stream: u32, end_stream: bool, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0x00);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        frame(HEADERS, flags, stream, &block)
    }

    pub fn data(stream: u32, end_stream: bool, payload: &[u8]) -> Vec<u8> {
        frame(
            DATA,
            if end_stream { END_STREAM } else { 0 },
            stream,
            payload,
        )
    }

    /// A response's status when its header block starts with a static-table `:status` (200,
    /// 204, 206, 304, 400, 404, 500: what hyper sends indexed).
    pub fn static_status(block: &[u8]) -> Option<u16> {
        Some(match block.first()? {
            0x88 => 200,
            0x89 => 204,
            0x8a => 206,
            0x8b => 304,
            0x8c => 400,
            0x8d => 404,
            0x8e => 500,
            _ => return None,
        })
    }

    pub fn reset(stream: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()) // CANCEL
    }

    /// The client preface with empty settings.
    pub fn preface() -> Vec<u8> {
        let mut p = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        p.extend(frame(SETTINGS, 0, 0, &[]));
        p
    }

    /// Splits whole frames off `buf`: (type, flags, stream, payload).
    pub fn parse(buf: &mut Vec<u8>) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            frames.push((buf[3], buf[4], stream, buf[9..9 + len].to_vec()));
            buf.drain(..9 + len);
        }
        frames
    }
}

/// The resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// An h2c connection after the settings exchange.
async fn h2_connect(proxy: SocketAddr) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream.write_all(&h2raw::preface()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let settled = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the h2 handshake");
            buf.extend_from_slice(&chunk[..n]);
            for (kind, flags, _, _) in h2raw::parse(&mut buf) {
                if kind == h2raw::SETTINGS && flags & h2raw::ACK == 0 {
                    return;
                }
            }
        }
    })
    .await;
    assert!(settled.is_ok(), "no SETTINGS from the server");
    stream
        .write_all(&h2raw::frame(h2raw::SETTINGS, h2raw::ACK, 0, &[]))
        .await
        .unwrap();
    (stream, buf)
}

/// Reads frames for up to `wait` (or until the connection closes); returns them and whether it
/// closed.
async fn h2_read(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    wait: Duration,
    mut done: impl FnMut(&[(u8, u8, u32, Vec<u8>)]) -> bool,
) -> (Vec<(u8, u8, u32, Vec<u8>)>, bool) {
    let mut frames = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                frames.extend(h2raw::parse(buf));
                if done(&frames) {
                    break false;
                }
            }
            Err(_) => break false,
        }
    };
    (frames, closed)
}

#[tokio::test]
async fn http2_rapid_reset_and_stream_floods_are_bounded() {
    let gw = Gateway::with_upstream_delay(Duration::from_secs(2)).await;
    gw.put("/admin/routes/all", json!({"uri": "/*"})).await;
    let pid = gw.cp.pid();
    let rss_before = rss_kib(pid);

    // Rapid reset (CVE-2023-44487): streams opened and cancelled in a loop end the connection
    // with GOAWAY.
    let (mut stream, mut buf) = h2_connect(gw.proxy).await;
    let started = Instant::now();
    let mut attack = Vec::new();
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        attack.extend(h2raw::get_request(id));
        attack.extend(h2raw::reset(id));
    }
    // The gateway may close before it has read everything.
    let _ = stream.write_all(&attack).await;
    let (frames, closed) = h2_read(&mut stream, &mut buf, Duration::from_secs(10), |_| false).await;
    let goaway = frames.iter().find(|f| f.0 == h2raw::GOAWAY);
    println!(
        "rapid reset: GOAWAY {:?} after {:?}, closed {closed}",
        goaway.map(|g| &g.3),
        started.elapsed()
    );
    let code = goaway
        .map(|g| u32::from_be_bytes([g.3[4], g.3[5], g.3[6], g.3[7]]))
        .expect("rapid reset: no GOAWAY");
    assert_eq!(code, 0xb, "rapid reset: GOAWAY is ENHANCE_YOUR_CALM");
    assert!(closed, "rapid reset: connection left open");

    // A stream flood: more streams at once than the 256 allowed. The excess is refused with
    // REFUSED_STREAM (or the connection ends); the allowed ones are answered.
    let (mut stream, mut buf) = h2_connect(gw.proxy).await;
    let mut flood = Vec::new();
    for i in 0..400u32 {
        flood.extend(h2raw::get_request(2 * i + 1));
    }
    let _ = stream.write_all(&flood).await;
    let (frames, closed) = h2_read(&mut stream, &mut buf, Duration::from_secs(10), |frames| {
        let answered = frames.iter().filter(|f| f.0 == h2raw::HEADERS).count();
        let refused = frames.iter().filter(|f| f.0 == h2raw::RST_STREAM).count();
        answered + refused >= 400
    })
    .await;
    let answered = frames.iter().filter(|f| f.0 == h2raw::HEADERS).count();
    let refused = frames
        .iter()
        .filter(|f| f.0 == h2raw::RST_STREAM && f.3 == 7u32.to_be_bytes())
        .count();
    let goaway = frames.iter().any(|f| f.0 == h2raw::GOAWAY);
    println!(
        "stream flood: {answered} answered, {refused} refused, GOAWAY {goaway}, closed {closed}"
    );
    assert!(answered <= 256, "stream flood: {answered} streams answered");
    assert!(
        refused >= 144 || goaway,
        "stream flood: the excess was not refused ({refused} REFUSED_STREAM)"
    );
    drop(stream);

    // Memory stays bounded, and the gateway serves others (HTTP/1.1 and HTTP/2) afterwards.
    let rss_after = rss_kib(pid);
    println!("data plane RSS: {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 100 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    let answer = exchange(
        gw.proxy,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.statuses(), [200], "{}", answer.text);
    let (mut stream, mut buf) = h2_connect(gw.proxy).await;
    stream.write_all(&h2raw::get_request(1)).await.unwrap();
    let (frames, _) = h2_read(&mut stream, &mut buf, Duration::from_secs(10), |frames| {
        frames.iter().any(|f| f.0 == h2raw::HEADERS)
    })
    .await;
    assert!(
        frames.iter().any(|f| f.0 == h2raw::HEADERS && f.2 == 1),
        "HTTP/2 after the attacks: {frames:?}"
    );
}

/// HTTP/2 requests are forwarded to HTTP/1.1 upstreams: framing an HTTP/2 client sends (a
/// `content-length` the DATA frames contradict, `transfer-encoding`, CR/LF in a field) must not
/// turn into a second request upstream (the H2.CL / H2.TE desync attacks).
#[tokio::test]
async fn http2_requests_cannot_desync_the_http1_upstream() {
    let gw = Gateway::start().await;
    gw.put("/admin/routes/all", json!({"uri": "/*"})).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let post = |path: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut fields = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "a"),
        ];
        fields.extend_from_slice(extra);
        fields
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "H2.CL: content-length 0 with data",
            [
                h2raw::headers(1, false, &post("/attack", &[("content-length", "0")])),
                h2raw::data(1, true, smuggled.as_bytes()),
            ]
            .concat(),
        ),
        (
            "H2.CL: content-length shorter than the data",
            [
                h2raw::headers(1, false, &post("/attack", &[("content-length", "5")])),
                h2raw::data(1, true, format!("hello{smuggled}").as_bytes()),
            ]
            .concat(),
        ),
        (
            "H2.TE: transfer-encoding chunked",
            [
                h2raw::headers(
                    1,
                    false,
                    &post("/attack", &[("transfer-encoding", "chunked")]),
                ),
                h2raw::data(1, true, format!("0\r\n\r\n{smuggled}").as_bytes()),
            ]
            .concat(),
        ),
        (
            "CRLF in a header value",
            h2raw::headers(
                1,
                true,
                &post("/attack", &[("x-a", "b\r\nTransfer-Encoding: chunked")]),
            ),
        ),
        (
            "CRLF in :path",
            h2raw::headers(
                1,
                true,
                &post("/attack HTTP/1.1\r\nHost: a\r\n\r\nGET /smuggled", &[]),
            ),
        ),
        (
            "connection header",
            h2raw::headers(1, true, &post("/attack", &[("connection", "close")])),
        ),
    ];
    for (name, frames) in cases {
        gw.take_seen();
        let (mut stream, mut buf) = h2_connect(gw.proxy).await;
        let _ = stream.write_all(&frames).await;
        let (frames, closed) = h2_read(&mut stream, &mut buf, Duration::from_secs(5), |frames| {
            frames
                .iter()
                .any(|f| f.2 == 1 && (f.0 == h2raw::RST_STREAM || f.0 == h2raw::HEADERS))
        })
        .await;
        let reset = frames
            .iter()
            .find(|f| f.0 == h2raw::RST_STREAM && f.2 == 1)
            .map(|f| u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]]));
        let status = frames
            .iter()
            .find(|f| f.0 == h2raw::HEADERS && f.2 == 1)
            .map(|f| h2raw::static_status(&f.3));
        let goaway = frames.iter().any(|f| f.0 == h2raw::GOAWAY);
        // Give a forwarded request time to arrive, if one was.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let targets = gw.take_targets();
        println!(
            "{name}: RST_STREAM {reset:?}, status {status:?}, GOAWAY {goaway}, closed {closed}, upstream saw {targets:?}"
        );
        assert!(
            reset.is_some() || status == Some(Some(400)) || goaway,
            "{name}: not refused: {frames:?}"
        );
        assert!(
            !targets.iter().any(|t| t.contains("smuggled")),
            "{name}: upstream saw {targets:?}"
        );
    }
}
