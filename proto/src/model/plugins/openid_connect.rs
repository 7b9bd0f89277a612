//! `openid-connect`, bearer mode: the caller presents an access token issued by an OpenID
//! Connect provider; the gateway verifies it (a JWT against the provider's JWKS, an opaque
//! token by RFC 7662 introspection) and passes chosen claims to the upstream as headers.
//!
//! Both shapes are accepted: Kong's (`issuer`, `auth_methods`, `scopes_required`,
//! `upstream_headers_claims`/`_names`, `cache_ttl`…) and APISIX's (`discovery`,
//! `bearer_only`, `use_jwks`, `required_scopes`…). Fields of the browser flows
//! (`redirect_uri`, `auth_methods` other than bearer, `scope`) are accepted and unused: Postern
//! only verifies bearer tokens, and a request without one gets 401, never a redirect.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::PluginConfig;
use crate::model::error::{Result, ValidationError};
use crate::model::secrets::check_not_marker;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenIdConnectConfig {
    /// The provider's issuer (Kong); the discovery document is
    /// `<issuer>/.well-known/openid-configuration`. A discovery URL is accepted too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The discovery document's URL (APISIX); wins over `issuer` for finding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
    /// This gateway's client at the provider (for introspection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Write-only: the Admin API shows it redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// How the client authenticates to the provider's endpoints [default:
    /// `client_secret_basic`].
    #[serde(default)]
    pub token_endpoint_auth_method: ClientAuthMethod,
    /// APISIX: the same for the introspection endpoint only (overrides the one above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint_auth_method: Option<ClientAuthMethod>,
    /// RFC 7662 endpoint for opaque tokens [default: the discovery document's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint: Option<String>,
    /// Every one of these must be in the token's `scope` (or `scp`), else 403. (Kong reads
    /// its list as "any of"; Postern requires all, as APISIX's `required_scopes`.)
    #[serde(
        default,
        alias = "required_scopes",
        skip_serializing_if = "Option::is_none"
    )]
    pub scopes_required: Option<Vec<String>>,
    /// When set, the token's `aud` must contain one of these (Kong: `audience_required`).
    #[serde(
        default,
        alias = "audience_required",
        skip_serializing_if = "Option::is_none"
    )]
    pub audience: Option<Vec<String>>,
    /// Seconds an introspection result is reused, never past the token's `exp`; 0: not
    /// cached [default: 30].
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: u64,
    /// Claims (dotted paths into nested objects, e.g. `realm_access.roles`) sent to the
    /// upstream in the header of the same position in `upstream_headers_names`; arrays are
    /// joined with commas. The client's own copies of those headers are always removed.
    #[serde(default)]
    pub upstream_headers_claims: Vec<String>,
    #[serde(default)]
    pub upstream_headers_names: Vec<String>,
    /// Verify JWT access tokens locally with the provider's JWKS; when false every token
    /// is introspected [default: true].
    #[serde(default = "yes")]
    pub use_jwks: bool,
    /// Remove the `Authorization` header before the upstream [default: false].
    #[serde(default)]
    pub hide_credentials: bool,
    /// Seconds to wait for the provider (discovery, JWKS, introspection) [default: 3].
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Accepted, unused: Postern always runs in bearer mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_only: Option<bool>,
    /// Kong's flows; accepted (each must be one Kong knows), unused: see the module doc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_methods: Option<Vec<String>>,
    /// Accepted (Kong: a list, APISIX: one URL), unused in bearer mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<Value>,
    /// Scopes the browser flows would ask for (APISIX `scope`, Kong `scopes`); unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Claims whose value is a consumer's `username` (Kong; the first one the token has):
    /// the caller is then that consumer (X-Consumer-Username, group, consumer revocations,
    /// `consumer-restriction`). Unset: the caller is known by `sub` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_claim: Option<Vec<String>>,
    /// With `consumer_claim`: let a token that names no consumer through, known by `sub`,
    /// instead of 401 [default: false].
    #[serde(default)]
    pub consumer_optional: bool,
    /// Realm of the `WWW-Authenticate` challenge [default: `postern`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

/// Kong's `auth_methods` values.
const AUTH_METHODS: &[&str] = &[
    "password",
    "client_credentials",
    "authorization_code",
    "bearer",
    "introspection",
    "userinfo",
    "kong_oauth2",
    "refresh_token",
    "session",
];

fn default_cache_ttl() -> u64 {
    30
}

fn default_timeout() -> u64 {
    3
}

fn yes() -> bool {
    true
}

const MAX_CACHE_TTL: u64 = 86400;

/// An absolute `http://` or `https://` URL with a host.
pub fn check_url(field: &str, value: &str) -> Result<()> {
    let bad = || ValidationError::new(field, "must be an absolute http:// or https:// URL");
    let uri: http::Uri = value.parse().map_err(|_| bad())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(h)) if !h.is_empty() => Ok(()),
        _ => Err(bad()),
    }
}

impl OpenIdConnectConfig {
    /// Where the discovery document is.
    pub fn discovery_url(&self) -> Option<String> {
        if let Some(d) = &self.discovery {
            return Some(d.clone());
        }
        let issuer = self.issuer.as_deref()?;
        let base = issuer
            .trim_end_matches('/')
            .trim_end_matches("/.well-known/openid-configuration");
        Some(format!("{base}/.well-known/openid-configuration"))
    }

    pub fn introspection_auth(&self) -> ClientAuthMethod {
        self.introspection_endpoint_auth_method
            .unwrap_or(self.token_endpoint_auth_method)
    }
}

impl PluginConfig for OpenIdConnectConfig {
    fn validate(&self) -> Result<()> {
        if self.issuer.is_none() && self.discovery.is_none() {
            return Err(ValidationError::new(
                "issuer",
                "give the provider's issuer (or its discovery URL in `discovery`)",
            ));
        }
        for (field, url) in [
            ("issuer", &self.issuer),
            ("discovery", &self.discovery),
            ("introspection_endpoint", &self.introspection_endpoint),
        ] {
            if let Some(u) = url {
                check_url(field, u)?;
            }
        }
        match &self.redirect_uri {
            None => {}
            Some(Value::String(u)) => check_url("redirect_uri", u)?,
            Some(Value::Array(list)) => {
                for u in list {
                    let u = u.as_str().ok_or_else(|| {
                        ValidationError::new("redirect_uri", "must be a URL or a list of URLs")
                    })?;
                    check_url("redirect_uri", u)?;
                }
            }
            Some(_) => {
                return Err(ValidationError::new(
                    "redirect_uri",
                    "must be a URL or a list of URLs",
                ));
            }
        }
        check_not_marker("client_secret", self.client_secret.as_deref())?;
        if self.client_id.as_deref() == Some("") {
            return Err(ValidationError::new("client_id", "must not be empty"));
        }
        if self.introspection_endpoint.is_some() {
            if self.client_id.is_none() {
                return Err(ValidationError::new(
                    "client_id",
                    "introspection_endpoint needs the gateway's client_id",
                ));
            }
            if self.client_secret.as_deref().unwrap_or("").is_empty() {
                return Err(ValidationError::new(
                    "client_secret",
                    "introspection_endpoint needs the gateway's client_secret",
                ));
            }
        }
        if let Some(m) = self
            .auth_methods
            .iter()
            .flatten()
            .find(|m| !AUTH_METHODS.contains(&m.as_str()))
        {
            return Err(ValidationError::new(
                "auth_methods",
                format!("unknown method '{m}' (known: {})", AUTH_METHODS.join(", ")),
            ));
        }
        for (field, list) in [
            ("scopes_required", &self.scopes_required),
            ("audience", &self.audience),
            ("consumer_claim", &self.consumer_claim),
        ] {
            if let Some(list) = list {
                if list.is_empty() {
                    return Err(ValidationError::new(
                        field,
                        "give at least one value, or leave the field out",
                    ));
                }
                if list.iter().any(|s| s.is_empty() || s.contains(' ')) {
                    return Err(ValidationError::new(
                        field,
                        "values must be non-empty and without spaces",
                    ));
                }
            }
        }
        if self.cache_ttl > MAX_CACHE_TTL {
            return Err(ValidationError::new(
                "cache_ttl",
                format!("at most {MAX_CACHE_TTL} seconds"),
            ));
        }
        if !(1..=60).contains(&self.timeout) {
            return Err(ValidationError::new("timeout", "1 to 60 seconds"));
        }
        if self.upstream_headers_claims.len() != self.upstream_headers_names.len() {
            return Err(ValidationError::new(
                "upstream_headers_names",
                format!(
                    "needs one name per claim of upstream_headers_claims ({} claims, {} names)",
                    self.upstream_headers_claims.len(),
                    self.upstream_headers_names.len()
                ),
            ));
        }
        if self
            .upstream_headers_claims
            .iter()
            .any(|c| c.is_empty() || c.split('.').any(str::is_empty))
        {
            return Err(ValidationError::new(
                "upstream_headers_claims",
                "claims are names or dotted paths (realm_access.roles)",
            ));
        }
        for name in &self.upstream_headers_names {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ValidationError::new(
                    "upstream_headers_names",
                    format!("'{name}' is not a valid header name"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::plugins::parse;

    /// The guide's Kong config, as written.
    fn guide() -> Value {
        json!({
            "issuer": "https://auth.example.com/realms/production",
            "client_id": "api-gateway",
            "client_secret": "gateway-secret-value",
            "redirect_uri": "https://api.example.com/callback",
            "auth_methods": ["authorization_code", "client_credentials", "password"],
            "token_endpoint_auth_method": "client_secret_post",
            "scopes_required": ["openid", "profile", "api:read"],
            "cache_ttl": 300,
            "introspection_endpoint": "https://auth.example.com/realms/production/protocol/openid-connect/token/introspect",
            "upstream_headers_claims": ["sub", "email", "realm_access.roles"],
            "upstream_headers_names": ["X-User-ID", "X-User-Email", "X-User-Roles"]
        })
    }

    #[test]
    fn the_guides_kong_config_and_apisixs_shape_are_accepted() {
        let c: OpenIdConnectConfig = parse(&guide()).unwrap();
        assert_eq!(
            c.discovery_url().unwrap(),
            "https://auth.example.com/realms/production/.well-known/openid-configuration"
        );
        assert_eq!(c.introspection_auth(), ClientAuthMethod::ClientSecretPost);
        assert_eq!(c.cache_ttl, 300);
        let apisix = json!({
            "discovery": "http://idp:8080/realms/r/.well-known/openid-configuration",
            "bearer_only": true, "use_jwks": true, "client_id": "gw", "client_secret": "s",
            "introspection_endpoint_auth_method": "client_secret_basic",
            "required_scopes": ["api:read"], "scope": "openid profile", "realm": "r",
            "redirect_uri": "http://gw/callback", "timeout": 5
        });
        let c: OpenIdConnectConfig = parse(&apisix).unwrap();
        assert_eq!(c.scopes_required.unwrap(), ["api:read"]);
        assert_eq!(c.cache_ttl, 30);
        // Kong's list form of redirect_uri.
        let mut kong = guide();
        kong["redirect_uri"] = json!(["https://api.example.com/cb"]);
        parse::<OpenIdConnectConfig>(&kong).unwrap();
    }

    #[test]
    fn bad_configs_name_the_field() {
        let with = |field: &str, v: Value| {
            let mut c = guide();
            if v.is_null() {
                c.as_object_mut().unwrap().remove(field);
            } else {
                c[field] = v;
            }
            c
        };
        let cases = [
            (with("issuer", Value::Null), "issuer"),
            (with("issuer", json!("auth.example.com")), "issuer"),
            (
                with("introspection_endpoint", json!("ftp://x/y")),
                "introspection_endpoint",
            ),
            (with("client_secret", Value::Null), "client_secret"),
            (with("client_secret", json!("<redacted>")), "client_secret"),
            (with("client_id", Value::Null), "client_id"),
            (with("auth_methods", json!(["magic"])), "auth_methods"),
            (
                with("token_endpoint_auth_method", json!("private_key_jwt")),
                "token_endpoint_auth_method",
            ),
            (with("scopes_required", json!([])), "scopes_required"),
            (with("scopes_required", json!(["a b"])), "scopes_required"),
            (with("cache_ttl", json!(-1)), "cache_ttl"),
            (with("cache_ttl", json!(100000)), "cache_ttl"),
            (
                with("upstream_headers_names", json!(["X-User-ID"])),
                "upstream_headers_names",
            ),
            (
                with(
                    "upstream_headers_names",
                    json!(["X-User-ID", "X Email", "X-R"]),
                ),
                "upstream_headers_names",
            ),
            (
                with(
                    "upstream_headers_claims",
                    json!(["sub", "email", "realm_access."]),
                ),
                "upstream_headers_claims",
            ),
            (with("redirect_uri", json!(3)), "redirect_uri"),
            (with("timeout", json!(0)), "timeout"),
            (with("consumer_claim", json!([])), "consumer_claim"),
            (with("colour", json!(1)), "colour"),
        ];
        for (c, field) in cases {
            let e = parse::<OpenIdConnectConfig>(&c).expect_err(&c.to_string());
            assert_eq!(e.field, field, "{c}: {e}");
            assert!(!e.message.contains("gateway-secret-value"), "{e}");
        }
    }
}
