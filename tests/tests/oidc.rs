//! `jwks_uri` for jwt-auth and `openid-connect` (bearer mode) against a small identity
//! provider run by the test over real HTTP: discovery, a JWKS that can rotate, RFC 7662
//! introspection that checks the gateway's client credentials. Tokens are minted here with the
//! test-only keys of `tests/fixtures/auth/` (their public halves in `jwks.json`); the upstream
//! echoes the headers it received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use postern_tests::*;
use serde_json::{Map, Value, json};

const CLIENT_ID: &str = "api-gateway";
/// Test-only client secret of the in-test IdP.
const CLIENT_SECRET: &str = "test-only-client-secret";

fn fixture(name: &str) -> String {
    let path = format!("{}/fixtures/auth/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// The fixture JWKs by kid.
fn jwk(kid: &str) -> Value {
    let set: Value = serde_json::from_str(&fixture("jwks.json")).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .cloned()
        .unwrap_or_else(|| panic!("no fixture key {kid}"))
}

/// A token signed with the fixture key `kid` (rsa-1, rsa-2, ec-1, ed-1).
fn mint(kid: &str, claims: Value) -> String {
    let (alg, key) = match kid {
        "rsa-1" => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(fixture("rsa-private.pem").as_bytes()),
        ),
        "rsa-2" => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(fixture("rsa2-private.pem").as_bytes()),
        ),
        "ec-1" => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(fixture("ec-private.pem").as_bytes()),
        ),
        "ed-1" => (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(fixture("ed-private.pem").as_bytes()),
        ),
        other => panic!("no key {other}"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    encode(&header, &claims, &key.unwrap()).unwrap()
}

/// A token with a hand-made header and signature (for headers `encode` refuses to write).
fn raw_token(header: Value, claims: Value, signature: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{signature}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    )
}

/// The in-test identity provider.
struct Idp {
    addr: SocketAddr,
    /// The JWKS served, by path (`/realms/r/jwks`, `/jwks-b`…).
    jwks: Mutex<HashMap<String, Vec<Value>>>,
    /// `Cache-Control: max-age` of JWKS answers by path [default: 300].
    jwks_max_age: Mutex<HashMap<String, u64>>,
    /// Opaque token → introspection answer.
    tokens: Mutex<HashMap<String, Value>>,
    /// Requests by path.
    hits: Mutex<HashMap<String, usize>>,
    /// Every path asked for (the gateway must never build one from a `kid`).
    paths: Mutex<Vec<String>>,
    /// How the client authenticated at the introspection endpoint (basic / post).
    client_auth: Mutex<Vec<&'static str>>,
    down: AtomicBool,
    connections: AtomicUsize,
}

impl Idp {
    async fn start() -> Arc<Idp> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idp = Arc::new(Idp {
            addr: listener.local_addr().unwrap(),
            jwks: Mutex::default(),
            jwks_max_age: Mutex::default(),
            tokens: Mutex::default(),
            hits: Mutex::default(),
            paths: Mutex::default(),
            client_auth: Mutex::default(),
            down: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        });
        idp.set_jwks("/realms/r/jwks", &["rsa-1", "ec-1", "ed-1"]);
        let this = idp.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if this.down.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                this.connections.fetch_add(1, Ordering::SeqCst);
                let idp = this.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let idp = idp.clone();
                        async move { idp.serve(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        idp
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn issuer(&self) -> String {
        format!("{}/realms/r", self.base())
    }

    fn set_jwks(&self, path: &str, kids: &[&str]) {
        let keys = kids.iter().map(|k| jwk(k)).collect();
        self.jwks.lock().unwrap().insert(path.to_string(), keys);
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn add_token(&self, token: &str, answer: Value) {
        self.tokens
            .lock()
            .unwrap()
            .insert(token.to_string(), answer);
    }

    async fn serve(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<Full<Bytes>>, std::io::Error> {
        if self.down.load(Ordering::SeqCst) {
            // Drops the connection: unreachable, not an HTTP error.
            return Err(std::io::Error::other("down"));
        }
        let path = req.uri().path().to_string();
        self.paths.lock().unwrap().push(req.uri().to_string());
        *self.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
        let json = |status: u16, v: Value, max_age: Option<u64>| {
            let mut b = hyper::Response::builder()
                .status(status)
                .header("content-type", "application/json");
            if let Some(m) = max_age {
                b = b.header("cache-control", format!("public, max-age={m}"));
            }
            Ok(b.body(Full::new(Bytes::from(v.to_string()))).unwrap())
        };
        if path == "/realms/r/.well-known/openid-configuration" {
            let issuer = self.issuer();
            return json(
                200,
                json!({
                    "issuer": issuer,
                    "jwks_uri": format!("{issuer}/jwks"),
                    "introspection_endpoint": format!("{issuer}/introspect"),
                    "token_endpoint": format!("{issuer}/token"),
                }),
                None,
            );
        }
        if let Some(keys) = self.jwks.lock().unwrap().get(&path) {
            let max_age = *self.jwks_max_age.lock().unwrap().get(&path).unwrap_or(&300);
            return json(200, json!({ "keys": keys }), Some(max_age));
        }
        if path == "/realms/r/introspect" && req.method() == hyper::Method::POST {
            let basic = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .map(|b| {
                    let raw = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
                    String::from_utf8(raw).unwrap()
                });
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form: HashMap<String, String> = String::from_utf8(body.to_vec())
                .unwrap()
                .split('&')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (decode(k), decode(v)))
                .collect();
            let (method, id, secret) = match basic {
                Some(b) => {
                    let (id, secret) = b.split_once(':').unwrap();
                    ("basic", decode(id), decode(secret))
                }
                None => (
                    "post",
                    form.get("client_id").cloned().unwrap_or_default(),
                    form.get("client_secret").cloned().unwrap_or_default(),
                ),
            };
            if id != CLIENT_ID || secret != CLIENT_SECRET {
                return json(401, json!({"error": "invalid_client"}), None);
            }
            self.client_auth.lock().unwrap().push(method);
            let token = form.get("token").cloned().unwrap_or_default();
            let answer = self
                .tokens
                .lock()
                .unwrap()
                .get(&token)
                .cloned()
                .unwrap_or(json!({"active": false}));
            return json(200, answer, None);
        }
        json(404, json!({"error": "not found"}), None)
    }
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 3 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// An upstream that answers 200 with the request's headers as JSON.
async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let mut headers = Map::new();
                    for (name, value) in req.headers() {
                        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
                        headers.insert(name.as_str().to_string(), Value::String(v));
                    }
                    let body = json!({"headers": headers});
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        body.to_string(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

struct Answer {
    status: u16,
    challenge: Option<String>,
    body: Value,
}

impl Answer {
    fn seen(&self, name: &str) -> Option<&str> {
        self.body["headers"][name].as_str()
    }
}

struct Gateway {
    _dir: tempfile::TempDir,
    cp: ControlPlane,
    admin: AdminClient,
    proxy: SocketAddr,
    echo: SocketAddr,
    http: reqwest::Client,
}

impl Gateway {
    async fn start() -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let echo = echo_upstream().await;
        let cp = ControlPlane::start_dev(dir.path()).await;
        Gateway {
            admin: cp.client(),
            proxy: cp.proxy.unwrap(),
            _dir: dir,
            cp,
            echo,
            http: reqwest::Client::new(),
        }
    }

    /// PUTs a route to the echo upstream with `plugins`, and waits until it is served.
    async fn route(&self, id: &str, uri: &str, plugins: Value) {
        let rev = self
            .admin
            .put_ok(
                &format!("/admin/routes/{id}"),
                json!({"uri": uri, "plugins": plugins,
                    "upstream": {"nodes": {self.echo.to_string(): 1}}}),
            )
            .await;
        self.applied(rev).await;
    }

    async fn applied(&self, rev: u64) {
        wait_applied(self.cp.status.unwrap(), rev).await;
    }

    async fn call(&self, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Answer {
        let mut req = self.http.get(format!("http://{}{path}", self.proxy));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("proxy request");
        let status = resp.status().as_u16();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        Answer {
            status,
            challenge,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    async fn status(&self, path: &str, token: &str) -> u16 {
        self.call(path, Some(token), &[]).await.status
    }
}

/// jwt-auth with `jwks_uri`: on a consumer's credential (RSA, EC, Ed25519 keys by kid) and on
/// the route; rotation; a storm of unknown kids costs one fetch; the raw kid is never a path;
/// the algorithm is the JWK's; cached keys outlive an IdP outage; nothing cached → 503.
#[tokio::test]
async fn jwt_auth_with_a_jwks_uri() {
    let idp = Idp::start().await;
    idp.set_jwks("/jwks-b", &["rsa-1"]);
    // Served with max-age 1 (the gateway keeps it at least 5 s).
    idp.set_jwks("/jwks-d", &["ec-1"]);
    idp.jwks_max_age.lock().unwrap().insert("/jwks-d".into(), 1);
    let gw = Gateway::start().await;
    let rev = gw
        .admin
        .put_ok(
            "/admin/consumers/partner",
            json!({"plugins": {"jwt-auth": {"key": "partner-key",
                "jwks_uri": format!("{}/realms/r/jwks", idp.base())}}}),
        )
        .await;
    gw.applied(rev).await;
    gw.route("by-consumer", "/c/*", json!({"jwt-auth": {}}))
        .await;
    gw.route(
        "by-route",
        "/r/*",
        json!({"jwt-auth": {"jwks_uri": format!("{}/jwks-b", idp.base())}}),
    )
    .await;
    gw.route(
        "short-lived",
        "/s/*",
        json!({"jwt-auth": {"jwks_uri": format!("{}/jwks-d", idp.base())}}),
    )
    .await;
    let exp = now() + 600;
    let claims = json!({"key": "partner-key", "exp": exp});

    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let a = gw.call("/c/1", Some(&mint(kid, claims.clone())), &[]).await;
        assert_eq!(a.status, 200, "{kid}: {}", a.body);
        assert_eq!(a.seen("x-consumer-username"), Some("partner"));
        assert_eq!(a.seen("x-credential-identifier"), Some("partner-key"));
    }
    assert_eq!(idp.hits("/realms/r/jwks"), 1, "one fetch for three keys");
    // A new snapshot (an unrelated route, and the consumer edited) keeps the cache.
    gw.route("other", "/other/*", json!({})).await;
    let rev = gw
        .admin
        .put_ok(
            "/admin/consumers/partner",
            json!({"desc": "edited", "plugins": {"jwt-auth": {"key": "partner-key",
                "jwks_uri": format!("{}/realms/r/jwks", idp.base())}}}),
        )
        .await;
    gw.applied(rev).await;
    assert_eq!(gw.status("/c/1", &mint("ec-1", claims.clone())).await, 200);
    assert_eq!(
        idp.hits("/realms/r/jwks"),
        1,
        "no refetch after a snapshot swap"
    );

    // The algorithm is the JWK's: alg none, or HS256 with the kid of an RSA key, fail.
    let forged = [
        raw_token(json!({"alg": "none", "kid": "rsa-1"}), claims.clone(), ""),
        encode(
            &Header {
                kid: Some("rsa-1".into()),
                ..Header::new(Algorithm::HS256)
            },
            &claims,
            &EncodingKey::from_secret(fixture("rsa-public.pem").as_bytes()).unwrap(),
        )
        .unwrap(),
        mint("rsa-1", json!({"key": "partner-key"})),
        mint("rsa-1", json!({"key": "partner-key", "exp": now() - 10})),
    ];
    for t in &forged {
        let a = gw.call("/c/1", Some(t), &[]).await;
        assert_eq!(a.status, 401, "{}", a.body);
    }

    // Rotation: the IdP now signs with rsa-2 and dropped rsa-1. The first rsa-2 token costs
    // one refetch; rsa-1 is gone from the cache with it.
    idp.set_jwks("/realms/r/jwks", &["rsa-2", "ec-1", "ed-1"]);
    assert_eq!(gw.status("/c/1", &mint("rsa-2", claims.clone())).await, 200);
    assert_eq!(idp.hits("/realms/r/jwks"), 2);
    let a = gw
        .call("/c/1", Some(&mint("rsa-1", claims.clone())), &[])
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.body["message"], "JWT token signing key unknown");

    // The route's own JWKS; a token naming no consumer is known by its sub.
    let svc = mint("rsa-1", json!({"sub": "svc-7", "exp": exp}));
    let a = gw
        .call("/r/1", Some(&svc), &[("x-consumer-username", "forged")])
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.seen("x-credential-identifier"), Some("svc-7"));
    assert_eq!(a.seen("x-consumer-username"), None);
    let a = gw
        .call("/r/1", Some(&mint("rsa-1", claims.clone())), &[])
        .await;
    assert_eq!(a.seen("x-consumer-username"), Some("partner"));
    assert_eq!(idp.hits("/jwks-b"), 1);

    // A storm of made-up kids (the kid of ../../dev/null among them): one refetch for all.
    let mut storm = Vec::new();
    for i in 0..100 {
        let kid = if i == 0 {
            "../../dev/null".to_string()
        } else {
            format!("made-up-{i}")
        };
        let t = encode(
            &Header {
                kid: Some(kid),
                ..Header::new(Algorithm::RS256)
            },
            &json!({"sub": "x", "exp": exp}),
            &EncodingKey::from_rsa_pem(fixture("rsa-private.pem").as_bytes()).unwrap(),
        )
        .unwrap();
        let gw = &gw;
        storm.push(async move { gw.status("/r/1", &t).await });
    }
    let statuses = futures_util::future::join_all(storm).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(idp.hits("/jwks-b"), 2, "100 unknown kids, one refetch");
    // And none again within the throttle interval.
    assert_eq!(
        gw.status("/r/1", &mint("rsa-2", json!({"sub": "x", "exp": exp})))
            .await,
        401
    );
    assert_eq!(idp.hits("/jwks-b"), 2);
    assert!(
        idp.paths
            .lock()
            .unwrap()
            .iter()
            .all(|p| !p.contains("dev") && !p.contains("made-up")),
        "a kid reached a URL"
    );

    // The IdP goes down: cached keys keep working, also once stale (max-age 1 s, bounded to
    // 5 s by the gateway).
    let short = mint("ec-1", json!({"sub": "svc-8", "exp": exp}));
    assert_eq!(gw.status("/s/1", &short).await, 200);
    idp.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(6)).await;
    for kid in ["rsa-2", "ec-1", "ed-1"] {
        assert_eq!(
            gw.status("/c/1", &mint(kid, claims.clone())).await,
            200,
            "{kid}"
        );
    }
    assert_eq!(gw.status("/r/1", &svc).await, 200);
    assert_eq!(
        gw.status("/s/1", &short).await,
        200,
        "stale keys while down"
    );
    assert_eq!(idp.hits("/jwks-d"), 1);
    // A JWKS never fetched: 503 with a clear body, not 401.
    gw.route(
        "never-fetched",
        "/n/*",
        json!({"jwt-auth": {"jwks_uri": format!("{}/jwks-c", idp.base())}}),
    )
    .await;
    let a = gw.call("/n/1", Some(&svc), &[]).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("JWKS endpoint cannot be reached"),
        "{}",
        a.body
    );
}

/// The guide's Kong config, with its URLs pointed at the in-test IdP.
fn guide_config(idp: &Idp) -> Value {
    json!({
        "issuer": idp.issuer(),
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uri": "https://api.example.com/callback",
        "auth_methods": ["authorization_code", "client_credentials", "password"],
        "token_endpoint_auth_method": "client_secret_post",
        "scopes_required": ["openid", "profile", "api:read"],
        "cache_ttl": 300,
        "introspection_endpoint": format!("{}/introspect", idp.issuer()),
        "upstream_headers_claims": ["sub", "email", "realm_access.roles"],
        "upstream_headers_names": ["X-User-ID", "X-User-Email", "X-User-Roles"]
    })
}

/// The guide's config exactly as written is accepted (secret redacted on reads); bad ones are
/// refused naming the field; with its IdP unreachable, requests get 503.
#[tokio::test]
async fn the_guides_kong_config_as_written() {
    let gw = Gateway::start().await;
    let guide = json!({
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
    });
    gw.route("guide", "/api/*", json!({"openid-connect": guide.clone()}))
        .await;
    let (status, body) = gw.admin.get("/admin/routes/guide").await.unwrap();
    assert_eq!(status, 200);
    let shown = &body["value"]["plugins"]["openid-connect"];
    assert_eq!(shown["client_secret"], "<redacted>", "{body}");
    assert!(!body.to_string().contains("gateway-secret-value"));
    assert_eq!(shown["client_id"], "api-gateway");
    // GET → PUT back keeps the stored secret; the marker on a route with none stored is refused.
    let mut back = body["value"].clone();
    back["desc"] = json!("edited");
    let rev = gw.admin.put_ok("/admin/routes/guide", back.clone()).await;
    gw.applied(rev).await;
    let (status, resp) = gw
        .admin
        .request(
            reqwest::Method::PUT,
            "/admin/routes/copy",
            Some(&back.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{resp}");
    assert_eq!(resp["field"], "plugins.openid-connect.client_secret");

    // Unreachable (https is not spoken to IdPs yet; no such host either): 503, never 401.
    let token = mint("rsa-1", json!({"sub": "u", "exp": now() + 60}));
    let a = gw.call("/api/x", Some(&token), &[]).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .starts_with("identity provider unavailable"),
        "{}",
        a.body
    );
    // No token at all is still a 401: nothing to check.
    let a = gw.call("/api/x", None, &[]).await;
    assert_eq!(a.status, 401);
    assert!(a.challenge.unwrap().starts_with("Bearer realm="));

    let with = |field: &str, v: Value| {
        let mut c = guide.clone();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(field);
        } else {
            c[field] = v;
        }
        c
    };
    let bad = [
        (with("issuer", Value::Null), "issuer"),
        (
            with("upstream_headers_names", json!(["X-User-ID"])),
            "upstream_headers_names",
        ),
        (
            with("token_endpoint_auth_method", json!("private_key_jwt")),
            "token_endpoint_auth_method",
        ),
        (with("client_secret", Value::Null), "client_secret"),
        (with("auth_methods", json!(["magic"])), "auth_methods"),
        (with("cache_ttl", json!("300")), "cache_ttl"),
    ];
    let before = gw.admin.revision().await;
    for (config, field) in bad {
        let body = json!({"uri": "/bad", "plugins": {"openid-connect": config},
            "upstream": {"nodes": {gw.echo.to_string(): 1}}});
        let (status, resp) = gw
            .admin
            .request(
                reqwest::Method::PUT,
                "/admin/routes/bad",
                Some(&body.to_string()),
            )
            .await
            .unwrap();
        assert_eq!(status, 400, "{field}: {resp}");
        assert_eq!(
            resp["field"],
            format!("plugins.openid-connect.{field}"),
            "{resp}"
        );
        assert!(!resp.to_string().contains("gateway-secret-value"));
    }
    assert_eq!(gw.admin.revision().await, before, "nothing changed");
}

/// JWT access tokens: validated against the IdP's JWKS; scopes, issuer, expiry; the guide's
/// claims reach the upstream as headers and a client's copies are removed; revocation.
#[tokio::test]
async fn openid_connect_with_jwt_access_tokens() {
    let idp = Idp::start().await;
    let gw = Gateway::start().await;
    gw.route(
        "oidc",
        "/api/*",
        json!({"openid-connect": guide_config(&idp)}),
    )
    .await;
    let exp = now() + 600;
    let claims = |extra: Value| {
        let mut c = json!({"iss": idp.issuer(), "sub": "user-1", "exp": exp,
            "email": "user-1@example.com", "realm_access": {"roles": ["admin", "user"]},
            "scope": "openid profile api:read", "jti": "t-1"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let good = mint("rsa-1", claims(json!({})));
    let a = gw
        .call(
            "/api/x",
            Some(&good),
            &[("x-user-id", "admin"), ("x-user-email", "forged")],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.seen("x-user-id"), Some("user-1"));
    assert_eq!(a.seen("x-user-email"), Some("user-1@example.com"));
    assert_eq!(a.seen("x-user-roles"), Some("admin,user"));
    assert_eq!(a.seen("x-credential-identifier"), Some("user-1"));
    // A claim the token lacks: the client's copy is removed, nothing put instead.
    let no_email = mint("ec-1", claims(json!({"email": null})));
    let a = gw
        .call(
            "/api/x",
            Some(&no_email),
            &[("x-user-email", "forged@evil")],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.seen("x-user-email"), None);

    let cases = [
        (
            "missing scope",
            mint("rsa-1", claims(json!({"scope": "openid profile"}))),
            403,
        ),
        (
            "scp list",
            mint(
                "rsa-1",
                claims(json!({"scope": null, "scp": ["openid", "profile", "api:read"]})),
            ),
            200,
        ),
        (
            "wrong issuer",
            mint("rsa-1", claims(json!({"iss": "http://evil/realms/r"}))),
            401,
        ),
        ("no exp", mint("rsa-1", claims(json!({"exp": null}))), 401),
        (
            "expired",
            mint("rsa-1", claims(json!({"exp": now() - 30}))),
            401,
        ),
        (
            "kid ../../dev/null",
            raw_token(
                json!({"alg": "RS256", "kid": "../../dev/null"}),
                claims(json!({})),
                "AAAA",
            ),
            401,
        ),
        (
            "alg none",
            raw_token(
                json!({"alg": "none", "kid": "rsa-1"}),
                claims(json!({})),
                "",
            ),
            401,
        ),
        ("Ed25519", mint("ed-1", claims(json!({}))), 200),
    ];
    for (what, token, want) in cases {
        let a = gw.call("/api/x", Some(&token), &[]).await;
        assert_eq!(a.status, want, "{what}: {}", a.body);
        if want == 403 {
            assert!(a.challenge.unwrap().contains("insufficient_scope"));
        }
    }
    assert!(
        idp.paths.lock().unwrap().iter().all(|p| !p.contains("dev")),
        "a kid reached a URL"
    );
    assert_eq!(
        idp.hits("/realms/r/introspect"),
        0,
        "JWTs are checked locally"
    );

    // Revoking the token's jti refuses it, the others still pass.
    let rev = gw
        .admin
        .put_ok(
            "/admin/revocations/t1",
            json!({"type": "jti", "value": "t-1", "expires_at": exp}),
        )
        .await;
    gw.applied(rev).await;
    assert_eq!(gw.status("/api/x", &good).await, 401);
    let other = mint("rsa-1", claims(json!({"jti": "t-2"})));
    assert_eq!(gw.status("/api/x", &other).await, 200);

    // consumer_claim: the token names a consumer, who is then the caller (group, restriction,
    // consumer revocation); a token naming none is refused.
    gw.admin
        .put_ok("/admin/consumer_groups/staff", json!({"desc": "staff"}))
        .await;
    gw.admin
        .put_ok(
            "/admin/consumers/alice",
            json!({"username": "alice", "group_id": "staff"}),
        )
        .await;
    let mut mapped = guide_config(&idp);
    mapped["consumer_claim"] = json!(["preferred_username"]);
    gw.route(
        "mapped",
        "/mapped/*",
        json!({"openid-connect": mapped, "consumer-restriction": {
            "type": "consumer_group_id", "whitelist": ["staff"]}}),
    )
    .await;
    let alice = mint(
        "rsa-1",
        claims(json!({"preferred_username": "alice", "jti": "t-3"})),
    );
    let a = gw
        .call(
            "/mapped/x",
            Some(&alice),
            &[("x-consumer-username", "root")],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.seen("x-consumer-username"), Some("alice"));
    assert_eq!(a.seen("x-consumer-group"), Some("staff"));
    assert_eq!(a.seen("x-credential-identifier"), Some("user-1"));
    let mallory = mint(
        "rsa-1",
        claims(json!({"preferred_username": "mallory", "jti": "t-4"})),
    );
    assert_eq!(gw.status("/mapped/x", &mallory).await, 401);
    let rev = gw
        .admin
        .put_ok(
            "/admin/revocations/alice",
            json!({"type": "consumer", "value": "alice"}),
        )
        .await;
    gw.applied(rev).await;
    assert_eq!(gw.status("/mapped/x", &alice).await, 401);

    // Verification cost with the key cached, against the same route without the plugin.
    gw.route("plain", "/plain/*", json!({})).await;
    let n = 300;
    let mut per = Vec::new();
    for (path, token) in [("/plain/x", None), ("/api/x", Some(other.as_str()))] {
        let start = Instant::now();
        for _ in 0..n {
            assert_eq!(gw.call(path, token, &[]).await.status, 200);
        }
        per.push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    println!(
        "openid-connect RS256 JWT, JWKS key cached: {:.0} µs per request vs {:.0} µs without \
         the plugin (+{:.0} µs)",
        per[1],
        per[0],
        per[1] - per[0]
    );
    // The first fetch, and one refetch for the unknown kid of ../../dev/null.
    assert_eq!(idp.hits("/realms/r/jwks"), 2);
    assert_eq!(
        idp.hits("/realms/r/.well-known/openid-configuration"),
        1,
        "discovery cached"
    );
}

/// Opaque tokens: RFC 7662 introspection with client credentials (post and basic); inactive →
/// 401; answers cached `cache_ttl` but never past the token's `exp`; revocations still apply
/// to cached answers; a wrong client secret at the IdP is a 503.
#[tokio::test]
async fn openid_connect_with_opaque_tokens() {
    let idp = Idp::start().await;
    let gw = Gateway::start().await;
    let mut basic = guide_config(&idp);
    basic["token_endpoint_auth_method"] = json!("client_secret_basic");
    basic["cache_ttl"] = json!(1);
    let mut wrong = guide_config(&idp);
    wrong["client_secret"] = json!("not-the-secret");
    gw.route(
        "post",
        "/post/*",
        json!({"openid-connect": guide_config(&idp)}),
    )
    .await;
    gw.route("basic", "/basic/*", json!({"openid-connect": basic}))
        .await;
    gw.route("wrong", "/wrong/*", json!({"openid-connect": wrong}))
        .await;
    let active = |sub: &str, exp: u64| {
        json!({"active": true, "sub": sub, "exp": exp, "scope": "openid profile api:read",
            "email": format!("{sub}@example.com"), "realm_access": {"roles": ["user"]},
            "client_id": "web"})
    };
    let exp = now() + 600;
    idp.add_token("opaque-active", active("user-2", exp));
    idp.add_token("opaque-inactive", json!({"active": false}));
    idp.add_token(
        "opaque-narrow",
        json!({"active": true, "sub": "u", "exp": exp, "scope": "openid"}),
    );
    let introspections = || idp.hits("/realms/r/introspect");

    let a = gw
        .call(
            "/post/x",
            Some("opaque-active"),
            &[("x-user-roles", "admin")],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.seen("x-user-id"), Some("user-2"));
    assert_eq!(a.seen("x-user-roles"), Some("user"));
    assert_eq!(introspections(), 1);
    assert_eq!(*idp.client_auth.lock().unwrap().last().unwrap(), "post");
    // Cached: no second introspection.
    assert_eq!(gw.status("/post/x", "opaque-active").await, 200);
    assert_eq!(introspections(), 1);
    let a = gw.call("/post/x", Some("opaque-inactive"), &[]).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.body["message"], "token not active");
    assert_eq!(gw.status("/post/x", "never-issued").await, 401);
    assert_eq!(gw.status("/post/x", "opaque-narrow").await, 403);

    // A new snapshot that leaves the route alone keeps its cached answers.
    let n = introspections();
    gw.route("other", "/other/*", json!({})).await;
    assert_eq!(gw.status("/post/x", "opaque-active").await, 200);
    assert_eq!(introspections(), n, "cached across a snapshot swap");

    // client_secret_basic, and a cache_ttl of 1 s honoured.
    assert_eq!(gw.status("/basic/x", "opaque-active").await, 200);
    assert_eq!(*idp.client_auth.lock().unwrap().last().unwrap(), "basic");
    let n = introspections();
    assert_eq!(gw.status("/basic/x", "opaque-active").await, 200);
    assert_eq!(introspections(), n, "cached");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(gw.status("/basic/x", "opaque-active").await, 200);
    assert_eq!(introspections(), n + 1, "asked again after cache_ttl");

    // cache_ttl 300, but the token expires in 2 s: the answer is not kept past exp.
    idp.add_token("opaque-short", active("user-3", now() + 2));
    assert_eq!(gw.status("/post/x", "opaque-short").await, 200);
    let n = introspections();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(gw.status("/post/x", "opaque-short").await, 401);
    assert_eq!(introspections(), n + 1, "asked again once exp passed");

    // The IdP refuses the gateway's credentials: not the caller's fault → 503.
    let a = gw.call("/wrong/x", Some("opaque-active"), &[]).await;
    assert_eq!(a.status, 503, "{}", a.body);

    // A credential revocation of the token's sub applies to the cached answer too.
    let rev = gw
        .admin
        .put_ok(
            "/admin/revocations/user-2",
            json!({"type": "credential", "value": "user-2"}),
        )
        .await;
    gw.applied(rev).await;
    let n = introspections();
    assert_eq!(gw.status("/post/x", "opaque-active").await, 401);
    assert_eq!(introspections(), n, "refused from the cache");

    // Round trip with and without the cache.
    let tokens: Vec<String> = (0..200).map(|i| format!("opaque-bench-{i}")).collect();
    for t in &tokens {
        idp.add_token(t, active("bench", now() + 600));
    }
    let start = Instant::now();
    for t in &tokens {
        assert_eq!(gw.status("/post/x", t).await, 200);
    }
    let uncached = start.elapsed().as_secs_f64() * 1e6 / tokens.len() as f64;
    let start = Instant::now();
    for t in &tokens {
        assert_eq!(gw.status("/post/x", t).await, 200);
    }
    let cached = start.elapsed().as_secs_f64() * 1e6 / tokens.len() as f64;
    println!(
        "openid-connect introspection: {uncached:.0} µs per request uncached (IdP round trip), \
         {cached:.0} µs cached"
    );
}

/// The IdP down: with discovery and keys cached, JWTs and cached opaque tokens still pass;
/// what needs the IdP gets 503, never 401.
#[tokio::test]
async fn openid_connect_while_the_idp_is_down() {
    let idp = Idp::start().await;
    let gw = Gateway::start().await;
    gw.route(
        "oidc",
        "/api/*",
        json!({"openid-connect": guide_config(&idp)}),
    )
    .await;
    let token = mint(
        "rsa-1",
        json!({"iss": idp.issuer(), "sub": "u", "exp": now() + 600,
            "scope": "openid profile api:read"}),
    );
    idp.add_token(
        "opaque-1",
        json!({"active": true, "sub": "u", "exp": now() + 600, "scope": "openid profile api:read"}),
    );
    idp.add_token(
        "opaque-2",
        json!({"active": true, "sub": "u", "exp": now() + 600, "scope": "openid profile api:read"}),
    );
    assert_eq!(gw.status("/api/x", &token).await, 200);
    assert_eq!(gw.status("/api/x", "opaque-1").await, 200);

    idp.down.store(true, Ordering::SeqCst);
    assert_eq!(gw.status("/api/x", &token).await, 200, "keys cached");
    assert_eq!(gw.status("/api/x", "opaque-1").await, 200, "answer cached");
    let a = gw.call("/api/x", Some("opaque-2"), &[]).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("introspection")
    );
    // A kid not cached (a rotated key?): the refetch fails, so the gateway cannot tell → 503.
    let rotated = mint(
        "rsa-2",
        json!({"iss": idp.issuer(), "sub": "u", "exp": now() + 600}),
    );
    assert_eq!(gw.status("/api/x", &rotated).await, 503);

    // A second gateway that never saw the IdP: nothing cached → 503 with a clear body.
    let fresh = Gateway::start().await;
    fresh
        .route(
            "oidc",
            "/api/*",
            json!({"openid-connect": guide_config(&idp)}),
        )
        .await;
    for t in [token.as_str(), "opaque-1"] {
        let a = fresh.call("/api/x", Some(t), &[]).await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(
            a.body["message"],
            "identity provider unavailable (discovery): the token cannot be checked now"
        );
    }
    // A discovery document naming another issuer than the configured one is not trusted.
    let mut elsewhere = guide_config(&idp);
    elsewhere["discovery"] = json!(format!("{}/.well-known/openid-configuration", idp.issuer()));
    elsewhere["issuer"] = json!("http://idp.example/realms/r");
    fresh
        .route(
            "elsewhere",
            "/elsewhere/*",
            json!({"openid-connect": elsewhere}),
        )
        .await;

    // Back up: served again.
    idp.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fresh.status("/api/x", &token).await, 200);
    let a = fresh.call("/elsewhere/x", Some(&token), &[]).await;
    assert_eq!(a.status, 503, "{}", a.body);
}

/// A JWKS (the fixture's keys) served over HTTPS with a certificate for 127.0.0.1 from a test
/// CA; returns the address and the CA's PEM.
async fn https_jwks() -> (SocketAddr, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let jwks = fixture("jwks.json");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, jwks) = (acceptor.clone(), jwks.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    let body = jwks.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, ca.pem())
}

/// An `https://` JWKS is fetched over verified TLS: with the IdP's CA trusted (here through
/// `SSL_CERT_FILE`, which the system trust store honours) tokens pass; a DP that does not trust
/// it answers 503 (the keys are unreachable), never 401 or 200.
#[tokio::test]
async fn a_jwks_over_https_is_verified_against_the_trusted_cas() {
    let dir = tempfile::tempdir().unwrap();
    let (idp, ca_pem) = https_jwks().await;
    let ca_file = dir.path().join("idp-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let backend = upstream("ok").await;
    let cp = ControlPlane::start(dir.path()).await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/r",
            json!({"uri": "/*", "upstream": {"nodes": {backend.to_string(): 1}},
                   "plugins": {"jwt-auth": {"jwks_uri": format!("https://{idp}/jwks")}}}),
        )
        .await;
    let data_plane = |name: &str, trust: Option<&std::path::Path>| {
        let (proxy, status) = (free_addr(), free_addr());
        let mut cmd = std::process::Command::new(binary("data-plane"));
        cmd.args(["--control-plane", &cp.sync_url()])
            .args(["--proxy-listen", &proxy.to_string()])
            .args(["--status-listen", &status.to_string()])
            .args(["--node-id", name])
            .arg("--cache-dir")
            .arg(dir.path().join(name))
            .env("RUST_LOG", "info");
        if let Some(ca) = trust {
            cmd.env("SSL_CERT_FILE", ca);
        }
        let process = Process::spawn_command(name, cmd, dir.path().join(format!("{name}.log")));
        (process, proxy, status)
    };
    let (_trusting, trusting_proxy, trusting_status) = data_plane("trusting", Some(&ca_file));
    let (_default, default_proxy, default_status) = data_plane("default", None);
    wait_applied(trusting_status, rev).await;
    wait_applied(default_status, rev).await;
    let token = mint("rsa-1", json!({"sub": "someone", "exp": now() + 600}));
    let call = |proxy: SocketAddr| {
        let token = token.clone();
        async move {
            reqwest::Client::new()
                .get(format!("http://{proxy}/x"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(call(trusting_proxy).await, 200);
    assert_eq!(call(default_proxy).await, 503);
}
