//! Request smuggling lives in framing that two parsers read differently. hyper resolves the
//! classic cases safely but forwards some of them, and by then the service can no longer see
//! what was sent: a request with both `Content-Length` and `Transfer-Encoding` (CL.TE / TE.CL:
//! chunked wins, the length is dropped), `Transfer-Encoding` in two header lines, a coding
//! before `chunked` (`gzip, chunked`: the body would go on still encoded, unannounced), and head
//! lines ending in a bare LF. A malformed chunked body (size overflow, a size that is not hex, an
//! extension with a bare LF or too long, data longer than its size) hyper does refuse, but only
//! mid-body, after the request head was forwarded. The gateway refuses all of these before
//! anything is forwarded (400, or 501 for a coding it does not implement; the connection
//! closed), so [`FramingWatch`] reads the raw HTTP/1 byte stream beside hyper: it finds each
//! request head, judges its framing, and follows its body by that framing to the next head. The
//! service asks [`ConnFraming::next_request_refusal`] per request. A body error found in bytes
//! that arrive after the request was handed to the service is left to hyper (the upstream
//! request is then cut off, never followed by a second one).
//!
//! The watch gives up (and hyper's own handling stands) on anything it does not fully
//! understand: a head it cannot parse (hyper answers 400/431 itself), HTTP/2's preface, an
//! upgrade or `CONNECT` (the bytes after it may be another protocol), or framing hyper rejects
//! at the head. It stops after a refusal too: the connection ends with it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::StatusCode;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why the gateway refuses a request's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndEncoding = 1,
    /// `Transfer-Encoding` in more than one header line.
    RepeatedEncoding,
    /// A transfer coding other than `chunked` (which must be last and alone).
    UnsupportedCoding,
    /// A head line ending in LF without CR.
    BareLf,
    /// A chunked body that is not well formed.
    BadChunk,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::LengthAndEncoding => {
                "a request must not carry both Content-Length and Transfer-Encoding"
            }
            Refusal::RepeatedEncoding => "Transfer-Encoding must be one header line",
            Refusal::UnsupportedCoding => "the only transfer coding accepted is chunked",
            Refusal::BareLf => "request head lines must end in CRLF",
            Refusal::BadChunk => "malformed chunked body",
        }
    }

    fn from_code(code: u64) -> Option<Refusal> {
        [
            Refusal::LengthAndEncoding,
            Refusal::RepeatedEncoding,
            Refusal::UnsupportedCoding,
            Refusal::BareLf,
            Refusal::BadChunk,
        ]
        .into_iter()
        .find(|r| *r as u64 == code)
    }
}

/// What the service and the watch of one connection share.
#[derive(Debug)]
pub struct ConnFraming {
    /// The first refused request: its index (from 0) shifted left by 8, with the [`Refusal`]
    /// in the low byte; `u64::MAX`: none.
    refused: AtomicU64,
    /// HTTP/1 requests the service has taken so far.
    served: AtomicU64,
}

impl ConnFraming {
    pub fn new() -> Arc<ConnFraming> {
        Arc::new(ConnFraming {
            refused: AtomicU64::new(u64::MAX),
            served: AtomicU64::new(0),
        })
    }

    /// Called once per HTTP/1 request, in order: why this request is refused, if it is. hyper
    /// parses heads in order and only after the watch has seen their bytes, so request `n` is
    /// head `n`.
    pub fn next_request_refusal(&self) -> Option<Refusal> {
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        let refused = self.refused.load(Ordering::Relaxed);
        if refused == u64::MAX || refused >> 8 != n {
            return None;
        }
        Refusal::from_code(refused & 0xff)
    }

    fn refuse(&self, index: u64, why: Refusal) {
        let _ = self.refused.compare_exchange(
            u64::MAX,
            index << 8 | why as u64,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// Longest chunk-size line (size and extensions) the watch accepts (hyper allows 16 KiB of
/// extensions over a whole body).
const MAX_CHUNK_LINE: usize = 4096;

/// What collecting a line or head found.
enum Collected {
    /// Complete, using this many bytes of the new data.
    Done(usize),
    /// Needs more bytes.
    More,
    /// Longer than allowed.
    TooLong,
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

/// An HTTP/1 connection's reading side, watched for framing the gateway refuses.
pub struct FramingWatch<S> {
    inner: S,
    shared: Arc<ConnFraming>,
    state: State,
    pending: Vec<u8>,
    /// Heads seen so far; the one being followed (its body) is `heads - 1`.
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

    /// Refuses the current request (the last head seen) and stops: the connection ends there.
    fn refuse(&mut self, why: Refusal) {
        self.shared.refuse(self.heads.saturating_sub(1), why);
        self.stop();
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
                    let used = match self.collect(data, self.max_head, head_end) {
                        Collected::Done(n) => n,
                        Collected::More => return,
                        // Too long: hyper answers 431 (or the line is garbage).
                        Collected::TooLong => return self.stop(),
                    };
                    data = &data[used..];
                    let verdict = judge_head(&self.pending);
                    self.pending.clear();
                    self.heads += 1;
                    match verdict {
                        Some(Ok(next)) => self.state = next,
                        Some(Err(why)) => self.refuse(why),
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
                    let used = match self.collect(data, MAX_CHUNK_LINE, line_end) {
                        Collected::Done(n) => n,
                        Collected::More => return,
                        Collected::TooLong => return self.refuse(Refusal::BadChunk),
                    };
                    data = &data[used..];
                    let size = chunk_size(&self.pending);
                    self.pending.clear();
                    match size {
                        Some(0) => self.state = State::Trailers,
                        Some(n) => self.state = State::ChunkData(n),
                        None => return self.refuse(Refusal::BadChunk),
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
                        return self.refuse(Refusal::BadChunk);
                    }
                    data = &data[1..];
                    self.state = if self.state == State::ChunkCr {
                        State::ChunkLf
                    } else {
                        State::ChunkSize
                    };
                }
                State::Trailers => {
                    let used = match self.collect(data, self.max_head, line_end) {
                        Collected::Done(n) => n,
                        Collected::More => return,
                        Collected::TooLong => return self.stop(),
                    };
                    data = &data[used..];
                    if !self.pending.ends_with(b"\r\n") {
                        return self.refuse(Refusal::BadChunk);
                    }
                    // An empty line ends the message.
                    if self.pending.len() == 2 {
                        self.state = State::Head;
                    }
                    self.pending.clear();
                }
            }
        }
    }

    /// Appends `data` to `pending` up to the end `find` reports (which may straddle reads), at
    /// most `limit` bytes in all.
    fn collect(
        &mut self,
        data: &[u8],
        limit: usize,
        find: fn(&[u8], usize) -> Option<usize>,
    ) -> Collected {
        let before = self.pending.len();
        let room = limit.saturating_sub(before);
        let take = data.len().min(room);
        self.pending.extend_from_slice(&data[..take]);
        match find(&self.pending, before) {
            Some(end) => {
                self.pending.truncate(end);
                Collected::Done(end - before)
            }
            None if take < data.len() || self.pending.len() >= limit => Collected::TooLong,
            None => Collected::More,
        }
    }
}

/// The end of a request head in `buf` (new bytes from `from`): after the first empty line,
/// which hyper (httparse) also takes from bare LFs: `\n\n` or `\n\r\n`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    (start..buf.len()).find_map(|i| {
        if buf[i] != b'\n' {
            return None;
        }
        match buf.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        }
    })
}

/// The end of a line: after its first LF.
pub(super) fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| from + i + 1)
}

/// Most headers a head may have (the proxy's own limit; more and hyper answers 431).
const MAX_HEADERS: usize = 100;

/// One complete request head: what follows it, or why it is refused. `None` when httparse (and
/// so hyper) refuses it, or when hyper answers it itself.
fn judge_head(head: &[u8]) -> Option<Result<State, Refusal>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let bare_lf = head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'));
    if bare_lf {
        return Some(Err(Refusal::BareLf));
    }
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let mut te_lines = 0;
    let mut has_cl = false;
    let mut upgrade = req.method == Some("CONNECT");
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            has_cl = true;
            match parse_length(h.value) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                // Unparsable or conflicting: hyper answers 400 itself.
                _ => return None,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(h.value);
            te_lines += 1;
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if let Some(te) = te {
        // HTTP/1.0 with Transfer-Encoding: hyper answers 400 itself.
        if req.version != Some(1) {
            return None;
        }
        if has_cl {
            return Some(Err(Refusal::LengthAndEncoding));
        }
        if te_lines > 1 {
            return Some(Err(Refusal::RepeatedEncoding));
        }
        // Not ending in chunked: hyper answers 400 itself.
        if !ends_with_chunked(te) {
            return None;
        }
        if !te.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Some(Err(Refusal::UnsupportedCoding));
        }
    }
    Some(Ok(match (te, length) {
        // If the upstream switches protocols, what follows may not be HTTP/1.
        _ if upgrade => State::Off,
        (Some(_), _) => State::ChunkSize,
        (None, Some(0) | None) => State::Head,
        (None, Some(n)) => State::Body(n),
    }))
}

/// `Content-Length` as hyper reads it: digits only (blanks around them allowed), no overflow.
pub(super) fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trim_blanks(v);
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// `v` without the spaces and tabs around it (optional whitespace, RFC 9110 §5.6.3).
fn trim_blanks(v: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !blank(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !blank(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

/// The elements of a comma-separated header value, blanks trimmed (empty ones included).
pub(super) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_blanks)
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
pub(super) fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

pub(super) fn ends_with_chunked(v: &[u8]) -> bool {
    std::str::from_utf8(v).is_ok_and(|s| {
        s.rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    })
}

/// The size on a chunk-size line (`1a;ext=x\r\n`): hex digits (at most 15, so no overflow),
/// optional blanks, an optional extension without CR, then CRLF. `None` otherwise.
pub(super) fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    match rest {
        [] => {}
        [b';', ext @ ..] if !ext.contains(&b'\r') && !ext.contains(&b'\n') => {}
        _ => return None,
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
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

    #[test]
    fn lengths_and_tokens_are_read_as_hyper_reads_them() {
        for (v, n) in [
            (&b"0"[..], Some(0)),
            (b"  42\t", Some(42)),
            (b"007", Some(7)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"", None),
            (b" ", None),
            (b"+1", None),
            (b"1 2", None),
            (b"1,1", None),
            (b"0x10", None),
        ] {
            assert_eq!(parse_length(v), n, "{:?}", String::from_utf8_lossy(v));
        }
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(has_token(b"\tclose\t", b"close"));
        assert!(!has_token(b"closed, x-close", b"close"));
        let all: Vec<&[u8]> = tokens(b" a ,, b").collect();
        assert_eq!(all, [&b"a"[..], b"", b"b"]);
    }

    /// Feeds `stream` in pieces of `step` bytes; returns the refused head's index and why, and
    /// whether the watch is still on.
    fn watch(stream: &[u8], step: usize) -> (Option<(u64, Refusal)>, bool) {
        let shared = ConnFraming::new();
        let mut w = FramingWatch::new((), shared.clone(), 64 * 1024);
        for piece in stream.chunks(step) {
            w.scan(piece);
        }
        let r = shared.refused.load(Ordering::Relaxed);
        let refused = (r != u64::MAX).then(|| (r >> 8, Refusal::from_code(r & 0xff).unwrap()));
        (refused, w.state != State::Off)
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
            assert_eq!(
                watch(stream, step),
                (Some((3, Refusal::LengthAndEncoding)), false),
                "step {step}"
            );
        }
    }

    #[test]
    fn either_order_is_ambiguous_and_plain_streams_are_not() {
        let te_first =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
        assert_eq!(watch(te_first, 5).0, Some((0, Refusal::LengthAndEncoding)));
        let plain = b"GET / HTTP/1.1\r\n\r\n\r\nGET /2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(watch(plain, 4), (None, true));
    }

    #[test]
    fn refuses_disguised_codings_bare_lfs_and_malformed_chunks() {
        let get = b"GET / HTTP/1.1\r\n\r\n";
        let post = |framing: &str, body: &str| {
            let mut s = get.to_vec();
            s.extend(format!("POST / HTTP/1.1\r\n{framing}\r\n\r\n{body}").into_bytes());
            s
        };
        let te = "Transfer-Encoding: chunked";
        for (name, stream, why) in [
            (
                "two TE lines",
                post(&format!("{te}\r\n{te}"), "0\r\n\r\n"),
                Refusal::RepeatedEncoding,
            ),
            (
                "gzip, chunked",
                post("Transfer-Encoding: gzip, chunked", "0\r\n\r\n"),
                Refusal::UnsupportedCoding,
            ),
            (
                "bare LF head",
                [&get[..], b"POST / HTTP/1.1\nContent-Length: 1\n\nx"].concat(),
                Refusal::BareLf,
            ),
            (
                "size overflow",
                post(te, "ffffffffffffffffff\r\n"),
                Refusal::BadChunk,
            ),
            (
                "size not hex",
                post(te, "5g\r\nhello\r\n"),
                Refusal::BadChunk,
            ),
            ("size 0x", post(te, "0x5\r\nhello\r\n"), Refusal::BadChunk),
            (
                "bare LF size line",
                post(te, "5\nhello\r\n"),
                Refusal::BadChunk,
            ),
            (
                "bare LF in extension",
                post(te, "5;a\nb\r\n"),
                Refusal::BadChunk,
            ),
            (
                "long extension",
                post(te, &format!("5;{}\r\n", "a".repeat(5000))),
                Refusal::BadChunk,
            ),
            (
                "data too long",
                post(te, "5\r\nhelloXX\r\n"),
                Refusal::BadChunk,
            ),
            (
                "bare LF trailer",
                post(te, "0\r\nT: 1\n\r\n"),
                Refusal::BadChunk,
            ),
        ] {
            for step in [1, 3, stream.len()] {
                assert_eq!(
                    watch(&stream, step),
                    (Some((1, why)), false),
                    "{name}, step {step}"
                );
            }
        }
        // Blanks after the size and an extension are fine.
        assert_eq!(
            watch(&post(te, "5 ;a=b\r\nhello\r\n0\r\n\r\n"), 2),
            (None, true)
        );
    }

    #[test]
    fn gives_up_on_what_it_does_not_understand() {
        // HTTP/2's preface, an upgrade, CONNECT, chunked not last, a too-long head.
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
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                4
            ),
            (None, false)
        );
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 70 * 1024));
        assert_eq!(watch(&long, 1000), (None, false));
    }
}
