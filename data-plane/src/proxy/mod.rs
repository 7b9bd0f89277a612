//! The proxy: accepts client connections (HTTP/1.1), routes each request with the current
//! `CompiledConfig`, forwards it to an upstream node over a pooled keepalive connection and
//! streams both bodies. The upstream call is bounded by the route's connect/send/read timeouts
//! (`upstream_call`), takes a place in the upstream's bulkhead, skips unhealthy nodes, reports
//! its outcome to passive health checks and retries on another node when that is safe.

mod error;
pub mod headers;
mod limited_body;
pub mod normalize;
pub mod real_ip;
mod upstream_call;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri, Version, header};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use postern_proto::model::PassHost;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ProxyError;
use limited_body::LimitedBody;
use upstream_call::{CallGuard, Progress, SendBody, TimedConnector, UpstreamBody};

/// What one request takes from the config it was matched with.
struct MatchedRoute {
    id: Arc<str>,
    upstream: Option<Arc<Upstream>>,
    timeouts: Timeouts,
    plugins: Arc<PluginChain>,
}

fn plugin_response(answer: PluginResponse) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(answer.body)));
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = answer.headers;
    resp
}

use crate::compile::{Timeouts, Upstream};
use crate::health::Outcome;
use crate::plugins::{PluginChain, PluginResponse, RequestCtx};
use crate::router::vars::RequestVars;
use crate::state::DpState;

/// What the proxy answers with: an upstream's streamed body or a body of its own.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Longest a client may take to send its request headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers) accepted; larger → 431.
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
/// Most request headers accepted; more → 431.
const MAX_REQUEST_HEADERS: usize = 100;
/// Longest request target accepted; longer → 414.
const MAX_URI_BYTES: usize = 8 * 1024;
/// Idle upstream connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const POOL_MAX_IDLE_PER_HOST: usize = 256;
/// How long in-flight requests may finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Request bodies go out wrapped in `LimitedBody`, which enforces `client-control`'s
/// `max_body_size` on bodies without a `Content-Length` (and passes bodies through otherwise),
/// inside `SendBody`, which times the sending. Connections are made by `TimedConnector`, which
/// applies each request's connect timeout.
pub(crate) type UpstreamClient = Client<TimedConnector, SendBody>;

/// A client with its own pool: for an upstream with `keepalive_pool`.
pub(crate) fn pooled_client(max_idle_per_node: usize, idle_timeout: Duration) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(max_idle_per_node)
        .pool_timer(TokioTimer::new())
        .build(TimedConnector::new())
}

/// Shared by every connection of one proxy listener.
pub struct Proxy {
    state: Arc<DpState>,
    client: UpstreamClient,
    encoded_slash: normalize::EncodedSlash,
    trusted_proxies: Vec<real_ip::Cidr>,
}

impl Proxy {
    pub fn new(
        state: Arc<DpState>,
        encoded_slash: normalize::EncodedSlash,
        trusted_proxies: Vec<real_ip::Cidr>,
    ) -> Proxy {
        let client = pooled_client(POOL_MAX_IDLE_PER_HOST, POOL_IDLE_TIMEOUT);
        Proxy {
            state,
            client,
            encoded_slash,
            trusted_proxies,
        }
    }

    /// Accepts connections until `shutdown`, then lets in-flight requests finish (bounded).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            // A larger request head, or more headers, gets 431 from hyper.
            .max_header_size(MAX_REQUEST_HEAD_BYTES)
            .max_headers(MAX_REQUEST_HEADERS);
        loop {
            let (stream, client_addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            let service = service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(client_addr, req).await) }
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, client = %client_addr, "client connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: closing the remaining connections");
        }
    }

    async fn handle(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        // Routing conditions and plugins see the client; X-Forwarded-For gets the peer appended.
        let client_addr = if self.trusted_proxies.is_empty() {
            peer
        } else {
            let ip = real_ip::client_ip(peer.ip(), &parts.headers, &self.trusted_proxies);
            SocketAddr::new(ip, peer.port())
        };
        if parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > MAX_URI_BYTES {
            return ProxyError::UriTooLong.into_response().map(Either::Right);
        }
        if let Err(e) = self.normalize(&mut parts) {
            return e.into_response().map(Either::Right);
        }
        let route = match self.match_route(client_addr, &parts) {
            Ok(r) => r,
            Err(e) => return e.into_response().map(Either::Right),
        };
        if route.plugins.is_empty() {
            return self
                .forward(peer, parts, LimitedBody::new(body, None), &route, None)
                .await
                .unwrap_or_else(|e| e.into_response().map(Either::Right));
        }
        let mut ctx = RequestCtx::new(client_addr, route.id.clone());
        let result = match route.plugins.request(&mut parts, &mut ctx).await {
            Some(answer) => Ok(plugin_response(answer)),
            None => {
                let upstream_host = ctx.upstream_host.take();
                ctx.upstream_called = true;
                let body = LimitedBody::new(body, ctx.max_body_size);
                self.forward(peer, parts, body, &route, upstream_host).await
            }
        };
        let (mut head, body) = result
            .unwrap_or_else(|e| e.into_response().map(Either::Right))
            .into_parts();
        route.plugins.response(&mut head, &mut ctx);
        let body = match ctx.replace_body.take() {
            Some(replacement) => {
                head.headers.remove(header::TRANSFER_ENCODING);
                head.headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(replacement.len()));
                Either::Right(Full::new(replacement))
            }
            None => body,
        };
        route.plugins.log(&ctx, head.status);
        Response::from_parts(head, body)
    }

    /// Replaces the request path with its normal form (see `normalize`), once, before routing:
    /// the router, every plugin and the upstream then see the same path.
    fn normalize(&self, parts: &mut http::request::Parts) -> Result<(), ProxyError> {
        let path = parts.uri.path();
        let normal = match normalize::normalize_path(path, self.encoded_slash) {
            Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
            Ok(std::borrow::Cow::Owned(p)) => p,
            Err(e) => return Err(ProxyError::BadPath(e)),
        };
        let pq = match parts.uri.query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal,
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(
            pq.parse()
                .map_err(|_| ProxyError::BadRequest("unusable request target"))?,
        );
        parts.uri =
            Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("unusable request target"))?;
        Ok(())
    }

    /// Takes what this request needs from the current config and lets go of it: the request
    /// keeps its upstream and plugins alive by `Arc`, so it finishes on the config it started
    /// with even if a new one is swapped in meanwhile.
    fn match_route(
        &self,
        client_addr: SocketAddr,
        parts: &http::request::Parts,
    ) -> Result<MatchedRoute, ProxyError> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        let guard = self.state.config.load();
        let config = guard.as_ref().ok_or(ProxyError::NotReady)?;
        let idx = if config.any_vars {
            let req = RequestVars {
                parts,
                client: client_addr.ip(),
            };
            config
                .router
                .find_with(&parts.method, host, parts.uri.path(), |i| {
                    config.routes.get(i).is_some_and(|r| r.vars.matches(&req))
                })
        } else {
            config.router.find(&parts.method, host, parts.uri.path())
        }
        .ok_or(ProxyError::NoRoute)?;
        let route = &config.routes[idx];
        Ok(MatchedRoute {
            id: route.id.clone(),
            upstream: route.upstream.clone(),
            timeouts: route.timeouts,
            plugins: route.plugins.clone(),
        })
    }

    async fn forward(
        &self,
        client_addr: SocketAddr,
        mut parts: http::request::Parts,
        body: LimitedBody<Incoming>,
        route: &MatchedRoute,
        // A plugin's choice of upstream `Host` (proxy-rewrite's `host`): wins over `pass_host`.
        upstream_host: Option<HeaderValue>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upstream = route.upstream.as_ref().ok_or(ProxyError::NoUpstream)?;
        let timeouts = route.timeouts;
        // Bulkhead: a full upstream answers at once instead of queueing.
        let mut guard = CallGuard::admit(upstream).ok_or(ProxyError::Overloaded)?;
        let hash = upstream.request_hash(&parts, client_addr.ip());

        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let original_host = parts.headers.get(header::HOST).cloned();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::add_forwarded(
            &mut parts.headers,
            client_addr.ip(),
            "http",
            original_host.as_ref(),
        );
        parts.version = Version::HTTP_11;

        // Retries go to another node, only for requests without a body (the body is streamed,
        // not kept), and — unless the request never left (connect failure) — only idempotent
        // ones.
        let no_body = body.is_end_stream();
        let idempotent = matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        let tries = if no_body {
            upstream.retries.saturating_add(1)
        } else {
            1
        };
        let first_try = tokio::time::Instant::now();
        // Nodes already tried, filled only when a retry follows (no allocation otherwise).
        let mut tried: Vec<usize> = Vec::new();
        let mut try_no: u32 = 0;
        let mut body = Some(body);
        // The previous try's error: answered when no untried node is left for a retry.
        let mut last_error: Option<ProxyError> = None;
        loop {
            let Some(idx) = upstream.pick_node(hash, &tried) else {
                return Err(last_error.unwrap_or(ProxyError::NoNode));
            };
            try_no += 1;
            guard.on_node(idx);
            let node = &upstream.nodes[idx];
            let host_header: Option<HeaderValue> = match upstream.pass_host {
                _ if upstream_host.is_some() => upstream_host.clone(),
                PassHost::Pass => original_host.clone(),
                PassHost::Node => Some(node.host_header.clone()),
                PassHost::Rewrite => upstream.upstream_host.clone(),
            };
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(node.authority.clone());
            uri.path_and_query = Some(path_and_query.clone());
            let uri = Uri::from_parts(uri)
                .map_err(|_| ProxyError::BadRequest("unusable request target"))?;
            let last_try = try_no >= tries;
            let mut req = if last_try {
                // No retry after this one: hand over the request itself (extensions and all).
                let mut p = std::mem::replace(&mut parts, Request::new(()).into_parts().0);
                p.uri = uri;
                Request::from_parts(p, ())
            } else {
                let mut r = Request::new(());
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = uri;
                *r.version_mut() = parts.version;
                *r.headers_mut() = parts.headers.clone();
                r
            };
            match host_header {
                Some(h) => req.headers_mut().insert(header::HOST, h),
                None => req
                    .headers_mut()
                    .insert(header::HOST, node.host_header.clone()),
            };
            let this_body = body.take();
            let body_too_large = this_body.as_ref().and_then(|b| b.tripped());
            let progress = Progress::new(this_body.as_ref().is_none_or(|b| b.is_end_stream()));
            let mut req = req.map(|()| SendBody::new(this_body, progress.clone()));
            // `keepalive_pool.requests`: see which connection serves the request, to count it.
            let capture = upstream.pool.as_ref().map(|p| {
                (
                    hyper_util::client::legacy::connect::capture_connection(&mut req),
                    p.1,
                )
            });
            let client = upstream.pool.as_ref().map_or(&self.client, |p| &p.0);
            let started = tokio::time::Instant::now();
            let result = Self::send(client, req, &timeouts, progress, body_too_large).await;
            if let Some((capture, max)) = &capture {
                upstream_call::count_request(capture, *max);
            }
            let load = &upstream.loads[idx];
            match result {
                Ok(response) => {
                    load.observe(started.elapsed());
                    upstream
                        .health
                        .report_passive(idx, Outcome::Status(response.status().as_u16()));
                    let (mut parts, body) = response.into_parts();
                    headers::strip_hop_by_hop(&mut parts.headers);
                    let body = UpstreamBody::new(body, timeouts.read, guard);
                    return Ok(Response::from_parts(parts, Either::Left(body)));
                }
                Err(e) => {
                    // A failure is slow by definition: it counts against the node's EWMA too.
                    load.observe(started.elapsed());
                    let outcome = match e {
                        ProxyError::UpstreamTimeout | ProxyError::ConnectTimeout => {
                            Some(Outcome::Timeout)
                        }
                        ProxyError::UpstreamConnect(_) | ProxyError::UpstreamFailed(_) => {
                            Some(Outcome::TcpFailure)
                        }
                        _ => None,
                    };
                    if let Some(o) = outcome {
                        upstream.health.report_passive(idx, o);
                    }
                    let not_sent = matches!(
                        e,
                        ProxyError::UpstreamConnect(_) | ProxyError::ConnectTimeout
                    );
                    let in_time = upstream
                        .retry_timeout
                        .is_none_or(|t| first_try.elapsed() < t);
                    if last_try || outcome.is_none() || !(not_sent || idempotent) || !in_time {
                        return Err(e);
                    }
                    tracing::debug!(node = %node.authority, error = %e, "retrying on another node");
                    tried.push(idx);
                    last_error = Some(e);
                }
            }
        }
    }

    /// One try: waits for the response head under the connect, send and read timeouts.
    async fn send(
        client: &UpstreamClient,
        req: Request<SendBody>,
        timeouts: &Timeouts,
        progress: Arc<Progress>,
        body_too_large: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let call =
            upstream_call::with_call(timeouts.connect, progress.clone(), client.request(req));
        tokio::pin!(call);
        let result = loop {
            let deadline = progress.deadline(timeouts);
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    // Connecting: the connector's own timeout applies; look again shortly.
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            tokio::select! {
                biased;
                r = &mut call => break r,
                _ = sleep => {
                    if progress
                        .deadline(timeouts)
                        .is_some_and(|d| d <= tokio::time::Instant::now())
                    {
                        return Err(ProxyError::UpstreamTimeout);
                    }
                }
            }
        };
        result.map_err(|e| {
            // A body cut off at client-control's limit fails the upstream request before it
            // answered: that is the client's doing, so 413 rather than 502.
            if body_too_large.is_some_and(|t| t.load(std::sync::atomic::Ordering::Relaxed)) {
                ProxyError::BodyTooLarge
            } else if upstream_call::caused_by::<upstream_call::ConnectTimedOut>(&e) {
                ProxyError::ConnectTimeout
            } else if e.is_connect() {
                ProxyError::UpstreamConnect(e)
            } else {
                ProxyError::UpstreamFailed(e)
            }
        })
    }
}
