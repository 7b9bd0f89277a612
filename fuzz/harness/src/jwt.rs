//! JWT parsing as `jwt-auth` does it: the token from `Authorization`, the unverified key claim
//! picking the credential, then verification. The invariant is the plugin's reason to exist: a
//! request it lets through carries a token that really is signed with the consumer's secret.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use postern_data_plane::plugins::consumers::Consumers;
use postern_data_plane::plugins::jwt_auth::JwtAuth;
use postern_data_plane::plugins::{Flow, Plugin, RequestCtx, Step};
use postern_proto::model::{ConfigSet, Resource, ResourceKind};
use serde_json::json;

const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret";
const KEY: &str = "fuzz-key";

static PLUGIN: LazyLock<JwtAuth> = LazyLock::new(|| {
    let mut set = ConfigSet::default();
    let body =
        json!({"username": "fuzzer", "plugins": {"jwt-auth": {"key": KEY, "secret": SECRET}}});
    set.insert(
        "fuzzer",
        Resource::parse(ResourceKind::Consumers, &body).expect("the consumer parses"),
    );
    let consumers = Arc::new(Consumers::build(&set).expect("the consumers build"));
    JwtAuth::new(&json!({}), consumers).expect("the plugin builds")
});

pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let_through(token) == Some(true) {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        let verified = jsonwebtoken::decode::<serde_json::Value>(
            token.trim().as_bytes(),
            &DecodingKey::from_secret(SECRET.as_bytes()).expect("an HMAC key"),
            &validation,
        );
        assert!(
            verified.is_ok(),
            "let through without a valid signature: {token:?}"
        );
    }
}

/// Whether the plugin lets a request with `token` through (`None`: not a usable header value).
fn let_through(token: &str) -> Option<bool> {
    let Ok(request) = http::Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(())
    else {
        return None;
    };
    let (mut parts, ()) = request.into_parts();
    let client: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut ctx = RequestCtx::new(client, "fuzz".into());
    // A credential with a static secret never waits for keys.
    let Step::Ready(flow) = PLUGIN.access(&mut parts, &mut ctx) else {
        panic!("a static-key check went pending");
    };
    Some(matches!(flow, Flow::Continue))
}

#[cfg(test)]
mod tests {
    use super::let_through;

    /// The seeds reach both sides of the invariant: the signed one passes, a forged one not.
    #[test]
    fn the_signed_seed_passes_and_the_forged_ones_do_not() {
        let seed = |name| {
            let path = format!("{}/../seeds/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read_to_string(path).unwrap()
        };
        assert_eq!(let_through(&seed("valid")), Some(true));
        assert_eq!(let_through(&seed("wrong-sig")), Some(false));
        assert_eq!(let_through(&seed("alg-none")), Some(false));
    }
}
