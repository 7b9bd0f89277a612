//! `key-auth`: finds the consumer by the API key in a header (default `apikey`) or query
//! argument (see the config types in `postern_proto::model::plugins::key_auth`). Keys are looked
//! up by their SHA-256 in the snapshot's consumer index. Missing or unknown → 401 with
//! `WWW-Authenticate: Key`.

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderName;
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::key_auth::KeyAuthConfig;
use postern_proto::model::plugins::parse;
use serde_json::Value;

use super::consumers::{self, Consumers, identify, unauthorized};
use super::{Flow, Plugin, RequestCtx, Step};
use crate::router::vars::args;

const CHALLENGE: &str = "Key realm=\"postern\"";

pub struct KeyAuth {
    header: HeaderName,
    query: String,
    hide_credentials: bool,
    consumers: Arc<Consumers>,
}

impl KeyAuth {
    pub fn new(config: &Value, consumers: Arc<Consumers>) -> Result<KeyAuth, ValidationError> {
        let c: KeyAuthConfig = parse(config)?;
        let header = HeaderName::from_bytes(c.header.as_bytes())
            .map_err(|_| ValidationError::new("header", "not a valid header name"))?;
        Ok(KeyAuth {
            header,
            query: c.query,
            hide_credentials: c.hide_credentials,
            consumers,
        })
    }

    fn check(&self, req: &mut http::request::Parts, ctx: &mut RequestCtx) -> Flow {
        let header = req.headers.get_all(&self.header).iter().map(|v| {
            // A non-text value cannot be a key, and must not read as "no key".
            Cow::Borrowed(v.to_str().map(str::trim).unwrap_or("\u{0}"))
        });
        let found = header
            .chain(args(req, &self.query))
            .filter(|k| !k.is_empty());
        let key = match consumers::single(found) {
            Ok(Some(k)) => k,
            Ok(None) => {
                return Flow::Respond(unauthorized(CHALLENGE, "Missing API key in request"));
            }
            Err(consumers::Conflicting) => {
                return Flow::Respond(unauthorized(CHALLENGE, "different API keys in one request"));
            }
        };
        let Some(cred) = self.consumers.api_key(&key) else {
            return Flow::Respond(unauthorized(CHALLENGE, "Invalid API key in request"));
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self
            .consumers
            .is_consumer_revoked(&cred.consumer, &cred.id, now)
        {
            return Flow::Respond(unauthorized(CHALLENGE, "API key revoked"));
        }
        identify(ctx, &cred.consumer, &cred.id);
        if self.hide_credentials {
            req.headers.remove(&self.header);
            consumers::remove_query_arg(req, &self.query);
        }
        Flow::Continue
    }
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        "key-auth"
    }

    fn is_auth(&self) -> bool {
        true
    }

    fn access<'a>(
        &'a self,
        req: &'a mut http::request::Parts,
        ctx: &'a mut RequestCtx,
    ) -> Step<'a> {
        Step::Ready(self.check(req, ctx))
    }
}

#[cfg(test)]
mod tests {
    use postern_proto::model::{ConfigSet, Resource, ResourceKind};
    use serde_json::json;

    use super::*;

    fn plugin(config: Value) -> KeyAuth {
        let mut set = ConfigSet::default();
        let body = json!({"username": "device-1", "group_id": "iot",
            "plugins": {"key-auth": {"key": "device-key-0001"}}});
        set.insert(
            "device-1",
            Resource::parse(ResourceKind::Consumers, &body).unwrap(),
        );
        KeyAuth::new(&config, Arc::new(Consumers::build(&set).unwrap())).unwrap()
    }

    #[test]
    fn finds_the_consumer_or_answers_401() {
        let cases: Vec<(Value, http::request::Builder, Option<&str>)> = vec![
            (
                json!({}),
                http::Request::get("/").header("apikey", "device-key-0001"),
                None,
            ),
            (
                json!({}),
                http::Request::get("/?apikey=device-key-0001"),
                None,
            ),
            (
                json!({"header": "X-Key"}),
                http::Request::get("/").header("x-key", "device-key-0001"),
                None,
            ),
            (
                json!({}),
                http::Request::get("/"),
                Some("Missing API key in request"),
            ),
            (
                json!({}),
                http::Request::get("/").header("apikey", "device-key-0002"),
                Some("Invalid API key in request"),
            ),
            (
                json!({}),
                http::Request::get("/?apikey=device-key-0002").header("apikey", "device-key-0001"),
                Some("different API keys in one request"),
            ),
        ];
        for (config, req, want) in cases {
            let p = plugin(config.clone());
            let (mut parts, _) = req.body(()).unwrap().into_parts();
            let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
            match (p.check(&mut parts, &mut ctx), want) {
                (Flow::Continue, None) => {
                    assert_eq!(ctx.consumer_name.as_deref(), Some("device-1"));
                    assert_eq!(ctx.consumer_group.as_deref(), Some("iot"));
                    assert_eq!(ctx.credential_id.as_deref(), Some("device-1/key-auth"));
                }
                (Flow::Respond(r), Some(msg)) => {
                    assert_eq!(r.status.as_u16(), 401, "{config}");
                    assert_eq!(r.headers["www-authenticate"], CHALLENGE);
                    let body: Value = serde_json::from_slice(&r.body).unwrap();
                    assert_eq!(body["message"], msg, "{config}");
                }
                (_, want) => panic!("{config}: expected {want:?}"),
            }
        }
    }

    #[test]
    fn hide_credentials() {
        let p = plugin(json!({"hide_credentials": true}));
        let (mut parts, _) = http::Request::get("/a?apikey=device-key-0001&b=2")
            .body(())
            .unwrap()
            .into_parts();
        let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
        assert!(matches!(p.check(&mut parts, &mut ctx), Flow::Continue));
        assert_eq!(parts.uri.to_string(), "/a?b=2");
    }
}
