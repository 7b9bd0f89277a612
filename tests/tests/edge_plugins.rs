//! The edge plugins through a real data plane: `cors` (preflights answered by the gateway,
//! headers on simple requests), `redirect` (https, fixed and regex targets) and `client-control`
//! (413 for a declared and for a streamed body over the limit).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use postern_tests::*;
use serde_json::{Value, json};

/// An upstream that reads the whole request body before answering `got <n> bytes`, so a body
/// cut off by the gateway fails before any answer.
async fn body_counting_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    let text = format!("got {} bytes", body.len());
                    Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    let values: Vec<_> = resp
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

#[tokio::test]
async fn cors_preflight_is_answered_by_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("backend").await;
    // Nothing listens here: a request that reached the upstream would be a 502.
    let closed = free_addr();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let proxy = cp.proxy.unwrap();
    let cors = json!({"allow_origins": "https://app.example,https://admin.example", "allow_methods": "GET,PUT", "allow_headers": "**", "expose_headers": "x-total", "max_age": 600, "allow_credential": true});
    admin
        .put_ok(
            "/admin/routes/closed",
            json!({"uri": "/closed/*", "upstream": {"nodes": {closed.to_string(): 1}}, "plugins": {"cors": cors}}),
        )
        .await;
    admin
        .put_ok(
            "/admin/routes/open",
            json!({"uri": "/open/*", "upstream": {"nodes": {backend.to_string(): 1}}, "plugins": {"cors": cors}}),
        )
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/any",
            json!({"uri": "/any", "upstream": {"nodes": {backend.to_string(): 1}}, "plugins": {"cors": {}}}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;
    let http = reqwest::Client::new();

    // The route's upstream is unreachable…
    let resp = http
        .get(format!("http://{proxy}/closed/x"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    // …CORS headers are on error answers too, as on any response for an allowed origin.
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );

    // …yet the preflight is answered: by the gateway.
    let resp = http
        .request(reqwest::Method::OPTIONS, format!("http://{proxy}/closed/x"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "x-token, content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let expected = [
        ("access-control-allow-origin", "https://app.example"),
        ("access-control-allow-methods", "GET,PUT"),
        ("access-control-allow-headers", "x-token, content-type"),
        ("access-control-expose-headers", "x-total"),
        ("access-control-max-age", "600"),
        ("access-control-allow-credentials", "true"),
        ("vary", "Origin"),
    ];
    for (name, value) in expected {
        assert_eq!(header(&resp, name).as_deref(), Some(value), "{name}");
    }
    assert_eq!(resp.text().await.unwrap(), "");

    // A refused origin's preflight: answered, without CORS headers (the browser blocks).
    let resp = http
        .request(reqwest::Method::OPTIONS, format!("http://{proxy}/closed/x"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
    assert_eq!(header(&resp, "access-control-allow-credentials"), None);

    // Simple requests are proxied; the allowed origin is echoed.
    let resp = http
        .post(format!("http://{proxy}/open/x"))
        .header("origin", "https://admin.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("https://admin.example")
    );
    assert_eq!(
        header(&resp, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(header(&resp, "vary").as_deref(), Some("Origin"));
    assert_eq!(resp.text().await.unwrap(), "backend");

    // A refused origin's request still reaches the upstream, without CORS headers.
    let resp = http
        .get(format!("http://{proxy}/open/x"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
    assert_eq!(resp.text().await.unwrap(), "backend");

    // Defaults: any origin, answered with `*`, no Vary.
    let resp = http
        .get(format!("http://{proxy}/any"))
        .header("origin", "https://whoever.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(
        header(&resp, "access-control-allow-methods").as_deref(),
        Some("*")
    );
    assert_eq!(
        header(&resp, "access-control-max-age").as_deref(),
        Some("5")
    );
    assert_eq!(header(&resp, "vary"), None);
    assert_eq!(resp.text().await.unwrap(), "backend");

    // Credentials with `*` are refused at the Admin API, naming the field.
    let (status, body) = admin
        .request(
            reqwest::Method::PUT,
            "/admin/routes/bad",
            Some(&json!({"uri": "/bad", "upstream": {"nodes": {backend.to_string(): 1}}, "plugins": {"cors": {"allow_credential": true}}}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "plugins.cors.allow_origins", "{body}");
}

#[tokio::test]
async fn redirects() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("backend").await;
    let closed = free_addr();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let proxy = cp.proxy.unwrap();
    let routes = [
        ("https", "/secure/*", closed, json!({"http_to_https": true})),
        (
            "moved",
            "/moved/*",
            closed,
            json!({"uri": "https://new.example$request_uri", "ret_code": 301}),
        ),
        (
            "login",
            "/private",
            closed,
            json!({"uri": "/login", "append_query_string": true}),
        ),
        (
            "regex",
            "/old/*",
            backend,
            json!({"regex_uri": ["^/old/([0-9]+)$", "/new/$1"]}),
        ),
    ];
    let mut rev = 0;
    for (id, uri, node, redirect) in routes {
        rev = admin
            .put_ok(
                &format!("/admin/routes/{id}"),
                json!({"uri": uri, "upstream": {"nodes": {node.to_string(): 1}}, "plugins": {"redirect": redirect}}),
            )
            .await;
    }
    wait_applied(cp.status.unwrap(), rev).await;
    let http = no_redirects();
    let cases = [
        (
            "GET",
            "/secure/a?b=1",
            301,
            Some("https://api.example/secure/a?b=1"),
        ),
        (
            "POST",
            "/secure/form",
            308,
            Some("https://api.example/secure/form"),
        ),
        (
            "GET",
            "/moved/x?y=2",
            301,
            Some("https://new.example/moved/x?y=2"),
        ),
        (
            "GET",
            "/private?next=%2Fhome",
            302,
            Some("/login?next=%2Fhome"),
        ),
        ("GET", "/old/42", 302, Some("/new/42")),
        // The regex does not match: proxied.
        ("GET", "/old/abc", 200, None),
    ];
    for (method, path, status, location) in cases {
        let resp = http
            .request(method.parse().unwrap(), format!("http://{proxy}{path}"))
            .header("host", "api.example:9080")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            header(&resp, "location").as_deref(),
            location,
            "{method} {path}"
        );
        if status == 200 {
            assert_eq!(resp.text().await.unwrap(), "backend");
        }
    }

    // Behind a TLS terminator that says so, no loop.
    let resp = http
        .get(format!("http://{proxy}/secure/a"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502, "proxied to the (closed) upstream");

    for (config, field) in [
        (
            json!({"uri": "/a", "ret_code": 200}),
            "plugins.redirect.ret_code",
        ),
        (
            json!({"uri": "/a", "http_to_https": true}),
            "plugins.redirect.uri",
        ),
        (json!({}), "plugins.redirect"),
        (
            json!({"regex_uri": ["(", "/x"]}),
            "plugins.redirect.regex_uri.0",
        ),
    ] {
        let (status, body) = admin
            .request(
                reqwest::Method::PUT,
                "/admin/routes/bad",
                Some(&json!({"uri": "/bad", "upstream": {"nodes": {backend.to_string(): 1}}, "plugins": {"redirect": config}}).to_string()),
            )
            .await
            .unwrap();
        assert_eq!(status, 400, "{config}: {body}");
        assert_eq!(body["field"], field, "{config}: {body}");
    }
}

#[tokio::test]
async fn client_control_limits_request_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let counting = body_counting_upstream().await;
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let proxy = cp.proxy.unwrap();
    admin
        .put_ok(
            "/admin/routes/upload",
            json!({"uri": "/upload", "upstream": {"nodes": {counting.to_string(): 1}}, "plugins": {"client-control": {"max_body_size": 1024}}}),
        )
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/nobody",
            json!({"uri": "/nobody", "upstream": {"nodes": {counting.to_string(): 1}}, "plugins": {"client-control": {"max_body_size": 0}}}),
        )
        .await;
    wait_applied(cp.status.unwrap(), rev).await;
    let http = reqwest::Client::new();
    let too_large = json!({"error_msg": "request body too large"});
    let chunked = |sizes: &'static [usize]| {
        let chunks = sizes
            .iter()
            .map(|n| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; *n])));
        reqwest::Body::wrap_stream(tokio_stream::iter(chunks))
    };
    let send = |path: &'static str, body: reqwest::Body| {
        let http = http.clone();
        async move {
            let resp = http
                .post(format!("http://{proxy}{path}"))
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (status, text)
        }
    };
    let json_of = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);

    // Declared lengths: over the limit is refused before the body is read.
    let (status, text) = send("/upload", vec![b'x'; 2048].into()).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(json_of(&text), too_large);
    assert_eq!(
        send("/upload", vec![b'x'; 1024].into()).await,
        (200, "got 1024 bytes".to_string())
    );

    // Streamed (chunked) bodies: cut off once past the limit.
    let (status, text) = send("/upload", chunked(&[600, 600, 600])).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(json_of(&text), too_large);
    assert_eq!(
        send("/upload", chunked(&[300, 300, 300])).await,
        (200, "got 900 bytes".to_string())
    );

    // max_body_size 0: no body at all.
    assert_eq!(
        send("/nobody", Vec::<u8>::new().into()).await,
        (200, "got 0 bytes".to_string())
    );
    assert_eq!(send("/nobody", vec![b'x'; 1].into()).await.0, 413);
    assert_eq!(send("/nobody", chunked(&[1])).await.0, 413);

    // The gateway still serves the route afterwards.
    assert_eq!(
        send("/upload", chunked(&[10])).await,
        (200, "got 10 bytes".to_string())
    );
}
