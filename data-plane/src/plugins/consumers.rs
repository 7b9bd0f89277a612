//! The consumer index and what the auth plugins share.
//!
//! The index maps each credential to its consumer, with key material decoded once per snapshot
//! (PEM parsed, base64 secrets decoded, validation rules set). The auth plugins of a snapshot
//! hold that snapshot's index, so deleting a consumer or rotating a key takes effect for every
//! request matched against the next snapshot: there is no cache to outlive it. The snapshot's
//! `revocations` (a JWT's `jti`, a consumer, a credential) are indexed here too. The one cache
//! kept here, of JWTs already verified with a static key, belongs to the index and so ends
//! with its snapshot as well.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{COOKIE, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use jsonwebtoken::{DecodingKey, Validation};
use postern_proto::model::plugins::jwt_auth::JwtAlgorithm;
use postern_proto::model::{ConfigSet, RevocationType, ValidationError};
use sha2::{Digest, Sha256};

use super::jwks::JwksSource;
use super::{PluginResponse, RequestCtx};
use crate::router::vars::decode;

/// Hashed with foldhash (seeded per process), as the router's tables are: the entries come from
/// the config, so requests can only look keys up, never add colliding ones; SipHash cost a
/// jwt-auth request about 270 instructions for one lookup.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One consumer, as the auth plugins report it.
#[derive(Debug)]
pub struct Consumer {
    pub username: Arc<str>,
    pub group: Option<Arc<str>>,
}

/// A jwt-auth credential, ready to verify tokens.
pub struct JwtKey {
    pub consumer: Arc<Consumer>,
    /// The credential's `key` (X-Credential-Identifier).
    pub key: Arc<str>,
    pub source: KeySource,
    /// The credential's algorithm only (for a JWKS key: the key's own); `exp` required; `nbf` checked; leeway, audience and
    /// issuer as configured.
    pub validation: Validation,
    pub max_lifetime: Option<u64>,
}

/// Where a jwt-auth credential's verification key comes from.
pub enum KeySource {
    Static(DecodingKey),
    /// Fetched from `jwks_uri`, chosen by the token's `kid`; `pin`: the credential's
    /// (non-HMAC) `algorithm`, which the key's must equal too.
    Jwks {
        source: Arc<JwksSource>,
        pin: Option<jsonwebtoken::Algorithm>,
    },
}

/// A key-auth credential.
pub struct ApiKey {
    pub consumer: Arc<Consumer>,
    /// Not the key (a secret) but `<username>/key-auth`.
    pub id: Arc<str>,
}

/// Every credential of one snapshot.
#[derive(Default)]
pub struct Consumers {
    jwt: HashMap<String, JwtKey>,
    /// By SHA-256 of the key: the lookup compares digests, never the secret itself.
    api_keys: HashMap<[u8; 32], ApiKey>,
    /// Every consumer by username (openid-connect's `consumer_claim`).
    by_username: HashMap<String, Arc<Consumer>>,
    /// Revoked values by type, each with its expiry (`None`: until deleted).
    revoked: HashMap<(RevocationType, String), Option<u64>>,
    /// jwt-auth tokens verified with a static key, by their text (see [`VerifiedJwt`]). Also
    /// foldhash: only tokens whose signature checked out are kept, and the map is emptied when
    /// full, so crafted keys cannot build up in it.
    verified_jwts: Mutex<HashMap<Box<str>, VerifiedJwt>>,
}

/// Most verified JWTs remembered (the map is emptied when full), and the longest remembered.
const VERIFIED_JWTS_MAX: usize = 4096;
const VERIFIED_JWT_MAX_LEN: usize = 2048;

/// What jwt-auth needs of a token's claims after its signature was checked.
#[derive(Debug, Default)]
pub struct JwtClaims {
    pub exp: Option<u64>,
    pub jti: Option<String>,
    pub sub: Option<String>,
}

impl JwtClaims {
    pub fn of(claims: &serde_json::Value) -> JwtClaims {
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        JwtClaims {
            exp: claims.get("exp").and_then(serde_json::Value::as_u64),
            jti: text("jti"),
            sub: text("sub"),
        }
    }
}

/// A token whose signature, algorithm, audience, issuer and `nbf` were checked with a static
/// key: the same token again (a client's next request) skips the signature and the JSON.
/// `exp` and the revocations are still checked on every request. (Envoy's jwt_authn keeps such
/// a cache too.)
#[derive(Clone)]
pub struct VerifiedJwt {
    /// The claim that named the credential (a route's `key_claim_name`), and its value.
    pub key_claim: Arc<str>,
    pub credential: Arc<str>,
    pub claims: Arc<JwtClaims>,
}

impl Consumers {
    /// Builds the index; fails naming the consumer whose credential cannot be used.
    pub fn build(set: &ConfigSet) -> Result<Consumers, (String, ValidationError)> {
        let mut index = Consumers::default();
        for (username, c) in &set.consumers {
            let fail = |e: ValidationError| (username.clone(), e);
            let consumer = Arc::new(Consumer {
                username: username.as_str().into(),
                group: c.group_id.as_deref().map(Arc::from),
            });
            index.by_username.insert(username.clone(), consumer.clone());
            if let Some(cred) = c.jwt_credential() {
                let cred = cred.map_err(|e| fail(e.under("plugins.jwt-auth")))?;
                let source = match cred
                    .decoding_key()
                    .map_err(|e| fail(e.under("plugins.jwt-auth")))?
                {
                    Some(key) => KeySource::Static(key),
                    None => KeySource::Jwks {
                        source: JwksSource::shared(cred.jwks_uri.as_deref().unwrap_or_default()),
                        pin: (!matches!(
                            cred.algorithm,
                            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
                        ))
                        .then(|| cred.algorithm.to_jwt()),
                    },
                };
                let mut validation = Validation::new(cred.algorithm.to_jwt());
                validation.leeway = cred.leeway;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                let mut required = vec!["exp"];
                match &cred.audience {
                    Some(aud) => {
                        validation.set_audience(aud);
                        required.push("aud");
                    }
                    None => validation.validate_aud = false,
                }
                if let Some(iss) = &cred.issuer {
                    validation.set_issuer(iss);
                    required.push("iss");
                }
                validation.set_required_spec_claims(&required);
                index.jwt.insert(
                    cred.key.clone(),
                    JwtKey {
                        consumer: consumer.clone(),
                        key: cred.key.as_str().into(),
                        source,
                        validation,
                        max_lifetime: cred.max_lifetime,
                    },
                );
            }
            if let Some(cred) = c.key_credential() {
                let cred = cred.map_err(|e| fail(e.under("plugins.key-auth")))?;
                index.api_keys.insert(
                    digest(&cred.key),
                    ApiKey {
                        consumer: consumer.clone(),
                        id: format!("{username}/key-auth").into(),
                    },
                );
            }
        }
        for r in set.revocations.values() {
            let slot = index
                .revoked
                .entry((r.kind, r.value.clone()))
                .or_insert(r.expires_at);
            // Two revocations of one value: the longer one holds.
            *slot = match (*slot, r.expires_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        Ok(index)
    }

    /// Whether `value` is revoked at `now` (unix seconds).
    pub fn is_revoked(&self, kind: RevocationType, value: &str, now: u64) -> bool {
        if self.revoked.is_empty() {
            return false;
        }
        self.revoked
            .get(&(kind, value.to_string()))
            .is_some_and(|until| until.is_none_or(|t| now < t))
    }

    /// Whether the consumer or this credential of it is revoked.
    pub fn is_consumer_revoked(&self, consumer: &Consumer, credential_id: &str, now: u64) -> bool {
        self.is_revoked(RevocationType::Consumer, &consumer.username, now)
            || self.is_revoked(RevocationType::Credential, credential_id, now)
    }

    pub fn consumer(&self, username: &str) -> Option<&Arc<Consumer>> {
        self.by_username.get(username)
    }

    pub fn jwt(&self, key: &str) -> Option<&JwtKey> {
        self.jwt.get(key)
    }

    /// A token verified before with a static key (see [`VerifiedJwt`]).
    pub fn verified_jwt(&self, token: &str) -> Option<VerifiedJwt> {
        let map = self.verified_jwts.lock().unwrap_or_else(|e| e.into_inner());
        map.get(token).cloned()
    }

    pub fn remember_jwt(&self, token: &str, verified: VerifiedJwt) {
        if token.len() > VERIFIED_JWT_MAX_LEN {
            return;
        }
        let mut map = self.verified_jwts.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= VERIFIED_JWTS_MAX {
            map.clear();
        }
        map.insert(token.into(), verified);
    }

    pub fn api_key(&self, presented: &str) -> Option<&ApiKey> {
        self.api_keys.get(&digest(presented))
    }

    pub fn len(&self) -> usize {
        self.jwt.len() + self.api_keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Records who the caller is, for later plugins and the X-Consumer-* headers.
pub fn identify(ctx: &mut RequestCtx, consumer: &Consumer, credential_id: &Arc<str>) {
    ctx.consumer_name = Some(consumer.username.clone());
    ctx.consumer_group = consumer.group.clone();
    ctx.credential_id = Some(credential_id.clone());
}

/// `{"message": …}` with `status`, APISIX's shape for auth failures.
pub fn message(status: StatusCode, message: &str) -> PluginResponse {
    let body = serde_json::json!({ "message": message }).to_string();
    PluginResponse::json(status, Bytes::from(body))
}

/// 401 with a `WWW-Authenticate` challenge (`challenge` is e.g. `Bearer realm="postern"`).
pub fn unauthorized(challenge: &'static str, msg: &str) -> PluginResponse {
    let mut r = message(StatusCode::UNAUTHORIZED, msg);
    r.headers
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    r
}

/// The request target without query argument `name` (every occurrence).
pub fn remove_query_arg(parts: &mut http::request::Parts, name: &str) {
    let Some(query) = parts.uri.query() else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            decode(key) != name
        })
        .collect();
    let path = parts.uri.path();
    let pq = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = pq.parse().ok();
    if let Ok(u) = http::Uri::from_parts(uri) {
        parts.uri = u;
    }
}

/// The `Cookie` headers without cookie `name`; a header left empty is removed.
pub fn remove_cookie(parts: &mut http::request::Parts, name: &str) {
    if !parts.headers.contains_key(COOKIE) {
        return;
    }
    let values: Vec<String> = parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .map(str::trim)
                .filter(|c| c.split_once('=').is_none_or(|(k, _)| k.trim() != name))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|v| !v.is_empty())
        .collect();
    parts.headers.remove(COOKIE);
    for v in values {
        if let Ok(v) = HeaderValue::from_str(&v) {
            parts.headers.append(COOKIE, v);
        }
    }
}

/// A request that presents two different credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflicting;

/// The one credential a request presents, from any of its places. `Err` when the places
/// disagree (or one place holds several): the gateway and the upstream might read different
/// ones, so the request is refused rather than guessed at.
pub fn single<'a>(
    found: impl IntoIterator<Item = std::borrow::Cow<'a, str>>,
) -> Result<Option<std::borrow::Cow<'a, str>>, Conflicting> {
    let mut one: Option<std::borrow::Cow<'a, str>> = None;
    for v in found {
        match &one {
            None => one = Some(v),
            Some(prev) if *prev == v => {}
            Some(_) => return Err(Conflicting),
        }
    }
    Ok(one)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn parts(uri: &str, cookies: &[&str]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for c in cookies {
            b = b.header(COOKIE, *c);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn query_args_and_cookies_are_removed_exactly() {
        let cases = [
            ("/a?jwt=x", "/a"),
            ("/a?b=1&jwt=x&c=2", "/a?b=1&c=2"),
            ("/a?jwt=x&jwt=y", "/a"),
            ("/a?%6Awt=x&jwtx=1", "/a?jwtx=1"),
            ("/a", "/a"),
        ];
        for (uri, want) in cases {
            let mut p = parts(uri, &[]);
            remove_query_arg(&mut p, "jwt");
            assert_eq!(p.uri.to_string(), want, "{uri}");
        }
        let mut p = parts("/", &["a=1; jwt=t; b=2", "jwt=u"]);
        remove_cookie(&mut p, "jwt");
        let left: Vec<_> = p.headers.get_all(COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2"]);
    }

    #[test]
    fn one_credential_or_a_conflict() {
        let c = |v: &[&'static str]| single(v.iter().map(|s| Cow::Borrowed(*s)));
        assert_eq!(c(&[]), Ok(None));
        assert_eq!(c(&["a"]), Ok(Some("a".into())));
        assert_eq!(c(&["a", "a"]), Ok(Some("a".into())));
        assert_eq!(c(&["a", "b"]), Err(Conflicting));
    }
}
