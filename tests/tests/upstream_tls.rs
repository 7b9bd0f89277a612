//! TLS towards upstreams (`scheme: https` / `grpcs`): the node's certificate is verified against
//! `tls.ca` (or the system's CAs) and the SNI name, `verify: false` skips it, a client
//! certificate is presented for mutual TLS, `grpcs` negotiates HTTP/2 by ALPN; bad TLS config
//! is refused at write time and the client key is never shown.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use postern_tests::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// `(cert PEM, key PEM)` for `sans`, signed by `issuer`.
fn leaf(sans: &[&str], issuer: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// An HTTPS server (HTTP/1.1 and HTTP/2 by ALPN) answering every request with what it saw of
/// the connection: `sni=<name> alpn=<protocol> version=<HTTP version> client_cert=<bool>`.
/// With `client_ca`, a client certificate signed by it is required.
async fn tls_backend(cert: &(String, String), client_ca: Option<&str>) -> SocketAddr {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.0.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A refused handshake (no or untrusted client certificate) just ends here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, session) = tls.get_ref();
                let seen = format!(
                    "sni={} alpn={} client_cert={}",
                    session.server_name().unwrap_or("-"),
                    session
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .unwrap_or_else(|| "-".into()),
                    session.peer_certificates().is_some_and(|c| !c.is_empty()),
                );
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = format!("{seen} version={:?}", req.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_and_grpcs_upstreams_verify_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let internal = ca("Postern test internal CA");
    let ca_pem = internal.pem();
    let server_cert = leaf(&["backend.test", "127.0.0.1"], &internal);
    let plain = tls_backend(&server_cert, None).await;
    let client_ca = ca("Postern test client CA");
    let client_ca_pem = client_ca.pem();
    let mutual = tls_backend(&server_cert, Some(&client_ca_pem)).await;
    let (client_cert, client_key) = leaf(&["gateway.test"], &client_ca);

    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    let proxy = cp.proxy.unwrap();
    let mut rev = 0;
    let mut route = async |id: &str, upstream: Value| {
        rev = admin
            .put_ok(
                &format!("/admin/routes/{id}"),
                json!({"uri": format!("/{id}"), "upstream": upstream}),
            )
            .await;
    };
    let node = |addr: SocketAddr| json!({addr.to_string(): 1});
    // Our CA and the certificate's name.
    route(
        "ca-sni",
        json!({"scheme": "https", "nodes": node(plain),
               "tls": {"ca": ca_pem, "sni": "backend.test"}}),
    )
    .await;
    // No SNI given: an IP node is verified against the certificate's IP addresses.
    route(
        "ca-ip",
        json!({"scheme": "https", "nodes": node(plain), "tls": {"ca": ca_pem}}),
    )
    .await;
    // pass_host: rewrite names the server when `sni` is not set.
    route(
        "ca-rewrite",
        json!({"scheme": "https", "nodes": node(plain), "tls": {"ca": ca_pem},
               "pass_host": "rewrite", "upstream_host": "backend.test"}),
    )
    .await;
    // The system's CAs do not know our internal CA.
    route(
        "system-cas",
        json!({"scheme": "https", "nodes": node(plain)}),
    )
    .await;
    // A name the certificate does not carry.
    route(
        "wrong-name",
        json!({"scheme": "https", "nodes": node(plain),
               "tls": {"ca": ca_pem, "sni": "other.test"}}),
    )
    .await;
    route(
        "no-verify",
        json!({"scheme": "https", "nodes": node(plain), "tls": {"verify": false}}),
    )
    .await;
    route(
        "mtls",
        json!({"scheme": "https", "nodes": node(mutual),
               "tls": {"ca": ca_pem, "sni": "backend.test",
                       "client_cert": client_cert, "client_key": client_key}}),
    )
    .await;
    route(
        "mtls-missing",
        json!({"scheme": "https", "nodes": node(mutual),
               "tls": {"ca": ca_pem, "sni": "backend.test"}}),
    )
    .await;
    route(
        "grpcs",
        json!({"scheme": "grpcs", "nodes": node(plain),
               "tls": {"ca": ca_pem, "sni": "backend.test"}}),
    )
    .await;
    wait_applied(cp.status.unwrap(), rev).await;

    let cases: &[(&str, u16, &str)] = &[
        (
            "/ca-sni",
            200,
            "sni=backend.test alpn=http/1.1 client_cert=false version=HTTP/1.1",
        ),
        ("/ca-ip", 200, "sni=- alpn=http/1.1"),
        ("/ca-rewrite", 200, "sni=backend.test alpn=http/1.1"),
        ("/system-cas", 502, ""),
        ("/wrong-name", 502, ""),
        ("/no-verify", 200, "alpn=http/1.1"),
        (
            "/mtls",
            200,
            "sni=backend.test alpn=http/1.1 client_cert=true",
        ),
        ("/mtls-missing", 502, ""),
        (
            "/grpcs",
            200,
            "sni=backend.test alpn=h2 client_cert=false version=HTTP/2.0",
        ),
    ];
    for &(path, status, seen) in cases {
        let (got, body) = get_via(proxy, path, None).await.unwrap();
        assert_eq!(got, status, "{path}: {body}");
        if status == 200 {
            assert!(body.contains(seen), "{path}: {body}");
        }
    }

    // The client key is write-only; the certificate is not secret.
    let (_, shown) = admin.get("/admin/routes/mtls").await.unwrap();
    let tls = &shown["value"]["upstream"]["tls"];
    assert_eq!(tls["client_key"], "<redacted>", "{shown}");
    assert!(
        tls["client_cert"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(!shown.to_string().contains("PRIVATE KEY"), "{shown}");
}

#[tokio::test]
async fn bad_upstream_tls_config_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let internal = ca("Postern test internal CA");
    let (cert, _) = leaf(&["gateway.test"], &internal);
    let (_, other_key) = leaf(&["other.test"], &internal);
    let cases: &[(Value, &str)] = &[
        (
            json!({"nodes": {"127.0.0.1:1": 1}, "tls": {"ca": internal.pem()}}),
            "tls",
        ),
        (
            json!({"scheme": "https", "nodes": {"127.0.0.1:1": 1}, "tls": {"ca": "not pem"}}),
            "tls.ca",
        ),
        (
            json!({"scheme": "https", "nodes": {"127.0.0.1:1": 1},
                   "tls": {"ca": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}}),
            "tls.ca",
        ),
        (
            json!({"scheme": "https", "nodes": {"127.0.0.1:1": 1},
                   "tls": {"client_cert": cert.clone()}}),
            "tls.client_key",
        ),
        (
            json!({"scheme": "https", "nodes": {"127.0.0.1:1": 1},
                   "tls": {"client_cert": cert, "client_key": other_key}}),
            "tls.client_key",
        ),
        (
            json!({"scheme": "https", "nodes": {"127.0.0.1:1": 1}, "tls": {"sni": "a b"}}),
            "tls.sni",
        ),
    ];
    for (i, (body, field)) in cases.iter().enumerate() {
        let (status, answer) = admin
            .request(
                reqwest::Method::PUT,
                &format!("/admin/upstreams/u{i}"),
                Some(&body.to_string()),
            )
            .await
            .unwrap();
        assert_eq!(status, 400, "case {i}: {answer}");
        let text = answer.to_string();
        assert!(
            text.contains(field),
            "case {i}: expected field {field}: {text}"
        );
    }
    let (status, list) = admin.get("/admin/upstreams").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(list["total"], 0, "nothing was written: {list}");
}

#[tokio::test]
async fn https_probes_use_the_upstreams_tls() {
    let dir = tempfile::tempdir().unwrap();
    let internal = ca("Postern test internal CA");
    let ca_pem = internal.pem();
    let good = tls_backend(&leaf(&["backend.test"], &internal), None).await;
    // Speaks plain HTTP: the TLS handshake of the probe fails.
    let plain = upstream("no tls here").await;
    let cp = ControlPlane::start_dev(dir.path()).await;
    let admin = cp.client();
    admin
        .put_ok(
            "/admin/upstreams/u",
            json!({"scheme": "https", "nodes": {good.to_string(): 1, plain.to_string(): 1},
                   "tls": {"ca": ca_pem, "sni": "backend.test"},
                   "checks": {"active": {"type": "https", "http_path": "/",
                       "healthy": {"interval": 1, "successes": 1},
                       "unhealthy": {"interval": 1, "tcp_failures": 1}}}}),
        )
        .await;
    let rev = admin
        .put_ok("/admin/routes/r", json!({"uri": "/*", "upstream_id": "u"}))
        .await;
    wait_applied(cp.status.unwrap(), rev).await;
    let status = format!("http://{}/status/upstreams", cp.status.unwrap());
    let started = std::time::Instant::now();
    wait_for(
        "the plain node marked unhealthy",
        std::time::Duration::from_secs(10),
        || {
            let status = status.clone();
            async move {
                let v: Value = reqwest::get(&status).await.ok()?.json().await.ok()?;
                let nodes = v["upstreams"][0]["nodes"].as_array()?.clone();
                let healthy = |addr: SocketAddr| {
                    nodes
                        .iter()
                        .find(|n| n["address"] == addr.to_string())
                        .and_then(|n| n["healthy"].as_bool())
                };
                (healthy(good) == Some(true) && healthy(plain) == Some(false)).then_some(())
            }
        },
    )
    .await;
    println!(
        "https probe took the plain node out after {:?}",
        started.elapsed()
    );
    for _ in 0..10 {
        let (status, body) = get_via(cp.proxy.unwrap(), "/x", None).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("sni=backend.test"), "{body}");
    }
}
