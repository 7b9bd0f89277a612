//! A minimal RESP2 client for the limiter's commands (`EVALSHA`/`EVAL` with one key, a reply
//! of integers): one pipelined connection per worker thread and server ([`Pipeline`]), driven
//! by the calls themselves in the requests' own tasks.
//!
//! The `redis` crate's multiplexed connection drives its socket from a task of its own and
//! talks to it over a channel and a oneshot per command; in the Redis-limiter profile
//! (bench/profile.sh c) that machinery was about 16 % of the data plane's samples. A
//! connection per call instead (no pipelining) was measured slower still: a write and a read
//! per decision, where a pipeline writes the commands of every request ready at once in one
//! write and reads their replies in one read.
//!
//! Redis Cluster keeps the `redis` crate's cluster client (slot routing, redirections).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// One connection to Redis, one call at a time: to open a pipeline's connection (log in,
/// select the database), and for tests.
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

/// Calls of this thread to one Redis server, pipelined on one connection without a task of
/// its own.
///
/// A call puts its command in `out` and waits for its slot in `waiting` to get a reply.
/// Replies come in the order commands went out, so the n-th reply read belongs to the n-th
/// command sent. There is no reader task: whichever call is polled writes what is queued,
/// reads what has arrived and hands each reply to its slot, waking its caller; and the socket's
/// read readiness is always registered with the waker of the oldest live waiting call, so the
/// reply that comes next wakes a call that will read it. The first command of a batch yields
/// (to the end of the runtime's turn) before it is written, so the commands of every request
/// ready on this thread go out in the same write.
///
/// A caller that goes away (its timeout, or its client) leaves its slot behind, marked
/// abandoned: its reply, when it comes, is read and dropped, so the order holds. A connection
/// whose oldest unanswered command has waited `stuck_after` is closed by its watcher task,
/// which fails the calls sent on it: so no call waits much longer than `stuck_after` (the
/// limit's `redis_timeout`) without a timer of its own.
pub struct Pipeline {
    target: Target,
    stuck_after: Duration,
    state: Mutex<PipeState>,
}

enum Link {
    Closed,
    Connecting,
    Open(Box<Open>),
}

struct Open {
    stream: TcpStream,
    read: BytesMut,
}

#[derive(Default)]
struct PipeState {
    link: LinkSlot,
    /// Commands not yet (wholly) written, oldest first; `written` bytes of the first are out.
    out: Vec<u8>,
    unsent: VecDeque<usize>,
    written: usize,
    /// Every call whose reply has not been taken, in the order of its command.
    waiting: VecDeque<Slot>,
    /// Ticket of `waiting[0]`.
    front_ticket: u64,
    /// Counts connections, so a connection's watcher knows when its connection is gone.
    generation: u64,
}

/// `Link` with a `Default`.
struct LinkSlot(Link);

impl Default for LinkSlot {
    fn default() -> Self {
        LinkSlot(Link::Closed)
    }
}

struct Slot {
    /// A reply (or the failure that stands for it) came.
    answered: bool,
    /// The reply, until its caller takes it.
    reply: Option<Result<Reply, RespError>>,
    waker: Option<Waker>,
    /// No caller wants the reply any more (it took it, or went away).
    abandoned: bool,
    /// When its command was queued (for `stuck_after`).
    queued: Instant,
}

impl Slot {
    fn live_waiting(&self) -> bool {
        !self.abandoned && !self.answered
    }

    fn answer(&mut self, reply: Result<Reply, RespError>) {
        self.answered = true;
        self.reply = Some(reply);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl Pipeline {
    pub fn new(target: Target, stuck_after: Duration) -> Arc<Pipeline> {
        Arc::new(Pipeline {
            target,
            stuck_after,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one command and waits for its reply. An error reply is `Ok(Reply::Error)`.
    pub async fn call(self: &Arc<Self>, args: &[&[u8]]) -> Result<Reply, RespError> {
        let (ticket, first_of_batch) = {
            let mut st = self.lock();
            let first_of_batch = st.unsent.is_empty();
            let before = st.out.len();
            encode(&mut st.out, args);
            let len = st.out.len() - before;
            st.unsent.push_back(len);
            let ticket = st.front_ticket + st.waiting.len() as u64;
            st.waiting.push_back(Slot {
                answered: false,
                reply: None,
                waker: None,
                abandoned: false,
                queued: Instant::now(),
            });
            if matches!(st.link.0, Link::Closed) {
                self.connect(&mut st);
            }
            (ticket, first_of_batch)
        };
        // The guard first: a call dropped while it yields still gives up its slot.
        let mut call = Call {
            pipeline: self,
            ticket,
            done: false,
        };
        if first_of_batch {
            // Write after every request ready on this thread has queued its command: the
            // runtime wakes a yielding task only once it has run out of ready tasks.
            tokio::task::yield_now().await;
        }
        poll_fn(|cx| call.poll(cx)).await
    }

    /// Opens the connection in a task of its own (once per connection, not per call); the
    /// calls queued meanwhile go out when it is open. The task then watches the connection:
    /// one timer per connection rather than one per call (a timer per call cost each call a
    /// wake-up of the runtime's driver).
    fn connect(self: &Arc<Self>, st: &mut PipeState) {
        st.link.0 = Link::Connecting;
        st.generation += 1;
        let generation = st.generation;
        let pipeline = self.clone();
        tokio::spawn(async move {
            let opened =
                tokio::time::timeout(pipeline.stuck_after, RespConn::connect(&pipeline.target))
                    .await
                    .unwrap_or_else(|_| {
                        Err(RespError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "connecting to Redis timed out",
                        )))
                    });
            {
                let mut st = pipeline.lock();
                match opened {
                    Ok(conn) => {
                        st.link.0 = Link::Open(Box::new(Open {
                            stream: conn.stream,
                            read: conn.read,
                        }));
                        st.written = 0;
                        st.drive();
                    }
                    Err(e) => {
                        st.link.0 = Link::Closed;
                        st.fail_all(&e);
                        return;
                    }
                }
            }
            pipeline.watch(generation).await;
        });
    }

    /// Until connection `generation` is gone: closes it once its oldest unanswered command
    /// has waited `stuck_after` (its calls then fail; the queued ones go to a new connection).
    async fn watch(&self, generation: u64) {
        loop {
            let deadline = {
                let st = self.lock();
                if st.generation != generation || !matches!(st.link.0, Link::Open(_)) {
                    return;
                }
                match st.oldest_unanswered_since() {
                    Some(since) => since + self.stuck_after,
                    None => Instant::now() + self.stuck_after,
                }
            };
            tokio::time::sleep_until(deadline.into()).await;
            let mut st = self.lock();
            if st.generation != generation {
                return;
            }
            if st
                .oldest_unanswered_since()
                .is_some_and(|since| since.elapsed() >= self.stuck_after)
            {
                st.lose_link(&RespError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "Redis did not answer within {} ms",
                        self.stuck_after.as_millis()
                    ),
                )));
                return;
            }
        }
    }
}

/// One call's wait for its reply.
struct Call<'a> {
    pipeline: &'a Arc<Pipeline>,
    ticket: u64,
    done: bool,
}

impl Call<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Reply, RespError>> {
        let mut st = self.pipeline.lock();
        let at = (self.ticket - st.front_ticket) as usize;
        match &mut st.waiting[at].waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        if !st.waiting[at].answered {
            st.drive();
        }
        let at = (self.ticket - st.front_ticket) as usize;
        match st.waiting[at].reply.take() {
            Some(reply) => {
                self.done = true;
                st.waiting[at].abandoned = true;
                st.pop_finished();
                if matches!(st.link.0, Link::Closed) && !st.unsent.is_empty() {
                    self.pipeline.connect(&mut st);
                }
                Poll::Ready(reply)
            }
            None => {
                if matches!(st.link.0, Link::Closed) {
                    self.pipeline.connect(&mut st);
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.pipeline.lock();
        let at = (self.ticket - st.front_ticket) as usize;
        st.waiting[at].abandoned = true;
        st.waiting[at].waker = None;
        st.pop_finished();
        // This call may have been the one to write the batch or the one registered to read:
        // hand both over to the calls still waiting.
        st.drive();
    }
}

impl PipeState {
    /// Writes what is queued, reads what has arrived, hands replies to their slots and wakes
    /// their callers, and registers the oldest live caller for the next reply.
    fn drive(&mut self) {
        loop {
            let Link::Open(open) = &mut self.link.0 else {
                return;
            };
            let mut failure = None;
            // Read first: a connection Redis closed while idle is seen before writing to it.
            loop {
                if open.read.capacity() - open.read.len() < 512 {
                    open.read.reserve(4096);
                }
                match open.stream.try_read_buf(&mut open.read) {
                    Ok(0) => {
                        failure = Some(RespError::Closed);
                        break;
                    }
                    // Parse what is here before reading more (the socket stays readable).
                    Ok(_) if open.read.len() > MAX_REPLY => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        failure = Some(RespError::Io(e));
                        break;
                    }
                }
            }
            let mut replies = Vec::new();
            if failure.is_none() {
                loop {
                    match parse(&open.read) {
                        Ok(Some((reply, used))) => {
                            open.read.advance(used);
                            replies.push(reply);
                        }
                        Ok(None) if open.read.len() > MAX_REPLY => {
                            failure = Some(RespError::Protocol("reply too large"));
                            break;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
            }
            while failure.is_none() && self.written < self.out.len() {
                match open.stream.try_write(&self.out[self.written..]) {
                    Ok(n) => self.written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => failure = Some(RespError::Io(e)),
                }
            }
            self.take_written();
            for reply in replies {
                if !self.deliver(reply) {
                    failure = Some(RespError::Protocol("a reply to no command"));
                    break;
                }
            }
            if let Some(e) = failure {
                self.lose_link(&e);
                return;
            }
            // Register the oldest live caller for what comes next; if it is ready already,
            // go round again.
            let Link::Open(open) = &self.link.0 else {
                return;
            };
            let sent = self.sent();
            let reader = self
                .waiting
                .iter()
                .take(sent)
                .find(|s| s.live_waiting())
                .and_then(|s| s.waker.clone());
            let writer = (self.written < self.out.len())
                .then(|| self.waiting.iter().find(|s| s.live_waiting()))
                .flatten()
                .and_then(|s| s.waker.clone());
            let mut again = false;
            if let Some(w) = reader {
                again |= open
                    .stream
                    .poll_read_ready(&mut Context::from_waker(&w))
                    .is_ready();
            }
            if let Some(w) = writer {
                again |= open
                    .stream
                    .poll_write_ready(&mut Context::from_waker(&w))
                    .is_ready();
            }
            if !again {
                return;
            }
        }
    }

    /// Drops the commands wholly written from `out`.
    fn take_written(&mut self) {
        let mut done = 0;
        while let Some(&len) = self.unsent.front() {
            if self.written - done < len {
                break;
            }
            done += len;
            self.unsent.pop_front();
        }
        if done > 0 {
            self.out.drain(..done);
            self.written -= done;
        }
    }

    /// Gives a reply to the oldest sent command without one. False if there is none.
    fn deliver(&mut self, reply: Reply) -> bool {
        let sent = self.sent();
        let Some(slot) = self.waiting.iter_mut().take(sent).find(|s| !s.answered) else {
            return false;
        };
        slot.answer(Ok(reply));
        self.pop_finished();
        true
    }

    /// How many of `waiting` have their command wholly written.
    fn sent(&self) -> usize {
        self.waiting.len() - self.unsent.len()
    }

    /// Forgets the slots at the front that are over: answered, and abandoned by their caller.
    /// (An abandoned slot still waiting for its reply stays, so replies keep their order.)
    fn pop_finished(&mut self) {
        while self
            .waiting
            .front()
            .is_some_and(|s| s.abandoned && s.answered)
        {
            self.waiting.pop_front();
            self.front_ticket += 1;
        }
    }

    /// When the oldest sent command without a reply was queued.
    fn oldest_unanswered_since(&self) -> Option<Instant> {
        let sent = self.sent();
        self.waiting
            .iter()
            .take(sent)
            .find(|s| !s.answered)
            .map(|s| s.queued)
    }

    /// The connection failed: the commands sent on it fail (Redis may or may not have run
    /// them); those not sent yet stay queued for the next connection, and a waiting caller is
    /// woken to open it.
    fn lose_link(&mut self, e: &RespError) {
        self.link.0 = Link::Closed;
        self.written = 0;
        let sent = self.sent();
        for slot in self.waiting.iter_mut().take(sent) {
            if !slot.answered {
                slot.answer(Err(e.duplicate()));
            }
        }
        self.pop_finished();
        if let Some(w) = self
            .waiting
            .iter()
            .find(|s| s.live_waiting())
            .and_then(|s| s.waker.clone())
        {
            w.wake();
        }
    }

    /// The connection could not be opened: every call still waiting fails, and the queued
    /// commands are forgotten.
    fn fail_all(&mut self, e: &RespError) {
        self.out.clear();
        self.written = 0;
        self.unsent.clear();
        for slot in self.waiting.iter_mut() {
            if !slot.answered {
                slot.answer(Err(e.duplicate()));
            }
        }
        self.pop_finished();
    }
}

impl RespError {
    /// Redis closed the connection (rather than failing to answer, or answering wrong).
    pub fn is_closed(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        match self {
            RespError::Closed => true,
            RespError::Io(e) => {
                matches!(e.kind(), BrokenPipe | ConnectionAborted | ConnectionReset)
            }
            _ => false,
        }
    }

    /// The same failure for each call it fails.
    fn duplicate(&self) -> RespError {
        match self {
            RespError::Io(e) => RespError::Io(std::io::Error::new(e.kind(), e.to_string())),
            RespError::Server(s) => RespError::Server(s.clone()),
            RespError::Closed => RespError::Closed,
            RespError::Protocol(p) => RespError::Protocol(p),
        }
    }
}

thread_local! {
    /// This thread's pipeline to each Redis server (by the backend's id).
    static PIPELINES: RefCell<Vec<(u64, Arc<Pipeline>)>> = const { RefCell::new(Vec::new()) };
}

/// This thread's pipeline to server `id`, created on first use.
pub fn pipeline(id: u64, target: &Target, stuck_after: Duration) -> Arc<Pipeline> {
    PIPELINES.with(|p| {
        let mut p = p.borrow_mut();
        if let Some((_, pipe)) = p.iter().find(|(i, _)| *i == id) {
            return pipe.clone();
        }
        let pipe = Pipeline::new(target.clone(), stuck_after);
        p.push((id, pipe.clone()));
        pipe
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_redis() -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: 6379,
            username: None,
            password: None,
            database: 0,
        }
    }

    async fn echo(pipeline: Arc<Pipeline>, word: String) -> (String, Reply) {
        let reply = pipeline
            .call(&[b"ECHO", word.as_bytes()])
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "these tests need Redis on 127.0.0.1:6379 ({e}); start it with \
                     `redis-server --daemonize yes` or `apt-get install redis-server`"
                )
            });
        (word, reply)
    }

    #[tokio::test]
    async fn concurrent_calls_each_get_their_own_reply() {
        let pipeline = Pipeline::new(local_redis(), Duration::from_secs(5));
        for round in 0..3 {
            let calls: Vec<_> = (0..200)
                .map(|i| tokio::spawn(echo(pipeline.clone(), format!("w{round}-{i}"))))
                .collect();
            for call in calls {
                let (word, reply) = call.await.unwrap();
                assert_eq!(reply, Reply::Bulk(Some(word.into_bytes())));
            }
        }
        assert!(pipeline.lock().waiting.is_empty());
    }

    #[tokio::test]
    async fn calls_that_go_away_do_not_shift_the_replies_of_the_others() {
        let pipeline = Pipeline::new(local_redis(), Duration::from_secs(5));
        let calls: Vec<_> = (0..100)
            .map(|i| tokio::spawn(echo(pipeline.clone(), format!("c{i}"))))
            .collect();
        // Let some commands go out, then cancel every other call: sent or not, answered or not.
        tokio::task::yield_now().await;
        let mut kept = Vec::new();
        for (i, call) in calls.into_iter().enumerate() {
            if i % 2 == 0 {
                call.abort();
            } else {
                kept.push(call);
            }
        }
        for call in kept {
            let (word, reply) = call.await.unwrap();
            assert_eq!(reply, Reply::Bulk(Some(word.into_bytes())));
        }
        let (word, reply) = echo(pipeline.clone(), "after".into()).await;
        assert_eq!(reply, Reply::Bulk(Some(word.into_bytes())));
    }

    #[tokio::test]
    async fn an_endless_reply_is_refused_not_buffered() {
        // Answers every command with a status line that never ends.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            let _ = sock.write_all(b"+").await;
            let chunk = vec![b'a'; 16 * 1024];
            while sock.write_all(&chunk).await.is_ok() {}
        });
        let target = Target {
            port,
            ..local_redis()
        };
        let pipeline = Pipeline::new(target, Duration::from_secs(5));
        let reply = tokio::time::timeout(Duration::from_secs(5), pipeline.call(&[b"PING"]))
            .await
            .expect("refused, not waited on");
        assert!(
            matches!(reply, Err(RespError::Protocol("reply too large"))),
            "{reply:?}"
        );
    }

    #[tokio::test]
    async fn a_server_that_stops_answering_is_left_for_a_new_connection() {
        // The first connection swallows commands; the next ones answer `+PONG` to each line
        // that starts a command.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mute = std::mem::replace(&mut first, false);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let n = match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if !mute {
                            let commands = buf[..n].iter().filter(|b| **b == b'*').count();
                            let _ = sock.write_all(&b"+PONG\r\n".repeat(commands)).await;
                        }
                    }
                });
            }
        });
        let target = Target {
            port,
            ..local_redis()
        };
        let pipeline = Pipeline::new(target, Duration::from_millis(100));
        let stuck = tokio::time::timeout(Duration::from_millis(150), pipeline.call(&[b"PING"]));
        // It fails, by the caller's timeout or by its own `stuck_after`, whichever is first.
        let first = stuck.await;
        assert!(
            !matches!(first, Ok(Ok(_))),
            "the mute server answered: {first:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reply = tokio::time::timeout(Duration::from_secs(5), pipeline.call(&[b"PING"]))
            .await
            .expect("a new connection answers")
            .expect("no error");
        assert_eq!(reply, Reply::Status("PONG".into()));
    }

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
