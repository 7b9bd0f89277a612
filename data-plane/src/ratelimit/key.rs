//! A limit key (`key_type` + `key`) read from a request. As APISIX does, a key whose variables
//! are all missing (no such header, nobody authenticated for `consumer_name`) falls back to the
//! client address, so callers never share one counter by accident.

use std::fmt::Write;

use postern_proto::model::ValidationError;
use postern_proto::model::plugins::limits::{KeyPart, KeyVar, LimitKey};

use crate::plugins::RequestCtx;
use crate::proxy::headers::address_value;
use crate::router::vars::{RequestVars, VarSource};

/// A key variable resolved for fast lookup (header names parsed once).
pub(crate) enum Var {
    Request(VarSource),
    ConsumerName,
    ConsumerGroupId,
    CredentialId,
    RouteId,
    RemotePort,
}

enum Part {
    Text(String),
    Var(Var),
}

enum Key {
    Constant,
    Var(Var),
    Combination(Vec<Part>),
}

/// A limit key compiled once per snapshot, read from each request.
pub struct KeyResolver(Key);

pub(crate) fn compile(v: KeyVar) -> Result<Var, ValidationError> {
    Ok(match v {
        KeyVar::Request(r) => Var::Request(VarSource::new(r).map_err(|e| e.under("key"))?),
        KeyVar::ConsumerName => Var::ConsumerName,
        KeyVar::ConsumerGroupId => Var::ConsumerGroupId,
        KeyVar::CredentialId => Var::CredentialId,
        KeyVar::RouteId => Var::RouteId,
        KeyVar::RemotePort => Var::RemotePort,
    })
}

impl KeyResolver {
    pub fn new(key: LimitKey) -> Result<KeyResolver, ValidationError> {
        Ok(KeyResolver(match key {
            LimitKey::Constant => Key::Constant,
            LimitKey::Var(v) => Key::Var(compile(v)?),
            LimitKey::Combination(parts) => Key::Combination(
                parts
                    .into_iter()
                    .map(|p| {
                        Ok(match p {
                            KeyPart::Text(t) => Part::Text(t),
                            KeyPart::Var(v) => Part::Var(compile(v)?),
                        })
                    })
                    .collect::<Result<_, ValidationError>>()?,
            ),
        }))
    }

    pub fn resolve(&self, parts: &http::request::Parts, ctx: &RequestCtx) -> String {
        let mut out = String::new();
        self.resolve_into(&mut out, parts, ctx);
        out
    }

    /// Appends the key to `out`.
    pub fn resolve_into(&self, out: &mut String, parts: &http::request::Parts, ctx: &RequestCtx) {
        let start = out.len();
        let found = match &self.0 {
            Key::Constant => return,
            Key::Var(v) => push_var(out, v, parts, ctx),
            Key::Combination(pieces) => {
                let mut any = false;
                for p in pieces {
                    match p {
                        Part::Text(t) => out.push_str(t),
                        Part::Var(v) => any |= push_var(out, v, parts, ctx),
                    }
                }
                any
            }
        };
        if !found {
            out.truncate(start);
            push_remote_addr(out, ctx);
        }
    }
}

pub fn remote_addr(ctx: &RequestCtx) -> String {
    let mut out = String::new();
    push_remote_addr(&mut out, ctx);
    out
}

/// Appends the client's address: formatted once per address on this thread, as
/// `X-Forwarded-For` has it, not per request (`Ipv4Addr`'s `Display` was a third of a local
/// limit's instructions).
fn push_remote_addr(out: &mut String, ctx: &RequestCtx) {
    let address = address_value(ctx.client_addr.ip().to_canonical());
    out.push_str(std::str::from_utf8(address.as_bytes()).unwrap_or_default());
}

/// Appends the variable's value; false when the request has none.
pub(crate) fn push_var(
    out: &mut String,
    var: &Var,
    parts: &http::request::Parts,
    ctx: &RequestCtx,
) -> bool {
    let value: Option<&str> = match var {
        Var::Request(VarSource::RemoteAddr) => {
            push_remote_addr(out, ctx);
            return true;
        }
        Var::Request(source) => {
            let req = RequestVars {
                parts,
                client: ctx.client_addr.ip(),
            };
            return match source.value(&req) {
                Some(s) if !s.is_empty() => {
                    out.push_str(&s);
                    true
                }
                _ => false,
            };
        }
        Var::ConsumerName => ctx.consumer_name.as_deref(),
        Var::ConsumerGroupId => ctx.consumer_group.as_deref(),
        Var::CredentialId => ctx.credential_id.as_deref(),
        Var::RouteId => Some(&ctx.route_id),
        Var::RemotePort => {
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
            let r = KeyResolver::new(LimitKey::parse(kt, key).unwrap()).unwrap();
            assert_eq!(r.resolve(&parts, &ctx), want, "{key}");
        }
        ctx.consumer_name = Some("alice".into());
        let r = KeyResolver::new(LimitKey::parse(KeyType::Var, "consumer_name").unwrap()).unwrap();
        assert_eq!(r.resolve(&parts, &ctx), "alice");
    }

    #[test]
    fn the_address_key_follows_each_client_and_unmaps_ipv4_in_ipv6() {
        let (parts, _) = http::Request::builder().body(()).unwrap().into_parts();
        let r = KeyResolver::new(LimitKey::parse(KeyType::Var, "remote_addr").unwrap()).unwrap();
        // One thread, clients one after another: each gets its own address, not the last kept.
        for (peer, want) in [
            ("10.0.0.7:1", "10.0.0.7"),
            ("[::ffff:10.0.0.8]:2", "10.0.0.8"),
            ("10.0.0.7:3", "10.0.0.7"),
            ("[2001:db8::1]:4", "2001:db8::1"),
        ] {
            let ctx = RequestCtx::new(peer.parse().unwrap(), "r1".into());
            assert_eq!(r.resolve(&parts, &ctx), want, "{peer}");
            assert_eq!(remote_addr(&ctx), want, "{peer}");
        }
    }
}
