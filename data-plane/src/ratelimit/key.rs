//! A limit key (`key_type` + `key`) read from a request. As APISIX does, a key whose variables
//! are all missing (no such header, nobody authenticated for `consumer_name`) falls back to the
//! client address, so callers never share one counter by accident.

use std::fmt::Write;

use postern_proto::model::plugins::limits::{KeyPart, KeyVar, LimitKey};

use crate::plugins::RequestCtx;
use crate::router::vars::var_value;

pub struct KeyResolver(LimitKey);

impl KeyResolver {
    pub fn new(key: LimitKey) -> KeyResolver {
        KeyResolver(key)
    }

    pub fn resolve(&self, parts: &http::request::Parts, ctx: &RequestCtx) -> String {
        match &self.0 {
            LimitKey::Constant => String::new(),
            LimitKey::Var(v) => {
                let mut out = String::new();
                if !push_var(&mut out, v, parts, ctx) {
                    out = remote_addr(ctx);
                }
                out
            }
            LimitKey::Combination(parts_) => {
                let mut out = String::new();
                let mut any = false;
                for p in parts_ {
                    match p {
                        KeyPart::Text(t) => out.push_str(t),
                        KeyPart::Var(v) => any |= push_var(&mut out, v, parts, ctx),
                    }
                }
                if !any {
                    out = remote_addr(ctx);
                }
                out
            }
        }
    }
}

pub fn remote_addr(ctx: &RequestCtx) -> String {
    ctx.client_addr.ip().to_canonical().to_string()
}

/// Appends the variable's value; false when the request has none.
fn push_var(
    out: &mut String,
    var: &KeyVar,
    parts: &http::request::Parts,
    ctx: &RequestCtx,
) -> bool {
    let value: Option<&str> = match var {
        KeyVar::Request(v) => {
            return match var_value(v, parts, ctx.client_addr.ip()) {
                Some(s) if !s.is_empty() => {
                    out.push_str(&s);
                    true
                }
                _ => false,
            };
        }
        KeyVar::ConsumerName => ctx.consumer_name.as_deref(),
        KeyVar::ConsumerGroupId => ctx.consumer_group.as_deref(),
        KeyVar::CredentialId => ctx.credential_id.as_deref(),
        KeyVar::RouteId => Some(&ctx.route_id),
        KeyVar::RemotePort => {
            let _ = write!(out, "{}", ctx.client_addr.port());
            return true;
        }
    };
    match value {
        Some(v) if !v.is_empty() => {
            out.push_str(v);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use postern_proto::model::plugins::limits::KeyType;

    use super::*;

    #[test]
    fn keys_resolve_with_the_address_as_fallback() {
        let (parts, _) = http::Request::builder()
            .uri("/p?user=u1")
            .header("x-team", "blue")
            .body(())
            .unwrap()
            .into_parts();
        let mut ctx = RequestCtx::new("10.0.0.7:5555".parse().unwrap(), "r1".into());
        let cases = [
            (KeyType::Var, "remote_addr", "10.0.0.7"),
            (KeyType::Var, "http_x_team", "blue"),
            (KeyType::Var, "http_x_missing", "10.0.0.7"),
            (KeyType::Var, "arg_user", "u1"),
            (KeyType::Var, "consumer_name", "10.0.0.7"),
            (KeyType::Var, "route_id", "r1"),
            (KeyType::VarCombination, "$http_x_team:$arg_user", "blue:u1"),
            (KeyType::VarCombination, "$http_x_no-$arg_no", "10.0.0.7"),
            (
                KeyType::VarCombination,
                "$remote_addr-$route_id",
                "10.0.0.7-r1",
            ),
            (KeyType::Constant, "", ""),
        ];
        for (kt, key, want) in cases {
            let r = KeyResolver::new(LimitKey::parse(kt, key).unwrap());
            assert_eq!(r.resolve(&parts, &ctx), want, "{key}");
        }
        ctx.consumer_name = Some("alice".into());
        let r = KeyResolver::new(LimitKey::parse(KeyType::Var, "consumer_name").unwrap());
        assert_eq!(r.resolve(&parts, &ctx), "alice");
    }
}
