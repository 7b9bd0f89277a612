//! `request-id`: puts an id on every request (see the config type in
//! `postern_proto::model::plugins::request_id`). The id goes to the upstream in the configured
//! header, into [`RequestCtx::request_id`] for later plugins and logs, and (by default) back to
//! the client.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use postern_proto::model::ValidationError;
use postern_proto::model::plugins::parse;
use postern_proto::model::plugins::request_id::{RequestIdAlgorithm, RequestIdConfig};
use serde_json::Value;

use super::{Flow, Plugin, RequestCtx};

/// Longest client-sent id that is kept.
const MAX_CLIENT_ID_LEN: usize = 128;

pub struct RequestId {
    header: HeaderName,
    include_in_response: bool,
    algorithm: RequestIdAlgorithm,
}

impl RequestId {
    pub fn new(config: &Value) -> Result<RequestId, ValidationError> {
        let c: RequestIdConfig = parse(config)?;
        let header = HeaderName::from_bytes(c.header_name.as_bytes())
            .map_err(|_| ValidationError::new("header_name", "not a valid header name"))?;
        Ok(RequestId {
            header,
            include_in_response: c.include_in_response,
            algorithm: c.algorithm,
        })
    }

    fn generate(&self) -> HeaderValue {
        let text = match self.algorithm {
            RequestIdAlgorithm::Uuid => uuid_v4(random_bytes()),
            RequestIdAlgorithm::Ulid => {
                let ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                Id::Ulid(ulid(ms, random_bytes()))
            }
        };
        // Both alphabets are header-safe ASCII, so this cannot fail.
        HeaderValue::from_bytes(text.as_bytes()).unwrap_or(HeaderValue::from_static("-"))
    }
}

/// The header the gateway's request id travels in.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every request reaches its upstream with an `X-Request-Id`, plugin or not: the client's when it
/// sent one sane value, else a new UUID (from a fast thread-local generator: ids need to be
/// unique, not secret). Returns the id, for the access log, and whether it is in `headers`
/// already; a new id is not put there (an insert of a custom name hashes it byte by byte): the
/// proxy adds it to the upstream request (`Proxy::forward`). Client values not kept are removed.
pub fn client_or_new_request_id(headers: &mut http::HeaderMap) -> (HeaderValue, bool) {
    // Request maps are small: a look over the names is cheaper than a hashed lookup when, as
    // usual, the client sent none.
    if headers.keys().any(|k| *k == X_REQUEST_ID) {
        let mut sent = headers.get_all(&X_REQUEST_ID).iter();
        if let (Some(v), None) = (sent.next(), sent.next())
            && is_sane(v)
        {
            return (v.clone(), true);
        }
        headers.remove(&X_REQUEST_ID);
    }
    let mut random = [0u8; 16];
    fastrand::fill(&mut random);
    let id = uuid_v4(random);
    let id = HeaderValue::from_bytes(id.as_bytes()).unwrap_or(HeaderValue::from_static("-"));
    (id, false)
}

/// A client-sent id worth keeping: one value, 1-128 visible ASCII characters (no spaces, so it
/// stays one token in logs).
fn is_sane(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty() && b.len() <= MAX_CLIENT_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
}

/// A generated id's text, on the stack.
enum Id {
    Uuid([u8; 36]),
    Ulid([u8; 26]),
}

impl Id {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Id::Uuid(b) => b,
            Id::Ulid(b) => b,
        }
    }
}

/// OS randomness; a fast PRNG if the OS cannot give any (ids need uniqueness, not secrecy).
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        fastrand::fill(&mut b);
    }
    b
}

fn uuid_v4(random: [u8; 16]) -> Id {
    let mut out = [0u8; 36];
    uuid::Builder::from_random_bytes(random)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut out);
    Id::Uuid(out)
}

/// Crockford's base32, as ULIDs use it.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID: 48 bits of Unix milliseconds then 80 random bits, as 26 base32 characters.
fn ulid(ms: u64, random: [u8; 10]) -> [u8; 26] {
    let mut value = u128::from(ms & 0xFFFF_FFFF_FFFF) << 80;
    for (i, b) in random.iter().enumerate() {
        value |= u128::from(*b) << (72 - 8 * i);
    }
    let mut out = [0u8; 26];
    for (i, c) in out.iter_mut().rev().enumerate() {
        *c = CROCKFORD[((value >> (5 * i)) & 31) as usize];
    }
    out
}

impl Plugin for RequestId {
    fn name(&self) -> &'static str {
        "request-id"
    }

    /// Keeps the client's id when it sent exactly one sane value; otherwise replaces whatever it
    /// sent with a new one.
    fn rewrite(&self, req: &mut http::request::Parts, ctx: &mut RequestCtx) -> Flow {
        let mut sent = req.headers.get_all(&self.header).iter();
        let kept = match (sent.next(), sent.next()) {
            (Some(v), None) if is_sane(v) => Some(v.clone()),
            _ => None,
        };
        let id = match kept {
            Some(id) => id,
            None => {
                let id = self.generate();
                req.headers.insert(self.header.clone(), id.clone());
                id
            }
        };
        ctx.request_id = Some(id);
        Flow::Continue
    }

    /// Sends the id back unless the response already carries the header (APISIX does the same).
    fn response(&self, resp: &mut http::response::Parts, ctx: &mut RequestCtx) {
        if !self.include_in_response {
            return;
        }
        if let Some(id) = &ctx.request_id
            && !resp.headers.contains_key(&self.header)
        {
            resp.headers.insert(self.header.clone(), id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn is_uuid_v4(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 36
            && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
            && b[14] == b'4'
            && matches!(b[19], b'8' | b'9' | b'a' | b'b')
            && s.bytes()
                .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    }

    fn is_ulid(s: &str) -> bool {
        s.len() == 26 && s.bytes().all(|c| CROCKFORD.contains(&c)) && s.as_bytes()[0] <= b'7'
    }

    #[test]
    fn ulid_encoding() {
        // The timestamp of the ULID spec's example, `01ARYZ6S41…`.
        let id = ulid(1_469_918_176_385, [0; 10]);
        assert_eq!(&id, b"01ARYZ6S410000000000000000");
        assert_eq!(&ulid(0, [0xFF; 10]), b"0000000000ZZZZZZZZZZZZZZZZ");
        assert_eq!(&ulid(u64::MAX, [0xFF; 10]), b"7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        // Later milliseconds sort later, whatever the random part.
        assert!(ulid(1_000, [0xFF; 10]) < ulid(1_001, [0; 10]));
        assert!(is_uuid_v4(
            std::str::from_utf8(uuid_v4([0; 16]).as_bytes()).unwrap()
        ));
    }

    #[test]
    fn sets_keeps_or_replaces_the_id() {
        let long = "a".repeat(129);
        let max = "b".repeat(128);
        // (config, client's values, keeps the client's id?, id format check)
        type Check = fn(&str) -> bool;
        let cases: Vec<(Value, Vec<&[u8]>, bool, Check)> = vec![
            (json!({}), vec![], false, is_uuid_v4),
            (
                json!({"header_name": "X-Request-ID"}),
                vec![b"abc-123"],
                true,
                |_| true,
            ),
            (json!({}), vec![max.as_bytes()], true, |_| true),
            (json!({}), vec![long.as_bytes()], false, is_uuid_v4),
            (json!({}), vec![b"has space"], false, is_uuid_v4),
            (json!({}), vec![b""], false, is_uuid_v4),
            (json!({}), vec![b"caf\xc3\xa9"], false, is_uuid_v4),
            (json!({}), vec![b"one", b"two"], false, is_uuid_v4),
            (json!({"algorithm": "ulid"}), vec![], false, is_ulid),
            (json!({"algorithm": "ulid"}), vec![b"a\tb"], false, is_ulid),
        ];
        for (config, sent, keeps, check) in cases {
            let p = RequestId::new(&config).unwrap();
            let mut req = http::Request::get("/").body(()).unwrap();
            for v in &sent {
                req.headers_mut()
                    .append(p.header.clone(), HeaderValue::from_bytes(v).unwrap());
            }
            let (mut parts, _) = req.into_parts();
            let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
            assert!(matches!(p.rewrite(&mut parts, &mut ctx), Flow::Continue));
            let id = ctx.request_id.clone().expect("an id in the context");
            let upstream: Vec<_> = parts.headers.get_all(&p.header).iter().collect();
            assert_eq!(upstream, [&id], "{config} {sent:?}: one id to the upstream");
            if keeps {
                assert_eq!(id.as_bytes(), sent[0], "{config}");
            } else {
                assert!(check(id.to_str().unwrap()), "{config} {sent:?}: {id:?}");
            }

            let (mut resp, _) = http::Response::new(()).into_parts();
            p.response(&mut resp, &mut ctx);
            assert_eq!(resp.headers.get(&p.header), Some(&id), "{config}");
        }
    }

    #[test]
    fn response_header_rules() {
        let p = RequestId::new(&json!({"include_in_response": false})).unwrap();
        let (mut parts, _) = http::Request::new(()).into_parts();
        let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
        p.rewrite(&mut parts, &mut ctx);
        assert!(ctx.request_id.is_some());
        let (mut resp, _) = http::Response::new(()).into_parts();
        p.response(&mut resp, &mut ctx);
        assert!(resp.headers.is_empty());

        // The upstream's own id is left alone.
        let p = RequestId::new(&json!({})).unwrap();
        p.rewrite(&mut parts, &mut ctx);
        let (mut resp, _) = http::Response::builder()
            .header("x-request-id", "from-upstream")
            .body(())
            .unwrap()
            .into_parts();
        p.response(&mut resp, &mut ctx);
        assert_eq!(resp.headers["x-request-id"], "from-upstream");

        // Two requests, two ids.
        let ids: Vec<_> = (0..2)
            .map(|_| {
                let (mut parts, _) = http::Request::new(()).into_parts();
                let mut ctx = RequestCtx::new("127.0.0.1:1".parse().unwrap(), "r".into());
                p.rewrite(&mut parts, &mut ctx);
                ctx.request_id.unwrap()
            })
            .collect();
        assert_ne!(ids[0], ids[1]);
    }
}
