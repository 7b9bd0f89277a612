//! What operators see: the DP's and the CP's Prometheus metrics, the access log, and a DP that
//! drains on SIGTERM (readiness first, in-flight requests finished, exit 0).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use postern_tests::*;
use serde_json::{Value, json};

fn route(uri: &str, node: SocketAddr) -> Value {
    json!({"uri": uri, "upstream": {"nodes": {node.to_string(): 1}}})
}

async fn text(url: String) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("request");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

/// The DP's metrics once every series (`name{labels}`) of `counts` holds its count: a request
/// is counted when its response body is dropped, which may be just after the client has read
/// the response.
async fn metrics_counting(status: SocketAddr, counts: &[(&str, f64)]) -> String {
    wait_for(
        &format!("the metrics to count {counts:?}"),
        Duration::from_secs(5),
        || async {
            let (code, m) = text(format!("http://{status}/metrics")).await;
            let counted = counts.iter().all(|(s, n)| sample(&m, s) == Some(*n));
            (code == 200 && counted).then_some(m)
        },
    )
    .await
}

/// The value of the series `line_prefix` (`name{labels}`) in a Prometheus text exposition.
fn sample(metrics: &str, line_prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
}

#[tokio::test]
async fn data_plane_and_control_plane_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let dp = DataPlane::start(dir.path(), "metrics-dp", &cp.sync_url()).await;
    let node = upstream("ok").await;
    let admin = cp.client();
    admin
        .put_ok("/admin/routes/orders", route("/orders/*", node))
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/gone",
            json!({"uri": "/gone", "plugins": {"request-termination": {"status_code": 410}}}),
        )
        .await;
    wait_applied(dp.status, rev).await;

    for i in 0..5 {
        let (code, _) = get_via(dp.proxy, &format!("/orders/{i}?token=secret"), None)
            .await
            .unwrap();
        assert_eq!(code, 200);
    }
    assert_eq!(get_via(dp.proxy, "/gone", None).await.unwrap().0, 410);
    assert_eq!(get_via(dp.proxy, "/nowhere", None).await.unwrap().0, 404);

    let m = metrics_counting(
        dp.status,
        &[
            (
                r#"postern_http_requests_total{code="200",route="orders",service=""}"#,
                5.0,
            ),
            (
                r#"postern_http_requests_total{code="404",route="",service=""}"#,
                1.0,
            ),
        ],
    )
    .await;
    let requests = |labels: &str| sample(&m, &format!("postern_http_requests_total{{{labels}}}"));
    assert_eq!(
        requests(r#"code="200",route="orders",service="""#),
        Some(5.0),
        "{m}"
    );
    assert_eq!(requests(r#"code="410",route="gone",service="""#), Some(1.0));
    assert_eq!(requests(r#"code="404",route="",service="""#), Some(1.0));
    // Five requests, each under 10 s: the last bucket holds all of them.
    assert_eq!(
        sample(
            &m,
            r#"postern_http_request_duration_seconds_bucket{route="orders",service="",le="10"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"postern_upstream_duration_seconds_count{route="orders",service=""}"#
        ),
        Some(5.0)
    );
    // "ok" five times.
    assert_eq!(
        sample(
            &m,
            r#"postern_bandwidth_bytes_total{direction="egress",route="orders",service=""}"#
        ),
        Some(10.0)
    );
    assert_eq!(sample(&m, "postern_config_version"), Some(rev as f64));
    assert_eq!(sample(&m, "postern_sync_connected"), Some(1.0));
    // Labels are ids, never request paths or addresses.
    assert!(!m.contains("/orders/1") && !m.contains("127.0.0.1"), "{m}");

    // The CP's metrics need no key; the rest of the Admin API still does.
    let (code, m) = text(format!("http://{}/metrics", cp.admin)).await;
    assert_eq!(code, 200);
    assert_eq!(
        sample(
            &m,
            r#"postern_cp_admin_writes_total{code="201",kind="routes",method="PUT"}"#
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, &format!("postern_cp_data_planes{{version=\"{rev}\"}}")),
        Some(1.0)
    );
    assert_eq!(sample(&m, "postern_cp_snapshot_version"), Some(rev as f64));
    let (code, _) = text(format!("http://{}/admin/routes", cp.admin)).await;
    assert_eq!(code, 401);
}

#[tokio::test]
async fn access_log_writes_one_line_per_request_without_query_strings() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let cp = ControlPlane::start(dir.path()).await;
    let dp = DataPlane::start_with(
        dir.path(),
        "log-dp",
        &cp.sync_url(),
        &["--access-log", log.to_str().unwrap()],
    )
    .await;
    let node = upstream("ok").await;
    let rev = cp
        .client()
        .put_ok("/admin/routes/api", route("/api/*", node))
        .await;
    wait_applied(dp.status, rev).await;
    assert_eq!(
        get_via(dp.proxy, "/api/x?apikey=hunter2", None)
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(get_via(dp.proxy, "/missing", None).await.unwrap().0, 404);

    let lines = wait_for("two access-log lines", Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.lines().count() >= 2).then_some(text)
    })
    .await;
    assert!(!lines.contains("hunter2"), "{lines}");
    let entries: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(entries.len(), 2, "{lines}");
    assert_eq!(entries[0]["path"], "/api/x");
    assert_eq!(entries[0]["status"], 200);
    assert_eq!(entries[0]["route"], "api");
    assert_eq!(entries[0]["upstream"], node.to_string());
    assert_eq!(entries[0]["method"], "GET");
    assert_eq!(entries[0]["bytes_out"], 2);
    assert!(entries[0]["duration_ms"].as_f64().unwrap() > 0.0);
    // The id the upstream received.
    assert_eq!(entries[0]["request_id"].as_str().map(str::len), Some(36));
    assert_eq!(entries[1]["status"], 404);
    assert_eq!(entries[1]["route"], Value::Null);
}

#[tokio::test]
async fn sigterm_drains_the_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let mut dp = DataPlane::start_with(
        dir.path(),
        "drain-dp",
        &cp.sync_url(),
        &["--shutdown-delay", "1", "--drain-timeout", "5"],
    )
    .await;
    let slow = slow_upstream(Duration::from_millis(1500)).await;
    let fast = upstream("fast").await;
    let admin = cp.client();
    admin
        .put_ok("/admin/routes/slow", route("/slow", slow))
        .await;
    let rev = admin
        .put_ok("/admin/routes/fast", route("/fast", fast))
        .await;
    wait_applied(dp.status, rev).await;

    let proxy = dp.proxy;
    let in_flight = tokio::spawn(async move { get_via(proxy, "/slow", None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = dp.process.child.id();
    let signalled = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );

    // Not ready at once, yet still serving during the shutdown delay.
    let (code, body) = wait_for("/readyz to answer 503", Duration::from_secs(2), || async {
        readyz(dp.status).await.filter(|(c, _)| *c == 503)
    })
    .await;
    assert_eq!(body["reason"], "shutting down", "{code} {body}");
    assert_eq!(
        get_via(dp.proxy, "/fast", None).await.unwrap(),
        (200, "fast".to_string())
    );

    // The request in flight when the signal came finishes normally.
    let (code, body) = in_flight.await.unwrap().unwrap();
    assert_eq!((code, body.as_str()), (200, "slow"));

    // Then the process exits 0, having stopped accepting after the delay.
    let status = wait_for("the data plane to exit", Duration::from_secs(10), || {
        let exited = dp.process.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    let took = signalled.elapsed();
    println!("SIGTERM to exit: {took:?}");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= Duration::from_secs(1),
        "left before the shutdown delay: {took:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(dp.proxy).await.is_err(),
        "the proxy port still accepts"
    );
}

#[tokio::test]
async fn guide_prometheus_global_rule_labels_routes_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let node = upstream("ok").await;
    let admin = cp.client();
    // The guide's global rule (its prometheus part), as written.
    admin
        .put_ok(
            "/admin/global_rules/1",
            json!({"plugins": {"prometheus": {"prefer_name": true}}}),
        )
        .await;
    let mut named = route("/named", node);
    named["name"] = json!("web-bff-route");
    admin.put_ok("/admin/routes/r-named", named).await;
    let rev = admin
        .put_ok("/admin/routes/r-plain", route("/plain", node))
        .await;
    let (proxy, status) = (cp.proxy.unwrap(), cp.status.unwrap());
    wait_applied(status, rev).await;
    assert_eq!(get_via(proxy, "/named", None).await.unwrap().0, 200);
    assert_eq!(get_via(proxy, "/plain", None).await.unwrap().0, 200);
    let m = metrics_counting(
        status,
        &[
            (
                r#"postern_http_requests_total{code="200",route="web-bff-route",service=""}"#,
                1.0,
            ),
            (
                r#"postern_http_requests_total{code="200",route="r-plain",service=""}"#,
                1.0,
            ),
        ],
    )
    .await;
    let requests = |labels: &str| sample(&m, &format!("postern_http_requests_total{{{labels}}}"));
    assert_eq!(
        requests(r#"code="200",route="web-bff-route",service="""#),
        Some(1.0),
        "{m}"
    );
    // A route without a name keeps its id.
    assert_eq!(
        requests(r#"code="200",route="r-plain",service="""#),
        Some(1.0)
    );

    let (code, body) = admin
        .request(
            reqwest::Method::PUT,
            "/admin/global_rules/2",
            Some(r#"{"plugins": {"prometheus": {"prefer_name": "yes"}}}"#),
        )
        .await
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error_msg"].as_str().unwrap().contains("prefer_name"),
        "{body}"
    );
}

#[tokio::test]
async fn every_request_reaches_the_upstream_with_a_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let node = upstream("ok").await;
    let rev = cp
        .client()
        .put_ok("/admin/routes/plain", route("/plain", node))
        .await;
    let (proxy, status) = (cp.proxy.unwrap(), cp.status.unwrap());
    wait_applied(status, rev).await;
    let http = reqwest::Client::new();
    let url = format!("http://{proxy}/plain");
    let first = http.get(&url).send().await.unwrap();
    let second = http.get(&url).send().await.unwrap();
    let id = |r: &reqwest::Response| {
        r.headers()["x-seen-request-id"]
            .to_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (id(&first), id(&second));
    assert_eq!(a.len(), 36, "a UUID: {a}");
    assert_ne!(a, b);
    // A sane client id is kept; an unusable one (two values) is replaced.
    let kept = http
        .get(&url)
        .header("x-request-id", "client-7")
        .send()
        .await
        .unwrap();
    assert_eq!(id(&kept), "client-7");
    let replaced = http
        .get(&url)
        .header("x-request-id", "a")
        .header("x-request-id", "b")
        .send()
        .await
        .unwrap();
    assert_eq!(id(&replaced).len(), 36);
}

#[tokio::test]
async fn limits_and_auth_failures_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let node = upstream("ok").await;
    let mut limited = route("/limited", node);
    limited["plugins"] =
        json!({"limit-count": {"count": 1, "time_window": 60, "rejected_code": 429}});
    let mut guarded = route("/guarded", node);
    guarded["plugins"] = json!({"key-auth": {}});
    let admin = cp.client();
    admin.put_ok("/admin/routes/limited", limited).await;
    let rev = admin.put_ok("/admin/routes/guarded", guarded).await;
    let (proxy, status) = (cp.proxy.unwrap(), cp.status.unwrap());
    wait_applied(status, rev).await;
    assert_eq!(get_via(proxy, "/limited", None).await.unwrap().0, 200);
    assert_eq!(get_via(proxy, "/limited", None).await.unwrap().0, 429);
    assert_eq!(get_via(proxy, "/guarded", None).await.unwrap().0, 401);
    let (_, m) = text(format!("http://{status}/metrics")).await;
    assert_eq!(
        sample(
            &m,
            r#"postern_rate_limit_rejections_total{plugin="limit-count",route="limited"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"postern_auth_failures_total{plugin="key-auth",reason="unauthorized",route="guarded"}"#
        ),
        Some(1.0)
    );
}
