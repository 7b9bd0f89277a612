//! `jwt-auth`: the caller presents a JWT; the gateway finds the consumer by one claim (`key`, as
//! APISIX, or `iss`, Kong style) and verifies the token with that consumer's credential.
//!
//! Two shapes, as in APISIX: [`JwtAuthConfig`] on a route or service says where the token is;
//! [`JwtCredential`] under a consumer's `plugins` holds the key material. The algorithm is pinned
//! by the credential and never taken from the token, so `alg: none` or an HS256 token signed with
//! an RSA public key cannot pass.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

use super::PluginConfig;
use super::openid_connect::check_url;
use crate::model::error::{Result, ValidationError};
use crate::model::secrets::check_not_marker;

/// Route (or service) side: where to look for the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthConfig {
    /// Request header with the token, `Bearer <token>` or the bare token
    /// [default: `authorization`].
    #[serde(default = "default_header")]
    pub header: String,
    /// Query argument with the token [default: `jwt`].
    #[serde(default = "default_jwt")]
    pub query: String,
    /// Cookie with the token [default: `jwt`].
    #[serde(default = "default_jwt")]
    pub cookie: String,
    /// Remove the token (header, query argument and cookie) before the upstream sees the
    /// request [default: false].
    #[serde(default)]
    pub hide_credentials: bool,
    /// The claim that names the consumer's credential: `key` (APISIX) or e.g. `iss` (Kong)
    /// [default: `key`].
    #[serde(default = "default_key_claim")]
    pub key_claim_name: String,
    /// Accepted for APISIX compatibility (the guide sets it on the route) and ignored, as
    /// APISIX ignores it: the key material is always the consumer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Verify every token of this route against the keys published at this URL (by `kid`),
    /// instead of the consumer's credential. The consumer is the one whose credential
    /// `key` equals the key claim, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
}

fn default_header() -> String {
    "authorization".to_string()
}

fn default_jwt() -> String {
    "jwt".to_string()
}

fn default_key_claim() -> String {
    "key".to_string()
}

impl PluginConfig for JwtAuthConfig {
    fn validate(&self) -> Result<()> {
        if http::HeaderName::from_bytes(self.header.as_bytes()).is_err() {
            return Err(ValidationError::new("header", "not a valid header name"));
        }
        for (field, value) in [
            ("query", &self.query),
            ("cookie", &self.cookie),
            ("key_claim_name", &self.key_claim_name),
        ] {
            if value.is_empty() {
                return Err(ValidationError::new(field, "must not be empty"));
            }
        }
        if let Some(uri) = &self.jwks_uri {
            check_url("jwks_uri", uri)?;
        }
        Ok(())
    }
}

/// The algorithms a credential may pin (every one `jsonwebtoken` verifies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum JwtAlgorithm {
    #[default]
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    pub fn to_jwt(self) -> Algorithm {
        match self {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::HS384 => Algorithm::HS384,
            JwtAlgorithm::HS512 => Algorithm::HS512,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::RS384 => Algorithm::RS384,
            JwtAlgorithm::RS512 => Algorithm::RS512,
            JwtAlgorithm::PS256 => Algorithm::PS256,
            JwtAlgorithm::PS384 => Algorithm::PS384,
            JwtAlgorithm::PS512 => Algorithm::PS512,
            JwtAlgorithm::ES256 => Algorithm::ES256,
            JwtAlgorithm::ES384 => Algorithm::ES384,
            JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }

    fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }
}

/// Consumer side: one JWT credential (`consumers/<name>.plugins.jwt-auth`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtCredential {
    /// The credential's identifier, matched against the route's `key_claim_name` claim.
    /// Unique across consumers.
    pub key: String,
    /// HMAC secret (HS256/384/512). Write-only: the Admin API shows it redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Whether `secret` is base64 (standard alphabet) [default: false].
    #[serde(default)]
    pub base64_secret: bool,
    /// PEM public key for RS*, PS*, ES256/384 and EdDSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Accepted for APISIX compatibility (APISIX signed tokens with it); unused by Postern,
    /// write-only like `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// The only algorithm accepted from tokens of this credential [default: HS256].
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// Token lifetime in seconds for tokens this credential's issuer mints (APISIX's sign API
    /// used it); kept for compatibility. Use `max_lifetime` to have the gateway enforce one
    /// [default: 86400].
    #[serde(default = "default_exp")]
    pub exp: u64,
    /// Clock skew allowed on `exp` and `nbf`, seconds (APISIX: `lifetime_grace_period`)
    /// [default: 0].
    #[serde(default, alias = "lifetime_grace_period")]
    pub leeway: u64,
    /// When set, a token whose `exp` lies more than this many seconds in the future is
    /// refused (a long-lived token cannot be smuggled in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<u64>,
    /// When set, the token's `aud` must contain one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
    /// When set, the token's `iss` must be one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<Vec<String>>,
    /// Verify this consumer's tokens against the keys published at this URL (a JWKS, keys
    /// chosen by `kid`) instead of `secret`/`public_key`. Each key's algorithm comes from the
    /// JWK; `algorithm`, when not an HMAC one, must match it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
}

fn default_exp() -> u64 {
    86400
}

/// Longest credential key accepted.
const MAX_KEY_LEN: usize = 256;

impl JwtCredential {
    /// The verification key, decoded once (the data plane keeps it per snapshot).
    /// `None` for a `jwks_uri` credential (its keys are fetched).
    pub fn decoding_key(&self) -> Result<Option<DecodingKey>> {
        if self.jwks_uri.is_some() {
            return Ok(None);
        }
        self.static_key().map(Some)
    }

    fn static_key(&self) -> Result<DecodingKey> {
        let alg = self.algorithm;
        if alg.is_hmac() {
            let Some(secret) = self.secret.as_deref().filter(|s| !s.is_empty()) else {
                return Err(ValidationError::new(
                    "secret",
                    format!("{alg:?} needs a non-empty secret"),
                ));
            };
            return if self.base64_secret {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(secret)
                    .map_err(|_| {
                        ValidationError::new("secret", "base64_secret is set but it is not base64")
                    })?;
                DecodingKey::from_secret(&bytes)
                    .map_err(|_| ValidationError::new("secret", "decodes to nothing"))
            } else {
                DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|_| ValidationError::new("secret", "must not be empty"))
            };
        }
        let Some(pem) = self.public_key.as_deref() else {
            return Err(ValidationError::new(
                "public_key",
                format!("{alg:?} needs a PEM public_key"),
            ));
        };
        if pem.contains("PRIVATE KEY") {
            // Never echo it: it is a secret pasted into the wrong field.
            return Err(ValidationError::new(
                "public_key",
                "this is a private key; give the public key (-----BEGIN PUBLIC KEY-----)",
            ));
        }
        let bad = |what: &str| {
            ValidationError::new(
                "public_key",
                format!("not a valid PEM {what} public key for {alg:?}"),
            )
        };
        let key = match alg {
            JwtAlgorithm::RS256
            | JwtAlgorithm::RS384
            | JwtAlgorithm::RS512
            | JwtAlgorithm::PS256
            | JwtAlgorithm::PS384
            | JwtAlgorithm::PS512 => {
                DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| bad("RSA"))?
            }
            JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => {
                let key = DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|_| bad("EC"))?;
                // An uncompressed point: 65 bytes on P-256, 97 on P-384.
                let want = if alg == JwtAlgorithm::ES256 { 65 } else { 97 };
                let len = key.try_get_as_bytes().map(<[u8]>::len).unwrap_or(0);
                if len != want {
                    let curve = if alg == JwtAlgorithm::ES256 {
                        "P-256"
                    } else {
                        "P-384"
                    };
                    return Err(ValidationError::new(
                        "public_key",
                        format!("{alg:?} needs a {curve} key"),
                    ));
                }
                key
            }
            JwtAlgorithm::EdDSA => {
                let key = DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|_| bad("Ed25519"))?;
                if key.try_get_as_bytes().map(<[u8]>::len).unwrap_or(0) != 32 {
                    return Err(bad("Ed25519"));
                }
                key
            }
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => {
                unreachable!("handled above")
            }
        };
        Ok(key)
    }
}

impl PluginConfig for JwtCredential {
    fn validate(&self) -> Result<()> {
        if self.key.is_empty() || self.key.len() > MAX_KEY_LEN {
            return Err(ValidationError::new(
                "key",
                format!("must be 1-{MAX_KEY_LEN} bytes"),
            ));
        }
        check_not_marker("secret", self.secret.as_deref())?;
        check_not_marker("private_key", self.private_key.as_deref())?;
        if self.exp == 0 {
            return Err(ValidationError::new("exp", "must be at least 1 second"));
        }
        if self.max_lifetime == Some(0) {
            return Err(ValidationError::new(
                "max_lifetime",
                "must be at least 1 second",
            ));
        }
        if let Some(uri) = &self.jwks_uri {
            check_url("jwks_uri", uri)?;
            for (field, set) in [
                ("secret", self.secret.is_some()),
                ("public_key", self.public_key.is_some()),
            ] {
                if set {
                    return Err(ValidationError::new(
                        field,
                        "the keys come from jwks_uri; leave this out",
                    ));
                }
            }
        }
        if !self.algorithm.is_hmac() && self.secret.is_some() {
            return Err(ValidationError::new(
                "secret",
                format!(
                    "{:?} verifies with public_key; a secret would be unused",
                    self.algorithm
                ),
            ));
        }
        for (field, list) in [("audience", &self.audience), ("issuer", &self.issuer)] {
            if list.as_ref().is_some_and(|l| l.is_empty()) {
                return Err(ValidationError::new(
                    field,
                    "give at least one value, or leave the field out",
                ));
            }
        }
        self.decoding_key().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::plugins::parse;

    #[test]
    fn route_config_defaults_and_the_guides_shape() {
        let c: JwtAuthConfig = parse(&json!({})).unwrap();
        assert_eq!(
            (c.header.as_str(), c.query.as_str(), c.cookie.as_str()),
            ("authorization", "jwt", "jwt")
        );
        assert_eq!(c.key_claim_name, "key");
        assert!(!c.hide_credentials);
        // As written in the guide: a `key` on the route is accepted.
        let c: JwtAuthConfig = parse(&json!({"key": "user-auth-key", "header": "Authorization",
            "query": "token", "cookie": "jwt_token"}))
        .unwrap();
        assert_eq!(c.cookie, "jwt_token");
        assert_eq!(
            parse::<JwtAuthConfig>(&json!({"header": "a b"}))
                .unwrap_err()
                .field,
            "header"
        );
        assert_eq!(
            parse::<JwtAuthConfig>(&json!({"colour": 1}))
                .unwrap_err()
                .field,
            "colour"
        );
    }

    #[test]
    fn credentials_are_checked_without_echoing_secrets() {
        let ok = [
            json!({"key": "k", "secret": "s3cret"}),
            json!({"key": "k", "secret": "c2VjcmV0", "base64_secret": true, "algorithm": "HS512"}),
            json!({"key": "mobile-app-key", "secret": "mobile-app-secret-256bit-key-here",
                   "algorithm": "HS256", "exp": 86400, "base64_secret": false}),
            json!({"key": "k", "secret": "s", "lifetime_grace_period": 5, "max_lifetime": 60}),
            json!({"key": "k", "jwks_uri": "https://idp.example/jwks"}),
            json!({"key": "k", "jwks_uri": "http://127.0.0.1:8080/jwks", "algorithm": "ES256"}),
        ];
        for c in ok {
            parse::<JwtCredential>(&c).unwrap_or_else(|e| panic!("{c}: {e}"));
        }
        let bad = [
            (json!({"secret": "s"}), "key"),
            (json!({"key": "", "secret": "s"}), "key"),
            (json!({"key": "k"}), "secret"),
            (json!({"key": "k", "secret": ""}), "secret"),
            (
                json!({"key": "k", "secret": "*not base64*", "base64_secret": true}),
                "secret",
            ),
            (json!({"key": "k", "secret": "<redacted>"}), "secret"),
            (json!({"key": "k", "algorithm": "RS256"}), "public_key"),
            (json!({"key": "k", "algorithm": "none"}), "algorithm"),
            (json!({"key": "k", "algorithm": "ES512"}), "algorithm"),
            (
                // The guide's key, as printed (truncated): not a key.
                json!({"key": "k", "algorithm": "RS256", "public_key":
                    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA...\n-----END PUBLIC KEY-----\n"}),
                "public_key",
            ),
            (
                json!({"key": "k", "algorithm": "RS256", "public_key":
                    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
                "public_key",
            ),
            (json!({"key": "k", "secret": "s", "exp": 0}), "exp"),
            (
                json!({"key": "k", "secret": "s", "max_lifetime": 0}),
                "max_lifetime",
            ),
            (
                json!({"key": "k", "secret": "s", "audience": []}),
                "audience",
            ),
            (json!({"key": "k", "secret": "s", "colour": 1}), "colour"),
            (
                json!({"key": "k", "jwks_uri": "ftp://idp/jwks"}),
                "jwks_uri",
            ),
            (json!({"key": "k", "jwks_uri": "/jwks"}), "jwks_uri"),
            (
                json!({"key": "k", "jwks_uri": "http://idp/jwks", "secret": "s"}),
                "secret",
            ),
        ];
        for (c, field) in bad {
            let e = parse::<JwtCredential>(&c).expect_err(&c.to_string());
            assert_eq!(e.field, field, "{c}: {e}");
            if let Some(secret) = c.get("secret").and_then(|s| s.as_str())
                && secret.len() > 3
                && secret != crate::model::secrets::REDACTED
            {
                assert!(!e.message.contains(secret), "{e} echoes the secret");
            }
        }
    }
}
