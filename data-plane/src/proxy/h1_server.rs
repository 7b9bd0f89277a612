//! The gateway's own HTTP/1.1 server loop for plain-TCP client connections, for the common
//! request: HTTP/1.1 without a body. hyper's server side (its dispatcher, a boxed header-read
//! timer armed and dropped per request, the framing watch beside it) was the largest share of
//! the data plane's own CPU per request left after the own client (`h1_client`); here a request
//! head is parsed with httparse straight from the connection's buffer, handed to
//! `Proxy::handle`, and the response is written with its first body bytes in one write.
//!
//! Anything else — a request with a body (`Content-Length` or `Transfer-Encoding`), an upgrade,
//! `Expect`, `CONNECT`, HTTP/1.0, HTTP/2's preface, a head line ending in a bare LF, a head
//! httparse or `http` refuses, or one too large — hands the connection over to hyper at that
//! request's first byte: the bytes already read are replayed to it ([`Rewind`]) through the
//! framing watch, and hyper serves the connection from there on, exactly as it serves one from
//! the start (its own errors: 400, 431; the watch's refusals; h2c). Nothing is in flight at
//! the hand-over: requests are answered in order, one at a time.
//!
//! Response framing follows hyper's server: `Content-Length` when the response has one or its
//! body knows its size, else chunked; none for `HEAD`, 204 and 304; a `date` header when the
//! response has none; `connection: close` added when the connection ends after it (the client
//! asked, the gateway drains). A client that goes away while its request is handled cancels it
//! (the request's future is dropped), as with hyper.
//!
//! The slowloris guard (the time to send a head, `HEADER_READ_TIMEOUT`) is one timer per
//! connection that is moved only when it fires early: a request costs a clock read, not a
//! timer registration.

use std::future::{Future, poll_fn};
use std::io::{self, Write as _};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::framing::{ends_with_chunked, has_token, parse_length};
use super::header_names::NameMemo;
use super::upstream_call::RequestBody;
use super::{ClientBody, MAX_REQUEST_HEAD_BYTES, MAX_REQUEST_HEADERS};

/// Room kept free in the read buffer before a read.
const READ_ROOM: usize = 4 * 1024;
/// Response bytes gathered before they are written (a body's frames that are ready at once go
/// out with the head).
const WRITE_BATCH: usize = 64 * 1024;
/// Body frames this large are written from where they are rather than copied.
const COPY_LIMIT: usize = 16 * 1024;
/// The write buffer's size kept between responses (a large one grown for a body is let go).
const OUT_KEPT: usize = 16 * 1024;

/// How a connection left the loop.
pub(super) enum Ended {
    /// Closed: by the client, after a response that ended it, or on an error.
    Closed,
    /// The next request is for hyper: these bytes were read past the last answered request.
    HandOver(TcpStream, Bytes),
}

/// What the buffer's front holds.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request this loop serves (taken off the buffer). Not boxed: this value is moved once,
    /// and a box would be an allocation per request.
    Fast(http::request::Parts, KeepAlive),
    /// A request for hyper.
    Other,
}

/// Whether the client lets the connection stay open after the response.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum KeepAlive {
    Yes,
    No,
}

/// Serves requests on `io` until the connection ends or a request needs hyper.
pub(super) async fn serve<H, F>(
    mut io: TcpStream,
    handle: H,
    shutdown: CancellationToken,
    header_timeout: Duration,
) -> Ended
where
    H: Fn(Request<RequestBody>) -> F,
    F: Future<Output = Response<ClientBody>>,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(4 * 1024);
    let mut spans = Vec::new();
    let mut names = NameMemo::default();
    let mut shutdown_wait = pin!(shutdown.clone().cancelled_owned());
    let mut timer = pin!(tokio::time::sleep(header_timeout));
    loop {
        // The head's deadline: the timer is moved only if it fires before it (`read_head_bytes`).
        let deadline = Instant::now() + header_timeout;
        let (parts, keep_alive) = loop {
            match parse(&mut buf, &mut spans, &mut names) {
                Parsed::Fast(parts, keep_alive) => break (parts, keep_alive),
                Parsed::Other => return Ended::HandOver(io, buf.freeze()),
                Parsed::Partial if buf.len() >= MAX_REQUEST_HEAD_BYTES => {
                    // Too large: hyper answers it (431).
                    return Ended::HandOver(io, buf.freeze());
                }
                Parsed::Partial => {}
            }
            // An idle connection closes at once when the listener drains (as hyper's do).
            let idle = buf.is_empty();
            match read_head_bytes(
                &mut io,
                &mut buf,
                timer.as_mut(),
                deadline,
                shutdown_wait.as_mut(),
                idle,
            )
            .await
            {
                Read::Data => {}
                Read::Closed => return Ended::Closed,
            }
        };
        let head_request = parts.method == Method::HEAD;
        let request = Request::from_parts(parts, Either::Right(Full::new(Bytes::new())));
        let response = {
            let handling = pin!(handle(request));
            match handle_watching_client(handling, &mut io, &mut buf).await {
                Some(r) => r,
                // The client went away: its request was cancelled with the future.
                None => return Ended::Closed,
            }
        };
        let close = keep_alive == KeepAlive::No || shutdown.is_cancelled();
        let written = write_response(&mut io, &mut out, response, head_request, close).await;
        if out.capacity() > OUT_KEPT {
            out = Vec::with_capacity(OUT_KEPT);
        }
        // `Ok(false)`: this response ended the connection (`close`, or the response said so).
        match written {
            Ok(true) => {}
            Ok(false) => {
                let _ = io.shutdown().await;
                return Ended::Closed;
            }
            Err(e) => {
                tracing::debug!(error = %e, "client connection ended while the response was written");
                return Ended::Closed;
            }
        }
    }
}

/// What waiting for more of a head gave.
enum Read {
    Data,
    /// The connection ends: the client closed, the read failed, the head took too long, or
    /// the listener drains while the connection is idle.
    Closed,
}

async fn read_head_bytes(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    mut timer: Pin<&mut Sleep>,
    deadline: Instant,
    mut shutdown: Pin<&mut WaitForCancellationFutureOwned>,
    idle: bool,
) -> Read {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(READ_ROOM);
    }
    poll_fn(|cx| {
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Read::Closed),
            Poll::Ready(Ok(_)) => return Poll::Ready(Read::Data),
            Poll::Pending => {}
        }
        if idle && shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Read::Closed);
        }
        // The timer may still be set for an earlier head: move it on when it fires early.
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                tracing::debug!("request head not received in time: closing the connection");
                return Poll::Ready(Read::Closed);
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// Runs the request's handling while watching the client connection: bytes it sends meanwhile
/// (a pipelined request) are kept; its end cancels the request (`None`).
async fn handle_watching_client<F>(
    mut handling: Pin<&mut F>,
    io: &mut TcpStream,
    buf: &mut BytesMut,
) -> Option<F::Output>
where
    F: Future,
{
    poll_fn(|cx| {
        if let Poll::Ready(r) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        // Read on only while what waits is less than a head's limit.
        while buf.len() < MAX_REQUEST_HEAD_BYTES {
            if buf.capacity() - buf.len() < READ_ROOM {
                buf.reserve(READ_ROOM);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

/// Parses the request head at the front of `buf` and, for a request this loop serves, takes
/// it off the buffer.
fn parse(
    buf: &mut BytesMut,
    spans: &mut Vec<(usize, usize, usize, usize)>,
    names: &mut NameMemo,
) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if req.version != Some(1) || has_bare_lf(&buf[..len]) {
        return Parsed::Other;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Other;
    };
    let method = match method {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        "CONNECT" => return Parsed::Other,
        other => match Method::from_bytes(other.as_bytes()) {
            Ok(m) => m,
            Err(_) => return Parsed::Other,
        },
    };
    let mut keep_alive = KeepAlive::Yes;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Parsed::Other;
        }
        if name.eq_ignore_ascii_case(b"connection") && has_token(h.value, b"close") {
            keep_alive = KeepAlive::No;
        }
    }
    // Where the target and each header lie in the head, to slice the head's bytes after.
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let at = s.as_ptr() as usize - base;
        (at, at + s.len())
    };
    let target = span(path.as_bytes());
    spans.clear();
    spans.extend(req.headers.iter().map(|h| {
        let (n0, n1) = span(h.name.as_bytes());
        let (v0, v1) = span(h.value);
        (n0, n1, v0, v1)
    }));
    let frozen = buf.split_to(len).freeze();
    let uri = match Uri::from_maybe_shared(frozen.slice(target.0..target.1)) {
        Ok(u) => u,
        Err(_) => return rewind_other(buf, frozen),
    };
    // Room for what the gateway adds (X-Forwarded-*, X-Request-Id, ...) without regrowing.
    let mut headers = HeaderMap::with_capacity(spans.len() + 8);
    for (at, &(n0, n1, v0, v1)) in spans.iter().enumerate() {
        let Ok(name) = names.name(at, &frozen[n0..n1]) else {
            return rewind_other(buf, frozen);
        };
        // SAFETY: httparse took this value's bytes only if each is HTAB, SP, a visible ASCII
        // character or obs-text (0x80–0xFF), the set `HeaderValue` accepts; checking them again
        // was a loop over every byte (a token in `Authorization` is hundreds). hyper builds its
        // header values from httparse's the same way.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(frozen.slice(v0..v1)) };
        headers.append(name, value);
    }
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Parsed::Fast(parts, keep_alive)
}

/// Puts a head taken off the buffer back in front of it, for hyper.
fn rewind_other(buf: &mut BytesMut, head: Bytes) -> Parsed {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
    Parsed::Other
}

fn has_bare_lf(head: &[u8]) -> bool {
    // Line ends found by memchr (vectorised): a head with a long token in it is mostly not
    // line ends, and a look at every byte was the most of this parse's cost for one.
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// How the response body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// Exactly so many bytes.
    Length(u64),
    Chunked,
    /// No body (HEAD, 204, 304).
    None,
}

/// Writes the response. `Ok(true)`: the connection may carry another request.
async fn write_response<B>(
    io: &mut TcpStream,
    out: &mut Vec<u8>,
    response: Response<B>,
    head_request: bool,
    close: bool,
) -> io::Result<bool>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (parts, body) = response.into_parts();
    out.clear();
    let (framing, keep_alive) = encode_head(out, parts, &body.size_hint(), head_request, close);
    let mut body = pin!(body);
    if framing == Framing::None {
        // A body at its end (a HEAD answer's) lets its upstream connection go back now.
        let _ = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        io.write_all(out).await?;
        return Ok(keep_alive);
    }
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        // Frames ready now join what waits to be written; the first wait writes it out.
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending if out.is_empty() => poll_fn(|cx| body.as_mut().poll_frame(cx)).await,
            Poll::Pending => {
                io.write_all(out).await?;
                out.clear();
                continue;
            }
        };
        match frame {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if data.is_empty() {
                        continue;
                    }
                    match framing {
                        Framing::Length(_) => {
                            if data.len() as u64 > left {
                                return Err(io::Error::other(
                                    "response body longer than its length",
                                ));
                            }
                            left -= data.len() as u64;
                        }
                        _ => {
                            let _ = write!(out, "{:x}\r\n", data.len());
                        }
                    }
                    if data.len() >= COPY_LIMIT {
                        // Large frames go out beside what waits, not copied behind it.
                        write_both(io, out, &data).await?;
                        out.clear();
                    } else {
                        out.extend_from_slice(&data);
                    }
                    if framing == Framing::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                // Trailers are not passed on to HTTP/1 clients (none asks with `TE: trailers`).
            }
            Some(Err(e)) => {
                // Cut off: the client must not take a short body for a whole one.
                return Err(io::Error::other(format!("response body failed: {e}")));
            }
        }
        if out.len() >= WRITE_BATCH {
            io.write_all(out).await?;
            out.clear();
        }
    }
    match framing {
        Framing::Length(_) if left != 0 => {
            io.write_all(out).await?;
            return Err(io::Error::other("response body shorter than its length"));
        }
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    io.write_all(out).await?;
    Ok(keep_alive)
}

/// Writes `first` and then `second`, with vectored writes.
async fn write_both(io: &mut TcpStream, first: &[u8], second: &[u8]) -> io::Result<()> {
    let (mut a, mut b) = (first, second);
    while !a.is_empty() || !b.is_empty() {
        let n = io
            .write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

/// Encodes the status line and headers into `out`; says how the body goes and whether the
/// connection may stay open.
fn encode_head(
    out: &mut Vec<u8>,
    parts: http::response::Parts,
    hint: &http_body::SizeHint,
    head_request: bool,
    mut close: bool,
) -> (Framing, bool) {
    let status = parts.status;
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let no_body = head_request
        || status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let may_have_length = !status.is_informational()
        && !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    // One look over the headers for what framing needs (maps this small are cheaper walked
    // than hashed into four times); the write below then skips what the framing replaces.
    let mut client_close = false;
    let mut declared_length = None;
    let mut coded: Option<&HeaderValue> = None;
    for (name, value) in parts.headers.iter() {
        if name == header::CONNECTION {
            client_close |= has_token(value.as_bytes(), b"close");
        } else if name == header::CONTENT_LENGTH {
            // The first value, as `HeaderMap::get` gives it.
            declared_length = declared_length.or(Some(parse_length(value.as_bytes())));
        } else if name == header::TRANSFER_ENCODING {
            coded = coded.or(Some(value));
        }
    }
    let declared_length = declared_length.flatten();
    close |= client_close;
    // The response's own framing headers, as hyper reads them: a length wins over a size the
    // body knows, a transfer coding means chunked. `Transfer-Encoding` is always written here
    // (or not at all), `Content-Length` from the map only where it is the framing.
    let mut keep_length = may_have_length;
    let framing = if no_body {
        Framing::None
    } else if let Some(coding) = coded {
        out.extend_from_slice(b"transfer-encoding: ");
        out.extend_from_slice(coding.as_bytes());
        if !ends_with_chunked(coding.as_bytes()) {
            out.extend_from_slice(b", chunked");
        }
        out.extend_from_slice(b"\r\n");
        keep_length = false;
        Framing::Chunked
    } else if let Some(n) = declared_length {
        Framing::Length(n)
    } else if let Some(n) = hint.exact() {
        keep_length = false;
        let _ = write!(out, "content-length: {n}\r\n");
        Framing::Length(n)
    } else {
        keep_length = false;
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if may_have_length
        && head_request
        && declared_length.is_none()
        && let Some(n) = hint.exact().filter(|&n| n > 0)
    {
        let _ = write!(out, "content-length: {n}\r\n");
    }
    let mut has_date = false;
    for (name, value) in parts.headers.iter() {
        if name == header::TRANSFER_ENCODING || (!keep_length && name == header::CONTENT_LENGTH) {
            continue;
        }
        has_date |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close && !client_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        date::with(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, !close)
}

/// The `date` header's value, formatted once a second per thread (as hyper's is).
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    struct Cached {
        second: u64,
        text: [u8; 29],
    }

    thread_local! {
        static CACHED: RefCell<Cached> = const { RefCell::new(Cached { second: 0, text: [0; 29] }) };
    }

    pub fn with(f: impl FnOnce(&[u8])) {
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            let now = SystemTime::now();
            let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            if second != c.second {
                c.second = second;
                c.text
                    .copy_from_slice(httpdate::fmt_http_date(now).as_bytes());
            }
            f(&c.text)
        })
    }
}

/// A connection handed to hyper: the bytes already read come first.
pub(super) struct Rewind {
    pre: Bytes,
    inner: TcpStream,
}

impl Rewind {
    pub fn new(inner: TcpStream, pre: Bytes) -> Rewind {
        Rewind { pre, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(out.remaining());
            out.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::observability::MeteredBody;
    use crate::observability::metrics::RouteMetrics;

    fn parsed(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let p = parse(&mut buf, &mut Vec::new(), &mut NameMemo::default());
        (p, buf)
    }

    #[test]
    fn plain_requests_are_served_here_and_leave_what_follows() {
        let (p, rest) = parsed(
            b"GET /a/b?x=1 HTTP/1.1\r\nHost: h.example\r\nX-Two: 1\r\nX-Two: 2\r\n\r\nGET /next",
        );
        let Parsed::Fast(parts, keep_alive) = p else {
            panic!("not served here")
        };
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri.path(), "/a/b");
        assert_eq!(parts.uri.query(), Some("x=1"));
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers["host"], "h.example");
        assert_eq!(parts.headers.get_all("x-two").iter().count(), 2);
        assert_eq!(keep_alive, KeepAlive::Yes);
        assert_eq!(&rest[..], b"GET /next");

        let (p, _) =
            parsed(b"DELETE /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(
            matches!(p, Parsed::Fast(ref parts, KeepAlive::No) if parts.method == Method::DELETE)
        );
        let (p, rest) = parsed(b"GET / HTTP/1.1\r\nHost: a\r\n");
        assert!(matches!(p, Parsed::Partial));
        assert_eq!(rest.len(), 25, "a partial head stays in the buffer");
    }

    #[test]
    fn everything_else_goes_to_hyper_with_the_buffer_untouched() {
        let cases: &[&[u8]] = &[
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"PUT /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://[::1 HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for &case in cases {
            let (p, rest) = parsed(case);
            assert!(
                matches!(p, Parsed::Other),
                "{:?} was not handed over",
                String::from_utf8_lossy(case)
            );
            assert_eq!(&rest[..], case, "the buffer was changed");
        }
    }

    /// The parses here and in `h1_client` build header values without checking their bytes
    /// again, on the ground that httparse takes only bytes `HeaderValue` accepts. Every byte,
    /// in a request head and in a response head: whatever value httparse hands back is one
    /// `HeaderValue` takes, and a byte `HeaderValue` refuses makes the head unparsable.
    #[test]
    fn httparse_takes_only_header_value_bytes_the_http_crate_accepts() {
        let mut taken = 0;
        for b in 0..=255u8 {
            let value = [b'a', b, b'a'];
            let request = [b"GET / HTTP/1.1\r\nx: ".as_slice(), &value, b"\r\n\r\n"].concat();
            let response = [b"HTTP/1.1 200 OK\r\nx: ".as_slice(), &value, b"\r\n\r\n"].concat();
            let mut slots = [httparse::EMPTY_HEADER; 4];
            let mut req = httparse::Request::new(&mut slots);
            let req_done = matches!(req.parse(&request), Ok(httparse::Status::Complete(_)));
            let req_values: Vec<Vec<u8>> = req.headers.iter().map(|h| h.value.to_vec()).collect();
            let mut slots = [httparse::EMPTY_HEADER; 4];
            let mut resp = httparse::Response::new(&mut slots);
            let resp_done = matches!(resp.parse(&response), Ok(httparse::Status::Complete(_)));
            let resp_values: Vec<Vec<u8>> = resp.headers.iter().map(|h| h.value.to_vec()).collect();
            for (done, values) in [(req_done, req_values), (resp_done, resp_values)] {
                if !done {
                    continue;
                }
                for v in values {
                    assert!(
                        HeaderValue::from_bytes(&v).is_ok(),
                        "httparse took {v:?}, which HeaderValue refuses"
                    );
                }
            }
            if HeaderValue::from_bytes(&value).is_err() {
                assert!(
                    !req_done && !resp_done,
                    "byte {b:#04x} was taken by httparse"
                );
            } else if req_done && resp_done {
                taken += 1;
            }
        }
        // HTAB, SP, visible ASCII and obs-text: the check above ran on real values.
        assert_eq!(taken, 1 + 1 + 94 + 128);
    }

    fn response(
        status: u16,
        headers: &[(&str, &str)],
        body: ProxyTestBody,
    ) -> Response<ClientBody> {
        let body = match body {
            ProxyTestBody::Full(b) => Either::Right(Full::new(Bytes::from_static(b))),
        };
        let mut r = Response::new(MeteredBody::new(
            body,
            RouteMetrics::unmatched(),
            std::time::Instant::now(),
            status,
            None,
        ));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in headers {
            r.headers_mut().append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    enum ProxyTestBody {
        Full(&'static [u8]),
    }

    fn head_of(
        resp: Response<ClientBody>,
        head_request: bool,
        close: bool,
    ) -> (String, Framing, bool) {
        let (parts, body) = resp.into_parts();
        let mut out = Vec::new();
        let (framing, keep) = encode_head(&mut out, parts, &body.size_hint(), head_request, close);
        (String::from_utf8(out).unwrap(), framing, keep)
    }

    #[test]
    fn response_heads_are_framed_as_hyper_frames_them() {
        // A body of known size: content-length, and a date added.
        let (h, f, keep) = head_of(
            response(200, &[], ProxyTestBody::Full(b"hello")),
            false,
            false,
        );
        assert!(
            h.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n"),
            "{h}"
        );
        assert!(
            h.contains("\r\ndate: ") && h.ends_with(" GMT\r\n\r\n"),
            "{h}"
        );
        assert_eq!((f, keep), (Framing::Length(5), true));
        // The response's own length and date stand; no second date.
        let (h, f, _) = head_of(
            response(
                404,
                &[
                    ("content-length", "5"),
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ],
                ProxyTestBody::Full(b"hello"),
            ),
            false,
            false,
        );
        assert!(h.starts_with("HTTP/1.1 404 Not Found\r\n"), "{h}");
        assert_eq!(h.matches("date: ").count(), 1, "{h}");
        assert_eq!(h.matches("content-length: 5").count(), 1, "{h}");
        assert_eq!(f, Framing::Length(5));
        // A coding other than chunked gets chunked after it.
        let (h, f, _) = head_of(
            response(
                200,
                &[("transfer-encoding", "gzip")],
                ProxyTestBody::Full(b"x"),
            ),
            false,
            false,
        );
        assert!(h.contains("transfer-encoding: gzip, chunked\r\n"), "{h}");
        assert!(!h.contains("content-length"), "{h}");
        assert_eq!(f, Framing::Chunked);
        // HEAD, 204 and 304 have no body.
        let (h, f, _) = head_of(
            response(200, &[], ProxyTestBody::Full(b"hello")),
            true,
            false,
        );
        assert_eq!(f, Framing::None);
        assert!(h.contains("content-length: 5\r\n"), "{h}");
        let (h, f, _) = head_of(
            response(204, &[("content-length", "0")], ProxyTestBody::Full(b"")),
            false,
            false,
        );
        assert_eq!(f, Framing::None);
        assert!(
            h.starts_with("HTTP/1.1 204 No Content\r\n") && !h.contains("content-length"),
            "{h}"
        );
        // The connection ends: said once, whoever decided it.
        let (h, _, keep) = head_of(response(200, &[], ProxyTestBody::Full(b"")), false, true);
        assert!(h.contains("connection: close\r\n") && !keep, "{h}");
        let (h, _, keep) = head_of(
            response(503, &[("connection", "close")], ProxyTestBody::Full(b"")),
            false,
            false,
        );
        assert_eq!(h.matches("connection: close").count(), 1, "{h}");
        assert!(!keep);
    }

    /// A server running `serve` with `handler` on one accepted connection; its end is sent on
    /// the returned channel.
    async fn serve_one<H, F>(
        handler: H,
        shutdown: CancellationToken,
        timeout: Duration,
    ) -> (SocketAddr, tokio::sync::oneshot::Receiver<Ended>)
    where
        H: Fn(Request<RequestBody>) -> F + Send + 'static,
        F: Future<Output = Response<ClientBody>> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (io, _) = listener.accept().await.unwrap();
            let _ = tx.send(serve(io, handler, shutdown, timeout).await);
        });
        (addr, rx)
    }

    async fn echo_path(req: Request<RequestBody>) -> Response<ClientBody> {
        let path: &'static [u8] = req.uri().path().to_string().leak().as_bytes();
        response(200, &[], ProxyTestBody::Full(path))
    }

    async fn read_some(c: &mut TcpStream) -> String {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_then_a_body_goes_to_hyper() {
        let (addr, ended) =
            serve_one(echo_path, CancellationToken::new(), Duration::from_secs(30)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let post = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let mut all =
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        all.extend_from_slice(post);
        c.write_all(&all).await.unwrap();
        let mut text = String::new();
        while text.matches("HTTP/1.1 200 OK").count() < 2 {
            text += &read_some(&mut c).await;
        }
        let one = text.find("\r\n\r\n/one").expect("first answer");
        let two = text.find("\r\n\r\n/two").expect("second answer");
        assert!(one < two, "{text}");
        match tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .unwrap()
            .unwrap()
        {
            Ended::HandOver(_, read) => assert_eq!(&read[..], post),
            Ended::Closed => panic!("closed instead of handing over"),
        }
    }

    /// Writes `response` on a fresh connection and returns what the client read.
    async fn written<B>(response: Response<B>) -> (io::Result<bool>, Vec<u8>)
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let result = write_response(&mut server, &mut Vec::new(), response, false, false).await;
        drop(server);
        (result, reader.await.unwrap())
    }

    fn body_of(wire: &[u8]) -> (&str, &[u8]) {
        let end = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (std::str::from_utf8(&wire[..end]).unwrap(), &wire[end..])
    }

    #[tokio::test]
    async fn bodies_small_and_large_arrive_whole_in_both_framings() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        // Known length: the frames as they are.
        let (r, wire) = written(Response::new(Full::new(Bytes::from(big.clone())))).await;
        assert!(r.unwrap());
        let (head, body) = body_of(&wire);
        assert!(head.contains("content-length: 200000\r\n"), "{head}");
        assert_eq!(body, &big[..]);
        // Unknown length: chunked, small frames copied, large ones written beside.
        let frames = [
            &big[..10],
            &big[10..60_010],
            &big[60_010..60_020],
            &big[60_020..],
        ];
        let stream = futures_util::stream::iter(frames.map(|f| {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::copy_from_slice(f)))
        }));
        let (r, wire) = written(Response::new(http_body_util::StreamBody::new(stream))).await;
        assert!(r.unwrap());
        let (head, mut body) = body_of(&wire);
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        let mut decoded = Vec::new();
        loop {
            let line = body.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&body[..line]).unwrap(), 16).unwrap();
            body = &body[line + 2..];
            if size == 0 {
                assert_eq!(body, b"\r\n");
                break;
            }
            decoded.extend_from_slice(&body[..size]);
            assert_eq!(&body[size..size + 2], b"\r\n");
            body = &body[size + 2..];
        }
        assert_eq!(decoded, big);
        // A body that fails midway is cut off, never ended as if whole.
        let stream = futures_util::stream::iter([
            Ok(http_body::Frame::data(Bytes::from_static(b"part"))),
            Err("upstream went away"),
        ]);
        let (r, wire) = written(Response::new(http_body_util::StreamBody::new(stream))).await;
        assert!(r.is_err());
        assert!(
            !wire.ends_with(b"0\r\n\r\n"),
            "{}",
            String::from_utf8_lossy(&wire)
        );
    }

    #[tokio::test]
    async fn a_client_that_goes_away_cancels_its_request() {
        let cancelled = Arc::new(AtomicBool::new(false));
        let seen = cancelled.clone();
        let handler = move |_req: Request<RequestBody>| {
            struct OnDrop(Arc<AtomicBool>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let guard = OnDrop(seen.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                unreachable!()
            }
        };
        let (addr, ended) =
            serve_one(handler, CancellationToken::new(), Duration::from_secs(30)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!cancelled.load(Ordering::SeqCst));
        drop(c);
        let end = tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(end, Ended::Closed));
        assert!(
            cancelled.load(Ordering::SeqCst),
            "the request's future was not dropped"
        );
    }

    #[tokio::test]
    async fn a_slow_head_is_cut_off_but_a_busy_connection_is_not() {
        let timeout = Duration::from_millis(400);
        let (addr, ended) = serve_one(echo_path, CancellationToken::new(), timeout).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        // Requests 150 ms apart for 1.2 s: the time a head may take starts when the previous
        // answer went out (idle time counts, as with hyper), so the timer armed for the first
        // head must be moved on, not obeyed.
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            c.write_all(format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
                .await
                .unwrap();
            assert!(
                read_some(&mut c).await.starts_with("HTTP/1.1 200 OK"),
                "request {i}"
            );
        }
        // Then a head that never ends.
        let started = std::time::Instant::now();
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            .await
            .unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .unwrap()
            .unwrap();
        let after = started.elapsed();
        assert!(matches!(end, Ended::Closed));
        assert!(
            after >= Duration::from_millis(350),
            "cut off after {after:?}"
        );
        println!("slow head cut off after {after:?} (timeout {timeout:?})");
        let mut rest = Vec::new();
        let n = c.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(
            n,
            0,
            "an answer to a slow head: {}",
            String::from_utf8_lossy(&rest)
        );
    }

    #[tokio::test]
    async fn draining_closes_idle_connections_and_ends_busy_ones_after_their_answer() {
        let shutdown = CancellationToken::new();
        let (addr, ended) = serve_one(echo_path, shutdown.clone(), Duration::from_secs(30)).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(read_some(&mut idle).await.starts_with("HTTP/1.1 200 OK"));
        shutdown.cancel();
        let end = tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(end, Ended::Closed));

        // A request in flight when the drain starts is answered, with connection: close.
        let shutdown = CancellationToken::new();
        let release = Arc::new(tokio::sync::Notify::new());
        let started = Arc::new(tokio::sync::Notify::new());
        let (r, st) = (release.clone(), started.clone());
        let handler = move |req: Request<RequestBody>| {
            let (r, st) = (r.clone(), st.clone());
            async move {
                st.notify_one();
                r.notified().await;
                echo_path(req).await
            }
        };
        let (addr, ended) = serve_one(handler, shutdown.clone(), Duration::from_secs(30)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /late HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        started.notified().await;
        shutdown.cancel();
        release.notify_one();
        let mut text = String::new();
        c.read_to_string(&mut text).await.unwrap();
        assert!(
            text.contains("connection: close\r\n") && text.ends_with("/late"),
            "{text}"
        );
        assert!(matches!(ended.await.unwrap(), Ended::Closed));
    }
}
