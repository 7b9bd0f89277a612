//! Header hygiene between client and upstream: hop-by-hop headers never cross the proxy, and the
//! gateway's own headers (`X-Forwarded-*`, the identity an auth plugin set) are added after the
//! client's were cleaned, so a `Connection: X-Forwarded-For` or `Connection:
//! X-Consumer-Username` from a client cannot remove them. One host per request (`settle_host`).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy ones proxies still see). A `static`, not
/// a `const`: a const array is built and dropped again at every use.
const HOP_BY_HOP_COUNT: usize = 7;
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
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
/// `static`s, not `const`s, for the same reason as `HOP_BY_HOP`.
static FORWARDED_NAMES: [HeaderName; 3] = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST];

/// Who the caller is, as an auth plugin established it; only the gateway sets these.
pub const X_CONSUMER_USERNAME: HeaderName = HeaderName::from_static("x-consumer-username");
pub const X_CONSUMER_GROUP: HeaderName = HeaderName::from_static("x-consumer-group");
pub const X_CREDENTIAL_IDENTIFIER: HeaderName = HeaderName::from_static("x-credential-identifier");

/// Removes client-sent identity headers (every request, auth route or not): an upstream must be
/// able to trust them.
pub fn strip_identity(headers: &mut HeaderMap) {
    // One look over the (few) names first: most requests carry none of these, and a look is
    // cheaper than three hashed removes.
    if !headers.keys().any(|k| IDENTITY_NAMES.contains(k)) {
        return;
    }
    for name in &IDENTITY_NAMES {
        headers.remove(name);
    }
}

/// Removes the headers a client's `Connection` names (they are for this hop only), before any
/// plugin runs, and leaves in `Connection` only the standard hop-by-hop names (`upgrade` is
/// still needed to see an upgrade; all go in `strip_hop_by_hop`). Nothing a plugin or the
/// gateway sets afterwards can then be removed by the client's `Connection`.
pub fn strip_connection_named(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    let mut kept = Vec::new();
    let mut named = Vec::new();
    for token in headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        match HeaderName::from_bytes(token.as_bytes()) {
            Ok(name) if HOP_BY_HOP.contains(&name) => kept.push(token.to_string()),
            Ok(name) => named.push(name),
            Err(_) => {}
        }
    }
    for name in named {
        headers.remove(name);
    }
    match HeaderValue::from_str(&kept.join(", ")) {
        Ok(v) if !kept.is_empty() => headers.insert(header::CONNECTION, v),
        _ => headers.remove(header::CONNECTION),
    };
}

/// Makes the request's host one value for routing, plugins and the upstream: two `Host` lines,
/// or a `Host` that is not a plain `host[:port]`, are refused (RFC 9112 §3.2); a request in
/// absolute form (`GET http://b.example/ HTTP/1.1`) names its host in the target, which wins
/// over `Host` (RFC 9112 §3.2.2) and replaces it. HTTP/2 requests carry `:authority` in the
/// URI; a `Host` beside it is left as it is and wins for routing and the upstream alike (HTTP/2
/// clients such as hyper's send the caller's `Host` that way), `:authority` serving without one.
pub fn settle_host(parts: &mut http::request::Parts) -> Result<(), &'static str> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if let Some(h) = host
        && !h.is_empty()
        && !is_plain_authority(h.as_bytes())
    {
        return Err("invalid Host header");
    }
    if let Some(authority) = parts.uri.authority() {
        if authority.as_str().contains('@') {
            return Err("user info in the request target");
        }
        if parts.version >= http::Version::HTTP_2 {
            return Ok(());
        }
        let value = HeaderValue::from_str(authority.as_str())
            .map_err(|_| "invalid authority in the request target")?;
        parts.headers.insert(header::HOST, value);
    }
    Ok(())
}

/// Whether `s` is an authority as `http::uri::Authority` parses one, without user info: a host
/// (a registered name, an IPv4 address or a bracketed IPv6 literal) with an optional port. The
/// same rules as that parser's, checked in place: parsing copies the value into a new buffer,
/// an allocation on every request for a check.
fn is_plain_authority(s: &[u8]) -> bool {
    let (mut colons, mut percent) = (0u32, false);
    let (mut open, mut closed) = (false, false);
    for &b in s {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => {}
            b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+'
            | b',' | b';' | b'=' => {}
            // Allowed only in a zone id inside brackets, cleared by the closing one below.
            b'%' => percent = true,
            // Nine colons is more than any IPv6 literal with a port has.
            b':' if colons >= 8 => return false,
            b':' => colons += 1,
            b'[' if percent || open => return false,
            b'[' => open = true,
            b']' if !open || closed => return false,
            b']' => (closed, colons, percent) = (true, 0, false),
            // `@` (user info), `/ ? #` (a path after the authority), everything else.
            _ => return false,
        }
    }
    !s.is_empty() && open == closed && colons <= 1 && !percent
}

/// The identity headers from what an auth plugin found (none when no plugin did), kept beside
/// the request's header map as `Forwarded` is: written into the head by `h1_client`, inserted
/// for the other clients (`insert_into`).
#[derive(Default)]
pub struct Identity([Option<HeaderValue>; 3]);

static IDENTITY_NAMES: [HeaderName; 3] = [
    X_CONSUMER_USERNAME,
    X_CONSUMER_GROUP,
    X_CREDENTIAL_IDENTIFIER,
];

impl Identity {
    pub fn new(consumer: Option<&str>, group: Option<&str>, credential: Option<&str>) -> Identity {
        let value = |v: Option<&str>| v.and_then(|v| HeaderValue::from_str(v).ok());
        Identity([value(consumer), value(group), value(credential)])
    }

    /// The headers as (name, value) pairs, in the order they are sent.
    pub fn each(&self, mut f: impl FnMut(&HeaderName, &[u8])) {
        for (name, value) in IDENTITY_NAMES.iter().zip(&self.0) {
            if let Some(v) = value {
                f(name, v.as_bytes());
            }
        }
    }

    /// Puts the headers into a request's map (for the clients that send a map).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in IDENTITY_NAMES.iter().zip(&self.0) {
            if let Some(v) = value {
                headers.insert(name, v.clone());
            }
        }
    }
}

/// Where `name` is in `HOP_BY_HOP`. By length first: few names share one with a hop-by-hop
/// header, so most are passed over without comparing against all seven.
pub(super) fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let s = name.as_str();
    match s.len() {
        2 | 7 | 10 | 16 | 17 => HOP_BY_HOP.iter().position(|h| h.as_str() == s),
        _ => None,
    }
}

/// Removes every header named in `Connection`, then the standard hop-by-hop headers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually only `Connection` (an upstream's `keep-alive`), often none: find which are there
    // in one pass rather than hashing every hop-by-hop name.
    let mut present = [false; HOP_BY_HOP_COUNT];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        }
    }
    if present[0] {
        // Names that are hop-by-hop themselves (an upstream's `Connection: keep-alive`) go
        // below anyway: only others are looked up (no name built, no remove, for those).
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(t))
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// The `X-Forwarded-*` headers the gateway sends upstream, kept beside the request's header map
/// rather than in it: the gateway's own HTTP/1.1 client writes them straight into the request
/// head (`h1_client`), the other clients get them inserted (`insert_into`). Three map inserts of
/// custom names (each hashed byte by byte) were ~750 instructions per proxied request.
pub struct Forwarded {
    /// The prior hops (kept only from a trusted proxy) and the peer.
    pub for_value: HeaderValue,
    pub proto: &'static str,
    /// The host the client asked for, if it named one.
    pub host: Option<HeaderValue>,
}

impl Forwarded {
    /// Takes the client's own `X-Forwarded-*` out of `headers` (the gateway's view replaces
    /// whatever the client claimed), keeping the prior `X-Forwarded-For` hops only when
    /// `keep_prior` (the peer is a trusted proxy).
    pub fn take(
        headers: &mut HeaderMap,
        client: IpAddr,
        keep_prior: bool,
        proto: &'static str,
        host: Option<&HeaderValue>,
    ) -> Forwarded {
        let mut for_value = None;
        // One look over the (few) names first: most requests carry none of these.
        if headers.keys().any(|k| FORWARDED_NAMES.contains(k)) {
            if keep_prior && headers.contains_key(&X_FORWARDED_FOR) {
                let mut xff = String::new();
                for v in headers.get_all(&X_FORWARDED_FOR) {
                    if let Ok(s) = v.to_str() {
                        xff.push_str(s);
                        xff.push_str(", ");
                    }
                }
                xff.push_str(&client.to_string());
                for_value = HeaderValue::from_str(&xff).ok();
            }
            for name in &FORWARDED_NAMES {
                headers.remove(name);
            }
        }
        Forwarded {
            // The usual case, on every request: the address alone.
            for_value: for_value.unwrap_or_else(|| address_value(client)),
            proto,
            host: host.cloned(),
        }
    }

    /// The headers as (name, value) pairs, in the order they are sent.
    pub fn each(&self, mut f: impl FnMut(&HeaderName, &[u8])) {
        f(&X_FORWARDED_FOR, self.for_value.as_bytes());
        f(&X_FORWARDED_PROTO, self.proto.as_bytes());
        if let Some(h) = &self.host {
            f(&X_FORWARDED_HOST, h.as_bytes());
        }
    }

    /// Puts the headers into a request's map (for the clients that send a map).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        headers.insert(X_FORWARDED_FOR, self.for_value.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.proto));
        if let Some(h) = &self.host {
            headers.insert(X_FORWARDED_HOST, h.clone());
        }
    }
}

/// `client` as a header value. The last address formatted on this thread is kept: a client
/// connection's requests all come from one, and a clone is a reference count, not a format.
/// (`X-Forwarded-For`, and a limit keyed by `remote_addr`.)
pub(crate) fn address_value(client: IpAddr) -> HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((ip, value)) = last.as_ref()
            && *ip == client
        {
            return value.clone();
        }
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(client.to_string()))
            .expect("an IP address is a valid header value");
        *last = Some((client, value.clone()));
        value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets `X-Forwarded-For` to the prior hops (kept only when `keep_prior`: the peer is a trusted
    /// proxy) plus the peer, and `X-Forwarded-Proto`/`-Host` (the gateway's view replaces whatever
    /// the client claimed), in the map itself, as the clients other than `h1_client` get them.
    fn add_forwarded(
        headers: &mut HeaderMap,
        client: IpAddr,
        keep_prior: bool,
        proto: &'static str,
        host: Option<&HeaderValue>,
    ) {
        Forwarded::take(headers, client, keep_prior, proto, host).insert_into(headers);
    }

    /// The identity headers in the map itself, as the clients other than `h1_client` get them.
    fn set_identity(
        headers: &mut HeaderMap,
        consumer: Option<&str>,
        group: Option<&str>,
        credential: Option<&str>,
    ) {
        Identity::new(consumer, group, credential).insert_into(headers);
    }

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
    fn every_hop_by_hop_name_is_found_by_its_length() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
            let custom = HeaderName::from_bytes(name.as_str().to_uppercase().as_bytes()).unwrap();
            assert_eq!(hop_by_hop_index(&custom), Some(i), "{name} parsed");
        }
        for other in ["user-agent", "host", "x-te", "upgrades", "content-length"] {
            assert_eq!(hop_by_hop_index(&HeaderName::from_static(other)), None);
        }
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
    fn the_kept_address_value_is_the_address_asked_for() {
        let addrs: [IpAddr; 3] = [
            "10.1.2.3".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
        ];
        for round in 0..3 {
            for (i, ip) in addrs.iter().enumerate() {
                // Twice in a row (the kept value), then another address.
                for _ in 0..=(round + i) % 2 {
                    assert_eq!(address_value(*ip), ip.to_string().as_str());
                }
            }
        }
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
        add_forwarded(
            &mut h,
            "127.0.0.7".parse().unwrap(),
            true,
            "http",
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
    }

    #[test]
    fn connection_named_headers_go_before_the_plugins_and_hop_by_hop_names_stay() {
        let mut h = map(&[
            ("connection", "close, X-Consumer-Username, Upgrade"),
            ("connection", "x-other, keep-alive"),
            ("x-consumer-username", "admin"),
            ("x-other", "1"),
            ("upgrade", "websocket"),
            ("x-kept", "2"),
        ]);
        strip_connection_named(&mut h);
        assert_eq!(h["connection"], "Upgrade, keep-alive");
        assert!(h.get("x-consumer-username").is_none() && h.get("x-other").is_none());
        assert_eq!(h["upgrade"], "websocket");
        set_identity(&mut h, Some("alice"), None, None);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["x-consumer-username"], "alice");
        assert_eq!(h["x-kept"], "2");
    }

    #[test]
    fn hosts_are_checked_as_the_authority_parser_checks_them() {
        // Every string of up to three bytes over an alphabet of the characters that matter,
        // and longer known cases: the in-place check agrees with `Authority` (user info aside).
        let alphabet = b"a1.:[]%@/?# -_~!x\xc3";
        let mut cases: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..=3 {
            let mut next = Vec::new();
            for c in cases.iter().filter(|c| c.len() == len - 1) {
                for &b in alphabet {
                    let mut d = c.clone();
                    d.push(b);
                    next.push(d);
                }
            }
            cases.extend(next);
        }
        for known in [
            "example.com:8080",
            "[::1]:80",
            "[fe80::1%25eth0]:80",
            "[fe80::1%25eth0",
            "a:1:2",
            "[1:2:3:4:5:6:7:8]:9",
            "1:2:3:4:5:6:7:8:9",
            "a%41",
            "]a[",
            "[[::1]]",
            "b.example:",
        ] {
            cases.push(known.as_bytes().to_vec());
        }
        for case in &cases {
            let parsed = http::uri::Authority::try_from(case.as_slice())
                .is_ok_and(|a| !a.as_str().contains('@'));
            assert_eq!(
                is_plain_authority(case),
                parsed,
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn one_host_per_request() {
        let parts = |target: &str, hosts: &[&str]| {
            let mut b = http::Request::builder().uri(target);
            for h in hosts {
                b = b.header("host", *h);
            }
            b.body(()).unwrap().into_parts().0
        };
        let mut p = parts("/x", &["a", "b"]);
        assert!(settle_host(&mut p).is_err());
        for bad in ["a/b", "u@a", "a b:80"] {
            assert!(settle_host(&mut parts("/x", &[bad])).is_err(), "{bad}");
        }
        let mut p = parts("http://b.example:8080/x", &["a"]);
        settle_host(&mut p).unwrap();
        assert_eq!(p.headers["host"], "b.example:8080");
        assert!(settle_host(&mut parts("http://u@b/x", &[])).is_err());
        let mut p = parts("/x", &["a.example:81"]);
        settle_host(&mut p).unwrap();
        assert_eq!(p.headers["host"], "a.example:81");
        // HTTP/2: a Host beside `:authority` stays; none is added without one.
        let mut p = parts("http://c.example/x", &["b.example"]);
        p.version = http::Version::HTTP_2;
        settle_host(&mut p).unwrap();
        assert_eq!(p.headers["host"], "b.example");
        let mut p = parts("http://c.example/x", &[]);
        p.version = http::Version::HTTP_2;
        settle_host(&mut p).unwrap();
        assert!(p.headers.get("host").is_none());
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
        let mut kept = h.clone();
        add_forwarded(&mut kept, "::1".parse().unwrap(), true, "http", None);
        assert_eq!(kept["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, ::1");
        assert!(kept.get("x-forwarded-host").is_none());
        // From a peer that is not a trusted proxy, the prior hops are not believed.
        add_forwarded(&mut h, "::1".parse().unwrap(), false, "http", None);
        assert_eq!(h["x-forwarded-for"], "::1");
    }
}
