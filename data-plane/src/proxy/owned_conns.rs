//! Upstream connections owned by one client connection, for plain HTTP/1.1 upstreams.
//!
//! The pooled client (`hyper_util`'s legacy `Client`) shares one locked pool between every
//! client connection and spawns a task per request to hand the connection back once it is
//! idle; profiling (bench/) showed that as the one cost that clearly mattered. Here each client
//! connection keeps the few upstream connections its own requests used: a request takes one
//! to its node (or opens one), sends on it, and the response body gives it back when it ends.
//! No lock is shared between client connections (the small mutex below is only ever taken by
//! the requests of one connection) and nothing is spawned per request; a task is spawned per
//! upstream connection, to drive it.
//!
//! Used for HTTP/1.1 upstreams without TLS, without a `keepalive_pool`, and for requests that
//! are not upgrades; everything else keeps the pooled client. A request without a body goes
//! out by the gateway's own small client (`h1_client`, driven in the request's task); one with
//! a body by hyper's `client::conn` (a task per connection). Each kind keeps its own
//! connections here.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::h1_client::{self, Added, H1Body, H1Conn};
use super::upstream_call::{Progress, SendBody, TimedConnector, with_call};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections one client connection keeps (one per node it talks to, usually one).
const MAX_IDLE: usize = 8;
/// Where a new call timer starts (the first call moves it to its deadline).
const FAR: Duration = Duration::from_secs(86_400);

/// Why an owned call failed, in the terms the proxy answers with.
#[derive(Debug)]
pub enum CallError {
    /// No connection could be made (refused, timed out, ...): the request never left.
    Connect(BoxError),
    /// The connection failed after the request was handed to it.
    Failed(BoxError),
}

struct Idle {
    node: Authority,
    conn: Conn,
    /// When it has been idle for too long (`POOL_IDLE_TIMEOUT`): set once when it goes idle,
    /// so a checkout compares instants instead of subtracting them.
    stale_at: Instant,
}

enum Conn {
    Hyper(SendRequest<SendBody>),
    H1(Box<H1Conn>),
}

impl Conn {
    fn is_closed(&self) -> bool {
        match self {
            Conn::Hyper(s) => s.is_closed(),
            // Seen at checkout (`H1Conn::still_open`).
            Conn::H1(_) => false,
        }
    }
}

/// The upstream connections of one client connection.
#[derive(Default)]
pub struct OwnedConns {
    idle: Mutex<Vec<Idle>>,
    /// The timer of the connection's upstream calls, kept between them (`Proxy::timed`): a call
    /// moves it only when it would fire late or fires early, instead of registering a timer of
    /// its own.
    timer: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl OwnedConns {
    pub fn new() -> Arc<OwnedConns> {
        Arc::new(OwnedConns::default())
    }

    /// The kept call timer, or a new one (a call of another stream holds it).
    pub fn take_timer(&self) -> Pin<Box<Sleep>> {
        self.timer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(Instant::now() + FAR)))
    }

    /// Keeps `timer` for the next call.
    pub fn keep_timer(&self, timer: Pin<Box<Sleep>>) {
        *self.timer.lock().unwrap_or_else(|e| e.into_inner()) = Some(timer);
    }

    /// An idle connection of the kind `h1` says to `node`, that is still open and not idle
    /// for too long at `now` (the try's start: a clock read fewer per request).
    fn checkout(&self, node: &Authority, h1: bool, now: Instant) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Closed or stale ones go (dropping a sender lets its connection task end).
        idle.retain(|c| !c.conn.is_closed() && now < c.stale_at);
        let i = idle
            .iter()
            .rposition(|c| same_node(&c.node, node) && matches!(c.conn, Conn::H1(_)) == h1)?;
        Some(idle.swap_remove(i).conn)
    }

    fn checkin(&self, node: Authority, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            node,
            conn,
            stale_at: Instant::now() + super::POOL_IDLE_TIMEOUT,
        });
    }

    /// How many connections wait idle (tests).
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A kept connection of the gateway's own client to `node` (tests).
    #[cfg(test)]
    pub fn take_h1(&self, node: &Authority) -> Option<Box<H1Conn>> {
        match self.checkout(node, true, Instant::now())? {
            Conn::H1(c) => Some(c),
            Conn::Hyper(_) => None,
        }
    }

    /// A connection of the gateway's own client, back from a response read to its end.
    pub fn checkin_h1(&self, node: Authority, conn: Box<H1Conn>) {
        self.checkin(node, Conn::H1(conn));
    }
}

/// `Authority`'s `==` ignores ASCII case byte by byte (about 290 instructions for
/// `127.0.0.1:8080`, once a request). A connection's node and the request's come from the same
/// compiled upstream, so their bytes are equal when the nodes are: compared as bytes first, with
/// `==` only for the rest.
fn same_node(a: &Authority, b: &Authority) -> bool {
    a.as_str() == b.as_str() || a == b
}

/// A connection lent to one request; given back to its owner when the response body has ended
/// (see `UpstreamBody`). Dropped before that, the connection is dropped with it (hyper closes a
/// connection whose response was not read to the end).
pub struct Lease {
    owner: Arc<OwnedConns>,
    node: Authority,
    sender: SendRequest<SendBody>,
}

impl Lease {
    pub fn give_back(self) {
        self.owner.checkin(self.node, Conn::Hyper(self.sender));
    }
}

/// Sends `req` (whose URI is already in origin form: path and query) to `node` on one of
/// `owner`'s connections, or on a new one made by `connector` within `connect_timeout`.
pub async fn call(
    owner: &Arc<OwnedConns>,
    connector: &TimedConnector,
    node: &Authority,
    mut req: Request<SendBody>,
    connect_timeout: Duration,
    progress: Arc<Progress>,
) -> Result<(Response<Incoming>, Lease), CallError> {
    let lease = |sender| Lease {
        owner: owner.clone(),
        node: node.clone(),
        sender,
    };
    // A kept connection the upstream closed meanwhile hands the request back unsent: then
    // the next one is tried, and at last a new connection.
    while let Some(conn) = owner.checkout(node, false, progress.started()) {
        let Conn::Hyper(mut sender) = conn else {
            continue;
        };
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(response) => return Ok((response, lease(sender))),
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(CallError::Failed(e.into_error().into())),
            },
        }
    }
    let uri: Uri = format!("http://{node}/")
        .parse()
        .map_err(|e: http::uri::InvalidUri| CallError::Connect(e.into()))?;
    let mut connector = connector.clone();
    // `call` reads the timeout from the task-local when it is called: inside the scope.
    let io = with_call(connect_timeout, progress, async move {
        connector.call(uri).await
    })
    .await
    .map_err(CallError::Connect)?;
    let (mut sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| CallError::Connect(e.into()))?;
    // The one task of this connection: it reads and writes the socket until the connection
    // closes or every sender (the owner's, a lease's) is gone.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    match sender.send_request(req).await {
        Ok(response) => Ok((response, lease(sender))),
        Err(e) => Err(CallError::Failed(e.into())),
    }
}

/// Sends a request without a body (`req`'s URI in origin form) to `node` by the gateway's own
/// client, on one of `owner`'s connections or a new one. A kept connection that turns out to
/// have been closed by the upstream while idle is given up for the next, and at last for a
/// new one — for an idempotent method only: a connection that ends without an answer may also
/// be an upstream that took the request and died, and a POST must not be sent twice.
pub async fn call_h1(
    owner: &Arc<OwnedConns>,
    connector: &TimedConnector,
    node: &Authority,
    req: &Request<SendBody>,
    added: &Added<'_>,
    connect_timeout: Duration,
    progress: Arc<Progress>,
) -> Result<Response<H1Body>, CallError> {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let home = || (owner.clone(), node.clone());
    let send = |conn: Box<H1Conn>| conn.send(req.method(), target, req.headers(), added, home());
    while let Some(conn) = owner.checkout(node, true, progress.started()) {
        let Conn::H1(conn) = conn else {
            continue;
        };
        if !conn.still_open().await {
            continue;
        }
        match send(conn).await {
            Ok((parts, body)) => return Ok(Response::from_parts(parts, body)),
            Err(h1_client::SendError::Stale(e)) if req.method().is_idempotent() => {
                tracing::debug!(error = %e, "kept upstream connection had closed; trying another");
            }
            Err(h1_client::SendError::Stale(e) | h1_client::SendError::Failed(e)) => {
                return Err(CallError::Failed(e));
            }
        }
    }
    let uri: Uri = format!("http://{node}/")
        .parse()
        .map_err(|e: http::uri::InvalidUri| CallError::Connect(e.into()))?;
    let mut connector = connector.clone();
    let io = with_call(connect_timeout, progress.clone(), async move {
        connector.call(uri).await
    })
    .await
    .map_err(CallError::Connect)?;
    let tcp = io
        .into_plain()
        .ok_or_else(|| CallError::Connect("a TLS connection for a plain upstream".into()))?;
    match send(H1Conn::new(tcp)).await {
        Ok((parts, body)) => Ok(Response::from_parts(parts, body)),
        Err(h1_client::SendError::Stale(e) | h1_client::SendError::Failed(e)) => {
            Err(CallError::Failed(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::headers::Forwarded;

    #[test]
    fn nodes_are_the_same_as_authority_says_bytes_first() {
        let node = |s: &'static str| Authority::from_static(s);
        assert!(same_node(&node("127.0.0.1:8080"), &node("127.0.0.1:8080")));
        assert!(same_node(
            &node("Backend.example:80"),
            &node("backend.EXAMPLE:80")
        ));
        assert!(!same_node(&node("127.0.0.1:8080"), &node("127.0.0.1:8081")));
        assert!(!same_node(&node("a.example:80"), &node("b.example:80")));
    }

    /// An upstream each of whose connections answers its first request (with the connection's
    /// number) and, after reading the next, closes without answering.
    async fn upstream_dying_on_second_request() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for n in 1.. {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    for request in 1.. {
                        let mut head = Vec::new();
                        while !head.ends_with(b"\r\n\r\n") {
                            let mut b = [0u8; 1];
                            if s.read(&mut b).await.unwrap_or(0) == 0 {
                                return;
                            }
                            head.push(b[0]);
                        }
                        if request == 2 {
                            return;
                        }
                        let body = format!("conn {n}");
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        s.write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        addr
    }

    async fn send(
        owner: &Arc<OwnedConns>,
        node: &Authority,
        method: http::Method,
    ) -> Result<String, CallError> {
        use http_body_util::BodyExt;
        let mut req = Request::new(SendBody::new(None, Progress::new(true)));
        *req.method_mut() = method;
        *req.uri_mut() = "/x".parse().unwrap();
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("up"));
        let connector = TimedConnector::new();
        let forwarded = Forwarded {
            for_value: http::HeaderValue::from_static("127.0.0.1"),
            proto: "http",
            host: None,
        };
        let added = Added {
            host: &http::HeaderValue::from_static("up"),
            forwarded: &forwarded,
            identity: &Default::default(),
            request_id: None,
        };
        let response = call_h1(
            owner,
            &connector,
            node,
            &req,
            &added,
            Duration::from_secs(2),
            Progress::new(true),
        )
        .await?;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_kept_connection_that_ends_unanswered_is_retried_only_when_idempotent() {
        let node: Authority = upstream_dying_on_second_request()
            .await
            .to_string()
            .parse()
            .unwrap();
        // GET: the kept connection ends unanswered, a new one answers.
        let owner = OwnedConns::new();
        assert_eq!(
            send(&owner, &node, http::Method::GET).await.ok().unwrap(),
            "conn 1"
        );
        assert_eq!(
            send(&owner, &node, http::Method::GET).await.ok().unwrap(),
            "conn 2"
        );
        // POST on a connection that dies the same way: an error, not a second send.
        let owner = OwnedConns::new();
        assert_eq!(
            send(&owner, &node, http::Method::POST).await.ok().unwrap(),
            "conn 3"
        );
        assert!(matches!(
            send(&owner, &node, http::Method::POST).await,
            Err(CallError::Failed(_))
        ));
    }
}
