//! `jwt-auth`: verifies a JWT from the `Authorization` header (`Bearer <token>` or the bare
//! token), a query argument or a cookie, against the credential of the consumer named by the
//! token's key claim (see the config types in `postern_proto::model::plugins::jwt_auth`).
//!
//! Order of checks, each failure a 401 with `WWW-Authenticate: Bearer`:
//! 1. exactly one token (the same token in several places is fine; different ones are not);
//! 2. at most [`MAX_TOKEN_LEN`] bytes, before anything is decoded;
//! 3. the key claim read from the unverified payload only to pick the credential;
//! 4. `jsonwebtoken::decode` with the credential's key and its one algorithm: the header's `alg`
//!    must equal it (so `none`, or HS256 against an RSA credential, fails), the signature must
//!    verify, `exp` must be present and future, `nbf` past (both with the credential's leeway);
//! 5. the credential's `max_lifetime`, if any;
//! 6. revocations: the token's `jti`, the consumer, the credential.
//!
//! The header's `jku` and `x5u` are never used. Key material comes from the consumer's
//! credential, or from a JWKS (`jwks_uri` on the credential, or on the route for every token):
//! then the header's `kid` picks a key of the fetched set (see `jwks.rs`), the key's algorithm
//! is the only one accepted, an unknown `kid` is a 401 and an unreachable JWKS endpoint with
//! nothing cached a 503. A route JWKS token whose key claim names no consumer is identified by
//! its `sub` (X-Credential-Identifier), with no consumer.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use http::{HeaderName, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use postern_proto::model::plugins::jwt_auth::JwtAuthConfig;
use postern_proto::model::plugins::parse;
use postern_proto::model::{RevocationType, ValidationError};
use serde_json::Value;

use super::consumers::{
    self, Consumers, JwtClaims, JwtKey, KeySource, VerifiedJwt, identify, unauthorized,
};
use super::jwks::{self, JwkKey, JwksSource, Lookup};
use super::{Flow, Plugin, PluginResponse, RequestCtx, Step};
use crate::router::vars::{args, cookie};

/// Longest token accepted; longer ones are refused before they are decoded.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

const CHALLENGE: &str = "Bearer realm=\"postern\"";
const CHALLENGE_INVALID: &str = "Bearer realm=\"postern\", error=\"invalid_token\"";

pub struct JwtAuth {
    header: HeaderName,
    query: String,
    cookie: String,
    hide_credentials: bool,
    key_claim: String,
    consumers: Arc<Consumers>,
    /// The route's `jwks_uri`: every token is verified against these keys.
    jwks: Option<Arc<JwksSource>>,
    /// For route JWKS tokens: `exp` required, `nbf` checked (the algorithm is the key's).
    jwks_validation: Validation,
}

impl JwtAuth {
    pub fn new(config: &Value, consumers: Arc<Consumers>) -> Result<JwtAuth, ValidationError> {
        let c: JwtAuthConfig = parse(config)?;
        let header = HeaderName::from_bytes(c.header.as_bytes())
            .map_err(|_| ValidationError::new("header", "not a valid header name"))?;
        Ok(JwtAuth {
            header,
            query: c.query,
            cookie: c.cookie,
            hide_credentials: c.hide_credentials,
            key_claim: c.key_claim_name,
            consumers,
            jwks: c.jwks_uri.as_deref().map(JwksSource::shared),
            jwks_validation: {
                let mut v = Validation::new(Algorithm::RS256);
                v.leeway = 0;
                v.validate_aud = false;
                v.set_required_spec_claims(&["exp"]);
                v
            },
        })
    }

    /// Every token the request carries, in header, query and cookie order.
    fn tokens<'a>(&'a self, req: &'a http::request::Parts) -> impl Iterator<Item = Cow<'a, str>> {
        let header = req
            .headers
            .get_all(&self.header)
            .iter()
            .map(|v| match v.to_str() {
                // Visible ASCII and tabs only, so the ASCII trims are `str::trim`'s.
                Ok(s) => Cow::Borrowed(without_bearer(s.trim_ascii())),
                // Not text: cannot be a JWT, and must not be mistaken for "no token".
                Err(_) => Cow::Borrowed("\u{0}"),
            });
        let query = args(req, &self.query);
        let cookie = cookie(req, &self.cookie).map(Cow::Borrowed);
        header.chain(query).chain(cookie).filter(|t| !t.is_empty())
    }

    /// The one token of the request, or the answer when there is none or too many. Borrowed
    /// from the request where it can be (a copy of a token was ~150 instructions a request).
    fn token<'r>(&'r self, req: &'r http::request::Parts) -> Result<Cow<'r, str>, Box<Flow>> {
        let token = match consumers::single(self.tokens(req)) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(Box::new(Flow::Respond(unauthorized(
                    CHALLENGE,
                    "Missing JWT token in request",
                ))));
            }
            Err(consumers::Conflicting) => {
                return Err(Box::new(fail("different JWT tokens in one request")));
            }
        };
        if token.len() > MAX_TOKEN_LEN {
            return Err(Box::new(fail("JWT token too long")));
        }
        Ok(token)
    }

    /// Picks what verifies `token`: the route's JWKS, or the credential named by the key claim
    /// (its static key or its JWKS).
    fn plan<'a>(&'a self, token: &str) -> Result<Plan<'a>, Box<Flow>> {
        let key = claim(token, &self.key_claim);
        if let Some(source) = &self.jwks {
            // The key claim only names the consumer, if any: the route's keys verify.
            let cred = key.as_deref().and_then(|k| self.consumers.jwt(k));
            return Ok(Plan::Jwks {
                cred,
                source: source.clone(),
                pin: None,
                validation: &self.jwks_validation,
            });
        }
        let Some(key) = key else {
            return Err(Box::new(fail("JWT token invalid")));
        };
        let Some(cred) = self.consumers.jwt(&key) else {
            return Err(Box::new(fail("Invalid user key in JWT token")));
        };
        Ok(match &cred.source {
            KeySource::Static(k) => Plan::Static(cred, k),
            KeySource::Jwks { source, pin } => Plan::Jwks {
                cred: Some(cred),
                source: source.clone(),
                pin: *pin,
                validation: &cred.validation,
            },
        })
    }

    /// The checks after the signature: lifetime, revocations; then who the caller is.
    fn finish(
        &self,
        req: &mut http::request::Parts,
        ctx: &mut RequestCtx,
        cred: Option<&JwtKey>,
        claims: &JwtClaims,
        now: u64,
    ) -> Flow {
        if let Some(max) = cred.and_then(|c| c.max_lifetime) {
            let exp = claims.exp.unwrap_or(u64::MAX);
            if exp.saturating_sub(now) > max {
                return fail("JWT token lifetime exceeds the maximum");
            }
        }
        let jti = claims.jti.as_deref();
        if jti.is_some_and(|j| self.consumers.is_revoked(RevocationType::Jti, j, now)) {
            return fail("JWT token revoked");
        }
        match cred {
            Some(cred) => {
                if self
                    .consumers
                    .is_consumer_revoked(&cred.consumer, &cred.key, now)
                {
                    return fail("JWT credential revoked");
                }
                identify(ctx, &cred.consumer, &cred.key);
            }
            None => {
                // A route JWKS token that names no consumer: known by its subject.
                let Some(sub) = claims.sub.as_deref() else {
                    return fail("JWT token lacks a required claim");
                };
                if self
                    .consumers
                    .is_revoked(RevocationType::Credential, sub, now)
                {
                    return fail("JWT credential revoked");
                }
                ctx.credential_id = Some(sub.into());
            }
        }
        if self.hide_credentials {
            req.headers.remove(&self.header);
            consumers::remove_query_arg(req, &self.query);
            consumers::remove_cookie(req, &self.cookie);
        }
        Flow::Continue
    }

    /// The whole check when it needs no fetch (static keys, cached JWKS keys); `Err` carries
    /// what to wait for otherwise.
    fn check_now<'a>(
        &'a self,
        req: &mut http::request::Parts,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, Pending<'a>> {
        let token = match self.token(req) {
            Ok(t) => t,
            Err(flow) => return Ok(*flow),
        };
        let now = jsonwebtoken::get_current_timestamp();
        if let Some((cred, claims)) = self.verified_before(&token, now) {
            return Ok(self.finish(req, ctx, Some(cred), &claims, now));
        }
        let plan = match self.plan(&token) {
            Ok(p) => p,
            Err(flow) => return Ok(*flow),
        };
        match plan {
            Plan::Static(cred, key) => {
                match jsonwebtoken::decode::<Value>(token.as_bytes(), key, &cred.validation) {
                    Ok(data) => {
                        let claims = Arc::new(JwtClaims::of(&data.claims));
                        if cred.validation.validate_exp && claims.exp.is_some() {
                            self.consumers.remember_jwt(
                                &token,
                                VerifiedJwt {
                                    key_claim: self.key_claim.as_str().into(),
                                    credential: cred.key.clone(),
                                    claims: claims.clone(),
                                },
                            );
                        }
                        Ok(self.finish(req, ctx, Some(cred), &claims, now))
                    }
                    Err(e) => Ok(fail(reason(e.kind()))),
                }
            }
            Plan::Jwks {
                cred,
                source,
                pin,
                validation,
            } => {
                let Some(kid) = jwks::header_kid(&token) else {
                    return Ok(fail("JWT token invalid"));
                };
                match source.cached(kid.as_deref()) {
                    Some(key) => Ok(match check_jwk(&token, &key, pin, validation) {
                        Ok(claims) => self.finish(req, ctx, cred, &JwtClaims::of(&claims), now),
                        Err(flow) => *flow,
                    }),
                    None => Err(Pending {
                        token: token.into_owned(),
                        kid,
                        cred,
                        source,
                        pin,
                        validation,
                    }),
                }
            }
        }
    }

    /// The credential and claims of `token` when it was verified before with this route's key
    /// claim and a static key, and has not expired since (jsonwebtoken's rule: `exp` plus the
    /// leeway). Route JWKS keys rotate without a new snapshot: those tokens are always verified.
    fn verified_before(&self, token: &str, now: u64) -> Option<(&JwtKey, Arc<JwtClaims>)> {
        if self.jwks.is_some() {
            return None;
        }
        let hit = self.consumers.verified_jwt(token)?;
        if *hit.key_claim != *self.key_claim {
            return None;
        }
        let cred = self.consumers.jwt(&hit.credential)?;
        let in_time = hit
            .claims
            .exp
            .is_some_and(|exp| exp >= now.saturating_sub(cred.validation.leeway));
        (matches!(cred.source, KeySource::Static(_)) && in_time).then_some((cred, hit.claims))
    }

    #[cfg(test)]
    fn check(&self, req: &mut http::request::Parts, ctx: &mut RequestCtx) -> Flow {
        match self.check_now(req, ctx) {
            Ok(flow) => flow,
            Err(_) => panic!("a fetch is needed"),
        }
    }
}

/// A header's token: what follows `Bearer ` (any case, then any spaces), or the whole value.
fn without_bearer(value: &str) -> &str {
    match value.as_bytes().get(..7) {
        Some([scheme @ .., b' ']) if scheme.eq_ignore_ascii_case(b"bearer") => {
            value[7..].trim_ascii_start()
        }
        _ => value,
    }
}

fn fail(msg: &str) -> Flow {
    Flow::Respond(unauthorized(CHALLENGE_INVALID, msg))
}

enum Plan<'a> {
    Static(&'a JwtKey, &'a jsonwebtoken::DecodingKey),
    Jwks {
        cred: Option<&'a JwtKey>,
        source: Arc<JwksSource>,
        pin: Option<Algorithm>,
        validation: &'a Validation,
    },
}

/// A JWKS check that must wait for the keys.
struct Pending<'a> {
    token: String,
    kid: Option<String>,
    cred: Option<&'a JwtKey>,
    source: Arc<JwksSource>,
    pin: Option<Algorithm>,
    validation: &'a Validation,
}

/// Verifies with a JWKS key: its algorithm only (and the credential's, when pinned).
fn check_jwk(
    token: &str,
    key: &JwkKey,
    pin: Option<Algorithm>,
    validation: &Validation,
) -> Result<Value, Box<Flow>> {
    if pin.is_some_and(|p| p != key.alg) {
        return Err(Box::new(fail("JWT token algorithm not accepted")));
    }
    jwks::verify(token, key, validation).map_err(|e| Box::new(fail(reason(e.kind()))))
}

/// The answer when the JWKS endpoint cannot be reached and nothing usable is cached: the
/// token may well be good, so neither 401 nor 403.
pub fn keys_unavailable(detail: &str) -> PluginResponse {
    tracing::warn!(error = %detail, "JWT signing keys unavailable");
    consumers::message(
        StatusCode::SERVICE_UNAVAILABLE,
        "JWT signing keys unavailable: the JWKS endpoint cannot be reached",
    )
}

/// A string claim of the unverified payload (only used to choose the credential that then
/// verifies the whole token).
fn claim(token: &str, name: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get(name)?.as_str().map(str::to_string)
}

/// What the client is told; specific enough to fix a client, not to probe the gateway.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "JWT token expired",
        ErrorKind::ImmatureSignature => "JWT token not valid yet",
        ErrorKind::MissingRequiredClaim(_) => "JWT token lacks a required claim",
        ErrorKind::InvalidAudience => "JWT token audience not accepted",
        ErrorKind::InvalidIssuer => "JWT token issuer not accepted",
        ErrorKind::InvalidAlgorithm => "JWT token algorithm not accepted",
        ErrorKind::InvalidSignature => "JWT token signature invalid",
        _ => "JWT token invalid",
    }
}

impl Plugin for JwtAuth {
    fn name(&self) -> &'static str {
        "jwt-auth"
    }

    fn is_auth(&self) -> bool {
        true
    }

    fn access<'a>(
        &'a self,
        req: &'a mut http::request::Parts,
        ctx: &'a mut RequestCtx,
    ) -> Step<'a> {
        let p = match self.check_now(req, ctx) {
            Ok(flow) => return Step::Ready(flow),
            Err(p) => p,
        };
        Step::Pending(Box::pin(async move {
            match p.source.key(p.kid.as_deref()).await {
                Lookup::Found(key) => match check_jwk(&p.token, &key, p.pin, p.validation) {
                    Ok(claims) => {
                        let now = jsonwebtoken::get_current_timestamp();
                        self.finish(req, ctx, p.cred, &JwtClaims::of(&claims), now)
                    }
                    Err(flow) => *flow,
                },
                Lookup::Unknown => fail("JWT token signing key unknown"),
                Lookup::Unavailable(detail) => Flow::Respond(keys_unavailable(&detail)),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use postern_proto::model::{ConfigSet, Resource, ResourceKind};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "mobile-app-secret-256bit-key-here";

    fn consumers() -> Arc<Consumers> {
        let mut set = ConfigSet::default();
        for (name, jwt) in [
            (
                "mobile-app",
                json!({"key": "mobile-app-key", "secret": SECRET}),
            ),
            (
                "strict",
                json!({"key": "strict-key", "secret": SECRET, "max_lifetime": 600,
                       "audience": ["api"], "issuer": ["idp"], "leeway": 0}),
            ),
        ] {
            let body = json!({"username": name, "plugins": {"jwt-auth": jwt}});
            set.insert(
                name,
                Resource::parse(ResourceKind::Consumers, &body).unwrap(),
            );
        }
        Arc::new(Consumers::build(&set).unwrap())
    }

    /// `without_bearer` after an ASCII trim reads a header as a split at the first space did
    /// (the scheme `bearer` in any case, the rest trimmed), for values the header can hold.
    #[test]
    fn the_bearer_scheme_comes_off_as_a_split_at_the_first_space_took_it() {
        let split = |s: &str| -> String {
            let s = s.trim();
            match s.split_once(' ') {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                _ => s,
            }
            .to_string()
        };
        for v in [
            "Bearer a.b.c",
            "bearer   a.b.c",
            "BEARER a.b.c ",
            " \tBearer a.b.c",
            "Bearer\ta.b.c",
            "Bearera.b.c",
            "Bearer",
            "Bearer ",
            "Bearer  ",
            "Basic a.b.c",
            "Beare a.b.c",
            "a.b.c",
            "",
            "Bearer a b",
        ] {
            assert_eq!(without_bearer(v.trim_ascii()), split(v), "{v:?}");
        }
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn hs256(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    /// A token with a hand-made header and signature (for headers `encode` refuses to write).
    fn raw(header: Value, claims: Value, sig: &str) -> String {
        format!(
            "{}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn run(config: Value, req: http::Request<()>) -> (Flow, http::request::Parts, RequestCtx) {
        let p = JwtAuth::new(&config, consumers()).unwrap();
        let (mut parts, _) = req.into_parts();
        let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
        let flow = p.check(&mut parts, &mut ctx);
        (flow, parts, ctx)
    }

    fn status_and_message(flow: &Flow) -> Option<(u16, String)> {
        match flow {
            Flow::Continue => None,
            Flow::Respond(r) => {
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                assert!(r.headers.contains_key("www-authenticate"));
                Some((
                    r.status.as_u16(),
                    v["message"].as_str().unwrap().to_string(),
                ))
            }
        }
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires() {
        let consumers = consumers();
        let plugin = JwtAuth::new(&json!({}), consumers.clone()).unwrap();
        let t = hs256(json!({"key": "strict-key", "exp": now() + 1, "aud": "api", "iss": "idp"}));
        let check = |plugin: &JwtAuth| {
            let req = http::Request::get("/").header("authorization", format!("Bearer {t}"));
            let (mut parts, _) = req.body(()).unwrap().into_parts();
            let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
            let flow = plugin.check(&mut parts, &mut ctx);
            (status_and_message(&flow), ctx.consumer_name)
        };
        assert!(consumers.verified_jwt(&t).is_none());
        assert_eq!(check(&plugin), (None, Some("strict".into())));
        let remembered = consumers.verified_jwt(&t).expect("remembered");
        assert_eq!(&*remembered.credential, "strict-key");
        // Served from memory: the same consumer, and the claims still checked (max_lifetime).
        assert_eq!(check(&plugin), (None, Some("strict".into())));
        // Another route naming the credential by another claim does not take it from memory.
        let other = JwtAuth::new(&json!({"key_claim_name": "kid"}), consumers.clone()).unwrap();
        assert_eq!(
            check(&other).0,
            Some((401, "JWT token invalid".to_string()))
        );
        // Expired (leeway 0) while remembered: refused like any expired token.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(
            check(&plugin).0,
            Some((401, "JWT token expired".to_string()))
        );
    }

    #[test]
    fn accepts_a_good_token_from_each_place() {
        let t = hs256(json!({"key": "mobile-app-key", "exp": now() + 60}));
        let reqs = [
            http::Request::get("/").header("authorization", format!("Bearer {t}")),
            http::Request::get("/").header("authorization", format!("bearer  {t}")),
            http::Request::get("/").header("authorization", t.clone()),
            http::Request::get(format!("/?jwt={t}")),
            http::Request::get("/").header("cookie", format!("a=1; jwt={t}")),
            // The same token twice is one token.
            http::Request::get(format!("/?jwt={t}")).header("authorization", t.clone()),
        ];
        for r in reqs {
            let (flow, _, ctx) = run(json!({}), r.body(()).unwrap());
            assert!(status_and_message(&flow).is_none());
            assert_eq!(ctx.consumer_name.as_deref(), Some("mobile-app"));
            assert_eq!(ctx.credential_id.as_deref(), Some("mobile-app-key"));
        }
    }

    #[test]
    fn refuses_every_attack_with_401() {
        let n = now();
        let good = hs256(json!({"key": "mobile-app-key", "exp": n + 60}));
        // Change the signature's first character: its 6 bits are all data, so the result is
        // still canonical base64url (the last character carries padding bits, and changing it
        // can make the token undecodable instead of wrongly signed).
        let sig = good.rfind('.').expect("three parts") + 1;
        let mut tampered = good.clone();
        let first = if good[sig..].starts_with('A') {
            "B"
        } else {
            "A"
        };
        tampered.replace_range(sig..sig + 1, first);
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "alg none",
                raw(
                    json!({"alg": "none", "typ": "JWT"}),
                    json!({"key": "mobile-app-key", "exp": n + 60}),
                    "",
                ),
                "JWT token invalid",
            ),
            (
                "no alg",
                raw(
                    json!({"typ": "JWT"}),
                    json!({"key": "mobile-app-key", "exp": n + 60}),
                    "AAAA",
                ),
                "JWT token invalid",
            ),
            (
                "HS384 against an HS256 credential",
                encode(
                    &Header::new(Algorithm::HS384),
                    &json!({"key": "mobile-app-key", "exp": n + 60}),
                    &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
                )
                .unwrap(),
                "JWT token algorithm not accepted",
            ),
            (
                "expired",
                hs256(json!({"key": "mobile-app-key", "exp": n - 10})),
                "JWT token expired",
            ),
            (
                "nbf in the future",
                hs256(json!({"key": "mobile-app-key", "exp": n + 60, "nbf": n + 30})),
                "JWT token not valid yet",
            ),
            (
                "no exp",
                hs256(json!({"key": "mobile-app-key"})),
                "JWT token lacks a required claim",
            ),
            (
                "exp as a string",
                hs256(json!({"key": "mobile-app-key", "exp": "9999999999"})),
                "JWT token lacks a required claim",
            ),
            (
                "tampered signature",
                tampered,
                "JWT token signature invalid",
            ),
            (
                "unknown key",
                hs256(json!({"key": "nobody", "exp": n + 60})),
                "Invalid user key in JWT token",
            ),
            (
                "no key claim",
                hs256(json!({"exp": n + 60})),
                "JWT token invalid",
            ),
            (
                "bad base64",
                "eyJhbGciOiJIUzI1NiJ9.@@@.AAAA".to_string(),
                "JWT token invalid",
            ),
            (
                "kid path traversal",
                raw(
                    json!({"alg": "HS256", "kid": "../../dev/null"}),
                    json!({"key": "mobile-app-key", "exp": n + 60}),
                    "",
                ),
                "JWT token signature invalid",
            ),
            (
                "too long",
                format!("{}.{}", good, "A".repeat(MAX_TOKEN_LEN)),
                "JWT token too long",
            ),
            ("not a JWT", "hello".to_string(), "JWT token invalid"),
            (
                "lifetime over max_lifetime",
                hs256(json!({"key": "strict-key", "exp": n + 3600, "aud": "api", "iss": "idp"})),
                "JWT token lifetime exceeds the maximum",
            ),
            (
                "wrong audience",
                hs256(json!({"key": "strict-key", "exp": n + 60, "aud": "other", "iss": "idp"})),
                "JWT token audience not accepted",
            ),
            (
                "no audience when required",
                hs256(json!({"key": "strict-key", "exp": n + 60, "iss": "idp"})),
                "JWT token lacks a required claim",
            ),
            (
                "wrong issuer",
                hs256(json!({"key": "strict-key", "exp": n + 60, "aud": "api", "iss": "evil"})),
                "JWT token issuer not accepted",
            ),
        ];
        for (what, token, want) in cases {
            let req = http::Request::get("/")
                .header("authorization", format!("Bearer {token}"))
                .body(())
                .unwrap();
            let (flow, _, ctx) = run(json!({}), req);
            assert_eq!(
                status_and_message(&flow),
                Some((401, want.to_string())),
                "{what}"
            );
            assert!(ctx.consumer_name.is_none(), "{what}");
        }
        // The strict credential accepts a token that meets every rule.
        let ok = hs256(json!({"key": "strict-key", "exp": n + 60, "aud": "api", "iss": "idp"}));
        let req = http::Request::get("/")
            .header("authorization", ok)
            .body(())
            .unwrap();
        assert!(status_and_message(&run(json!({}), req).0).is_none());
    }

    #[test]
    fn revocations_refuse_a_jti_a_consumer_or_a_credential_until_they_expire() {
        let n = now();
        let plugin = |revocations: &[Value]| {
            let mut set = ConfigSet::default();
            for (name, key) in [("a", "a-key"), ("b", "b-key")] {
                let body = json!({"username": name,
                    "plugins": {"jwt-auth": {"key": key, "secret": SECRET}}});
                set.insert(
                    name,
                    Resource::parse(ResourceKind::Consumers, &body).unwrap(),
                );
            }
            for (i, r) in revocations.iter().enumerate() {
                set.insert(
                    &i.to_string(),
                    Resource::parse(ResourceKind::Revocations, r).unwrap(),
                );
            }
            JwtAuth::new(&json!({}), Arc::new(Consumers::build(&set).unwrap())).unwrap()
        };
        let token = |key: &str, jti: &str| hs256(json!({"key": key, "exp": n + 60, "jti": jti}));
        let cases = [
            (
                json!({"type": "jti", "value": "t1"}),
                "a-key",
                "t1",
                Some("JWT token revoked"),
            ),
            (json!({"type": "jti", "value": "t1"}), "a-key", "t2", None),
            (
                json!({"type": "consumer", "value": "a"}),
                "a-key",
                "t",
                Some("JWT credential revoked"),
            ),
            (
                json!({"type": "consumer", "value": "a"}),
                "b-key",
                "t",
                None,
            ),
            (
                json!({"type": "credential", "value": "b-key"}),
                "b-key",
                "t",
                Some("JWT credential revoked"),
            ),
            // Expired revocations no longer apply.
            (
                json!({"type": "jti", "value": "t1", "expires_at": n - 1}),
                "a-key",
                "t1",
                None,
            ),
            (
                json!({"type": "jti", "value": "t1", "expires_at": n + 60}),
                "a-key",
                "t1",
                Some("JWT token revoked"),
            ),
        ];
        for (revocation, key, jti, want) in cases {
            let p = plugin(std::slice::from_ref(&revocation));
            let (mut parts, _) = http::Request::get("/")
                .header("authorization", token(key, jti))
                .body(())
                .unwrap()
                .into_parts();
            let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
            let got = status_and_message(&p.check(&mut parts, &mut ctx));
            assert_eq!(
                got,
                want.map(|m| (401, m.to_string())),
                "{revocation} {key} {jti}"
            );
        }
    }

    /// Cost of one verification per algorithm (run with `--release -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_per_verification() {
        let fixture = |name: &str| {
            let path = format!(
                "{}/../tests/fixtures/auth/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::read_to_string(path).unwrap()
        };
        let mut set = ConfigSet::default();
        let creds = [
            ("hs", json!({"key": "hs", "secret": SECRET})),
            (
                "rs",
                json!({"key": "rs", "algorithm": "RS256", "public_key": fixture("rsa-public.pem")}),
            ),
            (
                "es",
                json!({"key": "es", "algorithm": "ES256", "public_key": fixture("ec-public.pem")}),
            ),
            (
                "ed",
                json!({"key": "ed", "algorithm": "EdDSA", "public_key": fixture("ed-public.pem")}),
            ),
        ];
        for (name, c) in creds {
            let body = json!({"username": name, "plugins": {"jwt-auth": c}});
            set.insert(
                name,
                Resource::parse(ResourceKind::Consumers, &body).unwrap(),
            );
        }
        let p = JwtAuth::new(&json!({}), Arc::new(Consumers::build(&set).unwrap())).unwrap();
        let claims = |k: &str| json!({"key": k, "exp": now() + 600});
        let tokens = [
            ("HS256", hs256(claims("hs"))),
            (
                "RS256",
                encode(
                    &Header::new(Algorithm::RS256),
                    &claims("rs"),
                    &EncodingKey::from_rsa_pem(fixture("rsa-private.pem").as_bytes()).unwrap(),
                )
                .unwrap(),
            ),
            (
                "ES256",
                encode(
                    &Header::new(Algorithm::ES256),
                    &claims("es"),
                    &EncodingKey::from_ec_pem(fixture("ec-private.pem").as_bytes()).unwrap(),
                )
                .unwrap(),
            ),
            (
                "EdDSA",
                encode(
                    &Header::new(Algorithm::EdDSA),
                    &claims("ed"),
                    &EncodingKey::from_ed_pem(fixture("ed-private.pem").as_bytes()).unwrap(),
                )
                .unwrap(),
            ),
        ];
        for (alg, token) in tokens {
            let req = http::Request::get("/")
                .header("authorization", format!("Bearer {token}"))
                .body(())
                .unwrap();
            let (parts, _) = req.into_parts();
            let n = 2000;
            let start = std::time::Instant::now();
            for _ in 0..n {
                let mut parts = parts.clone();
                let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
                assert!(matches!(p.check(&mut parts, &mut ctx), Flow::Continue));
            }
            println!(
                "jwt-auth {alg}: {:.1} µs per request",
                start.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        }
    }

    #[test]
    fn missing_and_conflicting_tokens() {
        let n = now();
        let a = hs256(json!({"key": "mobile-app-key", "exp": n + 60}));
        let b = hs256(json!({"key": "mobile-app-key", "exp": n + 61}));
        let (flow, _, _) = run(json!({}), http::Request::get("/").body(()).unwrap());
        assert_eq!(
            status_and_message(&flow),
            Some((401, "Missing JWT token in request".into()))
        );
        let req = http::Request::get(format!("/?jwt={b}"))
            .header("authorization", format!("Bearer {a}"))
            .body(())
            .unwrap();
        assert_eq!(
            status_and_message(&run(json!({}), req).0),
            Some((401, "different JWT tokens in one request".into()))
        );
    }

    #[test]
    fn names_are_configurable_and_hide_credentials_removes_every_copy() {
        let t = hs256(json!({"key": "mobile-app-key", "exp": now() + 60}));
        let config = json!({"header": "Authorization", "query": "token", "cookie": "jwt_token",
            "hide_credentials": true});
        let req = http::Request::get(format!("/p?a=1&token={t}"))
            .header("authorization", format!("Bearer {t}"))
            .header("cookie", format!("jwt_token={t}; session=s"))
            .body(())
            .unwrap();
        let (flow, parts, _) = run(config, req);
        assert!(status_and_message(&flow).is_none());
        assert_eq!(parts.uri.to_string(), "/p?a=1");
        assert!(parts.headers.get("authorization").is_none());
        assert_eq!(parts.headers["cookie"], "session=s");
        // Not hidden by default.
        let req = http::Request::get(format!("/p?jwt={t}")).body(()).unwrap();
        let (_, parts, _) = run(json!({}), req);
        assert!(parts.uri.query().is_some());
    }
}
