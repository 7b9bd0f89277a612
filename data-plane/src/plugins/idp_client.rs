//! Every request the gateway itself makes to an identity provider (OIDC discovery, JWKS,
//! token introspection) goes through this module: one place for the timeout, the body-size cap
//! and TLS. `https://` URLs are verified against the system's trusted CAs (`/etc/ssl/certs`)
//! for the URL's host name, with the same rustls setup as `https` upstreams.

use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest IdP answer read (a JWKS with many keys is a few KiB).
pub const MAX_BODY: usize = 256 * 1024;

/// What an IdP answered.
#[derive(Debug)]
pub struct IdpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    #[error("invalid URL '{0}'")]
    BadUrl(String),
    #[error("no TLS client for '{0}': {1}")]
    Tls(String, String),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: {1}")]
    Unreachable(String, String),
    #[error("{0}: answer larger than {MAX_BODY} bytes or cut short")]
    Body(String),
}

static CLIENT: LazyLock<Client<HttpConnector, Full<Bytes>>> = LazyLock::new(|| {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
});

type TlsClient = Client<crate::proxy::TimedConnector, Full<Bytes>>;

/// For `https://` IdPs: the system's CAs, SNI and verification by the URL's host.
static TLS_CLIENT: LazyLock<Result<TlsClient, String>> = LazyLock::new(|| {
    let tls = crate::proxy::upstream_tls::settings(None, false, None).map_err(|(_, e)| e)?;
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(crate::proxy::TimedConnector::with_tls(tls)))
});

fn uri(url: &str) -> Result<http::Uri, IdpError> {
    let uri: http::Uri = url.parse().map_err(|_| IdpError::BadUrl(url.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.authority().is_some() => Ok(uri),
        _ => Err(IdpError::BadUrl(url.to_string())),
    }
}

async fn send(
    url: &str,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<IdpResponse, IdpError> {
    let call = async {
        let answer = if req.uri().scheme_str() == Some("https") {
            let client = TLS_CLIENT
                .as_ref()
                .map_err(|e| IdpError::Tls(url.to_string(), e.clone()))?;
            client.request(req).await
        } else {
            CLIENT.request(req).await
        };
        let resp = answer.map_err(|e| IdpError::Unreachable(url.to_string(), error_chain(&e)))?;
        let (head, body) = resp.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|_| IdpError::Body(url.to_string()))?
            .to_bytes();
        Ok(IdpResponse {
            status: head.status,
            headers: head.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| IdpError::Timeout(url.to_string(), timeout))?
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// `GET url` (JSON expected).
pub async fn get(url: &str, timeout: Duration) -> Result<IdpResponse, IdpError> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri(url)?)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "postern")
        .body(Full::new(Bytes::new()))
        .map_err(|_| IdpError::BadUrl(url.to_string()))?;
    send(url, req, timeout).await
}

/// How a client authenticates to the IdP's endpoints (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy)]
pub enum ClientAuth<'a> {
    /// `Authorization: Basic base64(urlencode(id):urlencode(secret))`.
    Basic { id: &'a str, secret: &'a str },
    /// `client_id` and `client_secret` in the form body.
    Post { id: &'a str, secret: &'a str },
}

/// `POST url` with an `application/x-www-form-urlencoded` body of `form`, authenticated as
/// `auth`.
pub async fn post_form(
    url: &str,
    form: &[(&str, &str)],
    auth: ClientAuth<'_>,
    timeout: Duration,
) -> Result<IdpResponse, IdpError> {
    let mut pairs: Vec<(&str, &str)> = form.to_vec();
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(uri(url)?)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "postern")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    match auth {
        ClientAuth::Basic { id, secret } => {
            let raw = format!("{}:{}", form_encode(id), form_encode(secret));
            let value = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            );
            let value =
                HeaderValue::from_str(&value).map_err(|_| IdpError::BadUrl(url.to_string()))?;
            builder = builder.header(header::AUTHORIZATION, value);
        }
        ClientAuth::Post { id, secret } => {
            pairs.push(("client_id", id));
            pairs.push(("client_secret", secret));
        }
    }
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect();
    let req = builder
        .body(Full::new(Bytes::from(body.join("&"))))
        .map_err(|_| IdpError::BadUrl(url.to_string()))?;
    send(url, req, timeout).await
}

/// `application/x-www-form-urlencoded` encoding of one name or value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The `max-age` of a `Cache-Control` header, if any.
pub fn max_age(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| {
            let (name, value) = d.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| value.trim().trim_matches('"').parse().ok())?
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_and_max_age() {
        let cases = [
            ("abc-._*", "abc-._*"),
            ("a b", "a+b"),
            ("a:b/c?d=e&f", "a%3Ab%2Fc%3Fd%3De%26f"),
            ("é", "%C3%A9"),
        ];
        for (raw, want) in cases {
            assert_eq!(form_encode(raw), want, "{raw}");
        }
        let cc = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
            max_age(&h)
        };
        assert_eq!(cc("public, max-age=600"), Some(600));
        assert_eq!(cc("Max-Age = 5"), Some(5));
        assert_eq!(cc("no-store"), None);
        assert_eq!(cc("max-age=abc"), None);
        assert_eq!(max_age(&HeaderMap::new()), None);
    }

    #[test]
    fn only_http_and_https_urls() {
        assert!(uri("https://idp.example/jwks").is_ok());
        assert!(matches!(
            uri("file:///etc/passwd"),
            Err(IdpError::BadUrl(_))
        ));
        assert!(matches!(uri("/jwks"), Err(IdpError::BadUrl(_))));
        assert!(uri("http://127.0.0.1:8080/jwks").is_ok());
    }
}
