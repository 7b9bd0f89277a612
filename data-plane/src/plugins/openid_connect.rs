//! `openid-connect`, bearer mode (config: `postern_proto::model::plugins::openid_connect`).
//!
//! For each request:
//! 1. the client's own copies of the `upstream_headers_names` headers are removed;
//! 2. the token is read from `Authorization: Bearer` (none → 401 with a challenge);
//! 3. the provider's discovery document is fetched once and cached (per URL, for the whole
//!    process, like the JWKS);
//! 4. a JWT (three segments, a JSON header) is verified against the provider's JWKS (see
//!    `jwks.rs`: key by `kid`, the key's algorithm only, `iss` = the document's issuer, `exp`
//!    required, `aud` when `audience` is set); any other token, or every token when `use_jwks`
//!    is false, is introspected (RFC 7662) with the client's credentials, the answer cached
//!    `cache_ttl` seconds but never past the token's `exp`;
//! 5. revocations (the token's `jti`, a `credential` revocation of its `sub`) → 401, even for
//!    a cached answer;
//! 6. every `scopes_required` scope must be in `scope`/`scp`, else 403;
//! 7. the chosen claims go to the upstream as headers; the caller is the consumer named by
//!    `consumer_claim` when set (a token naming none → 401 unless `consumer_optional`), and is
//!    identified by `sub` (X-Credential-Identifier).
//!
//! A provider that cannot be reached (discovery, JWKS, introspection) with nothing cached gives
//! 503: the token may be good, so neither 401 nor 403.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::{Algorithm, Validation};
use postern_proto::model::plugins::openid_connect::{ClientAuthMethod, OpenIdConnectConfig};
use postern_proto::model::plugins::parse;
use postern_proto::model::{RevocationType, ValidationError};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::consumers::{Consumers, identify, message};
use super::idp_client::{self, ClientAuth};
use super::jwks::{self, JwksSource, Lookup};
use super::jwt_auth::MAX_TOKEN_LEN;
use super::{Flow, Plugin, PluginResponse, RequestCtx, StateScope, Step};

const NAME: &str = "openid-connect";
/// Bounds on how long a discovery document is reused (its `Cache-Control: max-age`, else
/// an hour).
const DISCOVERY_MIN_AGE: Duration = Duration::from_secs(60);
const DISCOVERY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const DISCOVERY_DEFAULT_AGE: Duration = Duration::from_secs(3600);
/// After a failed discovery fetch: no new attempt for this long.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Introspection answers kept per plugin instance.
const MAX_CACHED_TOKENS: usize = 10_000;

pub struct OpenIdConnect {
    provider: Arc<Provider>,
    /// The configured `issuer`: the discovery document must name the same one (OIDC
    /// Discovery §4.3), or a wrong URL could vouch for another provider's tokens.
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    introspection_endpoint: Option<String>,
    auth_method: ClientAuthMethod,
    scopes_required: Vec<String>,
    audience: Option<Vec<String>>,
    cache_ttl: Duration,
    /// `(claim path, header)` pairs.
    headers: Vec<(Vec<String>, HeaderName)>,
    use_jwks: bool,
    consumer_claim: Vec<String>,
    consumer_optional: bool,
    hide_credentials: bool,
    timeout: Duration,
    challenge: HeaderValue,
    challenge_invalid: HeaderValue,
    challenge_scope: HeaderValue,
    consumers: Arc<Consumers>,
    cache: Arc<IntrospectionCache>,
}

impl OpenIdConnect {
    pub fn new(
        config: &Value,
        consumers: Arc<Consumers>,
        scope: &mut StateScope<'_>,
    ) -> Result<OpenIdConnect, ValidationError> {
        let c: OpenIdConnectConfig = parse(config)?;
        let discovery = c
            .discovery_url()
            .ok_or_else(|| ValidationError::new("issuer", "missing"))?;
        let mut headers = Vec::with_capacity(c.upstream_headers_claims.len());
        for (claim, name) in c
            .upstream_headers_claims
            .iter()
            .zip(&c.upstream_headers_names)
        {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ValidationError::new("upstream_headers_names", "not a valid header name")
            })?;
            headers.push((claim.split('.').map(str::to_string).collect(), name));
        }
        let realm = c.realm.as_deref().unwrap_or("postern").replace('"', "");
        let challenge = |extra: &str| {
            HeaderValue::from_str(&format!("Bearer realm=\"{realm}\"{extra}"))
                .map_err(|_| ValidationError::new("realm", "not usable in a header"))
        };
        let scopes_required = c.scopes_required.clone().unwrap_or_default();
        Ok(OpenIdConnect {
            provider: Provider::shared(&discovery),
            issuer: c.issuer.as_deref().map(|i| {
                i.trim_end_matches('/')
                    .trim_end_matches("/.well-known/openid-configuration")
                    .to_string()
            }),
            client_id: c.client_id.clone(),
            client_secret: c.client_secret.clone(),
            introspection_endpoint: c.introspection_endpoint.clone(),
            auth_method: c.introspection_auth(),
            challenge_scope: challenge(&format!(
                ", error=\"insufficient_scope\", scope=\"{}\"",
                scopes_required.join(" ")
            ))?,
            scopes_required,
            audience: c.audience.clone(),
            cache_ttl: Duration::from_secs(c.cache_ttl),
            headers,
            use_jwks: c.use_jwks,
            consumer_claim: c.consumer_claim.clone().unwrap_or_default(),
            consumer_optional: c.consumer_optional,
            hide_credentials: c.hide_credentials,
            timeout: Duration::from_secs(c.timeout),
            challenge: challenge("")?,
            challenge_invalid: challenge(", error=\"invalid_token\"")?,
            consumers,
            cache: scope.state(NAME, config, IntrospectionCache::default),
        })
    }

    fn refuse(&self, status: StatusCode, challenge: &HeaderValue, msg: &str) -> Flow {
        let mut r = message(status, msg);
        r.headers.insert(WWW_AUTHENTICATE, challenge.clone());
        Flow::Respond(r)
    }

    fn invalid(&self, msg: &str) -> Flow {
        self.refuse(StatusCode::UNAUTHORIZED, &self.challenge_invalid, msg)
    }

    /// The bearer token; `Err` with the answer when there is none or several.
    fn token(&self, req: &http::request::Parts) -> Result<String, Box<Flow>> {
        let mut values = req.headers.get_all(AUTHORIZATION).iter();
        let missing = || {
            Box::new(self.refuse(
                StatusCode::UNAUTHORIZED,
                &self.challenge,
                "Missing bearer token in request",
            ))
        };
        let Some(value) = values.next() else {
            return Err(missing());
        };
        if values.next().is_some() {
            return Err(Box::new(self.invalid("several Authorization headers")));
        }
        let value = value.to_str().map_err(|_| missing())?.trim();
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => return Err(missing()),
        };
        if token.is_empty() {
            return Err(missing());
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(Box::new(self.invalid("token too long")));
        }
        Ok(token.to_string())
    }

    async fn check(&self, req: &mut http::request::Parts, ctx: &mut RequestCtx) -> Flow {
        for (_, name) in &self.headers {
            req.headers.remove(name);
        }
        let token = match self.token(req) {
            Ok(t) => t,
            Err(flow) => return *flow,
        };
        let doc = match self.provider.document(self.timeout).await {
            Ok(d) => d,
            Err(detail) => return unavailable("discovery", &detail),
        };
        if let Some(want) = &self.issuer
            && doc.issuer.trim_end_matches('/') != want
        {
            let detail = format!("the document names issuer '{}', not '{want}'", doc.issuer);
            return unavailable("discovery", &detail);
        }
        let claims = if self.use_jwks && looks_like_jwt(&token) {
            match self.verify_jwt(&token, &doc).await {
                Ok(c) => c,
                Err(flow) => return *flow,
            }
        } else {
            match self.introspect(&token, &doc).await {
                Ok(c) => c,
                Err(flow) => return *flow,
            }
        };
        let now = jsonwebtoken::get_current_timestamp();
        let sub = claims.get("sub").and_then(Value::as_str);
        let jti = claims.get("jti").and_then(Value::as_str);
        if jti.is_some_and(|j| self.consumers.is_revoked(RevocationType::Jti, j, now)) {
            return self.invalid("token revoked");
        }
        if sub.is_some_and(|s| {
            self.consumers
                .is_revoked(RevocationType::Credential, s, now)
        }) {
            return self.invalid("credential revoked");
        }
        let consumer = if self.consumer_claim.is_empty() {
            None
        } else {
            let name = self
                .consumer_claim
                .iter()
                .find_map(|c| claims.get(c).and_then(Value::as_str));
            match name.and_then(|n| self.consumers.consumer(n)) {
                Some(c) => Some(c.clone()),
                None if self.consumer_optional => None,
                None => return self.invalid("token names no consumer"),
            }
        };
        if consumer.as_ref().is_some_and(|c| {
            self.consumers
                .is_revoked(RevocationType::Consumer, &c.username, now)
        }) {
            return self.invalid("consumer revoked");
        }
        if !self.scopes_required.is_empty() {
            let granted = scopes(&claims);
            if !self
                .scopes_required
                .iter()
                .all(|s| granted.contains(&s.as_str()))
            {
                return self.refuse(
                    StatusCode::FORBIDDEN,
                    &self.challenge_scope,
                    "token lacks a required scope",
                );
            }
        }
        for (path, name) in &self.headers {
            if let Some(v) = claim_at(&claims, path).and_then(header_value) {
                req.headers.insert(name.clone(), v);
            }
        }
        match (consumer, sub) {
            (Some(c), sub) => identify(ctx, &c, &Arc::from(sub.unwrap_or(&c.username))),
            (None, Some(sub)) => ctx.credential_id = Some(sub.into()),
            (None, None) => {}
        }
        if self.hide_credentials {
            req.headers.remove(AUTHORIZATION);
        }
        Flow::Continue
    }

    async fn verify_jwt(&self, token: &str, doc: &Discovery) -> Result<Value, Box<Flow>> {
        let Some(kid) = jwks::header_kid(token) else {
            return Err(Box::new(self.invalid("token invalid")));
        };
        let Some(source) = &doc.jwks else {
            return Err(Box::new(unavailable(
                "jwks",
                "the discovery document has no jwks_uri",
            )));
        };
        let key = match source.cached(kid.as_deref()) {
            Some(k) => k,
            None => match source.key(kid.as_deref()).await {
                Lookup::Found(k) => k,
                Lookup::Unknown => return Err(Box::new(self.invalid("token signing key unknown"))),
                Lookup::Unavailable(detail) => return Err(Box::new(unavailable("jwks", &detail))),
            },
        };
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = 0;
        v.set_issuer(&[&doc.issuer]);
        let mut required = vec!["exp", "iss"];
        match &self.audience {
            Some(aud) => {
                v.set_audience(aud);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        jwks::verify(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Box::new(self.invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not valid yet",
                ErrorKind::InvalidIssuer => "token issuer not accepted",
                ErrorKind::InvalidAudience => "token audience not accepted",
                ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                ErrorKind::InvalidAlgorithm => "token algorithm not accepted",
                ErrorKind::InvalidSignature => "token signature invalid",
                _ => "token invalid",
            }))
        })
    }

    /// RFC 7662, through the cache.
    async fn introspect(&self, token: &str, doc: &Discovery) -> Result<Value, Box<Flow>> {
        let endpoint = self
            .introspection_endpoint
            .as_deref()
            .or(doc.introspection_endpoint.as_deref());
        let (Some(endpoint), Some(id), Some(secret)) = (
            endpoint,
            self.client_id.as_deref(),
            self.client_secret.as_deref(),
        ) else {
            // Nothing can vouch for an opaque token here.
            return Err(Box::new(self.invalid("token invalid")));
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        let answer = match self.cache.get(&digest) {
            Some(a) => a,
            None => {
                let auth = match self.auth_method {
                    ClientAuthMethod::ClientSecretBasic => ClientAuth::Basic { id, secret },
                    ClientAuthMethod::ClientSecretPost => ClientAuth::Post { id, secret },
                };
                let form = [("token", token), ("token_type_hint", "access_token")];
                let resp = idp_client::post_form(endpoint, &form, auth, self.timeout)
                    .await
                    .map_err(|e| Box::new(unavailable("introspection", &e.to_string())))?;
                if !resp.status.is_success() {
                    let detail = format!("{endpoint} answered {}", resp.status.as_u16());
                    return Err(Box::new(unavailable("introspection", &detail)));
                }
                let body: Value = serde_json::from_slice(&resp.body).map_err(|_| {
                    Box::new(unavailable("introspection", "the answer is not JSON"))
                })?;
                let answer =
                    (body.get("active") == Some(&Value::Bool(true))).then(|| Arc::new(body));
                let exp = answer
                    .as_ref()
                    .and_then(|c| c.get("exp"))
                    .and_then(Value::as_u64);
                let mut ttl = self.cache_ttl;
                if let Some(exp) = exp {
                    ttl = ttl.min(Duration::from_secs(exp.saturating_sub(now)));
                }
                if !ttl.is_zero() {
                    self.cache.put(digest, answer.clone(), ttl);
                }
                answer
            }
        };
        let Some(claims) = answer else {
            return Err(Box::new(self.invalid("token not active")));
        };
        if claims
            .get("exp")
            .and_then(Value::as_u64)
            .is_some_and(|exp| exp <= now)
        {
            return Err(Box::new(self.invalid("token expired")));
        }
        Ok((*claims).clone())
    }
}

impl Plugin for OpenIdConnect {
    fn name(&self) -> &'static str {
        NAME
    }

    fn is_auth(&self) -> bool {
        true
    }

    fn access<'a>(
        &'a self,
        req: &'a mut http::request::Parts,
        ctx: &'a mut RequestCtx,
    ) -> Step<'a> {
        Step::Pending(Box::pin(self.check(req, ctx)))
    }
}

fn unavailable(what: &str, detail: &str) -> Flow {
    tracing::warn!(part = what, error = %detail, "identity provider unavailable");
    Flow::Respond(PluginResponse::json(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from(
            serde_json::json!({
                "message": format!("identity provider unavailable ({what}): the token cannot be checked now")
            })
            .to_string(),
        ),
    ))
}

/// Three segments whose first is a JSON object: a JWT (judged as one, never introspected).
fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Map<String, Value>>(&b).ok())
        .is_some()
}

/// The token's scopes: `scope` (space-separated) or `scp` (a list or a string).
fn scopes(claims: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace()),
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// A claim by its dotted path.
fn claim_at<'a>(claims: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(claims, |v, key| v.get(key))
}

/// A claim as a header value: arrays joined with commas, objects as JSON; `None` for null or
/// anything a header cannot carry.
fn header_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    HeaderValue::from_str(&text).ok()
}

/// The discovery document's parts used here.
struct Discovery {
    issuer: String,
    jwks: Option<Arc<JwksSource>>,
    introspection_endpoint: Option<String>,
}

#[derive(Default)]
struct Cached {
    doc: Option<Arc<Discovery>>,
    fresh_until: Option<Instant>,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// One provider's discovery document, fetched once per max-age for the whole process.
struct Provider {
    url: String,
    cached: Mutex<Cached>,
    /// One fetch at a time; the others wait and use its result.
    fetching: tokio::sync::Mutex<()>,
}

static PROVIDERS: LazyLock<Mutex<HashMap<String, Weak<Provider>>>> = LazyLock::new(Mutex::default);

impl Provider {
    fn shared(url: &str) -> Arc<Provider> {
        let mut all = PROVIDERS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = all.get(url).and_then(Weak::upgrade) {
            return p;
        }
        all.retain(|_, w| w.strong_count() > 0);
        let p = Arc::new(Provider {
            url: url.to_string(),
            cached: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        });
        all.insert(url.to_string(), Arc::downgrade(&p));
        p
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fresh document; a stale one when the provider cannot be reached; `Err` when
    /// there is none.
    fn current(&self, now: Instant) -> Result<Arc<Discovery>, Option<String>> {
        let c = self.lock();
        // Stale but the provider just failed: keep serving it until the next attempt.
        let usable = c.fresh_until.is_some_and(|t| now < t) || c.retry_at.is_some_and(|t| now < t);
        match &c.doc {
            Some(doc) if usable => Ok(doc.clone()),
            None if c.retry_at.is_some_and(|t| now < t) => Err(c.last_error.clone()),
            _ => Err(None),
        }
    }

    async fn document(&self, timeout: Duration) -> Result<Arc<Discovery>, String> {
        match self.current(Instant::now()) {
            Ok(doc) => return Ok(doc),
            Err(Some(failed)) => return Err(failed),
            Err(None) => {}
        }
        let _one = self.fetching.lock().await;
        match self.current(Instant::now()) {
            Ok(doc) => return Ok(doc),
            Err(Some(failed)) => return Err(failed),
            Err(None) => {}
        }
        let result = self.fetch(timeout).await;
        let now = Instant::now();
        let mut c = self.lock();
        match result {
            Ok((doc, max_age)) => {
                let doc = Arc::new(doc);
                c.doc = Some(doc.clone());
                c.fresh_until = Some(now + max_age);
                c.retry_at = None;
                c.last_error = None;
                Ok(doc)
            }
            Err(e) => {
                c.retry_at = Some(now + RETRY_AFTER_FAILURE);
                c.last_error = Some(e.clone());
                // A stale document keeps serving until the provider is back.
                c.doc.clone().ok_or(e)
            }
        }
    }

    async fn fetch(&self, timeout: Duration) -> Result<(Discovery, Duration), String> {
        let url = &self.url;
        let resp = idp_client::get(url, timeout)
            .await
            .map_err(|e| format!("discovery {e}"))?;
        if !resp.status.is_success() {
            return Err(format!(
                "discovery {url}: answered {}",
                resp.status.as_u16()
            ));
        }
        let doc: Value = serde_json::from_slice(&resp.body)
            .map_err(|_| format!("discovery {url}: answer is not JSON"))?;
        let text = |name: &str| doc.get(name).and_then(Value::as_str).map(str::to_string);
        let issuer = text("issuer").ok_or_else(|| format!("discovery {url}: no issuer"))?;
        let max_age = idp_client::max_age(&resp.headers)
            .map_or(DISCOVERY_DEFAULT_AGE, Duration::from_secs)
            .clamp(DISCOVERY_MIN_AGE, DISCOVERY_MAX_AGE);
        Ok((
            Discovery {
                issuer,
                jwks: text("jwks_uri").map(|u| JwksSource::shared(&u)),
                introspection_endpoint: text("introspection_endpoint"),
            },
            max_age,
        ))
    }
}

/// Introspection answers by SHA-256 of the token (`None`: inactive), each until its expiry.
#[derive(Default)]
pub struct IntrospectionCache {
    map: Mutex<HashMap<[u8; 32], (Answer, Instant)>>,
}

/// An introspection answer: the claims of an active token, `None` for an inactive one.
type Answer = Option<Arc<Value>>;

impl IntrospectionCache {
    fn get(&self, digest: &[u8; 32]) -> Option<Answer> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (answer, until) = map.get(digest)?;
        (Instant::now() < *until).then(|| answer.clone())
    }

    fn put(&self, digest: [u8; 32], answer: Answer, ttl: Duration) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CACHED_TOKENS {
            map.retain(|_, (_, until)| now < *until);
            if map.len() >= MAX_CACHED_TOKENS {
                map.clear();
            }
        }
        map.insert(digest, (answer, now + ttl));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn claims_become_header_values() {
        let claims = json!({"sub": "u1", "email": "a@b.c", "n": 3, "ok": true,
            "realm_access": {"roles": ["admin", "user"]}, "obj": {"a": 1}, "nul": null,
            "bad": "a\nb"});
        let cases = [
            ("sub", Some("u1")),
            ("email", Some("a@b.c")),
            ("n", Some("3")),
            ("ok", Some("true")),
            ("realm_access.roles", Some("admin,user")),
            ("obj", Some("{\"a\":1}")),
            ("nul", None),
            ("bad", None),
            ("missing", None),
            ("realm_access.missing", None),
        ];
        for (path, want) in cases {
            let path: Vec<String> = path.split('.').map(str::to_string).collect();
            let got = claim_at(&claims, &path).and_then(header_value);
            assert_eq!(got.as_ref().map(|v| v.to_str().unwrap()), want, "{path:?}");
        }
    }

    #[test]
    fn scopes_and_jwt_shape() {
        let cases = [
            (
                json!({"scope": "openid profile"}),
                vec!["openid", "profile"],
            ),
            (json!({"scp": ["api:read"]}), vec!["api:read"]),
            (json!({"scp": "a b"}), vec!["a", "b"]),
            (json!({}), vec![]),
        ];
        for (claims, want) in cases {
            assert_eq!(scopes(&claims), want, "{claims}");
        }
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        assert!(looks_like_jwt(&format!("{header}.e30.")));
        assert!(!looks_like_jwt("opaque-token-123"));
        assert!(!looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt(&format!("{header}.e30..x")));
    }

    #[test]
    fn the_cache_forgets_after_the_ttl_and_stays_bounded() {
        let cache = IntrospectionCache::default();
        let d = |i: u32| -> [u8; 32] { Sha256::digest(i.to_le_bytes()).into() };
        cache.put(
            d(0),
            Some(Arc::new(json!({"active": true}))),
            Duration::from_secs(60),
        );
        cache.put(d(1), None, Duration::from_secs(60));
        cache.put(d(2), None, Duration::ZERO);
        assert!(matches!(cache.get(&d(0)), Some(Some(_))));
        assert!(matches!(cache.get(&d(1)), Some(None)));
        assert!(cache.get(&d(2)).is_none());
        for i in 3..(MAX_CACHED_TOKENS as u32 + 10) {
            cache.put(d(i), None, Duration::from_secs(60));
        }
        assert!(cache.map.lock().unwrap().len() <= MAX_CACHED_TOKENS);
    }
}
