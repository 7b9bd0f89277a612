//! TLS towards upstream nodes (`scheme: https` / `grpcs`): one rustls client config per
//! upstream, built when the snapshot is compiled (so a bad CA or key is a NACK, not a failed
//! request), with the upstream's trusted CAs (or the system's), SNI, optional client
//! certificate, and ALPN `h2` for gRPC or `http/1.1` otherwise.

use std::sync::{Arc, OnceLock};

use postern_proto::model::UpstreamTls;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How an upstream's connections are secured: the client config and the name to send (SNI)
/// and verify; `None` name: each node's own host.
#[derive(Clone)]
pub struct UpstreamTlsSettings {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsSettings")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTlsSettings {
    /// The name to verify for a node whose address is `host`.
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, String> {
        match &self.server_name {
            Some(n) => Ok(n.clone()),
            None => ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
                .map(|n| n.to_owned())
                .map_err(|e| format!("'{host}' is not a usable TLS server name: {e}")),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's trusted CAs (Debian: /etc/ssl/certs), read once per process.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's trusted CAs");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    ignored,
                    "no system CA certificates found: https upstreams need `tls.ca`"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// Builds an upstream's TLS settings; `grpc` selects ALPN `h2`. Errors name the field.
pub fn settings(
    tls: Option<&UpstreamTls>,
    grpc: bool,
    upstream_host: Option<&str>,
) -> Result<UpstreamTlsSettings, (String, String)> {
    let bad = |field: &str, e: String| (field.to_string(), e);
    let roots = match tls.and_then(|t| t.ca.as_deref()) {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| bad("ca", e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| bad("ca", format!("not a usable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(bad("ca", "no certificate in the PEM".into()));
            }
            Arc::new(roots)
        }
        None => system_roots(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("", e.to_string()))?;
    let builder = if tls.is_some_and(|t| !t.verify) {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        builder.with_root_certificates(roots)
    };
    let mut config = match tls.and_then(|t| t.client_cert.as_deref().zip(t.client_key.as_deref())) {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("client_cert", e.to_string()))?;
            if chain.is_empty() {
                return Err(bad("client_cert", "no certificate in the PEM".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| bad("client_key", e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("client_key", format!("does not fit client_cert: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if grpc {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let name = tls.and_then(|t| t.sni.as_deref()).or(upstream_host);
    let server_name = name
        .map(|n| {
            // `upstream_host` may carry a port.
            let host = n.rsplit_once(':').map_or(n, |(h, p)| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    n
                }
            });
            ServerName::try_from(host.to_string()).map_err(|e| {
                bad(
                    "sni",
                    format!("'{host}' is not a usable TLS server name: {e}"),
                )
            })
        })
        .transpose()?;
    Ok(UpstreamTlsSettings {
        config: Arc::new(config),
        server_name,
    })
}

/// `tls.verify: false`: any certificate is accepted, signatures are still checked so the
/// handshake is well-formed.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
