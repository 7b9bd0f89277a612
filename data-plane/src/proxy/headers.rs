//! Header hygiene between client and upstream: hop-by-hop headers never cross the proxy, and the
//! gateway's own `X-Forwarded-*` headers are added after the client's were cleaned, so a
//! `Connection: X-Forwarded-For` from a client cannot remove them.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy ones proxies still see).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Who the caller is, as an auth plugin established it; only the gateway sets these.
pub const X_CONSUMER_USERNAME: HeaderName = HeaderName::from_static("x-consumer-username");
pub const X_CONSUMER_GROUP: HeaderName = HeaderName::from_static("x-consumer-group");
pub const X_CREDENTIAL_IDENTIFIER: HeaderName = HeaderName::from_static("x-credential-identifier");

/// Removes client-sent identity headers (every request, auth route or not): an upstream must be
/// able to trust them.
pub fn strip_identity(headers: &mut HeaderMap) {
    for name in [
        X_CONSUMER_USERNAME,
        X_CONSUMER_GROUP,
        X_CREDENTIAL_IDENTIFIER,
    ] {
        headers.remove(name);
    }
}

/// Sets the identity headers from what an auth plugin found (nothing when no plugin did).
pub fn set_identity(
    headers: &mut HeaderMap,
    consumer: Option<&str>,
    group: Option<&str>,
    credential: Option<&str>,
) {
    for (name, value) in [
        (X_CONSUMER_USERNAME, consumer),
        (X_CONSUMER_GROUP, group),
        (X_CREDENTIAL_IDENTIFIER, credential),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
        }
    }
}

/// Removes every header named in `Connection`, then the standard hop-by-hop headers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto`/`-Host` (the gateway's
/// view replaces whatever the client claimed).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let mut xff = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            xff.push_str(s);
            xff.push_str(", ");
        }
    }
    xff.push_str(&client.to_string());
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST, h.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "3");
    }

    #[test]
    fn forwarded_headers_survive_a_hostile_connection_header() {
        let mut h = map(&[
            ("connection", "X-Forwarded-For, X-Forwarded-Host"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-forwarded-proto", "https"),
        ]);
        strip_hop_by_hop(&mut h);
        let host = HeaderValue::from_static("a.example");
        add_forwarded(&mut h, "127.0.0.7".parse().unwrap(), "http", Some(&host));
        assert_eq!(h["x-forwarded-for"], "127.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
    }

    #[test]
    fn identity_headers_come_only_from_the_gateway() {
        let mut h = map(&[
            ("x-consumer-username", "admin"),
            ("X-Consumer-Group", "admin-group"),
            ("x-credential-identifier", "forged"),
        ]);
        strip_identity(&mut h);
        assert!(h.is_empty(), "{h:?}");
        set_identity(&mut h, Some("mobile-app"), None, Some("mobile-app-key"));
        assert_eq!(h["x-consumer-username"], "mobile-app");
        assert_eq!(h["x-credential-identifier"], "mobile-app-key");
        assert!(h.get("x-consumer-group").is_none());
    }

    #[test]
    fn forwarded_for_appends_to_every_prior_hop() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
        ]);
        add_forwarded(&mut h, "::1".parse().unwrap(), "http", None);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, ::1");
        assert!(h.get("x-forwarded-host").is_none());
    }
}
