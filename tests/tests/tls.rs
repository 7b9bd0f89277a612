//! TLS termination: `ssls` certificates chosen by SNI (exact and wildcard), rotated through the
//! Admin API without a restart, private keys never shown by reads, a key that does not fit its
//! certificate refused at write time, HTTP/1.1 and HTTP/2 (ALPN) over TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use postern_tests::*;
use rcgen::{CertificateParams, KeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

struct Cert {
    pem: String,
    key: String,
    der: CertificateDer<'static>,
}

fn cert(names: &[&str]) -> Cert {
    let key = KeyPair::generate().unwrap();
    let c = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Cert {
        pem: c.pem(),
        key: key.serialize_pem(),
        der: c.der().clone(),
    }
}

/// Connects with `sni`, trusting `trusted`; the certificate the server presented and the
/// response to a GET of `/`, or the handshake error.
async fn fetch(
    addr: SocketAddr,
    sni: &str,
    trusted: &[&Cert],
) -> Result<(CertificateDer<'static>, String), String> {
    fetch_with_alpn(addr, sni, trusted, &[])
        .await
        .map(|(cert, answer, _)| (cert, answer))
}

/// As `fetch`, offering `alpn`; also returns the protocol the server chose.
async fn fetch_with_alpn(
    addr: SocketAddr,
    sni: &str,
    trusted: &[&Cert],
    alpn: &[&[u8]],
) -> Result<(CertificateDer<'static>, String, Option<Vec<u8>>), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted {
        roots.add(c.der.clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let chosen = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    if chosen.as_deref() == Some(b"h2".as_slice()) {
        // An HTTP/2 client would speak h2 now; the negotiation is what is checked.
        return Ok((presented, String::new(), chosen));
    }
    let req = format!("GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    Ok((presented, out, chosen))
}

#[tokio::test]
async fn certificates_by_sni_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let tls_addr = free_addr();
    let dp = DataPlane::start_with(
        dir.path(),
        "tls-dp",
        &cp.sync_url(),
        &["--proxy-listen-tls", &tls_addr.to_string()],
    )
    .await;
    let node = upstream("over tls").await;
    let admin = cp.client();
    let a = cert(&["a.example.com"]);
    let b = cert(&["*.b.example.com"]);
    admin
        .put_ok(
            "/admin/ssls/a",
            json!({"cert": a.pem, "key": a.key, "snis": ["a.example.com"]}),
        )
        .await;
    admin
        .put_ok(
            "/admin/ssls/b",
            json!({"cert": b.pem, "key": b.key, "snis": ["*.b.example.com"]}),
        )
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/all",
            json!({"uri": "/*", "upstream": {"nodes": {node.to_string(): 1}}}),
        )
        .await;
    wait_applied(dp.status, rev).await;

    let (presented, answer) = fetch(tls_addr, "a.example.com", &[&a]).await.unwrap();
    assert_eq!(presented, a.der);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("over tls"));
    assert!(answer.to_ascii_lowercase().contains("x-seen-path: /"));
    let (presented, _) = fetch(tls_addr, "api.b.example.com", &[&b]).await.unwrap();
    assert_eq!(presented, b.der, "the wildcard certificate");
    // ALPN: HTTP/2 when the client offers it, HTTP/1.1 otherwise.
    let (_, _, chosen) = fetch_with_alpn(tls_addr, "a.example.com", &[&a], &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(chosen.as_deref(), Some(b"h2".as_slice()));
    let (_, answer, chosen) = fetch_with_alpn(tls_addr, "a.example.com", &[&a], &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(chosen.as_deref(), Some(b"http/1.1".as_slice()));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A name no certificate covers: the handshake fails.
    assert!(fetch(tls_addr, "c.example.com", &[&a, &b]).await.is_err());

    // Reads never show the key; the certificate is there.
    let (code, shown) = admin.get("/admin/ssls/a").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(shown["value"]["key"], "<redacted>");
    assert!(!shown.to_string().contains("PRIVATE KEY"));
    // GET → edit → PUT keeps the stored key.
    let mut edited: Value = shown["value"].clone();
    edited["desc"] = json!("edited");
    let rev = admin.put_ok("/admin/ssls/a", edited).await;
    wait_applied(dp.status, rev).await;
    let (presented, _) = fetch(tls_addr, "a.example.com", &[&a]).await.unwrap();
    assert_eq!(presented, a.der);

    // Rotation: a new certificate for a.example.com, served from the next snapshot on.
    let a2 = cert(&["a.example.com"]);
    let rev = admin
        .put_ok(
            "/admin/ssls/a",
            json!({"cert": a2.pem, "key": a2.key, "snis": ["a.example.com"]}),
        )
        .await;
    wait_applied(dp.status, rev).await;
    let (presented, _) = fetch(tls_addr, "a.example.com", &[&a2]).await.unwrap();
    assert_eq!(presented, a2.der, "the rotated certificate");

    // A key that does not belong to the certificate: 400 naming the field, nothing written.
    let (code, body) = admin
        .request(
            reqwest::Method::PUT,
            "/admin/ssls/bad",
            Some(&json!({"cert": a.pem, "key": b.key, "snis": ["x.example.com"]}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["field"], "key", "{body}");
}
