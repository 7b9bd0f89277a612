//! What an upstream response head says about keeping it in a shared cache (RFC 9111, the parts
//! a gateway needs): `Cache-Control`, `Expires`, `Vary`, and the cases a shared cache must not
//! store (`Set-Cookie`, an `Authorization`'d request without `public`/`s-maxage`).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, header};

/// The parsed `Cache-Control` directives that matter here.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl CacheControl {
    /// Every `Cache-Control` header, directives split on commas, names in any case; a
    /// malformed number is ignored (as if the directive were absent).
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    // `no-cache="field"` limits it to a field; treated as the whole response.
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "max-age" => cc.max_age = seconds().or(cc.max_age),
                    "s-maxage" => cc.s_maxage = seconds().or(cc.s_maxage),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// The decision for one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storable {
    /// Not stored, and why (for the debug log).
    No(&'static str),
    /// Stored for this long; `None` = the plugin's `cache_ttl`.
    Yes(Option<Duration>),
}

/// Whether a response may be stored and for how long. `follow_ttl`: use the upstream's
/// max-age / s-maxage / Expires (the plugin's `cache_control`).
pub fn storable(
    resp: &HeaderMap,
    request_authorized: bool,
    follow_ttl: bool,
    now: SystemTime,
) -> Storable {
    let cc = CacheControl::parse(resp);
    if cc.no_store {
        return Storable::No("no-store");
    }
    if cc.private {
        return Storable::No("private");
    }
    if cc.no_cache {
        // Would need revalidation before each use; this cache does not revalidate.
        return Storable::No("no-cache");
    }
    if resp.contains_key(header::SET_COOKIE) {
        return Storable::No("set-cookie");
    }
    if request_authorized && !(cc.public || cc.s_maxage.is_some()) {
        return Storable::No("authorization");
    }
    if vary(resp).is_none() {
        return Storable::No("vary: *");
    }
    if !follow_ttl {
        return Storable::Yes(None);
    }
    let ttl = match cc.s_maxage.or(cc.max_age) {
        Some(s) => Some(Duration::from_secs(s)),
        // An invalid date (`0`, `-1`) means already expired.
        None => resp.get(header::EXPIRES).map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| httpdate::parse_http_date(s).ok())
                .map_or(Duration::ZERO, |expires| {
                    let date = resp
                        .get(header::DATE)
                        .and_then(|d| d.to_str().ok())
                        .and_then(|d| httpdate::parse_http_date(d).ok())
                        .unwrap_or(now);
                    expires.duration_since(date).unwrap_or(Duration::ZERO)
                })
        }),
    };
    match ttl {
        Some(Duration::ZERO) => Storable::No("expired at once"),
        ttl => Storable::Yes(ttl),
    }
}

/// The request headers a response varies on, lowercase and sorted; `None` for `Vary: *`.
pub fn vary(resp: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in resp.get_all(header::VARY) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            if let Ok(h) = HeaderName::from_bytes(name.as_bytes()) {
                names.push(h);
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn cache_control_directives_parse() {
        let cases: [(&[(&str, &str)], CacheControl); 6] = [
            (&[], CacheControl::default()),
            (
                &[("cache-control", "public, max-age=60")],
                CacheControl {
                    public: true,
                    max_age: Some(60),
                    ..Default::default()
                },
            ),
            (
                &[("cache-control", "Max-Age=\"30\", S-MAXAGE=90")],
                CacheControl {
                    max_age: Some(30),
                    s_maxage: Some(90),
                    ..Default::default()
                },
            ),
            (
                &[("cache-control", "no-store"), ("cache-control", "private")],
                CacheControl {
                    no_store: true,
                    private: true,
                    ..Default::default()
                },
            ),
            (
                &[("cache-control", "no-cache=\"set-cookie\", max-age=abc")],
                CacheControl {
                    no_cache: true,
                    ..Default::default()
                },
            ),
            (
                &[("cache-control", "private=\"x\",,  must-revalidate")],
                CacheControl {
                    private: true,
                    ..Default::default()
                },
            ),
        ];
        for (h, want) in cases {
            assert_eq!(CacheControl::parse(&headers(h)), want, "{h:?}");
        }
    }

    #[test]
    fn storable_follows_the_upstream() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(now);
        let in_2m = httpdate::fmt_http_date(now + Duration::from_secs(120));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(120));
        let secs = |s| Storable::Yes(Some(Duration::from_secs(s)));
        // (response headers, request had Authorization, cache_control on, decision)
        type Case<'a> = (Vec<(&'a str, &'a str)>, bool, bool, Storable);
        let cases: Vec<Case> = vec![
            (vec![], false, true, Storable::Yes(None)),
            (vec![("cache-control", "max-age=60")], false, true, secs(60)),
            (
                vec![("cache-control", "max-age=60, s-maxage=5")],
                false,
                true,
                secs(5),
            ),
            // cache_control off: the plugin's ttl, but no-store still wins.
            (
                vec![("cache-control", "max-age=60")],
                false,
                false,
                Storable::Yes(None),
            ),
            (
                vec![("cache-control", "no-store")],
                false,
                false,
                Storable::No("no-store"),
            ),
            (
                vec![("cache-control", "private, max-age=60")],
                false,
                true,
                Storable::No("private"),
            ),
            (
                vec![("cache-control", "no-cache")],
                false,
                true,
                Storable::No("no-cache"),
            ),
            (
                vec![("cache-control", "max-age=0")],
                false,
                true,
                Storable::No("expired at once"),
            ),
            (
                vec![("expires", &in_2m), ("date", &date)],
                false,
                true,
                secs(120),
            ),
            (vec![("expires", &in_2m)], false, true, secs(120)),
            (
                vec![("expires", &past)],
                false,
                true,
                Storable::No("expired at once"),
            ),
            (
                vec![("expires", "0")],
                false,
                true,
                Storable::No("expired at once"),
            ),
            // max-age wins over Expires.
            (
                vec![("expires", &past), ("cache-control", "max-age=7")],
                false,
                true,
                secs(7),
            ),
            (
                vec![("set-cookie", "a=b")],
                false,
                true,
                Storable::No("set-cookie"),
            ),
            (vec![], true, true, Storable::No("authorization")),
            (
                vec![("cache-control", "public")],
                true,
                true,
                Storable::Yes(None),
            ),
            (
                vec![("vary", "Accept, *")],
                false,
                true,
                Storable::No("vary: *"),
            ),
        ];
        for (h, auth, follow, want) in cases {
            assert_eq!(storable(&headers(&h), auth, follow, now), want, "{h:?}");
        }
    }

    #[test]
    fn vary_names_are_normalised() {
        let h = headers(&[("vary", "Accept-Encoding, accept"), ("vary", "X-Tenant")]);
        let names: Vec<_> = vary(&h)
            .unwrap()
            .iter()
            .map(|n| n.as_str().to_string())
            .collect();
        assert_eq!(names, ["accept", "accept-encoding", "x-tenant"]);
    }
}
