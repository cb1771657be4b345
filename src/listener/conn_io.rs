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
//!   gracefully (GOAWAY) through [`ConnActivity::idle`]. Idle time counts
//!   from the end of the last request: HTTP/2 frames that are not requests
//!   (PING, WINDOW_UPDATE) do not reset it.
//!
//! The timer is one `Sleep` per connection, re-armed only when the phase
//! changes, so a busy keepalive connection costs a few atomic loads per read.
//!
//! It also gives hyper's own answers a request id: a response written
//! while the connection is still reading a head that never reached the
//! pipeline can only be the 4xx/5xx hyper sends for a head it could not
//! parse (400, 414, 431, 505). The id header is added to it on its way
//! out, so that every response carries one, as the pipeline's do.

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
    /// hyper's error response with the request id added, reported to hyper
    /// as written and still to be written to `inner` (or portico's GOAWAY).
    unsent: Vec<u8>,
    /// HTTP/2 control-frame flood detection, once the connection is HTTP/2.
    h2: Option<super::h2_guard::H2Guard>,
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
            unsent: Vec::new(),
            h2: (mode == Mode::Http2).then(Default::default),
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
                self.h2 = Some(Default::default());
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
            // HTTP/2: bytes alone (PING, WINDOW_UPDATE, SETTINGS) do not make
            // a connection busy; only a request does. A request whose
            // HEADERS are arriving as the timer fires is still served: the
            // shutdown is graceful (GOAWAY names the last stream taken).
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
    /// Whether `first` (the start of a write) is hyper's own error answer to
    /// an HTTP/1.x head that never reached the pipeline.
    fn is_parser_answer(&mut self, first: &[u8]) -> bool {
        if self.mode != Mode::Http1 || !self.unsent.is_empty() {
            return false;
        }
        // A request that reached the pipeline since the head began moves
        // the phase on (to Busy, or to Idle if it is already done).
        self.update_phase();
        matches!(self.phase, Phase::Head { .. })
            && first.len() > 12
            && first.starts_with(b"HTTP/1.")
            && matches!(first[9], b'4' | b'5')
            // hyper's answer is a head alone, written at once.
            && first.ends_with(b"\r\n\r\n")
            // A pipelined client can make a pipeline's answer look like
            // this; those already carry the id.
            && !has_header(first, self.request_id_header.as_str().as_bytes())
    }

    /// Takes hyper's error answer (`parts`, the whole of one write), adds
    /// the request id header after its status line and queues it.
    fn queue_with_request_id(&mut self, parts: &[&[u8]]) -> usize {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = Vec::with_capacity(total + 64);
        for p in parts {
            out.extend_from_slice(p);
        }
        if let Some(eol) = out.windows(2).position(|w| w == b"\r\n") {
            let id = crate::observe::request_id::generate();
            let mut line = Vec::with_capacity(64);
            line.extend_from_slice(self.request_id_header.as_str().as_bytes());
            line.extend_from_slice(b": ");
            line.extend_from_slice(id.as_bytes());
            line.extend_from_slice(b"\r\n");
            out.splice(eol + 2..eol + 2, line);
        }
        self.unsent = out;
        total
    }

    /// Writes what `queue_with_request_id` queued; Ready(Ok) once it is out.
    fn poll_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unsent.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.unsent) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.unsent.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Ends an HTTP/2 connection whose client floods control frames: its
    /// GOAWAY(ENHANCE_YOUR_CALM), when hyper is between two frames, and the
    /// error that makes hyper drop the connection. Best effort: a flooding
    /// client may not be reading.
    fn end_flood(&mut self, cx: &mut Context<'_>) -> io::Error {
        tracing::warn!("HTTP/2 client flooded PING/SETTINGS frames: GOAWAY(ENHANCE_YOUR_CALM), connection closed");
        if let Some(g) = self.h2.as_ref().filter(|g| g.between_frames()) {
            self.unsent.extend_from_slice(&g.goaway());
            if self.poll_unsent(cx).is_ready() {
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "HTTP/2 control frame flood",
        )
    }

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

/// Whether the response head starting `head` has a field `name` (lower
/// case).
fn has_header(head: &[u8], name: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name)
    })
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
                    let read = &buf.filled()[before..];
                    this.on_bytes(read);
                    if this.h2.as_mut().is_some_and(|g| g.on_read(read)) {
                        return Poll::Ready(Err(this.end_flood(cx)));
                    }
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
        let this = &mut *self;
        if this.is_parser_answer(buf) {
            return Poll::Ready(Ok(this.queue_with_request_id(&[buf])));
        }
        std::task::ready!(this.poll_unsent(cx))?;
        let written = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if let Some(g) = this.h2.as_mut() {
            g.on_written(&buf[..written]);
        }
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if this.is_parser_answer(first) {
            let parts: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
            return Poll::Ready(Ok(this.queue_with_request_id(&parts)));
        }
        std::task::ready!(this.poll_unsent(cx))?;
        let written = std::task::ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if let Some(g) = this.h2.as_mut() {
            let mut left = written;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let n = left.min(b.len());
                g.on_written(&b[..n]);
                left -= n;
            }
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_unsent(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_unsent(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
