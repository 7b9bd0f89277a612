//! Signing keys published as a JWKS (`jwks_uri` of jwt-auth, the IdP's keys for
//! openid-connect), fetched through [`super::idp_client`] and cached per URI.
//!
//! - One [`JwksSource`] per URI for the whole process ([`JwksSource::shared`]): snapshots hold it
//!   through their plugins and credentials, so a config swap keeps the cache, and a URI no
//!   snapshot uses any more is dropped.
//! - Keys are found by the token's `kid`, only in the fetched set: the `kid` is never part of a
//!   URL or a path.
//! - Fresh for the answer's `Cache-Control: max-age`, bounded to [`MIN_MAX_AGE`, `MAX_MAX_AGE`]
//!   ([`DEFAULT_MAX_AGE`] without one). A stale set keeps serving while it is refreshed in the
//!   background, and keeps serving when the endpoint is down.
//! - An unknown `kid` triggers at most one refetch per [`REFETCH_INTERVAL`] (key rotation);
//!   concurrent requests share one fetch (single flight) and wait for it.
//! - Each key's algorithm comes from the JWK (`alg`, else its type and curve); symmetric (`oct`)
//!   keys and encryption keys are ignored.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::sync::watch;

use super::idp_client;

pub const MIN_MAX_AGE: Duration = Duration::from_secs(5);
pub const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// At most one refetch for unknown `kid`s per interval (a storm of made-up kids costs the IdP
/// one request).
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// After a failed fetch: how long to answer from what is cached (or fail fast when nothing
/// is) before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest `kid` looked up.
const MAX_KID_LEN: usize = 256;

/// One verification key of the set, with the only algorithm it verifies.
pub struct JwkKey {
    pub key: DecodingKey,
    pub alg: Algorithm,
}

/// The outcome of a key lookup.
pub enum Lookup {
    Found(Arc<JwkKey>),
    /// The set (fetched) has no key for this `kid` (or the token has none and the set has
    /// several keys).
    Unknown,
    /// The endpoint could not be fetched, and the key is not among what is cached (if
    /// anything is).
    Unavailable(String),
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<JwkKey>>,
    /// Keys without a `kid`: usable by tokens without one when the set has one key in all.
    anonymous: Vec<Arc<JwkKey>>,
}

impl Keys {
    fn find(&self, kid: Option<&str>) -> Option<Arc<JwkKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None if self.by_kid.len() + self.anonymous.len() == 1 => self
                .anonymous
                .first()
                .or_else(|| self.by_kid.values().next())
                .cloned(),
            None => None,
        }
    }
}

#[derive(Default)]
struct State {
    /// `None` until the first successful fetch.
    keys: Option<Arc<Keys>>,
    fresh_until: Option<Instant>,
    last_refetch: Option<Instant>,
    /// No fetch before this (set after a failure).
    retry_at: Option<Instant>,
    last_error: Option<String>,
    in_flight: bool,
}

pub struct JwksSource {
    uri: String,
    state: Mutex<State>,
    /// Bumped after each fetch, whatever its outcome: waiters for a fetch in flight watch it.
    done: watch::Sender<u64>,
}

static REGISTRY: LazyLock<Mutex<HashMap<String, Weak<JwksSource>>>> = LazyLock::new(Mutex::default);

enum Plan {
    Answer(Lookup),
    /// Wait for the fetch in flight (started by this request or another), then look again.
    Wait(watch::Receiver<u64>),
}

impl JwksSource {
    /// The process's source for `uri`, shared by every snapshot that uses it.
    pub fn shared(uri: &str) -> Arc<JwksSource> {
        let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = registry.get(uri).and_then(Weak::upgrade) {
            return s;
        }
        registry.retain(|_, w| w.strong_count() > 0);
        let source = Arc::new(JwksSource {
            uri: uri.to_string(),
            state: Mutex::default(),
            done: watch::Sender::new(0),
        });
        registry.insert(uri.to_string(), Arc::downgrade(&source));
        source
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key for `kid` when the cache can answer without waiting (fresh, or stale with the
    /// key: a refresh then starts in the background). `None`: call [`JwksSource::key`].
    pub fn cached(self: &Arc<Self>, kid: Option<&str>) -> Option<Arc<JwkKey>> {
        if kid.is_some_and(|k| k.len() > MAX_KID_LEN) {
            return None;
        }
        let mut st = self.lock();
        let key = st.keys.as_ref()?.find(kid)?;
        let now = Instant::now();
        if st.fresh_until.is_some_and(|t| now >= t)
            && !st.in_flight
            && st.retry_at.is_none_or(|t| now >= t)
        {
            st.in_flight = true;
            drop(st);
            self.spawn_fetch();
        }
        Some(key)
    }

    /// The key for `kid`, fetching the set when it was never fetched, is stale and lacks the
    /// key, or lacks the key and no refetch happened in the last [`REFETCH_INTERVAL`].
    pub async fn key(self: &Arc<Self>, kid: Option<&str>) -> Lookup {
        if kid.is_some_and(|k| k.len() > MAX_KID_LEN) {
            return Lookup::Unknown;
        }
        if let Some(k) = self.cached(kid) {
            return Lookup::Found(k);
        }
        let mut rx = match self.plan(kid) {
            Plan::Answer(l) => return l,
            Plan::Wait(rx) => rx,
        };
        // The fetch has its own timeout; this one only guards against a lost wake-up.
        let _ = tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), rx.changed()).await;
        self.settled(kid)
    }

    fn plan(self: &Arc<Self>, kid: Option<&str>) -> Plan {
        let mut st = self.lock();
        let now = Instant::now();
        if st.in_flight {
            return Plan::Wait(self.done.subscribe());
        }
        if st.retry_at.is_some_and(|t| now < t) {
            return Plan::Answer(self.answer(&st, kid));
        }
        let fetch = match &st.keys {
            None => true,
            Some(keys) if keys.find(kid).is_some() => false,
            Some(_) => {
                let stale = st.fresh_until.is_none_or(|t| now >= t);
                let may_refetch = st
                    .last_refetch
                    .is_none_or(|t| now.duration_since(t) >= REFETCH_INTERVAL);
                let fetch = stale || may_refetch;
                if fetch {
                    st.last_refetch = Some(now);
                }
                fetch
            }
        };
        if !fetch {
            return Plan::Answer(self.answer(&st, kid));
        }
        st.in_flight = true;
        let rx = self.done.subscribe();
        drop(st);
        self.spawn_fetch();
        Plan::Wait(rx)
    }

    fn settled(&self, kid: Option<&str>) -> Lookup {
        let st = self.lock();
        self.answer(&st, kid)
    }

    fn answer(&self, st: &State, kid: Option<&str>) -> Lookup {
        match &st.keys {
            Some(keys) => match keys.find(kid) {
                Some(k) => Lookup::Found(k),
                // The set could not be refreshed: the key may exist, so no verdict on it.
                None => match &st.last_error {
                    Some(e) => Lookup::Unavailable(e.clone()),
                    None => Lookup::Unknown,
                },
            },
            None => Lookup::Unavailable(
                st.last_error
                    .clone()
                    .unwrap_or_else(|| format!("JWKS {} not fetched yet", self.uri)),
            ),
        }
    }

    /// Fetches in a task of its own, so a client that goes away cannot leave the fetch half
    /// done and `in_flight` set.
    fn spawn_fetch(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let result = fetch(&this.uri).await;
            let now = Instant::now();
            let mut st = this.lock();
            match result {
                Ok((keys, max_age)) => {
                    st.keys = Some(Arc::new(keys));
                    st.fresh_until = Some(now + max_age);
                    st.retry_at = None;
                    st.last_error = None;
                }
                Err(e) => {
                    tracing::warn!(uri = %this.uri, error = %e, "JWKS fetch failed");
                    st.retry_at = Some(now + RETRY_AFTER_FAILURE);
                    st.last_error = Some(e);
                }
            }
            st.in_flight = false;
            drop(st);
            this.done.send_modify(|g| *g += 1);
        });
    }
}

async fn fetch(uri: &str) -> Result<(Keys, Duration), String> {
    let resp = idp_client::get(uri, FETCH_TIMEOUT)
        .await
        .map_err(|e| format!("JWKS {e}"))?;
    if !resp.status.is_success() {
        return Err(format!("JWKS {uri}: answered {}", resp.status.as_u16()));
    }
    let doc: Value = serde_json::from_slice(&resp.body)
        .map_err(|_| format!("JWKS {uri}: answer is not JSON"))?;
    let keys = parse_keys(&doc).ok_or_else(|| format!("JWKS {uri}: no usable signing key"))?;
    let max_age = idp_client::max_age(&resp.headers)
        .map_or(DEFAULT_MAX_AGE, Duration::from_secs)
        .clamp(MIN_MAX_AGE, MAX_MAX_AGE);
    Ok((keys, max_age))
}

/// The usable keys of a JWKS document; `None` when there is none (an empty or broken set
/// must not replace a working cached one).
fn parse_keys(doc: &Value) -> Option<Keys> {
    let mut keys = Keys::default();
    for raw in doc.get("keys")?.as_array()? {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
            continue;
        };
        let Some(key) = usable(&jwk) else {
            continue;
        };
        match jwk.common.key_id {
            Some(kid) => {
                keys.by_kid.insert(kid, Arc::new(key));
            }
            None => keys.anonymous.push(Arc::new(key)),
        }
    }
    (!keys.by_kid.is_empty() || !keys.anonymous.is_empty()).then_some(keys)
}

/// A signing key with the one algorithm it may verify: the JWK's `alg` when it fits the key
/// type, else the type's usual one.
fn usable(jwk: &Jwk) -> Option<JwkKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let declared = jwk.common.key_algorithm;
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match declared {
            None => Algorithm::RS256,
            Some(KeyAlgorithm::RS256) => Algorithm::RS256,
            Some(KeyAlgorithm::RS384) => Algorithm::RS384,
            Some(KeyAlgorithm::RS512) => Algorithm::RS512,
            Some(KeyAlgorithm::PS256) => Algorithm::PS256,
            Some(KeyAlgorithm::PS384) => Algorithm::PS384,
            Some(KeyAlgorithm::PS512) => Algorithm::PS512,
            Some(_) => return None,
        },
        AlgorithmParameters::EllipticCurve(p) => {
            let alg = match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return None,
            };
            let matches = match declared {
                None => true,
                Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
                Some(KeyAlgorithm::ES384) => alg == Algorithm::ES384,
                Some(_) => false,
            };
            if !matches {
                return None;
            }
            alg
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519
                || !matches!(declared, None | Some(KeyAlgorithm::EdDSA))
            {
                return None;
            }
            Algorithm::EdDSA
        }
        // Symmetric keys have no place in a published set; other types are not supported.
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(JwkKey { key, alg })
}

/// The `kid` of a token's header, read before verification only to pick the key (`None`
/// when the header has none). `None` when the header is not a valid JWS header (no or an
/// unknown `alg`, including `none`).
pub fn header_kid(token: &str) -> Option<Option<String>> {
    jsonwebtoken::decode_header(token).ok().map(|h| h.kid)
}

/// Verifies `token` with `key`, accepting only the key's algorithm; `validation` carries the
/// claim rules (its algorithm list is replaced).
pub fn verify(
    token: &str,
    key: &JwkKey,
    validation: &jsonwebtoken::Validation,
) -> Result<Value, jsonwebtoken::errors::Error> {
    let mut v = validation.clone();
    v.algorithms = vec![key.alg];
    jsonwebtoken::decode::<Value>(token.as_bytes(), &key.key, &v).map(|d| d.claims)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set() -> Value {
        let path = format!(
            "{}/../tests/fixtures/auth/jwks.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn keys_get_their_algorithm_from_the_jwk() {
        let keys = parse_keys(&set()).unwrap();
        let cases = [
            ("rsa-1", Algorithm::RS256),
            ("rsa-2", Algorithm::RS256),
            ("ec-1", Algorithm::ES256),
            ("ed-1", Algorithm::EdDSA),
        ];
        for (kid, alg) in cases {
            assert_eq!(keys.find(Some(kid)).unwrap().alg, alg, "{kid}");
        }
        assert!(keys.find(Some("../../dev/null")).is_none());
        assert!(keys.find(None).is_none(), "several keys: a kid is needed");
    }

    /// Cost of finding a cached key by `kid` and verifying with it, per algorithm (run with
    /// `--release -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_with_a_cached_key() {
        use jsonwebtoken::{EncodingKey, Header};
        let pem = |name: &str| {
            let path = format!(
                "{}/../tests/fixtures/auth/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::read(path).unwrap()
        };
        let keys = parse_keys(&set()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["exp"]);
        let claims = json!({"sub": "u", "exp": jsonwebtoken::get_current_timestamp() + 600});
        let cases = [
            (
                "rsa-1",
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&pem("rsa-private.pem")),
            ),
            (
                "ec-1",
                Algorithm::ES256,
                EncodingKey::from_ec_pem(&pem("ec-private.pem")),
            ),
            (
                "ed-1",
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(&pem("ed-private.pem")),
            ),
        ];
        for (kid, alg, key) in cases {
            let mut header = Header::new(alg);
            header.kid = Some(kid.to_string());
            let token = jsonwebtoken::encode(&header, &claims, &key.unwrap()).unwrap();
            let n = 2000;
            let start = std::time::Instant::now();
            for _ in 0..n {
                let kid = header_kid(&token).unwrap();
                let key = keys.find(kid.as_deref()).unwrap();
                verify(&token, &key, &validation).unwrap();
            }
            println!(
                "JWKS {alg:?}, key cached: {:.1} µs per token",
                start.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        }
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let full = set();
        let rsa = full["keys"][0].clone();
        let ec = full["keys"][2].clone();
        let with = |mut k: Value, field: &str, v: Value| {
            k[field] = v;
            k
        };
        let cases = [
            (json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}), false),
            (with(rsa.clone(), "alg", json!("ES256")), false),
            (with(rsa.clone(), "alg", json!("none")), false),
            (with(rsa.clone(), "use", json!("enc")), false),
            (with(ec.clone(), "alg", json!("ES384")), false),
            (with(rsa.clone(), "alg", json!("PS256")), true),
            (with(ec, "crv", json!("P-521")), false),
            (json!({"kty": "RSA", "kid": "x", "n": 1}), false),
        ];
        for (k, ok) in cases {
            let doc = json!({"keys": [k.clone()]});
            assert_eq!(parse_keys(&doc).is_some(), ok, "{k}");
        }
        // One anonymous key serves tokens without a kid.
        let mut anon = rsa;
        anon.as_object_mut().unwrap().remove("kid");
        let keys = parse_keys(&json!({"keys": [anon]})).unwrap();
        assert!(keys.find(None).is_some());
        assert!(parse_keys(&json!({"keys": []})).is_none());
        assert!(parse_keys(&json!({"nope": 1})).is_none());
    }
}
