//! A small HTTP/1.1 client for the proxy's most common call: a request without a body to a
//! plain-HTTP node, on a connection the client connection owns (`owned_conns`). It runs in the
//! request's own task: the head goes out in one write, the response head is parsed with
//! httparse, and the response body is read by the body itself as the client connection takes
//! it. hyper's client runs every connection in a task of its own and talks to it over a
//! channel and a oneshot per request; in the profile (bench/profile.sh) that machinery was the
//! largest single share of the data plane's own CPU per request. Requests with a body,
//! upgrades, TLS and HTTP/2 keep hyper's client.
//!
//! Response framing follows RFC 9112 §6.3: no body for `HEAD` or 204/304; `Transfer-Encoding`
//! ending in `chunked` → chunked (a `Content-Length` beside it is dropped and the connection not
//! reused); another coding, or no length at all → the body runs to the connection's end;
//! otherwise `Content-Length` (differing values → 502). Interim 1xx responses are skipped.
//! Chunked trailers are read and dropped (an HTTP/1.1 client of the gateway would not get them
//! from hyper's client either unless it asked with `TE: trailers`).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::framing::{chunk_size, ends_with_chunked, line_end, parse_length, tokens};
use super::header_names::NameMemo;
use super::headers::{Forwarded, Identity, hop_by_hop_index};
use super::owned_conns::OwnedConns;
use crate::plugins::request_id::X_REQUEST_ID;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest response head accepted (status line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size or trailer line, and all trailers together.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// Read buffer growth: room for a typical response in one read.
const READ_ROOM: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ProtocolError(&'static str);

fn protocol(msg: &'static str) -> BoxError {
    Box::new(ProtocolError(msg))
}

/// The headers the gateway adds to a request, written into its head beside the request's own
/// map rather than inserted into it (see `headers::Forwarded`).
pub struct Added<'a> {
    /// The upstream's `Host` (the map's own `Host` is not sent).
    pub host: &'a HeaderValue,
    pub forwarded: &'a Forwarded,
    pub identity: &'a Identity,
    /// `X-Request-Id`, when the map does not hold it.
    pub request_id: Option<&'a HeaderValue>,
}

impl Added<'_> {
    /// Puts the headers into a request's map instead, for the clients that send a map (hyper's:
    /// bodies, TLS, gRPC, pools).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        headers.insert(header::HOST, self.host.clone());
        self.forwarded.insert_into(headers);
        self.identity.insert_into(headers);
        if let Some(id) = self.request_id {
            headers.insert(&X_REQUEST_ID, id.clone());
        }
    }
}

/// Why a call failed.
#[derive(Debug)]
pub enum SendError {
    /// A kept connection ended before any byte of the response: the upstream closed it while
    /// idle, so it did not act on the request, and a fresh connection may be tried.
    Stale(BoxError),
    Failed(BoxError),
}

/// One upstream connection with its read buffer (bytes of the response not yet taken).
pub struct H1Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The request head is encoded here; kept for the next request.
    head: Vec<u8>,
    /// It carried a request before (so an early end means it had gone stale).
    reused: bool,
    /// Where each header name and value lies in a parsed head (kept to save an allocation).
    spans: Vec<(usize, usize, usize, usize)>,
    /// The last response's header names (an upstream sends the same ones each time).
    names: NameMemo,
}

impl H1Conn {
    pub fn new(io: TcpStream) -> Box<H1Conn> {
        Box::new(H1Conn {
            io,
            buf: BytesMut::new(),
            head: Vec::with_capacity(512),
            reused: false,
            spans: Vec::new(),
            names: NameMemo::default(),
        })
    }

    /// Whether a connection idle in the pool is still usable: an upstream that closed it (or
    /// sent something unasked) has made it readable.
    pub async fn still_open(&self) -> bool {
        poll_fn(|cx| {
            Poll::Ready(match self.io.poll_read_ready(cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(self.io.try_read(&mut probe),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                }
            })
        })
        .await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_ROOM);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Sends a request without a body and reads the response head. `home` is where the
    /// connection goes back once the response body has been read to its end.
    pub async fn send(
        mut self: Box<Self>,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        added: &Added<'_>,
        home: (Arc<OwnedConns>, Authority),
    ) -> Result<(http::response::Parts, H1Body), SendError> {
        let reused = std::mem::replace(&mut self.reused, true);
        let fail = |e: BoxError| {
            if reused {
                SendError::Stale(e)
            } else {
                SendError::Failed(e)
            }
        };
        encode_head(&mut self.head, method, target, headers, added);
        let H1Conn { io, head, .. } = &mut *self;
        io.write_all(head).await.map_err(|e| fail(e.into()))?;
        let mut got_any = false;
        loop {
            if !self.buf.is_empty() {
                got_any = true;
                if let Some((parts, framing)) =
                    self.parse_head(method).map_err(SendError::Failed)?
                {
                    let body = H1Body::new(self, framing, home);
                    return Ok((parts, body));
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(SendError::Failed(protocol(
                        "upstream response head too large",
                    )));
                }
            }
            match poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if got_any => {
                    return Err(SendError::Failed(protocol(
                        "upstream closed the connection inside the response head",
                    )));
                }
                Ok(0) => {
                    return Err(fail(protocol(
                        "upstream closed the connection before responding",
                    )));
                }
                Ok(_) => {}
                Err(e) if got_any => return Err(SendError::Failed(e.into())),
                Err(e) => return Err(fail(e.into())),
            }
        }
    }

    /// The response head at the front of the buffer, once complete; interim (1xx) responses
    /// before it are dropped.
    fn parse_head(
        &mut self,
        method: &Method,
    ) -> Result<Option<(http::response::Parts, Framing)>, BoxError> {
        loop {
            // Uninitialised slots: no 3 KiB of zeroes written per response.
            let mut slots =
                [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let config = httparse::ParserConfig::default();
            let len =
                match config.parse_response_with_uninit_headers(&mut resp, &self.buf, &mut slots) {
                    Ok(httparse::Status::Complete(len)) => len,
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(protocol("malformed upstream response head")),
                };
            let code = resp.code.unwrap_or(0);
            if (100..200).contains(&code) {
                if code == 101 {
                    return Err(protocol("upstream switched protocols unasked"));
                }
                self.buf.advance(len);
                continue;
            }
            let status =
                StatusCode::from_u16(code).map_err(|_| protocol("invalid upstream status code"))?;
            let version = if resp.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            // Where each name and value lies in the head, to slice the head's bytes after.
            let base = self.buf.as_ptr() as usize;
            let mut spans = std::mem::take(&mut self.spans);
            spans.clear();
            spans.extend(resp.headers.iter().map(|h| {
                let n = h.name.as_ptr() as usize - base;
                let v = h.value.as_ptr() as usize - base;
                (n, n + h.name.len(), v, v + h.value.len())
            }));
            let head = self.buf.split_to(len).freeze();
            // Room for what plugins add (rate-limit and CORS headers, say) without regrowing.
            let mut headers = HeaderMap::with_capacity(spans.len() + 8);
            let mut facts = HeadFacts::default();
            let names = &mut self.names;
            let parsed = spans
                .iter()
                .enumerate()
                .try_for_each(|(at, &(n0, n1, v0, v1))| {
                    let name = names
                        .name(at, &head[n0..n1])
                        .map_err(|_| protocol("invalid upstream header name"))?;
                    if facts.note(&name, &head[v0..v1])? == Keep::No {
                        return Ok(());
                    }
                    // SAFETY: httparse took the value's bytes only if each is one `HeaderValue`
                    // accepts (HTAB, SP, visible ASCII, obs-text), as in the server's parse.
                    let value =
                        unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(v0..v1)) };
                    headers.append(name, value);
                    Ok::<_, BoxError>(())
                });
            self.spans = spans;
            parsed?;
            let body = if *method == Method::HEAD
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED
            {
                BodyState::Done
            } else if facts.encoded {
                if facts.length.is_some() {
                    // Both: the coding wins (RFC 9112 §6.3), and the connection is not trusted
                    // for another request.
                    headers.remove(header::CONTENT_LENGTH);
                    facts.close = true;
                }
                if facts.chunked {
                    BodyState::Chunked(Chunk::Size)
                } else {
                    BodyState::UntilClose
                }
            } else {
                match facts.length {
                    Some(n) => BodyState::Length(n),
                    None => BodyState::UntilClose,
                }
            };
            let keep_alive = !matches!(body, BodyState::UntilClose)
                && !facts.close
                && (version == Version::HTTP_11 || facts.keep_alive);
            let mut parts = http::Response::new(()).into_parts().0;
            parts.status = status;
            parts.version = version;
            parts.headers = headers;
            return Ok(Some((parts, Framing { body, keep_alive })));
        }
    }
}

/// Writes a request head without a body into `h`: the request's own headers (its `Host`
/// aside) and the gateway's (`added`).
fn encode_head(h: &mut Vec<u8>, method: &Method, target: &str, headers: &HeaderMap, added: &Added) {
    h.clear();
    h.extend_from_slice(method.as_str().as_bytes());
    h.push(b' ');
    h.extend_from_slice(target.as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\n");
    let mut line = |name: &HeaderName, value: &[u8]| {
        h.extend_from_slice(name.as_str().as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(value);
        h.extend_from_slice(b"\r\n");
    };
    line(&header::HOST, added.host.as_bytes());
    for (name, value) in headers {
        // The map's `Host` is the client's; the upstream gets `added.host`.
        if name != header::HOST {
            line(name, value.as_bytes());
        }
    }
    added.forwarded.each(&mut line);
    added.identity.each(&mut line);
    if let Some(id) = added.request_id {
        line(&X_REQUEST_ID, id.as_bytes());
    }
    // A method whose request is meant to have content says that there is none.
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        && !headers.contains_key(header::CONTENT_LENGTH)
    {
        h.extend_from_slice(b"content-length: 0\r\n");
    }
    h.extend_from_slice(b"\r\n");
}

/// What the response head says about its body and its connection.
pub struct Framing {
    body: BodyState,
    keep_alive: bool,
}

/// The response headers that decide framing, as they are seen.
#[derive(Default)]
struct HeadFacts {
    length: Option<u64>,
    encoded: bool,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

/// Whether a response header goes into the response's map.
#[derive(PartialEq, Eq)]
enum Keep {
    Yes,
    /// A hop-by-hop header: what it says about this connection is noted here, and the proxy
    /// would strip it before the client sees it (`headers::strip_hop_by_hop`), so it is never
    /// put in the map. A `Connection` naming other headers stays, for the strip to act on.
    No,
}

impl HeadFacts {
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> Result<Keep, BoxError> {
        if name == header::CONTENT_LENGTH {
            let n =
                parse_length(value).ok_or_else(|| protocol("invalid upstream Content-Length"))?;
            if self.length.is_some_and(|m| m != n) {
                return Err(protocol("conflicting upstream Content-Length values"));
            }
            self.length = Some(n);
            return Ok(Keep::Yes);
        }
        if hop_by_hop_index(name).is_none() {
            return Ok(Keep::Yes);
        }
        if name == header::TRANSFER_ENCODING {
            self.encoded = true;
            // The last coding decides (a later header line overrides an earlier one).
            self.chunked = ends_with_chunked(value);
        } else if name == header::CONNECTION {
            let mut names_others = false;
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if !token.is_empty()
                    && HeaderName::from_bytes(token).is_ok_and(|n| hop_by_hop_index(&n).is_none())
                {
                    names_others = true;
                }
            }
            if names_others {
                return Ok(Keep::Yes);
            }
        }
        Ok(Keep::No)
    }
}

enum BodyState {
    /// So many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    UntilClose,
    Done,
}

#[derive(Clone, Copy)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// So many bytes of the chunk's data left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines (so many bytes of them so far) until an empty one.
    Trailers(usize),
}

/// A response body read from its connection as it is polled; at its end the connection goes
/// back to its owner for the next request (when the response let it stay open).
pub struct H1Body {
    conn: Option<Box<H1Conn>>,
    state: BodyState,
    keep_alive: bool,
    home: (Arc<OwnedConns>, Authority),
}

impl H1Body {
    fn new(conn: Box<H1Conn>, framing: Framing, home: (Arc<OwnedConns>, Authority)) -> H1Body {
        let state = match framing.body {
            BodyState::Length(0) => BodyState::Done,
            s => s,
        };
        H1Body {
            conn: Some(conn),
            state,
            keep_alive: framing.keep_alive,
            home,
        }
    }

    /// The body has ended: its connection goes home if it may carry another request and
    /// nothing unread is left on it.
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            self.home.0.checkin_h1(self.home.1.clone(), conn);
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.state {
                BodyState::Done => {
                    self.finish();
                    return Poll::Ready(None);
                }
                BodyState::Length(left) | BodyState::Chunked(Chunk::Data(left))
                    if !conn.buf.is_empty() =>
                {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    let data = conn.buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = match self.state {
                        BodyState::Length(_) if left == 0 => BodyState::Done,
                        BodyState::Length(_) => BodyState::Length(left),
                        _ if left == 0 => BodyState::Chunked(Chunk::DataEnd),
                        _ => BodyState::Chunked(Chunk::Data(left)),
                    };
                    if matches!(self.state, BodyState::Done) {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                BodyState::UntilClose if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(data)));
                }
                BodyState::Chunked(Chunk::DataEnd) if conn.buf.len() >= 2 => {
                    if &conn.buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(protocol("malformed upstream chunk"))));
                    }
                    conn.buf.advance(2);
                    self.state = BodyState::Chunked(Chunk::Size);
                    continue;
                }
                BodyState::Chunked(Chunk::Size) => {
                    if let Some(end) = line_end(&conn.buf, 0) {
                        let size = chunk_size(&conn.buf[..end])
                            .ok_or_else(|| protocol("malformed upstream chunk size"));
                        let size = match size {
                            Ok(s) => s,
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        };
                        conn.buf.advance(end);
                        self.state = BodyState::Chunked(if size == 0 {
                            Chunk::Trailers(0)
                        } else {
                            Chunk::Data(size)
                        });
                        continue;
                    }
                    if conn.buf.len() > MAX_CHUNK_LINE {
                        return Poll::Ready(Some(Err(protocol(
                            "upstream chunk size line too long",
                        ))));
                    }
                }
                BodyState::Chunked(Chunk::Trailers(seen)) => {
                    if let Some(end) = line_end(&conn.buf, 0) {
                        let empty = matches!(&conn.buf[..end], b"\r\n" | b"\n");
                        conn.buf.advance(end);
                        if empty {
                            self.finish();
                            return Poll::Ready(None);
                        }
                        if seen + end > MAX_TRAILERS {
                            return Poll::Ready(Some(Err(protocol("upstream trailers too large"))));
                        }
                        self.state = BodyState::Chunked(Chunk::Trailers(seen + end));
                        continue;
                    }
                    if conn.buf.len() > MAX_CHUNK_LINE {
                        return Poll::Ready(Some(Err(protocol("upstream trailer line too long"))));
                    }
                }
                _ => {}
            }
            // More bytes are needed.
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(self.state, BodyState::UntilClose) => {
                    self.state = BodyState::Done;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(protocol(
                        "upstream closed the connection before the body's end",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        // A body that was over from the start (HEAD, 204, `Content-Length: 0`) is never polled.
        if matches!(self.state, BodyState::Done) {
            self.finish();
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = this.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            this.conn = None;
            this.state = BodyState::Done;
        }
        polled.map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// One upstream connection that answers each request head it reads with the next script
    /// entry: pieces written apart (so the client sees them in separate reads), then the
    /// connection closed if the entry says so. Returns the request heads it read.
    async fn upstream(
        script: Vec<(Vec<&'static [u8]>, bool)>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut heads = Vec::new();
            for (pieces, close) in script {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await.unwrap() == 0 {
                        return heads;
                    }
                    head.push(b[0]);
                }
                heads.push(String::from_utf8(head).unwrap());
                for p in pieces {
                    s.write_all(p).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if close {
                    return heads;
                }
            }
            // Keep the connection open until the client is done with it.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            heads
        });
        (addr, task)
    }

    fn home(owner: &Arc<OwnedConns>) -> (Arc<OwnedConns>, Authority) {
        (owner.clone(), Authority::from_static("node:80"))
    }

    async fn get(
        conn: Box<H1Conn>,
        method: Method,
        owner: &Arc<OwnedConns>,
    ) -> Result<(http::response::Parts, Result<Bytes, BoxError>), SendError> {
        // The map's `Host` is the client's: the head carries `added.host` instead.
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("client.example"));
        headers.insert("x-client", HeaderValue::from_static("1"));
        let forwarded = Forwarded {
            for_value: HeaderValue::from_static("10.0.0.1"),
            proto: "http",
            host: Some(HeaderValue::from_static("client.example")),
        };
        let added = Added {
            host: &HeaderValue::from_static("a.example"),
            forwarded: &forwarded,
            identity: &Identity::new(Some("alice"), None, Some("key-1")),
            request_id: Some(&HeaderValue::from_static("id-1")),
        };
        let (parts, body) = conn
            .send(&method, "/x?y=1", &headers, &added, home(owner))
            .await?;
        let body = body.collect().await.map(|c| c.to_bytes());
        Ok((parts, body))
    }

    async fn connect(addr: std::net::SocketAddr) -> Box<H1Conn> {
        H1Conn::new(TcpStream::connect(addr).await.unwrap())
    }

    #[test]
    fn the_map_gets_the_same_added_headers_the_head_does() {
        let forwarded = Forwarded {
            for_value: HeaderValue::from_static("10.0.0.1, 10.0.0.2"),
            proto: "https",
            host: Some(HeaderValue::from_static("client.example")),
        };
        let identity = Identity::new(Some("alice"), Some("team"), None);
        let added = Added {
            host: &HeaderValue::from_static("up.example"),
            forwarded: &forwarded,
            identity: &identity,
            request_id: Some(&HeaderValue::from_static("id-9")),
        };
        let mut client = HeaderMap::new();
        client.insert(header::HOST, HeaderValue::from_static("client.example"));
        let mut head = Vec::new();
        encode_head(&mut head, &Method::GET, "/", &client, &added);
        let head = String::from_utf8(head).unwrap();
        let mut in_head: Vec<String> = head
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let mut map = client.clone();
        added.insert_into(&mut map);
        let mut in_map: Vec<String> = map
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        in_head.sort();
        in_map.sort();
        assert_eq!(in_head, in_map);
        assert_eq!(in_map.len(), 7, "{in_map:?}");
    }

    #[tokio::test]
    async fn a_length_body_in_pieces_then_the_connection_is_reused() {
        let (addr, task) = upstream(vec![
            (
                vec![
                    b"HTTP/1.1 200 OK\r\nContent-Le",
                    b"ngth: 11\r\nX-A: 1\r\n\r\nhello",
                    b" world",
                ],
                false,
            ),
            (
                vec![b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"],
                false,
            ),
        ])
        .await;
        let owner = OwnedConns::new();
        let (parts, body) = get(connect(addr).await, Method::GET, &owner)
            .await
            .ok()
            .unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["x-a"], "1");
        assert_eq!(body.unwrap(), "hello world");
        assert_eq!(owner.idle_count(), 1, "the connection went home");
        let conn = owner.take_h1(&home(&owner).1).expect("a kept connection");
        assert!(conn.still_open().await);
        let (parts, body) = get(conn, Method::DELETE, &owner).await.ok().unwrap();
        assert_eq!(
            (parts.status.as_u16(), body.unwrap()),
            (201, Bytes::from("ok"))
        );
        drop(owner);
        let heads = task.await.unwrap();
        assert_eq!(
            heads[0],
            "GET /x?y=1 HTTP/1.1\r\nhost: a.example\r\nx-client: 1\r\n\
             x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: client.example\r\nx-consumer-username: alice\r\n\
             x-credential-identifier: key-1\r\nx-request-id: id-1\r\n\r\n"
        );
        assert!(
            heads[1].starts_with("DELETE /x?y=1 HTTP/1.1\r\n"),
            "{}",
            heads[1]
        );
    }

    /// One GET answered by `pieces` (then the connection closed if `close`): the response
    /// head, its body, and how many connections went home after it.
    async fn one_answer(
        pieces: Vec<&'static [u8]>,
        close: bool,
    ) -> (http::response::Parts, Bytes, usize) {
        let (addr, _task) = upstream(vec![(pieces, close)]).await;
        let owner = OwnedConns::new();
        let (parts, body) = get(connect(addr).await, Method::GET, &owner)
            .await
            .expect("a response");
        (parts, body.expect("a whole body"), owner.idle_count())
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_and_trailers_dropped() {
        let (parts, body, home) = one_answer(
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r",
                b"\nhel",
                b"lo\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n",
                b"\r\n",
            ],
            false,
        )
        .await;
        // Decoded here: the coding is this connection's, not the client's.
        assert!(!parts.headers.contains_key("transfer-encoding"));
        assert_eq!((body, home), (Bytes::from("hello world"), 1));
    }

    #[tokio::test]
    async fn hop_by_hop_headers_stay_out_of_the_map_unless_connection_names_others() {
        let (parts, body, home) = one_answer(
            vec![
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                  Upgrade: h2c\r\nTrailer: x-t\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok",
            ],
            false,
        )
        .await;
        let names: Vec<&str> = parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-a", "content-length"]);
        assert_eq!((body, home), (Bytes::from("ok"), 1));
        // `Connection: x-private` is kept for `strip_hop_by_hop` (which also removes
        // `x-private`); its `close` is obeyed here all the same.
        let (parts, _, home) = one_answer(
            vec![
                b"HTTP/1.1 200 OK\r\nConnection: close, X-Private\r\nX-Private: 1\r\n\
                  Content-Length: 2\r\n\r\nok",
            ],
            false,
        )
        .await;
        assert_eq!(parts.headers["connection"], "close, X-Private");
        assert_eq!(parts.headers["x-private"], "1");
        assert_eq!(home, 0, "closed, not kept");
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_bodiless_answers_end_at_once() {
        let (addr, _task) = upstream(vec![
            (
                vec![
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
                    b"HTTP/1.1 204 No Content\r\n\r\n",
                ],
                false,
            ),
            (
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"],
                false,
            ),
        ])
        .await;
        let owner = OwnedConns::new();
        let (parts, body) = get(connect(addr).await, Method::GET, &owner)
            .await
            .ok()
            .unwrap();
        assert_eq!((parts.status.as_u16(), body.unwrap()), (204, Bytes::new()));
        let conn = owner.take_h1(&home(&owner).1).expect("a kept connection");
        // A HEAD response's Content-Length announces no body.
        let (parts, body) = get(conn, Method::HEAD, &owner).await.ok().unwrap();
        assert_eq!(parts.headers["content-length"], "10");
        assert_eq!(body.unwrap(), Bytes::new());
        assert_eq!(owner.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close_and_the_connection_is_not_kept() {
        let (_, body, home) =
            one_answer(vec![b"HTTP/1.1 200 OK\r\n\r\nall of ", b"it"], true).await;
        assert_eq!((body, home), (Bytes::from("all of it"), 0));
    }

    #[tokio::test]
    async fn length_and_chunked_together_mean_chunked_and_no_reuse() {
        let (parts, body, home) = one_answer(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
            false,
        )
        .await;
        assert!(parts.headers.get("content-length").is_none());
        assert_eq!((body, home), (Bytes::from("ok"), 0));
    }

    #[tokio::test]
    async fn connection_close_is_honoured() {
        let (_, body, home) = one_answer(
            vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"],
            false,
        )
        .await;
        assert_eq!((body, home), (Bytes::from("ok"), 0));
    }

    #[tokio::test]
    async fn broken_responses_are_errors() {
        for (script, in_body) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
                false,
            ),
            (b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false),
            (b"HTTX 200\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok", true),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n",
                true,
            ),
        ] {
            let (addr, _task) = upstream(vec![(vec![script], true)]).await;
            let owner = OwnedConns::new();
            match get(connect(addr).await, Method::GET, &owner).await {
                Ok((_, body)) => assert!(in_body && body.is_err(), "{script:?}"),
                Err(SendError::Failed(_)) => assert!(!in_body, "{script:?}"),
                Err(SendError::Stale(_)) => panic!("a new connection is not stale"),
            }
            assert_eq!(owner.idle_count(), 0);
        }
    }

    #[tokio::test]
    async fn a_kept_connection_the_upstream_closed_is_seen() {
        let (addr, task) = upstream(vec![(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
            true,
        )])
        .await;
        let owner = OwnedConns::new();
        let (_, body) = get(connect(addr).await, Method::GET, &owner)
            .await
            .ok()
            .unwrap();
        assert_eq!(body.unwrap(), "ok");
        task.await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let conn = owner.take_h1(&home(&owner).1).expect("a kept connection");
        assert!(!conn.still_open().await, "closed while idle");
        // Sent on it anyway, the call says the connection was stale (so another may be tried).
        match get(conn, Method::GET, &owner).await {
            Err(SendError::Stale(_)) => {}
            Err(SendError::Failed(e)) => panic!("failed, not stale: {e}"),
            Ok(_) => panic!("a closed connection answered"),
        }
    }
}
