//! Fixed-window decisions for one key that come in together on one worker thread share one
//! Redis call.
//!
//! The first decision for a key opens a batch and yields to the end of the runtime's turn;
//! every decision for that key (and rule) made on this thread meanwhile joins it. Then one
//! script call counts them all — as many as every window still has room for — and each member
//! takes its place in the order it joined: what it would have got had the calls gone one after
//! another, for one script run and one reply instead of one per request. With 50 requests in
//! flight on one client address this is what keeps a Redis-backed `limit-count` from costing
//! Redis (and the data plane) a script per request.
//!
//! The batch's call is a shared future polled by whichever member is polled, so a member that
//! goes away (its client left) does not strand the others; it waits for the batch to close,
//! which the first member does after its yield or as it goes away. Only the fixed window is
//! batched: its state is one counter per window, so `n` requests at once are exactly `n`
//! requests in a row; the other algorithms keep one call per request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use futures_util::FutureExt as _;
use futures_util::future::{Shared, WeakShared};
use futures_util::task::AtomicWaker;

use super::Window;
use super::redis::RedisFailure;

/// The script's reply for the whole batch: `{admitted, retry_after_ms, delay_ms, remaining_1,
/// reset_ms_1, …}`, remaining counted after every admitted member.
type BatchReply = Result<Arc<[i64]>, Arc<RedisFailure>>;
type BatchCall = Shared<Pin<Box<dyn Future<Output = BatchReply> + Send>>>;

/// Set in a batch's member count once it is closed: nobody joins after.
const CLOSED: u32 = 1 << 31;
/// A batch this large is closed to newcomers (they open the next one).
const MAX_MEMBERS: u32 = 1 << 16;
/// Past this many open batches on one thread, those whose members all went away are swept.
const SWEEP_AT: usize = 1024;

/// A batch: what it decides, its membership, and the gate its call waits behind until the
/// batch is closed.
struct Batch {
    backend: u64,
    key: Box<str>,
    windows: Vec<Window>,
    /// Members so far, and `CLOSED` once closed.
    members: AtomicU32,
    /// The call's task, waiting for `CLOSED`.
    call_waker: AtomicWaker,
}

impl Batch {
    /// Closes the batch to newcomers and lets its call go out, counting its members. Done by
    /// the first member after its yield, or as it goes away (so the others are not stranded).
    fn close(&self) {
        if self.members.fetch_or(CLOSED, Ordering::AcqRel) & CLOSED != 0 {
            return;
        }
        // `try_with`: a member dropped while its thread exits finds no map to leave.
        let _ = OPEN.try_with(|open| {
            let mut open = open.borrow_mut();
            if let Some(batches) = open.get_mut(&self.backend)
                && batches
                    .get(&self.key)
                    .is_some_and(|b| std::ptr::eq(Arc::as_ptr(&b.batch), self))
            {
                batches.remove(&self.key);
            }
        });
        self.call_waker.wake();
    }

    fn is_closed(&self) -> bool {
        self.members.load(Ordering::Acquire) & CLOSED != 0
    }

    fn count(&self) -> u32 {
        self.members.load(Ordering::Acquire) & !CLOSED
    }
}

/// Resolves once its batch is closed. The call's first await: whichever member polls the
/// shared call first, it cannot go out before the first member's yield is over.
struct Closed<'a>(&'a Batch);

impl Future for Closed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.is_closed() {
            return Poll::Ready(());
        }
        self.0.call_waker.register(cx.waker());
        if self.0.is_closed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The first member's hold on its batch: closes it when dropped, had the member not yet.
struct Leading(Arc<Batch>);

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.close();
    }
}

struct OpenBatch {
    batch: Arc<Batch>,
    call: WeakShared<Pin<Box<dyn Future<Output = BatchReply> + Send>>>,
}

thread_local! {
    /// This thread's open batches by backend, then key.
    static OPEN: RefCell<HashMap<u64, HashMap<Box<str>, OpenBatch>>> = RefCell::new(HashMap::new());
}

/// Decides one request for `key` under the fixed `windows` with the requests for the same key
/// ready on this thread at the same time. `send(key, windows, n)` is the Redis call counting
/// `n` requests; it is made once per batch. Returns this request's own reply in the
/// one-request shape (`{allowed, retry_after_ms, delay_ms, remaining_1, reset_ms_1, …}`).
pub async fn fixed_window<F, Fut>(
    backend: u64,
    key: &str,
    windows: &[Window],
    send: F,
) -> Result<Vec<i64>, RedisFailure>
where
    F: FnOnce(Box<str>, Vec<Window>, u32) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<i64>, RedisFailure>> + Send + 'static,
{
    let (call, batch, position, leading) = match join(backend, key, windows) {
        Some((call, batch, position)) => (call, batch, position, None),
        None => {
            let (call, batch) = open(backend, key, windows, send);
            let leading = Leading(batch.clone());
            (call, batch, 0, Some(leading))
        }
    };
    if let Some(leading) = &leading {
        // Let every request ready on this thread join first: the runtime resumes a yielding
        // task once it has run out of ready ones.
        tokio::task::yield_now().await;
        leading.0.close();
    }
    let reply = call.await.map_err(RedisFailure::Shared)?;
    member_reply(&reply, windows.len(), batch.count(), position)
}

/// Joins this thread's open batch for `key`, if there is one for the same windows.
fn join(backend: u64, key: &str, windows: &[Window]) -> Option<(BatchCall, Arc<Batch>, u32)> {
    OPEN.with(|open| {
        let open = open.borrow();
        let open = open.get(&backend)?.get(key)?;
        if open.batch.windows != windows {
            return None;
        }
        let call = open.call.upgrade()?;
        let position = open
            .batch
            .members
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                (m & CLOSED == 0 && m < MAX_MEMBERS).then_some(m + 1)
            })
            .ok()?;
        Some((call, open.batch.clone(), position))
    })
}

/// Opens a batch with this request as its first member. Its call goes out once the batch is
/// closed, counting every member that joined by then.
fn open<F, Fut>(backend: u64, key: &str, windows: &[Window], send: F) -> (BatchCall, Arc<Batch>)
where
    F: FnOnce(Box<str>, Vec<Window>, u32) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<i64>, RedisFailure>> + Send + 'static,
{
    #[cfg(test)]
    tests::BATCHES_OPENED.with(|n| n.set(n.get() + 1));
    let batch = Arc::new(Batch {
        backend,
        key: key.into(),
        windows: windows.to_vec(),
        members: AtomicU32::new(1),
        call_waker: AtomicWaker::new(),
    });
    let call = {
        let batch = batch.clone();
        let call: Pin<Box<dyn Future<Output = BatchReply> + Send>> = Box::pin(async move {
            Closed(&batch).await;
            send(batch.key.clone(), batch.windows.clone(), batch.count())
                .await
                .map(Arc::from)
                .map_err(Arc::new)
        });
        call.shared()
    };
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        let batches = open.entry(backend).or_default();
        if batches.len() >= SWEEP_AT {
            // Batches whose every member went away before their call was made.
            batches.retain(|_, b| b.call.upgrade().is_some());
        }
        batches.insert(
            key.into(),
            OpenBatch {
                batch: batch.clone(),
                call: call.downgrade().expect("a shared future not yet polled"),
            },
        );
    });
    (call, batch)
}

/// The reply of the member at `position` (0 = first) of a batch of `count`: the first
/// `admitted` pass, each seeing the quota left after itself; the rest are refused.
fn member_reply(
    batch: &[i64],
    windows: usize,
    count: u32,
    position: u32,
) -> Result<Vec<i64>, RedisFailure> {
    if batch.len() != 3 + 2 * windows || !(0..=i64::from(count)).contains(&batch[0]) {
        return Err(RedisFailure::BadReply(batch.to_vec()));
    }
    let admitted = batch[0];
    let position = i64::from(position);
    let mut reply = batch.to_vec();
    if position < admitted {
        reply[0] = 1;
        reply[1] = 0;
        for w in 0..windows {
            reply[3 + 2 * w] += admitted - 1 - position;
        }
    } else {
        reply[0] = 0;
    }
    Ok(reply)
}

#[cfg(test)]
pub(super) mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// Batches opened on this thread (a test's own: each test runs on its own thread).
        pub static BATCHES_OPENED: Cell<u32> = const { Cell::new(0) };
    }

    pub fn batches_opened() -> u32 {
        BATCHES_OPENED.with(Cell::get)
    }

    #[test]
    fn members_take_their_places_in_the_order_they_joined() {
        // A batch of 5 under one window with 3 requests' room left: 3 admitted, 0 left after
        // them, 500 ms until the window resets.
        let batch = [3, 500, 0, 0, 1000];
        let replies: Vec<Vec<i64>> = (0..5)
            .map(|p| member_reply(&batch, 1, 5, p).unwrap())
            .collect();
        assert_eq!(
            replies,
            [
                vec![1, 0, 0, 2, 1000],
                vec![1, 0, 0, 1, 1000],
                vec![1, 0, 0, 0, 1000],
                vec![0, 500, 0, 0, 1000],
                vec![0, 500, 0, 0, 1000],
            ]
        );
        // Two windows: each one's remaining counts down.
        let two = [2, 0, 0, 5, 1000, 1, 60_000];
        assert_eq!(
            member_reply(&two, 2, 2, 0).unwrap(),
            [1, 0, 0, 6, 1000, 2, 60_000]
        );
        assert_eq!(
            member_reply(&two, 2, 2, 1).unwrap(),
            [1, 0, 0, 5, 1000, 1, 60_000]
        );
    }

    #[test]
    fn a_reply_admitting_more_than_the_batch_or_of_the_wrong_length_is_refused() {
        assert!(matches!(
            member_reply(&[3, 0, 0, 0, 1000], 1, 2, 0),
            Err(RedisFailure::BadReply(_))
        ));
        assert!(matches!(
            member_reply(&[-1, 0, 0, 0, 1000], 1, 2, 0),
            Err(RedisFailure::BadReply(_))
        ));
        assert!(matches!(
            member_reply(&[1, 0, 0, 0], 1, 2, 0),
            Err(RedisFailure::BadReply(_))
        ));
    }
}
