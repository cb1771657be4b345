//! The two body types every part of the pipeline agrees on.
//!
//! [`RequestBody`] is what goes upstream: the client's own body stream,
//! forwarded frame by frame (never collected), or a small buffered body.
//! [`ProxyBody`] is what goes back to the client: an upstream response body
//! streamed through, or a short body the proxy made itself. A `ProxyBody` may
//! carry a [`Completion`], run exactly once when the body ends or is dropped:
//! that is where the request ends and its access log line is written, so
//! both see the whole exchange (an HTTP/1.1 upstream body gives its
//! connection back to the pool itself, at its end).
//!
//! Both bodies may carry a stall timer ([`RequestBody::limit`],
//! [`ProxyBody::read_timeout`]): it fails the body with
//! [`BodyFault::Stalled`] when a wait for the next frame lasts that long
//! (one timer per body, reset at each wait: no allocation per frame). A request
//! body may also carry a size limit: the frame that crosses it fails the
//! body with [`BodyFault::TooLarge`] instead of going on.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// Error type of both bodies: whatever the underlying stream failed with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to an upstream, optionally counting its bytes
/// (for the access log) and telling whether it was read to its end (so an
/// upstream connection is reused only after the whole request went out) or
/// failed (so only its own failure is blamed on the client).
pub struct RequestBody {
    kind: Source,
    counter: Option<Arc<AtomicU64>>,
    watch: Option<BodyWatch>,
    limit: Option<Limit>,
    trailers: Option<Arc<dyn TrailerFilter>>,
}

/// What may pass of a request's trailer fields: applied to the trailers
/// frame (HTTP/1.1 chunked trailers, HTTP/2 and HTTP/3 trailing HEADERS)
/// before it goes upstream.
pub trait TrailerFilter: Send + Sync {
    /// Removes from `trailers` what must not reach an upstream.
    fn filter(&self, trailers: &mut http::HeaderMap);
}

/// Why portico itself failed a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// The request body crossed max_body_bytes.
    TooLarge,
    /// No body bytes for the stall timeout.
    Stalled,
}

impl std::fmt::Display for BodyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyFault::TooLarge => "request body over max_body_bytes",
            BodyFault::Stalled => "body stalled",
        })
    }
}

impl std::error::Error for BodyFault {}

impl BodyFault {
    /// The fault somewhere in the source chain of `e`, if portico failed
    /// the body itself.
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<BodyFault> {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if let Some(f) = e.downcast_ref::<BodyFault>() {
                return Some(*f);
            }
            cur = e.source();
        }
        None
    }
}

/// A timer that fails a body after `idle` spent waiting for a frame.
///
/// Only waiting counts: the timer starts when a poll finds nothing after
/// one that found something, so time the body's reader spends elsewhere
/// (an upstream or a client slow to take the bytes) is not a stall. The
/// clock is read once per wait, not per frame.
struct Stall {
    idle: Duration,
    /// Armed at the first wait: a request body is not read before the
    /// upstream is reached (and a client that sent Expect: 100-continue
    /// waits for that read).
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl Stall {
    fn new(idle: Duration) -> Stall {
        Stall {
            idle,
            timer: None,
            waiting: false,
        }
    }

    /// After the body's own poll: `got` whether it had something (a
    /// frame, its end, an error). True: stalled.
    fn stalled(&mut self, cx: &mut Context<'_>, got: bool) -> bool {
        if got {
            self.waiting = false;
            return false;
        }
        if !std::mem::replace(&mut self.waiting, true) {
            let deadline = crate::sys::coarse_now() + self.idle;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let Some(timer) = &mut self.timer else {
            return false;
        };
        std::future::Future::poll(timer.as_mut(), cx).is_ready()
    }
}

/// A request body's limits: size (0: none) and stall timeout.
struct Limit {
    max: u64,
    seen: u64,
    stall: Stall,
}

/// How far a [`RequestBody`] got, seen from outside it: still open, read
/// to its end, or failed (the client's stream broke).
#[derive(Clone)]
pub struct BodyWatch(Arc<AtomicU8>);

const OPEN: u8 = 0;
const ENDED: u8 = 1;
const FAILED: u8 = 2;
const TOO_LARGE: u8 = 3;
const STALLED: u8 = 4;

impl BodyWatch {
    /// Whether the body was read to its end (its last frame, or its end,
    /// handed out).
    pub fn ended(&self) -> bool {
        self.0.load(Ordering::Acquire) == ENDED
    }

    /// Whether the body itself returned an error.
    pub fn failed(&self) -> bool {
        self.0.load(Ordering::Acquire) >= FAILED
    }

    /// Whether portico failed the body itself, and why.
    pub fn fault(&self) -> Option<BodyFault> {
        match self.0.load(Ordering::Acquire) {
            TOO_LARGE => Some(BodyFault::TooLarge),
            STALLED => Some(BodyFault::Stalled),
            _ => None,
        }
    }
}

/// Where a body's frames come from: shared by both body types.
enum Source {
    /// A body from hyper (the client's request, an upstream's response),
    /// streamed.
    Incoming(Incoming),
    /// A body held in memory (small and known in full).
    Full(Option<Bytes>),
    /// Any other streaming body (another front door's adapter).
    Boxed(http_body_util::combinators::BoxBody<Bytes, BoxError>),
}

impl Source {
    fn full(b: Bytes) -> Source {
        Source::Full(if b.is_empty() { None } else { Some(b) })
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Source::Incoming(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            Source::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            Source::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Incoming(b) => b.is_end_stream(),
            Source::Full(b) => b.is_none(),
            Source::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Incoming(b) => b.size_hint(),
            Source::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Source::Full(None) => SizeHint::with_exact(0),
            Source::Boxed(b) => b.size_hint(),
        }
    }
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody::full(Bytes::new())
    }

    pub fn full(b: Bytes) -> RequestBody {
        RequestBody {
            kind: Source::full(b),
            counter: None,
            watch: None,
            limit: None,
            trailers: None,
        }
    }

    pub fn incoming(b: Incoming) -> RequestBody {
        RequestBody {
            kind: Source::Incoming(b),
            counter: None,
            watch: None,
            limit: None,
            trailers: None,
        }
    }

    pub fn boxed(b: http_body_util::combinators::BoxBody<Bytes, BoxError>) -> RequestBody {
        RequestBody {
            kind: Source::Boxed(b),
            counter: None,
            watch: None,
            limit: None,
            trailers: None,
        }
    }

    /// Fails the body with [`BodyFault::TooLarge`] when its data crosses
    /// `max` bytes (0: no limit), and with [`BodyFault::Stalled`] when a
    /// wait for the next frame lasts `idle`.
    pub fn limit(&mut self, max: u64, idle: Duration) {
        self.limit = Some(Limit {
            max,
            seen: 0,
            stall: Stall::new(idle),
        });
    }

    /// The next frame, with the limits applied.
    fn poll_limited(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = self.kind.poll_frame(cx);
        let Some(l) = &mut self.limit else {
            return polled;
        };
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(d) = f.data_ref() {
                l.seen += d.len() as u64;
                if l.max > 0 && l.seen > l.max {
                    return Poll::Ready(Some(Err(Box::new(BodyFault::TooLarge))));
                }
            }
        }
        if l.stall.stalled(cx, polled.is_ready()) {
            return Poll::Ready(Some(Err(Box::new(BodyFault::Stalled))));
        }
        polled
    }

    /// Passes the body's trailers, if it has any, through `f`.
    pub fn filter_trailers(&mut self, f: Arc<dyn TrailerFilter>) {
        self.trailers = Some(f);
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
        let mut polled = this.poll_limited(cx);
        if let (Some(filter), Poll::Ready(Some(Ok(f)))) = (&this.trailers, &mut polled) {
            if let Some(t) = f.trailers_mut() {
                filter.filter(t);
            }
        }
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
                Poll::Ready(Some(Err(e))) => match BodyFault::find(&**e) {
                    Some(BodyFault::TooLarge) => TOO_LARGE,
                    Some(BodyFault::Stalled) => STALLED,
                    None => FAILED,
                },
                _ => OPEN,
            };
            if state != OPEN {
                w.0.store(state, Ordering::Release);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.kind.size_hint()
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
    kind: Source,
    bytes_out: u64,
    completion: Option<Box<dyn Completion>>,
    stall: Option<Stall>,
}

impl ProxyBody {
    /// A body the proxy made itself.
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        let b = b.into();
        ProxyBody {
            kind: Source::full(b),
            bytes_out: 0,
            completion: None,
            stall: None,
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody {
            kind: Source::Full(None),
            bytes_out: 0,
            completion: None,
            stall: None,
        }
    }

    /// An upstream body, streamed through.
    pub fn upstream(b: Incoming) -> ProxyBody {
        ProxyBody {
            kind: Source::Incoming(b),
            bytes_out: 0,
            completion: None,
            stall: None,
        }
    }

    /// Any other streaming body (an upstream's, read by portico's own
    /// client).
    pub fn boxed(b: http_body_util::combinators::BoxBody<Bytes, BoxError>) -> ProxyBody {
        ProxyBody {
            kind: Source::Boxed(b),
            bytes_out: 0,
            completion: None,
            stall: None,
        }
    }

    /// Fails the body with [`BodyFault::Stalled`] when a wait for the next
    /// frame lasts `idle`: the client sees the response
    /// cut short, and the completion runs with `ended` false.
    pub fn read_timeout(&mut self, idle: Duration) {
        self.stall = Some(Stall::new(idle));
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
        let mut polled = this.kind.poll_frame(cx);
        if let Some(s) = &mut this.stall {
            if s.stalled(cx, polled.is_ready()) {
                polled = Poll::Ready(Some(Err(Box::new(BodyFault::Stalled))));
            }
        }
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
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.kind.size_hint()
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
