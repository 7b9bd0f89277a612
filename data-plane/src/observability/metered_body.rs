//! A response body that reports on the response when it is dropped: after its last byte was
//! written, or when the client went away mid-body. The full duration and the bytes actually
//! sent are known only then.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::access_log::{AccessLog, Record};
use super::metrics::RouteMetrics;

pub struct MeteredBody<B> {
    inner: B,
    route: Arc<RouteMetrics>,
    start: Instant,
    status: u16,
    bytes: u64,
    /// Set only when the access log is on.
    log: Option<(Arc<AccessLog>, Box<Record>)>,
    /// Dropped with the body: what must last until the response is sent (limit-conn slots).
    _held: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl<B> MeteredBody<B> {
    pub fn new(
        inner: B,
        route: Arc<RouteMetrics>,
        start: Instant,
        status: u16,
        log: Option<(Arc<AccessLog>, Box<Record>)>,
    ) -> MeteredBody<B> {
        MeteredBody {
            inner,
            route,
            start,
            status,
            bytes: 0,
            log,
            _held: Vec::new(),
        }
    }

    /// Keeps `held` until this body is finished with.
    pub fn holding(mut self, held: Vec<Box<dyn std::any::Any + Send + Sync>>) -> MeteredBody<B> {
        self._held = held;
        self
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        let duration = self.start.elapsed();
        self.route.finished(self.status, duration, self.bytes);
        if let Some((log, mut record)) = self.log.take() {
            record.duration = duration;
            record.bytes_out = self.bytes;
            log.log(record);
        }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
