//! The pieces of one upstream call that enforce its timeouts and keep the upstream's counters:
//!
//! - `connect`: [`TimedConnector`] wraps hyper's `HttpConnector` and bounds each new TCP
//!   connection (and, for `https`/`grpcs` upstreams, its TLS handshake) by the route's connect
//!   timeout, passed in a task-local for the duration of the request ([`with_call`]); a pooled
//!   connection skips it. Timed out → 504, refused or a failed handshake → 502.
//! - `send`: [`SendBody`] wraps the request body and notes when each chunk is handed to the
//!   connection; more than `send` without progress while the body is being sent → 504.
//! - `read`: from the end of sending to the response head, and then between two chunks of the
//!   response body ([`UpstreamBody`]): more than `read` → 504 (before the head) or the response
//!   is cut (mid-body; the client sees the connection end early, as with nginx).
//!
//! [`CallGuard`] holds one request's place in the upstream's in-flight count (bulkhead,
//! `least_conn`, `ewma`) until its response body ends or is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{
    CaptureConnection, Connected, Connection, HttpConnector,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::dns::RotatingResolver;
use super::h1_client::H1Body;
use super::limited_body::LimitedBody;
use super::owned_conns::Lease;
use super::upstream_tls::UpstreamTlsSettings;
use crate::compile::{Timeouts, Upstream};
use crate::plugins::BodyTap;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest any connect may take when no request says otherwise (a pooled checkout racing a
/// connect finishes that connect in the background with this bound).
const CONNECT_TIMEOUT_CAP: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
pub struct ConnectTimedOut(Duration);

#[derive(Debug, thiserror::Error)]
#[error("upstream read timed out after {0:?}")]
pub struct ReadTimedOut(Duration);

/// One try's progress, shared by the connector, the request body and the proxy's timer.
pub struct Progress {
    start: Instant,
    /// Microseconds after `start` of the last progress (connected, a body chunk sent).
    last_micros: AtomicU64,
    /// A new connection is being made (its own timeout applies meanwhile).
    connecting: AtomicBool,
    /// The whole request body was handed to the connection (or there is none).
    body_done: AtomicBool,
    /// Reading the client's body failed (malformed chunk, client gone): the client's doing.
    body_failed: AtomicBool,
}

impl Progress {
    pub fn new(body_done: bool) -> Arc<Progress> {
        Progress::starting(Instant::now(), body_done)
    }

    /// A try that started at `start`.
    pub fn starting(start: Instant, body_done: bool) -> Arc<Progress> {
        Arc::new(Progress {
            start,
            last_micros: AtomicU64::new(0),
            connecting: AtomicBool::new(false),
            body_done: AtomicBool::new(body_done),
            body_failed: AtomicBool::new(false),
        })
    }

    /// When this try started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Whether reading the client's request body failed.
    pub fn body_failed(&self) -> bool {
        self.body_failed.load(Ordering::Relaxed)
    }

    fn mark(&self) {
        let micros = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_micros.store(micros, Ordering::Relaxed);
    }

    /// When this try times out if nothing moves: `None` while connecting.
    pub fn deadline(&self, t: &Timeouts) -> Option<Instant> {
        if self.connecting.load(Ordering::Relaxed) {
            return None;
        }
        let last = self.start + Duration::from_micros(self.last_micros.load(Ordering::Relaxed));
        Some(
            last + if self.body_done.load(Ordering::Relaxed) {
                t.read
            } else {
                t.send
            },
        )
    }
}

struct CallCtx {
    connect_timeout: Duration,
    progress: Arc<Progress>,
}

tokio::task_local! {
    static CALL: CallCtx;
}

/// Runs `fut` (an upstream request) with `connect_timeout` applying to any connection it opens.
pub async fn with_call<F: Future>(
    connect_timeout: Duration,
    progress: Arc<Progress>,
    fut: F,
) -> F::Output {
    CALL.scope(
        CallCtx {
            connect_timeout,
            progress,
        },
        fut,
    )
    .await
}

/// `HttpConnector` with the calling request's connect timeout, and TLS on top for an upstream
/// that has it (one connector, and so one pool, per such upstream). Names are resolved for each
/// new connection, addresses rotated (see `dns`).
#[derive(Clone)]
pub struct TimedConnector {
    inner: HttpConnector<RotatingResolver>,
    tls: Option<UpstreamTlsSettings>,
}

impl TimedConnector {
    pub fn new() -> TimedConnector {
        let mut inner = HttpConnector::new_with_resolver(RotatingResolver);
        inner.set_nodelay(true);
        inner.set_connect_timeout(Some(CONNECT_TIMEOUT_CAP));
        TimedConnector { inner, tls: None }
    }

    /// TLS on every connection. `https://` URIs are accepted too (port 443 by default), for
    /// the gateway's own calls (identity providers); the proxy always names the node's port.
    pub fn with_tls(tls: UpstreamTlsSettings) -> TimedConnector {
        let mut c = TimedConnector::new();
        c.inner.enforce_http(false);
        c.tls = Some(tls);
        c
    }
}

/// A connection to a node: plain TCP or TLS over it.
#[derive(Debug)]
enum NodeStream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// Requests served so far on one upstream connection (for `keepalive_pool.requests`), attached
/// to the connection's metadata.
#[derive(Clone, Debug, Default)]
pub struct ConnRequests(pub Arc<std::sync::atomic::AtomicU32>);

/// An upstream connection carrying its [`ConnRequests`] counter.
#[derive(Debug)]
pub struct UpstreamIo {
    inner: NodeStream,
    requests: ConnRequests,
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let connected = match &self.inner {
            NodeStream::Plain(io) => io.connected(),
            NodeStream::Tls(io) => {
                let (tcp, session) = io.inner().get_ref();
                let c = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        };
        connected.extra(self.requests.clone())
    }
}

/// Calls `$method` on whichever stream `$self` (a `Pin<&mut UpstreamIo>`) holds.
macro_rules! on_stream {
    ($self:ident, $method:ident($($arg:expr),*)) => {
        match &mut $self.get_mut().inner {
            NodeStream::Plain(io) => Pin::new(io).$method($($arg),*),
            NodeStream::Tls(io) => Pin::new(&mut **io).$method($($arg),*),
        }
    };
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        on_stream!(self, poll_read(cx, buf))
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        on_stream!(self, poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_stream!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_stream!(self, poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            NodeStream::Plain(io) => io.is_write_vectored(),
            NodeStream::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        on_stream!(self, poll_write_vectored(cx, bufs))
    }
}

impl UpstreamIo {
    /// The TCP stream of a plain (not TLS) connection.
    pub fn into_plain(self) -> Option<TcpStream> {
        match self.inner {
            NodeStream::Plain(io) => Some(io.into_inner()),
            NodeStream::Tls(_) => None,
        }
    }
}

/// Counts one more request on the connection `capture` saw; past `max`, the connection is not
/// reused (closed once idle).
pub fn count_request(capture: &CaptureConnection, max: u32) {
    let meta = capture.connection_metadata();
    let Some(connected) = meta.as_ref() else {
        return;
    };
    let mut ext = http::Extensions::new();
    connected.get_extras(&mut ext);
    if let Some(c) = ext.get::<ConnRequests>()
        && c.0.fetch_add(1, Ordering::Relaxed).saturating_add(1) >= max
    {
        connected.poison();
    }
}

impl tower_service::Service<Uri> for TimedConnector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Read here, synchronously: `call` runs inside the request's task-local scope, the
        // returned future may finish in the background.
        let (timeout, progress) = CALL
            .try_with(|c| (c.connect_timeout, Some(c.progress.clone())))
            .unwrap_or((CONNECT_TIMEOUT_CAP, None));
        if let Some(p) = &progress {
            p.connecting.store(true, Ordering::Relaxed);
        }
        let tls = self.tls.clone();
        let host = uri.host().unwrap_or_default().to_string();
        let connecting = self.inner.call(uri);
        let connect = async move {
            let io = connecting.await?;
            let Some(tls) = tls else {
                return Ok::<_, BoxError>(NodeStream::Plain(io));
            };
            let name = tls.name_for(&host)?;
            let stream = tokio_rustls::TlsConnector::from(tls.config)
                .connect(name, io.into_inner())
                .await?;
            Ok(NodeStream::Tls(Box::new(TokioIo::new(stream))))
        };
        Box::pin(async move {
            let result = tokio::time::timeout(timeout, connect).await;
            if let Some(p) = &progress {
                p.mark();
                p.connecting.store(false, Ordering::Relaxed);
            }
            match result {
                Ok(Ok(inner)) => Ok(UpstreamIo {
                    inner,
                    requests: ConnRequests::default(),
                }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Box::new(ConnectTimedOut(timeout)) as BoxError),
            }
        })
    }
}

/// Whether `e`'s chain of sources holds a `T`.
pub fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A request body: the client's, streamed, or one the gateway made (`grpc-transcode`).
pub type RequestBody = http_body_util::Either<Incoming, http_body_util::Full<Bytes>>;

/// The request body sent upstream: the client's (size-limited) or none (a retry of a request
/// without body), noting progress for the send timeout.
pub struct SendBody {
    inner: Option<LimitedBody<RequestBody>>,
    progress: Arc<Progress>,
}

impl SendBody {
    pub fn new(inner: Option<LimitedBody<RequestBody>>, progress: Arc<Progress>) -> SendBody {
        SendBody { inner, progress }
    }
}

impl Body for SendBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            this.progress.body_done.store(true, Ordering::Relaxed);
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                this.progress.mark();
                this.progress.body_done.store(true, Ordering::Relaxed);
            }
            Poll::Ready(Some(Ok(_))) => this.progress.mark(),
            Poll::Ready(Some(Err(_))) => this.progress.body_failed.store(true, Ordering::Relaxed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

/// A request's place in its upstream's in-flight counts, and on one node's once picked.
pub struct CallGuard {
    upstream: Arc<Upstream>,
    node: Option<usize>,
}

impl CallGuard {
    /// Takes a place, or `None` when the upstream's `max_concurrent` is reached (bulkhead).
    pub fn admit(upstream: &Arc<Upstream>) -> Option<CallGuard> {
        let now = upstream.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if upstream.max_concurrent.is_some_and(|max| now > max) {
            upstream.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(CallGuard {
            upstream: upstream.clone(),
            node: None,
        })
    }

    /// Like [`CallGuard::admit`], but a full upstream with `max_queue` lets the request wait
    /// up to `queue_timeout` for a place (while fewer than `max_queue` wait). Not strictly
    /// first come, first served: a place freed goes to whoever takes it first.
    pub async fn admit_or_wait(upstream: &Arc<Upstream>) -> Option<CallGuard> {
        if let Some(guard) = Self::admit(upstream) {
            return Some(guard);
        }
        if upstream.queued.fetch_add(1, Ordering::AcqRel) >= upstream.max_queue {
            upstream.queued.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let deadline = Instant::now() + upstream.queue_timeout;
        let guard = loop {
            // Registered before the re-check, so a place freed in between is not missed.
            let freed = upstream.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(guard) = Self::admit(upstream) {
                break Some(guard);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break None;
            }
        };
        upstream.queued.fetch_sub(1, Ordering::AcqRel);
        guard
    }

    /// Moves the node count to `node` (a retry leaves the previous node).
    pub fn on_node(&mut self, node: usize) {
        self.leave_node();
        if let Some(l) = self.upstream.loads.get(node) {
            l.in_flight.fetch_add(1, Ordering::Relaxed);
            self.node = Some(node);
        }
    }

    fn leave_node(&mut self) {
        if let Some(l) = self.node.take().and_then(|n| self.upstream.loads.get(n)) {
            l.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.leave_node();
        self.upstream.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.upstream.max_queue > 0 {
            self.upstream.slot_freed.notify_one();
        }
    }
}

/// Rewrites a response body as it streams (grpc-transcode: a server stream → NDJSON). Data
/// frames become the returned bytes (nothing yet: empty); trailers become a last data frame.
pub trait FrameMap: Send + Sync {
    fn data(&mut self, data: &[u8]) -> Result<Bytes, BoxError>;
    fn trailers(&mut self, trailers: &http::HeaderMap) -> Bytes;
}

/// A response body as it comes: from hyper's client, or from the gateway's own (`h1_client`).
pub enum UpstreamInner {
    Hyper(Incoming),
    H1(H1Body),
}

impl From<Incoming> for UpstreamInner {
    fn from(b: Incoming) -> UpstreamInner {
        UpstreamInner::Hyper(b)
    }
}

impl From<H1Body> for UpstreamInner {
    fn from(b: H1Body) -> UpstreamInner {
        UpstreamInner::H1(b)
    }
}

impl Body for UpstreamInner {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamInner::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamInner::H1(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamInner::Hyper(b) => b.is_end_stream(),
            UpstreamInner::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamInner::Hyper(b) => b.size_hint(),
            UpstreamInner::H1(b) => b.size_hint(),
        }
    }
}

/// The upstream's response body: cut when no chunk arrives for `read`; holds the call's place in
/// the in-flight counts until it ends.
pub struct UpstreamBody {
    inner: UpstreamInner,
    read: Duration,
    /// Created the first time the body has to wait.
    timer: Option<Pin<Box<Sleep>>>,
    guard: Option<CallGuard>,
    /// Sees the chunks as they pass, after `map` (`proxy-cache`).
    tap: Option<Box<dyn BodyTap>>,
    /// Rewrites the frames (`grpc-transcode`).
    map: Option<Box<dyn FrameMap>>,
    /// The client connection's own upstream connection this body comes on: given back for
    /// the next request once the body has ended (`owned_conns`).
    lease: Option<Lease>,
}

impl UpstreamBody {
    pub fn new(inner: impl Into<UpstreamInner>, read: Duration, guard: CallGuard) -> UpstreamBody {
        UpstreamBody {
            inner: inner.into(),
            read,
            timer: None,
            guard: Some(guard),
            tap: None,
            map: None,
            lease: None,
        }
    }

    /// The body came on `lease`'s connection: give it back when the body ends.
    pub fn with_lease(mut self, lease: Lease) -> UpstreamBody {
        self.lease = Some(lease);
        self
    }

    /// The body has been read to its end: its connection may carry the next request.
    fn ended(&mut self) {
        self.guard = None;
        if let Some(lease) = self.lease.take() {
            lease.give_back();
        }
    }

    /// Shows the body to `tap` as it streams; a body that has already ended ends it at once.
    pub fn tap(&mut self, tap: Box<dyn BodyTap>) {
        if self.inner.is_end_stream() {
            tap.end();
        } else {
            self.tap = Some(tap);
        }
    }

    /// The same body, rewritten by `map` frame by frame.
    pub fn mapped(mut self, map: Box<dyn FrameMap>) -> UpstreamBody {
        self.map = Some(map);
        self
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper does not poll a body that is empty from the start (`Content-Length: 0`, 204,
        // a HEAD request's): it ended all the same. Dropped before its end, the lease goes
        // with it and its connection is closed.
        if self.lease.is_some() && self.inner.is_end_stream() {
            self.ended();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended();
                if let Some(tap) = this.tap.take() {
                    tap.end();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => {
                if let Some(t) = this.timer.as_mut() {
                    t.as_mut().reset(Instant::now() + this.read);
                }
                let r: Result<Frame<Bytes>, BoxError> = match this.map.as_mut() {
                    None => r,
                    Some(map) => match r {
                        Err(e) => Err(e),
                        Ok(frame) => match frame.into_data() {
                            Ok(data) => map.data(&data).map(Frame::data),
                            Err(frame) => Ok(Frame::data(
                                frame
                                    .trailers_ref()
                                    .map(|t| map.trailers(t))
                                    .unwrap_or_default(),
                            )),
                        },
                    },
                };
                // A map with nothing to send yet: ask for more now (no empty frames).
                if this.map.is_some()
                    && r.as_ref()
                        .is_ok_and(|f| f.data_ref().is_some_and(|d| d.is_empty()))
                {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                match &r {
                    Ok(frame) => {
                        if let (Some(tap), Some(data)) = (this.tap.as_mut(), frame.data_ref())
                            && !tap.data(data)
                        {
                            this.tap = None;
                        }
                    }
                    Err(_) => this.tap = None,
                }
                // hyper stops polling a body that says it has ended (all of its
                // Content-Length read): the tap sees the end here, not as a `None`.
                if this.tap.is_some()
                    && this.inner.is_end_stream()
                    && let Some(tap) = this.tap.take()
                {
                    tap.end();
                }
                if this.lease.is_some() && this.inner.is_end_stream() {
                    this.ended();
                }
                Poll::Ready(Some(r))
            }
            Poll::Pending => {
                let read = this.read;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(read)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.guard = None;
                        tracing::warn!(timeout = ?read, "upstream stalled mid-body: response cut");
                        Poll::Ready(Some(Err(Box::new(ReadTimedOut(read)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.map.is_some() {
            return SizeHint::default();
        }
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tower_service::Service;

    use super::*;

    /// A listener whose accept queue is full: further connects hang (the kernel drops SYNs).
    async fn saturated_listener() -> (
        std::net::SocketAddr,
        Vec<TcpStream>,
        tokio::net::TcpListener,
    ) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => held.push(s),
                _ => break,
            }
        }
        (addr, held, listener)
    }

    #[tokio::test]
    async fn connect_timeout_comes_from_the_calling_request() {
        let (addr, _held, _listener) = saturated_listener().await;
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        let mut c = TimedConnector::new();
        let progress = Progress::new(true);
        let started = std::time::Instant::now();
        let err = with_call(Duration::from_millis(300), progress.clone(), async {
            std::future::poll_fn(|cx| c.poll_ready(cx)).await.unwrap();
            c.call(uri).await
        })
        .await
        .expect_err("a connect to a full accept queue hangs");
        let took = started.elapsed();
        assert!(caused_by::<ConnectTimedOut>(&*err), "{err}");
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert!(!progress.connecting.load(Ordering::Relaxed));
        // A refused connection is a plain connect error, at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = with_call(Duration::from_secs(5), Progress::new(true), async {
            c.call(format!("http://{closed}/").parse().unwrap()).await
        })
        .await
        .expect_err("nothing listens");
        assert!(!caused_by::<ConnectTimedOut>(&*err));
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_progress() {
        let t = Timeouts {
            connect: Duration::from_secs(1),
            send: Duration::from_secs(2),
            read: Duration::from_secs(5),
        };
        let p = Progress::new(false);
        let start = Instant::now();
        assert_eq!(p.deadline(&t), Some(start + t.send), "sending the body");
        p.connecting.store(true, Ordering::Relaxed);
        assert_eq!(p.deadline(&t), None, "the connector's own timeout applies");
        p.connecting.store(false, Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(1)).await;
        p.mark();
        p.body_done.store(true, Ordering::Relaxed);
        assert_eq!(
            p.deadline(&t),
            Some(start + Duration::from_secs(1) + t.read)
        );
    }
}
