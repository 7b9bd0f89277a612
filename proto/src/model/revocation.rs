//! Revocations: refuse a JWT by its `jti`, or every request of a consumer or of one credential,
//! until an optional expiry. They reach data planes with the next snapshot, like any change, so
//! a revocation takes effect as fast as a config change does (no token cache to outlive it).

use serde::{Deserialize, Serialize};

use super::error::{Result, ValidationError};
use super::validate::{check_id, check_text};

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationType {
    /// A JWT's `jti` claim (jwt-auth).
    Jti,
    /// A consumer's username: every credential of it.
    Consumer,
    /// One credential: a jwt-auth `key`, or `<username>/key-auth` (the X-Credential-Identifier).
    Credential,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: RevocationType,
    /// The jti, username or credential identifier.
    pub value: String,
    /// Unix seconds after which the revocation no longer applies (for a jti, the token's `exp`
    /// is enough); absent = until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
}

/// Longest value accepted (a jti or credential id).
const MAX_VALUE_LEN: usize = 256;

impl RevocationConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.id {
            check_id(id).map_err(|e| e.under("id"))?;
        }
        check_text("desc", self.desc.as_deref())?;
        if self.value.is_empty() || self.value.len() > MAX_VALUE_LEN {
            return Err(ValidationError::new(
                "value",
                format!("must be 1-{MAX_VALUE_LEN} bytes"),
            ));
        }
        Ok(())
    }
}
