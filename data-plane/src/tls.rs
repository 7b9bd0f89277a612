//! TLS termination on the proxy's TLS listener (`--proxy-listen-tls`): the certificate is chosen
//! per handshake by SNI from the `ssls` of the config being served, so a certificate written
//! through the Admin API is presented from the next snapshot on, without a restart. TLS 1.2 and
//! 1.3 (rustls, ring), ALPN `h2` and `http/1.1`.

use std::collections::HashMap;
use std::sync::Arc;

use postern_proto::model::SslConfig;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::state::DpState;

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A certificate chain and its key, parsed and checked to belong together.
pub fn certified_key(ssl: &SslConfig) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(ssl.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cert: {e}"))?;
    if chain.is_empty() {
        return Err("cert: no certificate in the PEM".to_string());
    }
    let key = PrivateKeyDer::from_pem_slice(ssl.key.as_bytes()).map_err(|e| format!("key: {e}"))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("key: does not fit the certificate or is not usable ({e})"))
}

/// The served config's certificates by server name.
#[derive(Default)]
pub struct SniCerts {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is kept under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl std::fmt::Debug for SniCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniCerts")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SniCerts {
    /// Every enabled `ssls` entry, by id order; a name claimed twice goes to the first.
    pub fn build<'a>(
        ssls: impl IntoIterator<Item = (&'a String, &'a SslConfig)>,
    ) -> Result<SniCerts, (String, String)> {
        let mut certs = SniCerts::default();
        for (id, ssl) in ssls.into_iter().filter(|(_, s)| s.status == 1) {
            let key = Arc::new(certified_key(ssl).map_err(|e| (id.clone(), e))?);
            for sni in &ssl.snis {
                let (map, name) = match sni.strip_prefix("*.") {
                    Some(parent) => (&mut certs.wildcard, parent),
                    None => (&mut certs.exact, sni.as_str()),
                };
                map.entry(name.to_string()).or_insert_with(|| key.clone());
            }
        }
        Ok(certs)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// The certificate for `name` (lowercase): an exact entry, else a wildcard one level up.
    pub fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.exact.get(name).cloned().or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent).cloned()
        })
    }
}

/// Picks the certificate from the config being served, per handshake.
struct SniResolver {
    state: Arc<DpState>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Without SNI (an IP address, an old client) there is nothing to choose by.
        let name = hello.server_name()?.to_ascii_lowercase();
        let config = self.state.config.load();
        let found = config.as_ref()?.tls.find(&name);
        if found.is_none() {
            tracing::debug!(sni = %name, "TLS: no certificate for this server name");
        }
        found
    }
}

/// The rustls config of the proxy's TLS listener.
pub fn server_config(state: Arc<DpState>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { state }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
