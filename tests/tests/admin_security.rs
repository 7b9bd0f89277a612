//! Admin API lockdown: every path needs the key (both prefixes, every method), the proxy port
//! never serves admin paths, an address outside `--admin-allow` is refused even with the key,
//! the API can be served over TLS, and every write leaves an audit line naming key and client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postern_tests::*;
use rcgen::{CertificateParams, KeyPair};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

#[tokio::test]
async fn every_admin_path_needs_the_key_and_the_proxy_serves_none() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let http = reqwest::Client::new();
    // The paths come from the served document (kept true to the router by admin_openapi.rs):
    // every documented operation, under both prefixes.
    let (status, doc) = cp.client().get("/admin/openapi.json").await.unwrap();
    assert_eq!(status, 200, "{doc}");
    let ops = documented_operations(&doc, "some-id");
    let mut checked = 0;
    let paths: std::collections::BTreeSet<&str> = ops.iter().map(|o| o.path.as_str()).collect();
    for path in paths {
        let keyless = ops.iter().any(|o| o.path == path && !o.needs_key);
        for method in OPENAPI_METHODS {
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let documented = ops.iter().any(|o| o.path == path && o.method == method);
            let url = format!("http://{}{path}", cp.admin);
            for key in [None, Some("wrong-key-wrong-key-wrong-key-wrong")] {
                let mut req = http.request(method.clone(), &url).body("{}");
                if let Some(k) = key {
                    req = req.header("x-api-key", k);
                }
                let status = req.send().await.unwrap().status().as_u16();
                if keyless {
                    // GET /metrics: no configuration in it.
                    assert!(!documented || status == 200, "{method} {url}: {status}");
                    continue;
                }
                // The documented method: 401. Another method on the same path: 401, or 405
                // (no handler runs either way).
                assert!(
                    status == 401 || (!documented && status == 405),
                    "{method} {url} with key {key:?}: {status}"
                );
                checked += 1;
            }
        }
    }
    // Every path the old hand-written list missed is in the document.
    for path in [
        "/admin/config",
        "/admin/explain",
        "/admin/openapi.json",
        "/admin/routes/some-id/health",
        "/admin/routes/some-id/cache",
        "/apisix/admin/upstreams/some-id/health",
    ] {
        assert!(ops.iter().any(|o| o.path == path), "{path} not documented");
    }
    for prefix in ["/admin", "/apisix/admin"] {
        // Admin paths through the proxy port: only routes live there.
        let (code, _) = get_via(cp.proxy.unwrap(), &format!("{prefix}/routes"), None)
            .await
            .unwrap();
        assert_eq!(code, 404);
    }
    println!("{checked} unauthenticated admin requests refused");
    // The document itself needs the key.
    let doc_status = reqwest::get(format!("http://{}/admin/openapi.json", cp.admin))
        .await
        .unwrap()
        .status();
    assert_eq!(doc_status, 401);
    // The one keyless path carries no configuration.
    let metrics = reqwest::get(format!("http://{}/metrics", cp.admin))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
}

#[tokio::test]
async fn writes_leave_an_audit_line() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let rev = admin
        .put_ok(
            "/admin/routes/audited",
            json!({"uri": "/a", "plugins": {"request-termination": {}}}),
        )
        .await;
    let refused = reqwest::Client::new()
        .delete(format!("http://{}/admin/routes/audited", cp.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let log = wait_for("two audit lines", Duration::from_secs(5), || {
        let log = cp.log_text();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("admin write"))
            .map(strip_ansi)
            .collect();
        async move { (lines.len() >= 2).then_some(lines) }
    })
    .await;
    // The key's name (the harness's key is the CP's only one, named "admin"), the client, the
    // resource and the revision the write made.
    let first = &log[0];
    assert!(first.contains(r#"actor="admin""#), "{first}");
    assert!(first.contains(r#"client="127.0.0.1:"#), "{first}");
    assert!(first.contains("path=/admin/routes/audited"), "{first}");
    assert!(first.contains(&format!(r#"revision="{rev}""#)), "{first}");
    let second = &log[1];
    assert!(
        second.contains("status=401") && second.contains(r#"actor="-""#),
        "{second}"
    );
}

/// The log line without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ … m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn start_cp(dir: &Path, extra: &[&str]) -> (Process, std::net::SocketAddr) {
    let admin = free_addr();
    let mut args: Vec<String> = [
        "--data-dir",
        &dir.join("cp-data").display().to_string(),
        "--admin-listen",
        &admin.to_string(),
        "--sync-listen",
        &free_addr().to_string(),
        "--admin-key",
        ADMIN_KEY,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let p = Process::spawn_program("cp", binary("control-plane"), &args, dir.join("cp.log"));
    (p, admin)
}

#[tokio::test]
async fn addresses_outside_the_allow_list_are_refused_even_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (_cp, admin) = start_cp(dir.path(), &["--admin-allow", "10.0.0.0/8"]);
    let http = reqwest::Client::new();
    let resp = wait_for("the Admin API", Duration::from_secs(15), || async {
        http.get(format!("http://{admin}/admin/routes"))
            .header("x-api-key", ADMIN_KEY)
            .send()
            .await
            .ok()
    })
    .await;
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error_msg"]
            .as_str()
            .unwrap()
            .contains("--admin-allow")
    );

    let dir2 = tempfile::tempdir().unwrap();
    let (_cp2, admin2) = start_cp(dir2.path(), &["--admin-allow", "10.0.0.0/8,127.0.0.0/8"]);
    let resp = wait_for("the Admin API", Duration::from_secs(15), || async {
        http.get(format!("http://{admin2}/admin/routes"))
            .send()
            .await
            .ok()
    })
    .await;
    // Allowed, but the key is still required.
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn the_admin_api_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("admin.pem"), dir.path().join("admin.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let (_cp, admin) = start_cp(
        dir.path(),
        &[
            "--admin-tls-cert",
            cert_path.to_str().unwrap(),
            "--admin-tls-key",
            key_path.to_str().unwrap(),
        ],
    );

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let request = format!(
        "GET /admin/routes HTTP/1.1\r\nHost: localhost\r\nX-API-KEY: {ADMIN_KEY}\r\nConnection: close\r\n\r\n"
    );
    let answer = wait_for("the Admin API over TLS", Duration::from_secs(15), || {
        let connector = connector.clone();
        let request = request.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(admin).await.ok()?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.ok()?;
            tls.write_all(request.as_bytes()).await.ok()?;
            let mut out = String::new();
            tls.read_to_string(&mut out).await.ok()?;
            Some(out)
        }
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Plain HTTP on the TLS port gets nothing usable.
    let plain = raw_request(admin, request.as_bytes()).await;
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");
}
