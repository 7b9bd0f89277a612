//! `ssls`: certificates the data planes present on their TLS listener, chosen by SNI (APISIX's
//! shape). The private key is write-only at the Admin API (see `secrets`); the snapshot carries
//! it to data planes, which keep it in memory (and in their 0600 snapshot cache).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{Result, ValidationError};
use super::secrets::check_not_marker;
use super::validate::{check_host, check_id, check_text};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SslConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key of the leaf certificate. Write-only.
    pub key: String,
    /// Server names this certificate answers for: exact (`api.example.com`) or one wildcard
    /// label (`*.example.com`, which matches `a.example.com` but not `example.com`).
    pub snis: Vec<String>,
    /// 1 enabled (default), 0 disabled.
    #[serde(default = "enabled")]
    pub status: u8,
    /// Only `server` (certificates presented to clients).
    #[serde(rename = "type", default = "server", skip_serializing_if = "is_server")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
}

fn enabled() -> u8 {
    1
}

fn server() -> String {
    "server".to_string()
}

fn is_server(s: &str) -> bool {
    s == "server"
}

/// Most server names on one certificate.
const MAX_SNIS: usize = 100;

impl SslConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.id {
            check_id(id).map_err(|e| e.under("id"))?;
        }
        check_text("desc", self.desc.as_deref())?;
        if !self.cert.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ValidationError::new(
                "cert",
                "must be a PEM certificate chain (-----BEGIN CERTIFICATE-----)",
            ));
        }
        check_not_marker("key", Some(&self.key))?;
        if !self.key.contains("PRIVATE KEY-----") {
            return Err(ValidationError::new("key", "must be a PEM private key"));
        }
        if self.snis.is_empty() || self.snis.len() > MAX_SNIS {
            return Err(ValidationError::new(
                "snis",
                format!("give 1-{MAX_SNIS} server names"),
            ));
        }
        for (i, sni) in self.snis.iter().enumerate() {
            let bare = sni.strip_prefix("*.").unwrap_or(sni);
            if bare.contains('*') || sni != &sni.to_ascii_lowercase() {
                return Err(ValidationError::new(
                    format!("snis.{i}"),
                    "a lowercase host name, optionally starting with one '*.' label",
                ));
            }
            check_host(bare).map_err(|e| e.under(&format!("snis.{i}")))?;
        }
        if self.status > 1 {
            return Err(ValidationError::new("status", "must be 0 or 1"));
        }
        if self.kind != "server" {
            return Err(ValidationError::new(
                "type",
                "only 'server' certificates are supported",
            ));
        }
        Ok(())
    }
}
