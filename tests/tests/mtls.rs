//! Mutual TLS between control plane and data planes: a DP with a certificate signed by the
//! configured CA syncs; one with an untrusted certificate, or none, is refused.

use std::path::Path;
use std::time::Duration;

use postern_tests::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;

/// Writes `<name>.pem` and `<name>.key` into `dir`.
fn write_pair(dir: &Path, name: &str, cert_pem: &str, key: &KeyPair) {
    std::fs::write(dir.join(format!("{name}.pem")), cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(dir: &Path, name: &str, sans: &[&str], issuer: &CertifiedIssuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, issuer).unwrap();
    write_pair(dir, name, &cert.pem(), &key);
}

fn arg(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

#[tokio::test]
async fn only_data_planes_with_a_trusted_certificate_sync() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    let trusted = ca("Postern test CA");
    std::fs::write(pki.join("ca.pem"), trusted.pem()).unwrap();
    leaf(pki, "cp", &["127.0.0.1", "localhost"], &trusted);
    leaf(pki, "dp", &["dp-good"], &trusted);
    let rogue = ca("Someone else's CA");
    leaf(pki, "rogue", &["dp-rogue"], &rogue);

    let (cert, key, ca_file) = (arg(pki, "cp.pem"), arg(pki, "cp.key"), arg(pki, "ca.pem"));
    let cp = ControlPlane::start_with(
        pki,
        false,
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca_file],
    )
    .await;
    let backend = upstream("over mtls").await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/x", "upstream": {"nodes": {backend.to_string(): 1}}}),
        )
        .await;
    let url = format!("https://{}", cp.sync);

    let (dp_cert, dp_key) = (arg(pki, "dp.pem"), arg(pki, "dp.key"));
    let good = DataPlane::start_with(
        pki,
        "dp-good",
        &url,
        &[
            "--tls-ca",
            &ca_file,
            "--tls-cert",
            &dp_cert,
            "--tls-key",
            &dp_key,
        ],
    )
    .await;
    wait_applied(good.status, rev).await;
    assert_eq!(
        get_via(good.proxy, "/x", None).await.unwrap(),
        (200, "over mtls".to_string())
    );

    let (rogue_cert, rogue_key) = (arg(pki, "rogue.pem"), arg(pki, "rogue.key"));
    let refused = [
        DataPlane::start_with(
            pki,
            "dp-rogue",
            &url,
            &[
                "--tls-ca",
                &ca_file,
                "--tls-cert",
                &rogue_cert,
                "--tls-key",
                &rogue_key,
            ],
        )
        .await,
        DataPlane::start_with(pki, "dp-no-cert", &url, &["--tls-ca", &ca_file]).await,
        DataPlane::start_with(pki, "dp-plaintext", &format!("http://{}", cp.sync), &[]).await,
    ];
    for dp in &refused {
        wait_for(
            &format!("{} to log a failed sync", dp.node_id),
            Duration::from_secs(10),
            || async {
                dp.process
                    .log_text()
                    .contains("sync with the control plane failed")
                    .then_some(())
            },
        )
        .await;
        let (code, body) = readyz(dp.status).await.unwrap();
        assert_eq!(code, 503, "{} must get no config: {body}", dp.node_id);
    }
    let (_, v) = cp.client().get("/admin/data-planes").await.unwrap();
    let nodes: Vec<&str> = v["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes,
        ["dp-good"],
        "only the trusted DP ever reached the sync service"
    );
}
