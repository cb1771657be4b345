//! Per-connection timeouts, enforced where the bytes are read.
//!
//! [`ConnIo`] wraps a client stream and tracks which phase its connection is
//! in, from the request counters the pipeline keeps in [`ConnActivity`]:
//! - **head** (HTTP/1.x: from accept, or from the first byte of a next
//!   request, until the pipeline receives the request): at
//!   `header_read_timeout` the client gets `408` (if it sent anything) and
//!   the connection closes. hyper's own header timeout closes without an
//!   answer, hence this layer;
//! - **busy** (a request in flight): no timeout here; the route's timeout
//!   bounds the upstream side;
//! - **idle** (keepalive, no request in flight): at `idle_timeout` an
//!   HTTP/1.1 connection is closed, and an HTTP/2 one is asked to shut down
//!   gracefully (GOAWAY) through [`ConnActivity::idle`].
//!
//! The timer is one `Sleep` per connection, re-armed only when the phase
//! changes, so a busy keepalive connection costs a few atomic loads per read.

use futures_util::task::AtomicWaker;
use http::HeaderName;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// Request counters of one client connection, shared by its [`ConnIo`] and
/// the requests on it.
#[derive(Default)]
pub struct ConnActivity {
    in_flight: AtomicUsize,
    started: AtomicU64,
    /// The reader parked while requests were in flight: woken when the last
    /// one finishes, so the idle timer gets armed even if no byte arrives.
    reader: AtomicWaker,
    /// Signalled when an HTTP/2 connection has been idle for idle_timeout.
    pub idle: Notify,
    /// The raw bytes of the HTTP/1.x request head being read (see
    /// [`ConnActivity::head_has_length_and_chunked`]).
    head: Mutex<HeadCapture>,
}

#[derive(Default)]
struct HeadCapture {
    /// Requests started on the connection before this head.
    seq: u64,
    bytes: Vec<u8>,
}

impl ConnActivity {
    /// Marks a request as started; returns its sequence number on the
    /// connection (0 for the first).
    pub fn request_started(&self) -> u64 {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the raw head of request `seq` carried both Content-Length and
    /// Transfer-Encoding. hyper resolves that conflict by dropping
    /// Content-Length (RFC 9112 6.1 allows it); portico answers 400 instead,
    /// as SPEC requires, so it looks at the bytes hyper parsed. `false` when
    /// the head was not captured (a pipelined request).
    pub fn head_has_length_and_chunked(&self, seq: u64) -> bool {
        let Ok(h) = self.head.lock() else {
            return false;
        };
        if h.seq != seq || h.bytes.is_empty() {
            return false;
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        if req.parse(&h.bytes).is_err() {
            return false;
        }
        let has = |name: &str| {
            req.headers
                .iter()
                .any(|x| x.name.eq_ignore_ascii_case(name))
        };
        has("content-length") && has("transfer-encoding")
    }

    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.reader.wake();
        }
    }
}

/// Which protocol the connection speaks, as far as timeouts care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain listener that allows both: decided by the first bytes.
    Detect,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Head {
        since: Instant,
        got_bytes: bool,
    },
    Busy,
    Idle {
        since: Instant,
    },
    /// The idle timeout fired on HTTP/2 and a graceful shutdown was asked for.
    Closing,
}

/// A client stream with head and idle timeouts.
pub struct ConnIo<S> {
    inner: S,
    activity: std::sync::Arc<ConnActivity>,
    mode: Mode,
    phase: Phase,
    seen_started: u64,
    header_timeout: Duration,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
    request_id_header: HeaderName,
    head_cap: usize,
}

impl<S> ConnIo<S> {
    pub fn new(
        inner: S,
        activity: std::sync::Arc<ConnActivity>,
        mode: Mode,
        header_timeout: Duration,
        idle_timeout: Duration,
        request_id_header: HeaderName,
        head_cap: usize,
    ) -> ConnIo<S> {
        let now = Instant::now();
        let phase = match mode {
            Mode::Http2 => Phase::Idle { since: now },
            _ => Phase::Head {
                since: now,
                got_bytes: false,
            },
        };
        ConnIo {
            inner,
            activity,
            mode,
            phase,
            seen_started: 0,
            header_timeout,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(
                now + header_timeout.max(idle_timeout),
            )),
            armed_for: None,
            request_id_header,
            head_cap,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The protocol as far as known (`Detect` until the first bytes of a
    /// plain connection that may be either).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn update_phase(&mut self) {
        let started = self.activity.started.load(Ordering::Relaxed);
        let in_flight = self.activity.in_flight.load(Ordering::Relaxed);
        if in_flight > 0 {
            self.phase = Phase::Busy;
        } else if started != self.seen_started || self.phase == Phase::Busy {
            self.phase = Phase::Idle {
                since: Instant::now(),
            };
        }
        self.seen_started = started;
    }

    fn on_bytes(&mut self, first: &[u8]) {
        if self.mode == Mode::Detect {
            self.mode = if first.starts_with(b"PRI * HTTP/2.0") {
                Mode::Http2
            } else {
                Mode::Http1
            };
            if self.mode == Mode::Http2 {
                self.phase = Phase::Idle {
                    since: Instant::now(),
                };
                return;
            }
        }
        match (&mut self.phase, self.mode) {
            (Phase::Head { got_bytes, .. }, _) => *got_bytes = true,
            (Phase::Idle { .. }, Mode::Http1) => {
                self.phase = Phase::Head {
                    since: Instant::now(),
                    got_bytes: true,
                }
            }
            (Phase::Idle { since }, _) => *since = Instant::now(),
            _ => {}
        }
        if self.mode == Mode::Http1 && matches!(self.phase, Phase::Head { .. }) {
            self.capture_head(first);
        }
    }

    fn capture_head(&self, bytes: &[u8]) {
        if let Ok(mut h) = self.activity.head.lock() {
            if h.seq != self.seen_started {
                h.bytes.clear();
                h.seq = self.seen_started;
            }
            let room = self.head_cap.saturating_sub(h.bytes.len());
            h.bytes.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }
}

impl<S: AsyncWrite + Unpin> ConnIo<S> {
    /// Best effort: the client may not be reading, and the connection
    /// closes right after either way.
    fn write_408(&mut self, cx: &mut Context<'_>) {
        let id = crate::observe::request_id::generate();
        let body = "408 request head not received in time\n";
        let msg = format!(
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}: {}\r\nconnection: close\r\n\r\n{}",
            body.len(),
            self.request_id_header,
            id.to_str().unwrap_or(""),
            body
        );
        let _ = Pin::new(&mut self.inner).poll_write(cx, msg.as_bytes());
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.update_phase();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_bytes(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadline = match this.phase {
                    Phase::Busy => {
                        this.activity.reader.register(cx.waker());
                        // The last request may have finished meanwhile.
                        if this.activity.in_flight.load(Ordering::Acquire) > 0 {
                            return Poll::Pending;
                        }
                        this.update_phase();
                        match this.phase {
                            Phase::Idle { since } => since + this.idle_timeout,
                            _ => return Poll::Pending,
                        }
                    }
                    Phase::Closing => return Poll::Pending,
                    Phase::Head { since, .. } => since + this.header_timeout,
                    Phase::Idle { since } => since + this.idle_timeout,
                };
                if this.armed_for != Some(deadline) {
                    this.timer.as_mut().reset(deadline);
                    this.armed_for = Some(deadline);
                }
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                match this.phase {
                    Phase::Head { got_bytes, .. } => {
                        if got_bytes && this.mode != Mode::Http2 {
                            this.write_408(cx);
                        }
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head timeout",
                        )))
                    }
                    Phase::Idle { .. } if this.mode == Mode::Http2 => {
                        this.phase = Phase::Closing;
                        this.activity.idle.notify_one();
                        Poll::Pending
                    }
                    // An idle HTTP/1.1 connection just ends.
                    _ => Poll::Ready(Ok(())),
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
