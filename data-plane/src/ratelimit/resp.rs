//! A minimal RESP2 client for the limiter's one command shape (`EVALSHA`/`EVAL` with one key,
//! a reply of integers), run in the calling request's own task on a connection it holds alone
//! for the call.
//!
//! The `redis` crate's multiplexed connection drives its socket from a task of its own and
//! talks to it over a channel and a oneshot per command; in the Redis-limiter profile
//! (bench/profile.sh c) that machinery was about 16 % of the data plane's samples. Here a
//! decision checks a connection out of this thread's idle list, writes the command in one
//! write, reads the reply and puts the connection back: no task, no channel. A call that is
//! cancelled (its timeout, or the client going away) drops its connection with it, so a late
//! reply can never be read as another call's.
//!
//! Redis Cluster keeps the `redis` crate's cluster client (slot routing, redirections).

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::Write as _;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most idle connections one thread keeps per Redis server; more are closed when returned.
const MAX_IDLE_PER_THREAD: usize = 64;
/// Largest reply accepted (a limiter reply is a few dozen bytes).
const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An error reply (`-ERR …`), as Redis wrote it.
    #[error("Redis replied: {0}")]
    Server(String),
    #[error("Redis closed the connection")]
    Closed,
    #[error("malformed reply from Redis: {0}")]
    Protocol(&'static str),
}

/// One reply. Only what the limiter's commands return is kept whole; bulk strings are kept
/// for `SCRIPT`/`PTTL`-style helpers in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
    Error(String),
}

/// How to reach and log in to one Redis server.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: u32,
}

/// One connection to Redis, used by one call at a time.
pub struct RespConn {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
}

impl RespConn {
    /// Connects, logs in (`AUTH`) and selects the database when they are set.
    pub async fn connect(target: &Target) -> Result<RespConn, RespError> {
        let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        stream.set_nodelay(true)?;
        let mut conn = RespConn {
            stream,
            read: BytesMut::with_capacity(512),
            write: Vec::with_capacity(256),
        };
        if let Some(password) = &target.password {
            let reply = match &target.username {
                Some(user) => {
                    conn.call(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                        .await?
                }
                None => conn.call(&[b"AUTH", password.as_bytes()]).await?,
            };
            expect_ok(reply)?;
        }
        if target.database != 0 {
            let db = target.database.to_string();
            expect_ok(conn.call(&[b"SELECT", db.as_bytes()]).await?)?;
        }
        Ok(conn)
    }

    /// Sends one command and reads its reply. An error reply is `Ok(Reply::Error)`: the
    /// connection is still in step and may be reused.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RespError> {
        self.write.clear();
        encode(&mut self.write, args);
        self.stream.write_all(&self.write).await?;
        loop {
            if let Some((reply, used)) = parse(&self.read)? {
                self.read.advance(used);
                return Ok(reply);
            }
            if self.read.len() > MAX_REPLY {
                return Err(RespError::Protocol("reply too large"));
            }
            self.read.reserve(512);
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Err(RespError::Closed);
            }
        }
    }

    /// False when Redis closed the connection while it was idle (or sent something it should
    /// not have): checked without a system call unless the socket turned readable.
    async fn still_open(&self) -> bool {
        poll_fn(|cx| {
            Poll::Ready(match self.stream.poll_read_ready(cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(self.stream.try_read(&mut probe),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                }
            })
        })
        .await
    }
}

fn expect_ok(reply: Reply) -> Result<(), RespError> {
    match reply {
        Reply::Status(_) => Ok(()),
        Reply::Error(e) => Err(RespError::Server(e)),
        _ => Err(RespError::Protocol("expected +OK")),
    }
}

/// `*N\r\n` then `$len\r\narg\r\n` per argument.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Deepest nesting of arrays accepted (the limiter's replies are one flat array).
const MAX_DEPTH: usize = 4;

/// One whole reply at the start of `buf` and the bytes it took, or `None` if more must be
/// read.
fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    parse_nested(buf, 0)
}

fn parse_nested(buf: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, RespError> {
    let Some(line_len) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if line_len == 0 {
        return Err(RespError::Protocol("empty line"));
    }
    let line = &buf[1..line_len];
    let after = line_len + 2;
    let text = || {
        std::str::from_utf8(line)
            .map(str::to_string)
            .map_err(|_| RespError::Protocol("non-UTF-8 status line"))
    };
    let number = || -> Result<i64, RespError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(RespError::Protocol("bad number"))
    };
    Ok(Some(match buf[0] {
        b'+' => (Reply::Status(text()?), after),
        b'-' => (Reply::Error(text()?), after),
        b':' => (Reply::Int(number()?), after),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let len = usize::try_from(len).map_err(|_| RespError::Protocol("bad length"))?;
            if len > MAX_REPLY {
                return Err(RespError::Protocol("reply too large"));
            }
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            if &buf[after + len..after + len + 2] != b"\r\n" {
                return Err(RespError::Protocol("bulk string without its CRLF"));
            }
            (
                Reply::Bulk(Some(buf[after..after + len].to_vec())),
                after + len + 2,
            )
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let n = usize::try_from(n).map_err(|_| RespError::Protocol("bad length"))?;
            if n > MAX_REPLY / 3 {
                return Err(RespError::Protocol("reply too large"));
            }
            if depth == MAX_DEPTH {
                return Err(RespError::Protocol("arrays nested too deep"));
            }
            let mut items = Vec::with_capacity(n);
            let mut at = after;
            for _ in 0..n {
                match parse_nested(&buf[at..], depth + 1)? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            (Reply::Array(Some(items)), at)
        }
        _ => return Err(RespError::Protocol("unknown reply type")),
    }))
}

thread_local! {
    /// Idle connections of this thread, per Redis server (the backend's id).
    static IDLE: RefCell<Vec<(u64, Vec<RespConn>)>> = const { RefCell::new(Vec::new()) };
}

/// A connection of this thread to server `id` that Redis has not closed, if one is idle.
pub async fn checkout(id: u64) -> Option<RespConn> {
    loop {
        let conn = IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            idle.iter_mut().find(|(i, _)| *i == id)?.1.pop()
        })?;
        if conn.still_open().await {
            return Some(conn);
        }
    }
}

/// Puts a connection whose call completed back on this thread's idle list.
pub fn checkin(id: u64, conn: RespConn) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = match idle.iter().position(|(i, _)| *i == id) {
            Some(at) => &mut idle[at].1,
            None => {
                idle.push((id, Vec::new()));
                &mut idle.last_mut().expect("just pushed").1
            }
        };
        if list.len() < MAX_IDLE_PER_THREAD {
            list.push(conn);
        }
    });
}

/// Closes this thread's idle connections to server `id` (after a failure: they are likely
/// dead too).
pub fn forget(id: u64) {
    IDLE.with(|idle| idle.borrow_mut().retain(|(i, _)| *i != id));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> Option<(Reply, usize)> {
        parse(bytes).expect("well-formed")
    }

    #[test]
    fn encodes_a_command_as_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"EVALSHA", b"ab", b"1", b"k"]);
        assert_eq!(
            out,
            b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n"
        );
    }

    #[test]
    fn parses_each_reply_type_and_waits_for_the_rest() {
        assert_eq!(parsed(b"+OK\r\n"), Some((Reply::Status("OK".into()), 5)));
        assert_eq!(
            parsed(b"-NOSCRIPT No matching script\r\n"),
            Some((Reply::Error("NOSCRIPT No matching script".into()), 30))
        );
        assert_eq!(parsed(b":-12\r\n"), Some((Reply::Int(-12), 6)));
        assert_eq!(parsed(b"$-1\r\n"), Some((Reply::Bulk(None), 5)));
        assert_eq!(
            parsed(b"$3\r\nabc\r\nrest"),
            Some((Reply::Bulk(Some(b"abc".to_vec())), 9))
        );
        let whole = b"*3\r\n:1\r\n:0\r\n$2\r\nhi\r\n";
        assert_eq!(
            parsed(whole),
            Some((
                Reply::Array(Some(vec![
                    Reply::Int(1),
                    Reply::Int(0),
                    Reply::Bulk(Some(b"hi".to_vec()))
                ])),
                whole.len()
            ))
        );
        // Every strict prefix is incomplete, not an error.
        for cut in 0..whole.len() {
            assert_eq!(parsed(&whole[..cut]), None, "prefix of {cut} bytes");
        }
    }

    #[test]
    fn refuses_malformed_replies() {
        for bad in [
            &b"?what\r\n"[..],
            b":12x\r\n",
            b"$3\r\nabcd\r\n",
            b"*99999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
