//! The proxy: accepts client connections (HTTP/1.1), routes each request with the current
//! `CompiledConfig`, forwards it to an upstream node over a pooled keepalive connection and
//! streams both bodies. The upstream call is bounded by the route's connect/send/read timeouts
//! (`upstream_call`), takes a place in the upstream's bulkhead, skips unhealthy nodes, reports
//! its outcome to passive health checks and retries on another node when that is safe.

mod dns;
mod error;
mod framing;
mod h1_client;
mod h1_server;
mod header_names;
pub mod headers;
mod limited_body;
pub mod normalize;
mod owned_conns;
pub mod real_ip;
mod transcode;
mod upgrade;
mod upstream_call;
pub mod upstream_tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
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
use owned_conns::{Lease, OwnedConns};
pub(crate) use upstream_call::TimedConnector;
use upstream_call::{CallGuard, Progress, RequestBody, SendBody, UpstreamBody, UpstreamInner};

/// What one request takes from the config it was matched with: its route, kept alive by the
/// request (so it finishes on the config it started with).
type MatchedRoute = Arc<CompiledRoute>;

/// What the metrics and the access log learn about a request while it is handled.
struct Exchange {
    /// The matched route's id, once a route matched. Recorded, like `upstream`, only when the
    /// access log is on: each is a clone of an `Arc` in the route's or node's own allocation,
    /// a cold cache line per request when requests spread over thousands of routes.
    route: Option<Arc<str>>,
    /// The matched route's series (the unmatched series until a route matched).
    metrics: Arc<RouteMetrics>,
    upstream: Option<Authority>,
    /// Until the upstream's response head arrived.
    upstream_time: Option<Duration>,
    request_id: Option<HeaderValue>,
    /// `request_id` is in the request's header map (the client's, or a plugin's); else
    /// `forward` adds it to the upstream request.
    request_id_in_map: bool,
    /// The identity headers for the upstream, from what an auth plugin found.
    identity: headers::Identity,
    /// The consumer an auth plugin identified (for `chash` with `hash_on: consumer`).
    consumer: Option<Arc<str>>,
    /// The client came in over TLS (`X-Forwarded-Proto: https`).
    https: bool,
    /// The client connection's own upstream connections (`owned_conns`).
    conns: Arc<OwnedConns>,
    /// What plugins hold for the whole exchange (`limit-conn`'s slot): kept with the response
    /// body, so released when the body has been sent (or the client went away), not when the
    /// head is ready.
    held: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

fn plugin_response(answer: PluginResponse) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(answer.body)));
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = answer.headers;
    resp
}

/// The plugins' turn at the response (headers, a replaced body, a body tap) and their log
/// phase; the request id and what plugins hold until the response ends go to the exchange.
fn after_plugins(
    response: Response<ProxyBody>,
    route: &CompiledRoute,
    mut ctx: RequestCtx,
    exchange: &mut Exchange,
) -> Response<ProxyBody> {
    let (mut head, body) = response.into_parts();
    route.plugins.response(&mut head, &mut ctx);
    let mut body = match ctx.replace_body.take() {
        Some(replacement) => {
            head.headers.remove(header::TRANSFER_ENCODING);
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(replacement.len()));
            Either::Right(Full::new(replacement))
        }
        None => body,
    };
    if let (Some(tap), Either::Left(upstream_body)) = (ctx.body_tap.take(), &mut body) {
        upstream_body.tap(tap);
    }
    route.plugins.log(&ctx, head.status);
    exchange.request_id = ctx.request_id.take();
    exchange.held = std::mem::take(&mut ctx.held);
    Response::from_parts(head, body)
}

use crate::compile::{CompiledRoute, Timeouts};
use crate::health::Outcome;
use crate::observability::MeteredBody;
use crate::observability::access_log::{AccessLog, Record};
use crate::observability::metrics::{METRICS, RouteMetrics};
use crate::plugins::request_id::client_or_new_request_id;
use crate::plugins::{PluginResponse, RequestCtx};
use crate::router::vars::RequestVars;
use crate::state::DpState;

/// What the proxy answers with: an upstream's streamed body or a body of its own.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;
/// The body as sent to the client: counted for metrics and the access log as it goes.
pub type ClientBody = MeteredBody<ProxyBody>;

/// Longest a client may take to send its request headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers) accepted; larger → 431.
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
/// Most request headers accepted; more → 431.
const MAX_REQUEST_HEADERS: usize = 100;
/// Concurrent streams per HTTP/2 client connection.
const MAX_H2_STREAMS: u32 = 256;
/// HTTP/2 pings on idle client connections; no answer within as long again closes it.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);
/// Longest request target accepted; longer → 414.
const MAX_URI_BYTES: usize = 8 * 1024;
/// Idle upstream connections are closed after this long.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// Request bodies go out wrapped in `LimitedBody`, which enforces `client-control`'s
/// `max_body_size` on bodies without a `Content-Length` (and passes bodies through otherwise),
/// inside `SendBody`, which times the sending. Connections are made by `TimedConnector`, which
/// applies each request's connect timeout.
pub(crate) type UpstreamClient = Client<TimedConnector, SendBody>;

/// A client with its own pool: the proxy's shared ones, and those of upstreams with a
/// `keepalive_pool` or TLS. `http2`: HTTP/2 only (gRPC), one multiplexed connection per node.
pub(crate) fn pooled_client(
    max_idle_per_node: usize,
    idle_timeout: Duration,
    connector: TimedConnector,
    http2: bool,
) -> UpstreamClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(max_idle_per_node)
        .pool_timer(TokioTimer::new());
    if http2 {
        builder
            .http2_only(true)
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(Some(H2_KEEPALIVE));
    }
    builder.build(connector)
}

/// Shared by every connection of one proxy listener.
pub struct Proxy {
    state: Arc<DpState>,
    client: UpstreamClient,
    /// HTTP/2 without TLS, for `scheme: grpc` upstreams.
    h2c_client: UpstreamClient,
    /// Opens the connections each client connection owns (`owned_conns`).
    connector: TimedConnector,
    encoded_slash: normalize::EncodedSlash,
    trusted_proxies: Vec<real_ip::Cidr>,
    access_log: Option<Arc<AccessLog>>,
    /// How long in-flight requests may finish once the listener stopped accepting.
    drain_timeout: Duration,
}

/// The proxy's settings that do not come from the config snapshots.
pub struct ProxySettings {
    pub encoded_slash: normalize::EncodedSlash,
    pub trusted_proxies: Vec<real_ip::Cidr>,
    pub access_log: Option<Arc<AccessLog>>,
    pub drain_timeout: Duration,
}

impl Proxy {
    pub fn new(state: Arc<DpState>, settings: ProxySettings) -> Proxy {
        let client = pooled_client(
            POOL_MAX_IDLE_PER_HOST,
            POOL_IDLE_TIMEOUT,
            TimedConnector::new(),
            false,
        );
        // One multiplexed connection per node carries every gRPC call to it.
        let h2c_client = pooled_client(
            POOL_MAX_IDLE_PER_HOST,
            POOL_IDLE_TIMEOUT,
            TimedConnector::new(),
            true,
        );
        Proxy {
            state,
            client,
            h2c_client,
            connector: TimedConnector::new(),
            encoded_slash: settings.encoded_slash,
            trusted_proxies: settings.trusted_proxies,
            access_log: settings.access_log,
            drain_timeout: settings.drain_timeout,
        }
    }

    /// Accepts connections until `shutdown`, then lets in-flight requests finish (bounded).
    /// With `tls`, every connection is a TLS handshake first (certificate by SNI, see `tls`).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: CancellationToken,
    ) {
        let graceful = GracefulShutdown::new();
        // HTTP/1.1, and HTTP/2 with prior knowledge (h2c: gRPC clients), told apart by the
        // connection's first bytes.
        let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            // A request head that does not fit the read buffer, or too many headers: 431.
            .max_buf_size(MAX_REQUEST_HEAD_BYTES)
            .max_headers(MAX_REQUEST_HEADERS);
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32)
            .max_concurrent_streams(MAX_H2_STREAMS)
            // Rapid-reset (CVE-2023-44487) and error-reset floods end the connection.
            .max_pending_accept_reset_streams(Some(64))
            .max_local_error_reset_streams(Some(256))
            .keep_alive_interval(Some(H2_KEEPALIVE))
            .keep_alive_timeout(H2_KEEPALIVE);
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
            let framing = framing::ConnFraming::new();
            let conns = OwnedConns::new();
            METRICS.connections_accepted.inc();
            METRICS.connections_open.inc();
            match &tls {
                None => {
                    // The gateway's own loop serves the connection while its requests are
                    // plain (`h1_server`); hyper takes over from the first that is not.
                    let (http, watcher, shutdown) =
                        (http.clone(), graceful.watcher(), shutdown.clone());
                    tokio::spawn(async move {
                        let ended = h1_server::serve(
                            stream,
                            |req| proxy.handle(client_addr, req, false, conns.clone()),
                            shutdown,
                            HEADER_READ_TIMEOUT,
                        )
                        .await;
                        if let h1_server::Ended::HandOver(stream, read) = ended {
                            let stream = framing::FramingWatch::new(
                                h1_server::Rewind::new(stream, read),
                                framing.clone(),
                                MAX_REQUEST_HEAD_BYTES,
                            );
                            let service = proxy.service(client_addr, false, conns, framing);
                            let conn = http
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .into_owned();
                            if let Err(e) = watcher.watch(conn).await {
                                tracing::debug!(error = %e, client = %client_addr, "client connection ended with an error");
                            }
                        }
                        METRICS.connections_open.dec();
                    });
                }
                Some(acceptor) => {
                    let service = proxy.service(client_addr, true, conns, framing.clone());
                    let (acceptor, http, watcher) =
                        (acceptor.clone(), http.clone(), graceful.watcher());
                    tokio::spawn(async move {
                        // The handshake has the header read timeout too (slowloris).
                        match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => {
                                let tls = framing::FramingWatch::new(
                                    tls,
                                    framing,
                                    MAX_REQUEST_HEAD_BYTES,
                                );
                                let conn = http
                                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                                    .into_owned();
                                if let Err(e) = watcher.watch(conn).await {
                                    tracing::debug!(error = %e, client = %client_addr, "client connection ended with an error");
                                }
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, client = %client_addr, "TLS handshake failed")
                            }
                            Err(_) => {
                                tracing::debug!(client = %client_addr, "TLS handshake timed out")
                            }
                        }
                        METRICS.connections_open.dec();
                    });
                }
            }
        }
        drop(listener);
        tracing::info!(drain_timeout = ?self.drain_timeout, "proxy listener closed; draining connections");
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        if tokio::time::timeout_at(deadline, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: closing the remaining connections");
        }
        // Upgraded connections (WebSockets) get what is left of the same drain period.
        upgrade::TUNNELS.close();
        if !upgrade::TUNNELS.is_empty() {
            tracing::info!(
                open = upgrade::TUNNELS.len(),
                "waiting for upgraded connections (WebSockets) to close"
            );
            if tokio::time::timeout_at(deadline, upgrade::TUNNELS.wait())
                .await
                .is_err()
            {
                tracing::warn!("drain timeout: closing the remaining upgraded connections");
            }
        }
    }

    /// hyper's service for one client connection.
    fn service(
        self: &Arc<Self>,
        client_addr: SocketAddr,
        https: bool,
        conns: Arc<OwnedConns>,
        framing: Arc<framing::ConnFraming>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<ClientBody>,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<Response<ClientBody>, Infallible>>
                 + Send
                 + 'static,
    > + Clone
    + Send
    + 'static {
        let proxy = self.clone();
        service_fn(move |req: Request<Incoming>| {
            let proxy = proxy.clone();
            let conns = conns.clone();
            // Smuggling-prone framing (seen below hyper, which would accept it): refused,
            // and the connection closed.
            let refusal = if req.version() < Version::HTTP_2 {
                framing.next_request_refusal()
            } else {
                None
            };
            async move {
                if let Some(why) = refusal {
                    return Ok::<_, Infallible>(proxy.refuse_framing(why));
                }
                let req = req.map(Either::Left);
                Ok::<_, Infallible>(proxy.handle(client_addr, req, https, conns).await)
            }
        })
    }

    /// The answer to a request whose framing the watch refused (`framing`).
    fn refuse_framing(&self, why: framing::Refusal) -> Response<ClientBody> {
        let mut response = ProxyError::Framing(why).into_response().map(Either::Right);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        let status = response.status().as_u16();
        response.map(|body| {
            MeteredBody::new(
                body,
                RouteMetrics::unmatched(),
                Instant::now(),
                status,
                None,
            )
        })
    }

    /// Handles one request and wraps the response so that metrics and the access log see it
    /// finish.
    async fn handle(
        &self,
        peer: SocketAddr,
        req: Request<RequestBody>,
        https: bool,
        conns: Arc<OwnedConns>,
    ) -> Response<ClientBody> {
        let start = Instant::now();
        // Routing conditions and plugins see the client; X-Forwarded-For gets the peer appended.
        let client_addr = if self.trusted_proxies.is_empty() {
            peer
        } else {
            let ip = real_ip::client_ip(peer.ip(), req.headers(), &self.trusted_proxies);
            SocketAddr::new(ip, peer.port())
        };
        let record = self.access_log.as_ref().map(|_| {
            Box::new(Record {
                time: SystemTime::now(),
                client: client_addr.ip(),
                method: req.method().clone(),
                host: req.headers().get(header::HOST).cloned(),
                path: req.uri().path().to_string(),
                protocol: req.version(),
                status: 0,
                route: None,
                upstream: None,
                upstream_time: None,
                duration: Duration::ZERO,
                bytes_out: 0,
                request_id: None,
                user_agent: req.headers().get(header::USER_AGENT).cloned(),
            })
        });
        let mut exchange = Exchange {
            route: None,
            metrics: RouteMetrics::unmatched(),
            upstream: None,
            upstream_time: None,
            request_id: None,
            request_id_in_map: false,
            identity: headers::Identity::default(),
            consumer: None,
            https,
            conns,
            held: Vec::new(),
        };
        let http1 = req.version() < Version::HTTP_2;
        // Routing, the plugins and the upstream call are awaited here rather than in async fns
        // of their own: each async fn's future is built, then moved into its caller's state by
        // value, a copy of its whole state (kilobytes on this path) for every request.
        let mut response: Response<ProxyBody> = 'handled: {
            let (mut parts, body, route) = match self.route(client_addr, req, &mut exchange) {
                Ok(routed) => routed,
                Err(e) => break 'handled e.into_response().map(Either::Right),
            };
            let mut ctx = route
                .has_plugins
                .then(|| RequestCtx::new(client_addr, route.id.clone()));
            let answer = match &mut ctx {
                Some(ctx) => route.plugins.request(&mut parts, ctx).await,
                None => None,
            };
            // After the plugins, so `request-id`'s own header and algorithm win when configured.
            let (id, in_map) = client_or_new_request_id(&mut parts.headers);
            exchange.request_id_in_map = in_map;
            let (max_body_size, upstream_host) = match &mut ctx {
                None => {
                    exchange.request_id = Some(id);
                    (None, None)
                }
                Some(ctx) => {
                    exchange.request_id = Some(id.clone());
                    ctx.request_id.get_or_insert(id);
                    if answer.is_none() {
                        exchange.identity = headers::Identity::new(
                            ctx.consumer_name.as_deref(),
                            ctx.consumer_group.as_deref(),
                            ctx.credential_id.as_deref(),
                        );
                        exchange.consumer = ctx.consumer_name.clone();
                        ctx.upstream_called = true;
                    }
                    (ctx.max_body_size, ctx.upstream_host.take())
                }
            };
            let result = match (answer, &route.transcode) {
                (Some(answer), _) => Ok(plugin_response(answer)),
                // Boxed: its state is larger than `forward`'s, and every request's future would
                // otherwise be sized for it.
                (None, Some(t)) => {
                    Box::pin(self.forward_transcoded(
                        peer,
                        parts,
                        body,
                        max_body_size,
                        &route,
                        t,
                        upstream_host,
                        &mut exchange,
                    ))
                    .await
                }
                (None, None) => {
                    let body = LimitedBody::new(body, max_body_size).metered(route.metrics.clone());
                    self.forward(peer, parts, body, &route, upstream_host, &mut exchange)
                        .await
                }
            };
            let response = result.unwrap_or_else(|e| e.into_response().map(Either::Right));
            match ctx {
                None => response,
                Some(ctx) => after_plugins(response, &route, ctx, &mut exchange),
            }
        };
        // (HTTP/2 has no Connection header; its connections are drained with GOAWAY.)
        if http1 && self.state.is_draining() {
            // Shutting down: move keepalive clients to other DPs now, while this one still
            // answers, rather than closing their connections under them later.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let status = response.status().as_u16();
        let log = match (&self.access_log, record) {
            (Some(log), Some(mut record)) => {
                record.status = status;
                record.route = exchange.route;
                record.upstream = exchange.upstream;
                record.upstream_time = exchange.upstream_time;
                record.request_id = exchange.request_id;
                Some((log.clone(), record))
            }
            _ => None,
        };
        let held = std::mem::take(&mut exchange.held);
        response
            .map(|body| MeteredBody::new(body, exchange.metrics, start, status, log).holding(held))
    }

    /// What comes before the plugins: the request's path and host made normal, the client's
    /// hop-by-hop and identity headers removed, and the route matched.
    fn route(
        &self,
        client_addr: SocketAddr,
        req: Request<RequestBody>,
        exchange: &mut Exchange,
    ) -> Result<(http::request::Parts, RequestBody, MatchedRoute), ProxyError> {
        let (mut parts, body) = req.into_parts();
        if parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > MAX_URI_BYTES {
            return Err(ProxyError::UriTooLong);
        }
        self.normalize(&mut parts)?;
        headers::settle_host(&mut parts).map_err(ProxyError::BadRequest)?;
        // The client's own hop-by-hop and identity headers go before any plugin runs.
        headers::strip_connection_named(&mut parts.headers);
        headers::strip_identity(&mut parts.headers);
        let route = self.match_route(client_addr, &parts)?;
        exchange.metrics = route.metrics.clone();
        if self.access_log.is_some() {
            exchange.route = Some(route.id.clone());
        }
        Ok((parts, body, route))
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
        let route = config.routes[idx].clone();
        // Both are read later in the request; their cache misses overlap this way.
        crate::memory::prefetch_arc(&route.metrics);
        if let Some(upstream) = &route.upstream {
            crate::memory::prefetch_arc(upstream);
        }
        Ok(route)
    }

    async fn forward(
        &self,
        client_addr: SocketAddr,
        mut parts: http::request::Parts,
        body: LimitedBody<RequestBody>,
        route: &MatchedRoute,
        // A plugin's choice of upstream `Host` (proxy-rewrite's `host`): wins over `pass_host`.
        upstream_host: Option<HeaderValue>,
        exchange: &mut Exchange,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upstream = route.upstream.as_ref().ok_or(ProxyError::NoUpstream)?;
        let timeouts = route.timeouts;
        // Bulkhead: a full upstream answers at once, or after a bounded wait with `max_queue`.
        let mut guard = CallGuard::admit_or_wait(upstream)
            .await
            .ok_or(ProxyError::Overloaded)?;
        let hash = upstream.request_hash(&parts, client_addr.ip(), exchange.consumer.as_deref());

        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // HTTP/2 requests carry the host in the URI (`:authority`), not in a Host header.
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        // A transcoded call is gRPC whatever the upstream's scheme says.
        let grpc = route.transcode.is_some() || upstream.scheme.is_grpc();
        // WebSocket and other HTTP/1.1 upgrades (not to gRPC upstreams, which speak HTTP/2).
        let upgrade = if grpc {
            None
        } else {
            upgrade::requested(&parts)
        };
        let mut client_upgrade = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        // gRPC needs `TE: trailers` end to end; every other TE value is hop-by-hop.
        let te_trailers = grpc
            && parts.headers.get_all(header::TE).iter().any(|v| {
                v.to_str().is_ok_and(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
                })
            });
        headers::strip_hop_by_hop(&mut parts.headers);
        if te_trailers {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some(protocol) = &upgrade {
            upgrade::set_headers(&mut parts.headers, protocol.clone());
        }
        // The hops before the peer are believed only from a trusted proxy.
        let peer_trusted = self
            .trusted_proxies
            .iter()
            .any(|c| c.contains(client_addr.ip()));
        // Kept beside the map: written into the head by the gateway's own client, inserted for
        // the others (below).
        let forwarded = headers::Forwarded::take(
            &mut parts.headers,
            client_addr.ip(),
            peer_trusted,
            if exchange.https { "https" } else { "http" },
            original_host.as_ref(),
        );
        let identity = std::mem::take(&mut exchange.identity);
        // The request id, when it is not in the map already (`client_or_new_request_id`).
        let request_id = match exchange.request_id_in_map {
            true => None,
            false => exchange.request_id.clone(),
        };
        parts.version = if grpc {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };

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
        // When the first try started (for `retry_timeout`).
        let mut first_try: Option<tokio::time::Instant> = None;
        // Nodes already tried, filled only when a retry follows (no allocation otherwise).
        let mut tried: Vec<usize> = Vec::new();
        let mut try_no: u32 = 0;
        // An upgrade request has no body (and must not get a chunked one, whose terminator the
        // upstream would read as the new protocol's first bytes).
        let mut body = if upgrade.is_some() { None } else { Some(body) };
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
            // Plain HTTP/1.1 to a node without its own pool: on a connection this client
            // connection owns, addressed in origin form (the path); else by the pooled client,
            // which wants the absolute URI.
            let owned = !grpc && upgrade.is_none() && upstream.pool.is_none();
            let mut uri = http::uri::Parts::default();
            if !owned {
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(node.authority.clone());
            }
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
            let host_header = host_header.unwrap_or_else(|| node.host_header.clone());
            let this_body = body.take();
            // Without a body, an owned call goes by the gateway's own client, which writes the
            // gateway's headers into the head itself; every other call carries them in the map.
            let direct = owned && this_body.as_ref().is_none_or(|b| b.is_end_stream());
            let added = h1_client::Added {
                host: &host_header,
                forwarded: &forwarded,
                identity: &identity,
                request_id: request_id.as_ref(),
            };
            if !direct {
                added.insert_into(req.headers_mut());
            }
            let body_too_large = this_body.as_ref().and_then(|b| b.tripped());
            let started = tokio::time::Instant::now();
            let first_try = *first_try.get_or_insert(started);
            let progress = Progress::starting(
                started,
                this_body.as_ref().is_none_or(|b| b.is_end_stream()),
            );
            let mut req = req.map(|()| SendBody::new(this_body, progress.clone()));
            // `keepalive_pool.requests`: see which connection serves the request, to count it.
            let capture = upstream.pool.as_ref().map(|p| {
                (
                    hyper_util::client::legacy::connect::capture_connection(&mut req),
                    p.1,
                )
            });
            let shared = if grpc { &self.h2c_client } else { &self.client };
            let client = upstream.pool.as_ref().map_or(shared, |p| &p.0);
            if self.access_log.is_some() {
                exchange.upstream = Some(node.authority.clone());
            }
            let result = if direct {
                // No body to stream: the gateway's own client, in this task (`h1_client`).
                // Awaited here, not in an async fn of its own (see `handle`).
                let call = owned_conns::call_h1(
                    &exchange.conns,
                    &self.connector,
                    &node.authority,
                    &req,
                    &added,
                    timeouts.connect,
                    progress.clone(),
                );
                match Self::timed(call, &timeouts, &progress, &exchange.conns).await {
                    Ok(Ok(response)) => Ok((response.map(UpstreamInner::from), None)),
                    Ok(Err(e)) => Err(Self::owned_call_error(e, &progress, &body_too_large)),
                    Err(e) => Err(e),
                }
            } else if owned {
                // A body to stream: hyper's client. Boxed: twice the state of the call above,
                // carried by every request's future if inline.
                Box::pin(self.send_owned(
                    &exchange.conns,
                    &node.authority,
                    req,
                    &timeouts,
                    progress,
                    body_too_large,
                ))
                .await
            } else {
                Self::send(
                    client,
                    &exchange.conns,
                    req,
                    &timeouts,
                    progress,
                    body_too_large,
                )
                .await
                .map(|response| (response.map(UpstreamInner::from), None))
            };
            if let Some((capture, max)) = &capture {
                upstream_call::count_request(capture, *max);
            }
            let load = &upstream.loads[idx];
            match result {
                Ok((response, lease)) => {
                    let upstream_time = started.elapsed();
                    load.observe(upstream_time);
                    route.metrics.upstream_responded(upstream_time);
                    exchange.upstream_time = Some(upstream_time);
                    upstream.report_passive(idx, Outcome::Status(response.status().as_u16()));
                    let mut response = response;
                    let switched = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                    let tunnel = match (switched, client_upgrade.take()) {
                        (true, Some(client)) => Some((client, hyper::upgrade::on(&mut response))),
                        // 101 to a request that asked for nothing: not HTTP we can pass on.
                        (true, None) => return Err(ProxyError::UnexpectedUpgrade),
                        (false, _) => None,
                    };
                    let protocol = response.headers().get(header::UPGRADE).cloned();
                    let (mut parts, body) = response.into_parts();
                    headers::strip_hop_by_hop(&mut parts.headers);
                    if let Some((client, upstream_io)) = tunnel {
                        if let Some(p) = protocol {
                            upgrade::set_headers(&mut parts.headers, p);
                        }
                        upgrade::tunnel(client, upstream_io);
                    }
                    let mut body = UpstreamBody::new(body, timeouts.read, guard);
                    if let Some(lease) = lease {
                        body = body.with_lease(lease);
                    }
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
                        upstream.report_passive(idx, o);
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

    /// One try by the pooled client: waits for the response head under the connect, send and
    /// read timeouts.
    async fn send(
        client: &UpstreamClient,
        conns: &OwnedConns,
        req: Request<SendBody>,
        timeouts: &Timeouts,
        progress: Arc<Progress>,
        body_too_large: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let call =
            upstream_call::with_call(timeouts.connect, progress.clone(), client.request(req));
        let result = Self::timed(call, timeouts, &progress, conns).await?;
        result.map_err(|e| {
            if Self::tripped(&body_too_large) {
                ProxyError::BodyTooLarge
            } else if progress.body_failed() {
                ProxyError::client_body_failed()
            } else if upstream_call::caused_by::<upstream_call::ConnectTimedOut>(&e) {
                ProxyError::ConnectTimeout
            } else if e.is_connect() {
                ProxyError::UpstreamConnect(Box::new(e))
            } else {
                ProxyError::UpstreamFailed(Box::new(e))
            }
        })
    }

    /// One try with a body to stream, on a connection of the client connection's own
    /// (`owned_conns`) by hyper's client, under the same timeouts as [`Proxy::send`].
    async fn send_owned(
        &self,
        conns: &Arc<OwnedConns>,
        node: &Authority,
        req: Request<SendBody>,
        timeouts: &Timeouts,
        progress: Arc<Progress>,
        body_too_large: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<(Response<UpstreamInner>, Option<Lease>), ProxyError> {
        let call = owned_conns::call(
            conns,
            &self.connector,
            node,
            req,
            timeouts.connect,
            progress.clone(),
        );
        Self::timed(call, timeouts, &progress, conns)
            .await?
            .map(|(response, lease)| (response.map(UpstreamInner::from), Some(lease)))
            .map_err(|e| Self::owned_call_error(e, &progress, &body_too_large))
    }

    /// What a failed call on an owned connection answers.
    fn owned_call_error(
        e: owned_conns::CallError,
        progress: &Progress,
        body_too_large: &Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> ProxyError {
        match e {
            _ if Self::tripped(body_too_large) => ProxyError::BodyTooLarge,
            _ if progress.body_failed() => ProxyError::client_body_failed(),
            owned_conns::CallError::Connect(e) => {
                if upstream_call::caused_by::<upstream_call::ConnectTimedOut>(&*e) {
                    ProxyError::ConnectTimeout
                } else {
                    ProxyError::UpstreamConnect(e)
                }
            }
            owned_conns::CallError::Failed(e) => ProxyError::UpstreamFailed(e),
        }
    }

    /// A body cut off at client-control's limit fails the upstream request before it answered:
    /// that is the client's doing, so 413 rather than 502.
    fn tripped(body_too_large: &Option<Arc<std::sync::atomic::AtomicBool>>) -> bool {
        body_too_large
            .as_ref()
            .is_some_and(|t| t.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Runs `call` (one try, up to the response head) until it finishes, or until the send or
    /// read timeout passes without progress (`UpstreamTimeout`). The timer is the client
    /// connection's kept one (`OwnedConns::take_timer`): it is moved only when it is set later
    /// than this call's deadline, or fires before it — a call on a busy connection costs no
    /// timer registration.
    async fn timed<F: std::future::Future>(
        call: F,
        timeouts: &Timeouts,
        progress: &Progress,
        conns: &OwnedConns,
    ) -> Result<F::Output, ProxyError> {
        tokio::pin!(call);
        let mut timer = conns.take_timer();
        let result = loop {
            // Connecting: the connector's own timeout applies; look again shortly.
            let deadline = progress
                .deadline(timeouts)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_millis(50));
            // Moved only when it would fire late, or already fired (early: set for an earlier
            // call, or while connecting).
            if timer.deadline() > deadline || timer.is_elapsed() {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                r = &mut call => break Ok(r),
                _ = timer.as_mut() => {
                    if progress
                        .deadline(timeouts)
                        .is_some_and(|d| d <= tokio::time::Instant::now())
                    {
                        break Err(ProxyError::UpstreamTimeout);
                    }
                }
            }
        };
        conns.keep_timer(timer);
        result
    }
}
