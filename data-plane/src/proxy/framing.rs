//! A request with both `Content-Length` and `Transfer-Encoding` is the classic smuggling
//! vector (CL.TE / TE.CL): two parsers can disagree on where its body ends. hyper resolves it
//! safely (chunked wins, the length is dropped, the connection closes after the response) but
//! forwards the request, and by then the service can no longer see that both were sent. The
//! gateway refuses such requests instead (400, connection closed), so [`FramingWatch`] reads the
//! raw HTTP/1 byte stream beside hyper: it finds each request head, notes whether it carries
//! both headers, and skips bodies by their framing to find the next head. The service asks
//! [`ConnFraming::next_request_is_ambiguous`] per request.
//!
//! The watch gives up (and hyper's own handling stands) on anything it does not fully
//! understand: a head it cannot parse (hyper answers 400/431 itself), HTTP/2's preface, an
//! upgrade or `CONNECT` (the bytes after it may be another protocol), or framing hyper would
//! reject. It only ever adds a refusal for a head it parsed the way hyper does.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the service and the watch of one connection share.
#[derive(Debug)]
pub struct ConnFraming {
    /// Index (from 0) of the first request head carrying both headers; `u64::MAX`: none.
    ambiguous: AtomicU64,
    /// HTTP/1 requests the service has taken so far.
    served: AtomicU64,
}

impl ConnFraming {
    pub fn new() -> Arc<ConnFraming> {
        Arc::new(ConnFraming {
            ambiguous: AtomicU64::new(u64::MAX),
            served: AtomicU64::new(0),
        })
    }

    /// Called once per HTTP/1 request, in order: whether this request's head had both
    /// `Content-Length` and `Transfer-Encoding`. hyper parses heads in order and only after the
    /// watch has seen their bytes, so request `n` is head `n`.
    pub fn next_request_is_ambiguous(&self) -> bool {
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        self.ambiguous.load(Ordering::Relaxed) == n
    }
}

/// Where the watch is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head (in `pending`).
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Collecting a chunk-size line (in `pending`).
    ChunkSize,
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    ChunkCr,
    ChunkLf,
    /// Collecting trailer lines after the last chunk, up to an empty line.
    Trailers,
    /// Not watching any more.
    Off,
}

/// An HTTP/1 connection's reading side, watched for ambiguous framing.
pub struct FramingWatch<S> {
    inner: S,
    shared: Arc<ConnFraming>,
    state: State,
    pending: Vec<u8>,
    heads: u64,
    max_head: usize,
}

impl<S> FramingWatch<S> {
    pub fn new(inner: S, shared: Arc<ConnFraming>, max_head: usize) -> FramingWatch<S> {
        FramingWatch {
            inner,
            shared,
            state: State::Head,
            pending: Vec::new(),
            heads: 0,
            max_head,
        }
    }

    fn stop(&mut self) {
        self.state = State::Off;
        self.pending = Vec::new();
    }

    /// Feeds newly read bytes through the state machine.
    fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Head => {
                    // Blank lines before a request line are allowed (and skipped by hyper).
                    if self.pending.is_empty() {
                        let skip = data
                            .iter()
                            .take_while(|&&b| b == b'\r' || b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    let Some(used) = self.collect_until(data, b"\r\n\r\n") else {
                        return;
                    };
                    data = &data[used..];
                    let verdict = judge_head(&self.pending);
                    self.pending.clear();
                    match verdict {
                        Some((ambiguous, next)) => {
                            let index = self.heads;
                            self.heads += 1;
                            self.flag_then(index, ambiguous, next);
                        }
                        None => self.stop(),
                    }
                }
                State::Body(left) => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = if n == left {
                        State::Head
                    } else {
                        State::Body(left - n)
                    };
                }
                State::ChunkSize => {
                    let Some(used) = self.collect_until(data, b"\r\n") else {
                        return;
                    };
                    data = &data[used..];
                    let size = chunk_size(&self.pending);
                    self.pending.clear();
                    match size {
                        Some(0) => self.state = State::Trailers,
                        Some(n) => self.state = State::ChunkData(n),
                        None => self.stop(),
                    }
                }
                State::ChunkData(left) => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = if n == left {
                        State::ChunkCr
                    } else {
                        State::ChunkData(left - n)
                    };
                }
                State::ChunkCr | State::ChunkLf => {
                    let want = if self.state == State::ChunkCr {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if data[0] != want {
                        return self.stop();
                    }
                    data = &data[1..];
                    self.state = if self.state == State::ChunkCr {
                        State::ChunkLf
                    } else {
                        State::ChunkSize
                    };
                }
                State::Trailers => {
                    let Some(used) = self.collect_until(data, b"\r\n") else {
                        return;
                    };
                    data = &data[used..];
                    // The line ends with CRLF; an empty line ends the message.
                    if self.pending.len() == 2 {
                        self.state = State::Head;
                    }
                    self.pending.clear();
                }
            }
        }
    }

    /// Appends `data` to `pending` up to and including the first `end` (which may straddle
    /// reads); returns how many bytes of `data` were used once `end` is found.
    fn collect_until(&mut self, data: &[u8], end: &[u8]) -> Option<usize> {
        let start = self.pending.len().saturating_sub(end.len() - 1);
        let before = self.pending.len();
        // Look only as far as the head may still grow.
        let room = self.max_head.saturating_sub(before);
        let take = data.len().min(room);
        self.pending.extend_from_slice(&data[..take]);
        match self.pending[start..]
            .windows(end.len())
            .position(|w| w == end)
        {
            Some(i) => {
                let total = start + i + end.len();
                self.pending.truncate(total);
                Some(total - before)
            }
            None => {
                if take < data.len() || self.pending.len() >= self.max_head {
                    // Too long: hyper answers 431 (or the line is garbage); stop watching.
                    self.stop();
                }
                None
            }
        }
    }

    fn flag_then(&mut self, index: u64, ambiguous: bool, next: State) {
        if ambiguous {
            let _ = self.shared.ambiguous.compare_exchange(
                u64::MAX,
                index,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        if next == State::Off {
            self.stop();
        } else {
            self.state = next;
        }
    }
}

/// Most headers a head may have (the proxy's own limit; more and hyper answers 431).
const MAX_HEADERS: usize = 100;

/// One complete request head: whether it carries both framing headers, and what follows it.
/// `None` when httparse (and so hyper) refuses it.
fn judge_head(head: &[u8]) -> Option<(bool, State)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let mut has_cl = false;
    let mut upgrade = req.method == Some("CONNECT");
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            has_cl = true;
            match std::str::from_utf8(h.value).ok().and_then(parse_length) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                // Unparsable or conflicting: hyper answers 400 itself.
                _ => return Some((false, State::Off)),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    let ambiguous = te.is_some() && has_cl;
    let next = match (te, length) {
        // If the upstream switches protocols, what follows may not be HTTP/1.
        _ if upgrade => State::Off,
        (Some(v), _) if ends_with_chunked(v) => State::ChunkSize,
        // Transfer-Encoding without chunked last: hyper answers 400.
        (Some(_), _) => State::Off,
        (None, Some(0) | None) => State::Head,
        (None, Some(n)) => State::Body(n),
    };
    Some((ambiguous, next))
}

/// `Content-Length` as hyper reads it: digits only.
fn parse_length(v: &str) -> Option<u64> {
    let v = v.trim_matches(|c| c == ' ' || c == '\t');
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn ends_with_chunked(v: &[u8]) -> bool {
    std::str::from_utf8(v).is_ok_and(|s| {
        s.rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    })
}

/// The size on a chunk-size line (`1a;ext=x\r\n`); `None` if it is not a plain hex size.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    let end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let hex = &line[..end];
    if hex.is_empty() || hex.len() > 15 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingWatch<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.state != State::Off
            && let Poll::Ready(Ok(())) = res
        {
            this.scan(&buf.filled()[before..]);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingWatch<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of `step` bytes; returns the ambiguous head's index and whether
    /// the watch is still on.
    fn watch(stream: &[u8], step: usize) -> (Option<u64>, bool) {
        let shared = ConnFraming::new();
        let mut w = FramingWatch::new((), shared.clone(), 64 * 1024);
        for piece in stream.chunks(step) {
            w.scan(piece);
        }
        let i = shared.ambiguous.load(Ordering::Relaxed);
        ((i != u64::MAX).then_some(i), w.state != State::Off)
    }

    #[test]
    fn finds_the_ambiguous_head_behind_bodies_of_every_framing() {
        let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /len HTTP/1.1\r\nHost: a\r\nContent-Length: 18\r\n\r\n\
            GET /fake HTTP/1.1\
            POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;x=y\r\nhello\r\n19\r\nPOST /x HTTP/1.1\r\nCL: 1\r\n\r\n0\r\nTrailer: t\r\n\r\n\
            POST /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
            0\r\n\r\n";
        for step in [1, 2, 3, 7, 64, stream.len()] {
            assert_eq!(watch(stream, step), (Some(3), true), "step {step}");
        }
    }

    #[test]
    fn either_order_is_ambiguous_and_plain_streams_are_not() {
        let te_first =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
        assert_eq!(watch(te_first, 5).0, Some(0));
        let plain = b"GET / HTTP/1.1\r\n\r\n\r\nGET /2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(watch(plain, 4), (None, true));
    }

    #[test]
    fn gives_up_on_what_it_does_not_understand() {
        // HTTP/2's preface, an upgrade, CONNECT, a bad chunk size, a too-long head.
        assert_eq!(watch(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 3), (None, false));
        assert_eq!(
            watch(
                b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                8
            ),
            (None, false)
        );
        assert_eq!(
            watch(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 8),
            (None, false)
        );
        assert_eq!(
            watch(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                4
            ),
            (None, false)
        );
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 70 * 1024));
        assert_eq!(watch(&long, 1000), (None, false));
    }
}
