//! The two body types every part of the pipeline agrees on.
//!
//! [`RequestBody`] is what goes upstream: the client's own body stream,
//! forwarded frame by frame (never collected), or a small buffered body.
//! [`ProxyBody`] is what goes back to the client: an upstream response body
//! streamed through, or a short body the proxy made itself. A `ProxyBody` may
//! carry a [`Completion`], run exactly once when the body ends or is dropped:
//! that is where the pooled upstream connection goes back to its pool and the
//! access log line is written, so both see the whole exchange.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Error type of both bodies: whatever the underlying stream failed with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to an upstream, optionally counting its bytes
/// (for the access log) and telling whether it was read to its end (so an
/// upstream connection is reused only after the whole request went out) or
/// failed (so only its own failure is blamed on the client).
pub struct RequestBody {
    kind: ReqKind,
    counter: Option<Arc<AtomicU64>>,
    watch: Option<BodyWatch>,
}

/// How far a [`RequestBody`] got, seen from outside it: still open, read
/// to its end, or failed (the client's stream broke).
#[derive(Clone)]
pub struct BodyWatch(Arc<AtomicU8>);

const OPEN: u8 = 0;
const ENDED: u8 = 1;
const FAILED: u8 = 2;

impl BodyWatch {
    /// Whether the body was read to its end (its last frame, or its end,
    /// handed out).
    pub fn ended(&self) -> bool {
        self.0.load(Ordering::Acquire) == ENDED
    }

    /// Whether the body itself returned an error.
    pub fn failed(&self) -> bool {
        self.0.load(Ordering::Acquire) == FAILED
    }
}

enum ReqKind {
    /// The client's body from hyper (HTTP/1.1, HTTP/2), streamed.
    Incoming(Incoming),
    /// A body held in memory (small and known in full).
    Full(Option<Bytes>),
    /// Any other streaming body (another front door's adapter).
    Boxed(http_body_util::combinators::BoxBody<Bytes, BoxError>),
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody::full(Bytes::new())
    }

    pub fn full(b: Bytes) -> RequestBody {
        RequestBody {
            kind: ReqKind::Full(if b.is_empty() { None } else { Some(b) }),
            counter: None,
            watch: None,
        }
    }

    pub fn incoming(b: Incoming) -> RequestBody {
        RequestBody {
            kind: ReqKind::Incoming(b),
            counter: None,
            watch: None,
        }
    }

    pub fn boxed(b: http_body_util::combinators::BoxBody<Bytes, BoxError>) -> RequestBody {
        RequestBody {
            kind: ReqKind::Boxed(b),
            counter: None,
            watch: None,
        }
    }

    /// Counts the data bytes that pass from now on into `counter`.
    pub fn count_into(&mut self, counter: Arc<AtomicU64>) {
        self.counter = Some(counter);
    }

    /// A view of how far the body gets from now on: read to its end, or
    /// failed.
    pub fn watch(&mut self) -> BodyWatch {
        let state = if Body::is_end_stream(self) {
            ENDED
        } else {
            OPEN
        };
        self.watch
            .get_or_insert_with(|| BodyWatch(Arc::new(AtomicU8::new(state))))
            .clone()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            ReqKind::Incoming(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            ReqKind::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ReqKind::Boxed(b) => Pin::new(b).poll_frame(cx),
        };
        if let (Some(n), Poll::Ready(Some(Ok(f)))) = (&this.counter, &polled) {
            if let Some(d) = f.data_ref() {
                n.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        if let Some(w) = &this.watch {
            // hyper stops polling once is_end_stream says so.
            let state = match &polled {
                Poll::Ready(None) => ENDED,
                Poll::Ready(Some(Ok(_))) if this.is_end_stream() => ENDED,
                Poll::Ready(Some(Err(_))) => FAILED,
                _ => OPEN,
            };
            if state != OPEN {
                w.0.store(state, Ordering::Release);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ReqKind::Incoming(b) => b.is_end_stream(),
            ReqKind::Full(b) => b.is_none(),
            ReqKind::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ReqKind::Incoming(b) => b.size_hint(),
            ReqKind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ReqKind::Full(None) => SizeHint::with_exact(0),
            ReqKind::Boxed(b) => b.size_hint(),
        }
    }
}

/// Work to do once a response body is finished, or abandoned.
pub trait Completion: Send + Sync + 'static {
    /// Called once with the body bytes sent and whether the body ended
    /// normally (`false`: the client went away or the upstream failed).
    fn complete(self: Box<Self>, bytes_out: u64, ended: bool);
}

/// A response body on its way to the client.
pub struct ProxyBody {
    kind: Kind,
    bytes_out: u64,
    completion: Option<Box<dyn Completion>>,
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// A body the proxy made itself.
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        let b = b.into();
        ProxyBody {
            kind: Kind::Full(if b.is_empty() { None } else { Some(b) }),
            bytes_out: 0,
            completion: None,
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(None),
            bytes_out: 0,
            completion: None,
        }
    }

    /// An upstream body, streamed through.
    pub fn upstream(b: Incoming) -> ProxyBody {
        ProxyBody {
            kind: Kind::Upstream(b),
            bytes_out: 0,
            completion: None,
        }
    }

    /// Attaches the work to run when this body is done. If the body is
    /// already complete (an empty body the server may never poll), the work
    /// still runs only when the body is dropped, i.e. after the response head
    /// was written.
    pub fn on_complete(&mut self, c: Box<dyn Completion>) {
        self.completion = Some(c);
    }

    fn finish(&mut self, ended: bool) {
        if let Some(c) = self.completion.take() {
            c.complete(self.bytes_out, ended);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            Kind::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes_out += d.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(b) => b.is_end_stream(),
            Kind::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(b) => b.size_hint(),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if self.completion.is_some() {
            let ended = self.is_end_stream();
            self.finish(ended);
        }
    }
}
