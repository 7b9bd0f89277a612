//! Every way the proxy can fail a request, mapped to a status code and JSON body in one place.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No snapshot applied yet.
    #[error("the gateway has no configuration yet")]
    NotReady,
    #[error("404 Route Not Found")]
    NoRoute,
    /// The route has no upstream and none of its plugins answered.
    #[error("the route has no upstream")]
    NoUpstream,
    /// Every node of the upstream has weight 0 (drained).
    #[error("no upstream node available")]
    NoNode,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("bad request: {0}")]
    BadPath(#[from] super::normalize::PathError),
    /// Framing the gateway does not forward (smuggling): see `framing`.
    #[error("bad request: {}", .0.message())]
    Framing(super::framing::Refusal),
    #[error("request URI too long")]
    UriTooLong,
    /// The request body passed client-control's `max_body_size` while being sent upstream.
    #[error("request body too large")]
    BodyTooLarge,
    /// The upstream refused or reset the connection before answering.
    #[error("upstream connection failed")]
    UpstreamConnect(#[source] BoxError),
    /// The upstream answered with something that is not valid HTTP, or dropped mid-request.
    #[error("upstream request failed")]
    UpstreamFailed(#[source] BoxError),
    /// No answer (or no progress sending the body) within the read (send) timeout.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// No TCP connection within the connect timeout (APISIX answers 504 here too).
    #[error("upstream connect timed out")]
    ConnectTimeout,
    /// The upstream's `max_concurrent` requests are in flight (bulkhead).
    #[error("upstream is at its concurrency limit")]
    Overloaded,
    /// The upstream switched protocols without being asked to.
    #[error("upstream switched protocols unasked")]
    UnexpectedUpgrade,
}

impl ProxyError {
    /// A malformed chunk hyper found after the request was forwarded (see `framing`), or the
    /// client gone mid-body: the upstream request is cut off, and it is the client's error, not
    /// the upstream's (so it does not count against the node).
    pub fn client_body_failed() -> ProxyError {
        ProxyError::BadRequest("malformed or incomplete request body")
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NotReady
            | ProxyError::NoNode
            | ProxyError::NoUpstream
            | ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) | ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::Framing(why) => why.status(),
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamFailed(_)
            | ProxyError::UnexpectedUpgrade => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout | ProxyError::ConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// `{"error_msg": "..."}`, as APISIX answers.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        if status.is_server_error() {
            match &self {
                ProxyError::UpstreamConnect(e) | ProxyError::UpstreamFailed(e) => {
                    let e: &(dyn std::error::Error + 'static) = &**e;
                    tracing::warn!(error = %self, cause = ?e.source().unwrap_or(e), "proxy error")
                }
                _ => tracing::debug!(error = %self, "proxy error"),
            }
        }
        let body = serde_json::json!({ "error_msg": self.to_string() }).to_string();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}
