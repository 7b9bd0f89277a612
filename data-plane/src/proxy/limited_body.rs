//! A request body that fails once more than a limit of bytes has passed through it: the
//! `client-control` plugin's `max_body_size` for bodies whose length is not declared up front
//! (chunked). The failure aborts the upstream request; the proxy reads the shared flag to answer
//! 413 instead of 502.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::observability::metrics::RouteMetrics;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

pub struct LimitedBody<B> {
    inner: B,
    /// `(limit, bytes seen so far, set once the limit was passed)`; `None`: no limit, and no
    /// allocation for the flag.
    limit: Option<(u64, u64, Arc<AtomicBool>)>,
    /// The route whose ingress bandwidth the body's bytes count into, and the count so far.
    metered: Option<(Arc<RouteMetrics>, u64)>,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: Option<u64>) -> LimitedBody<B> {
        LimitedBody {
            inner,
            limit: limit.map(|l| (l, 0, Arc::new(AtomicBool::new(false)))),
            metered: None,
        }
    }

    /// Counts the bytes that pass into `route`'s ingress bandwidth (when the body is dropped).
    pub fn metered(mut self, route: Arc<RouteMetrics>) -> LimitedBody<B> {
        self.metered = Some((route, 0));
        self
    }

    /// A flag set when the body passed its limit; `None` without a limit.
    pub fn tripped(&self) -> Option<Arc<AtomicBool>> {
        self.limit.as_ref().map(|(_, _, t)| t.clone())
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some((limit, _, tripped)) = &this.limit
            && tripped.load(Ordering::Relaxed)
        {
            return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: *limit }))));
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let (Some((_, counted)), Some(data)) = (&mut this.metered, frame.data_ref()) {
            *counted += data.len() as u64;
        }
        if let (Some((limit, seen, tripped)), Some(data)) = (&mut this.limit, frame.data_ref()) {
            *seen = seen.saturating_add(data.len() as u64);
            if *seen > *limit {
                tripped.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: *limit }))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for LimitedBody<B> {
    fn drop(&mut self) {
        if let Some((route, counted)) = &self.metered {
            route.request_body(*counted);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn chunks(
        sizes: &[usize],
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin>
    {
        let frames: Vec<_> = sizes
            .iter()
            .map(|n| Ok(Frame::data(Bytes::from(vec![b'x'; *n]))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn stops_past_the_limit() {
        // (chunk sizes, limit, bytes that pass before the error, error)
        let cases: &[(&[usize], Option<u64>, usize, bool)] = &[
            (&[10, 10, 10], None, 30, false),
            (&[10, 10, 10], Some(30), 30, false),
            (&[10, 10, 10], Some(29), 20, true),
            (&[10, 10, 10], Some(5), 0, true),
            (&[], Some(0), 0, false),
            (&[0, 0], Some(0), 0, false),
            (&[1], Some(0), 0, true),
        ];
        for (sizes, limit, passed, fails) in cases {
            let mut body = LimitedBody::new(chunks(sizes), *limit);
            let flag = body.tripped();
            assert_eq!(flag.is_some(), limit.is_some());
            let mut got = 0;
            let mut failed = false;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => got += f.data_ref().map_or(0, |d| d.len()),
                    Err(e) => {
                        assert!(e.is::<BodyTooLarge>(), "{e}");
                        failed = true;
                        break;
                    }
                }
            }
            let what = format!("{sizes:?} {limit:?}");
            assert_eq!(got, *passed, "{what}");
            assert_eq!(failed, *fails, "{what}");
            assert_eq!(
                flag.is_some_and(|f| f.load(Ordering::Relaxed)),
                *fails,
                "{what}"
            );
            if failed {
                // Polled again, it keeps failing rather than resuming.
                assert!(matches!(body.frame().await, Some(Err(_))), "{what}");
            }
        }
    }
}
