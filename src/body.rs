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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Error type of both bodies: whatever the underlying stream failed with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to an upstream.
pub enum RequestBody {
    /// The client's body, streamed.
    Incoming(Incoming),
    /// The client's body, streamed, with its bytes counted for the access log.
    Counted(Incoming, Arc<AtomicU64>),
    /// A body held in memory (small and known in full).
    Full(Option<Bytes>),
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody::Full(None)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Incoming(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            RequestBody::Counted(b, n) => {
                let polled = Pin::new(b)
                    .poll_frame(cx)
                    .map_err(|e| Box::new(e) as BoxError);
                if let Poll::Ready(Some(Ok(f))) = &polled {
                    if let Some(d) = f.data_ref() {
                        n.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                polled
            }
            RequestBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(b) | RequestBody::Counted(b, _) => b.is_end_stream(),
            RequestBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(b) | RequestBody::Counted(b, _) => b.size_hint(),
            RequestBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RequestBody::Full(None) => SizeHint::with_exact(0),
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
