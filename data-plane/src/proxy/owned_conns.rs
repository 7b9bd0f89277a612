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
//! are not upgrades; everything else keeps the pooled client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use tokio::time::Instant;
use tower_service::Service;

use super::upstream_call::{Progress, SendBody, TimedConnector, with_call};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections one client connection keeps (one per node it talks to, usually one).
const MAX_IDLE: usize = 8;

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
    sender: SendRequest<SendBody>,
    since: Instant,
}

/// The upstream connections of one client connection.
#[derive(Default)]
pub struct OwnedConns {
    idle: Mutex<Vec<Idle>>,
}

impl OwnedConns {
    pub fn new() -> Arc<OwnedConns> {
        Arc::new(OwnedConns::default())
    }

    /// An idle connection to `node` that is still open and not idle for too long.
    fn checkout(&self, node: &Authority, max_idle_time: Duration) -> Option<SendRequest<SendBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Closed or stale ones go (dropping the sender lets its connection task end).
        idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < max_idle_time);
        let i = idle.iter().rposition(|c| &c.node == node)?;
        Some(idle.swap_remove(i).sender)
    }

    fn checkin(&self, node: Authority, sender: SendRequest<SendBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            node,
            sender,
            since: Instant::now(),
        });
    }
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
        self.owner.checkin(self.node, self.sender);
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
    while let Some(mut sender) = owner.checkout(node, super::POOL_IDLE_TIMEOUT) {
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
