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
//! On HTTP/1.x it also follows the request stream byte by byte (heads,
//! then bodies by Content-Length or chunked: [`H1Framing`]), so that the
//! checks hyper's parsed request can no longer answer (Content-Length and
//! Transfer-Encoding together) hold for every request of the connection,
//! pipelined or not. A plain listener that serves both protocols decides
//! between them only once the bytes are, or cannot be, the whole HTTP/2
//! preface, as hyper does.
//!
//! An error answer that closes the connection hands the stream over, when
//! this is dropped, for a lingering close ([`linger`]).

use crate::proxy::conn::ConnActivity;
use http::HeaderName;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// The HTTP/2 connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Closes a client connection after an error answer the way NGINX's
/// lingering close does: shut down the write side (the answer is out), then
/// read and discard what the client still sends, up to 30 s in all or 5 s
/// without a byte, so that its writes do not fail with a reset before it
/// reads the answer. Ends early when `stop` fires (shutdown).
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, stop: impl Future<Output = ()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TOTAL: Duration = Duration::from_secs(30);
    const QUIET: Duration = Duration::from_secs(5);
    let drain = async {
        let end = Instant::now() + TOTAL;
        if tokio::time::timeout_at(end.min(Instant::now() + QUIET), io.shutdown())
            .await
            .is_err()
        {
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout_at(end.min(Instant::now() + QUIET), io.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = drain => {}
        _ = stop => {}
    }
}

/// Follows the HTTP/1.x request stream of a connection from the bytes read:
/// each head, then its body (Content-Length or chunked), so that it knows
/// where every head starts, pipelined or not, and records in
/// [`ConnActivity`] which request had both Content-Length and
/// Transfer-Encoding. Bytes it cannot follow (which hyper rejects as well,
/// or a tunnel after an upgrade) end the tracking for the rest of the
/// connection; requests after that count as suspect.
struct H1Framing {
    state: Framing,
    /// The head being read, up to `cap` bytes.
    head: Vec<u8>,
    cap: usize,
    /// Heads completed so far: the sequence number of the next request.
    heads: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    Head,
    Length(u64),
    Chunked(Chunk),
    Lost,
}

/// Where a chunked body is (RFC 9112 7.1), as strictly as hyper reads it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Chunk {
    Size { size: u64, digits: bool },
    SizeSpace(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

impl H1Framing {
    fn new(cap: usize) -> H1Framing {
        H1Framing {
            state: Framing::Head,
            head: Vec::new(),
            cap,
            heads: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8], activity: &ConnActivity) {
        while !bytes.is_empty() {
            match self.state {
                Framing::Lost => return,
                Framing::Head => bytes = self.feed_head(bytes, activity),
                Framing::Length(n) => {
                    let k = n.min(bytes.len() as u64);
                    bytes = &bytes[k as usize..];
                    self.state = match n - k {
                        0 => Framing::Head,
                        left => Framing::Length(left),
                    };
                }
                Framing::Chunked(Chunk::Data(n)) => {
                    let k = n.min(bytes.len() as u64);
                    bytes = &bytes[k as usize..];
                    self.state = Framing::Chunked(match n - k {
                        0 => Chunk::DataCr,
                        left => Chunk::Data(left),
                    });
                }
                Framing::Chunked(c) => {
                    self.state = chunk_step(c, bytes[0]);
                    bytes = &bytes[1..];
                }
            }
            if self.state == Framing::Lost {
                activity.lost_track_from(self.heads);
                return;
            }
        }
    }

    /// Takes head bytes; returns what follows the head, if it ended.
    fn feed_head<'a>(&mut self, mut bytes: &'a [u8], activity: &ConnActivity) -> &'a [u8] {
        if self.head.is_empty() {
            // Empty lines before a request line are ignored (RFC 9112 2.2).
            let skip = bytes
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
                .unwrap_or(bytes.len());
            bytes = &bytes[skip..];
            if bytes.is_empty() {
                return bytes;
            }
        }
        let before = self.head.len();
        let room = self.cap.saturating_sub(before);
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        // The end may straddle two reads: look from a little before.
        let from = before.saturating_sub(2);
        let Some(end) = head_end(&self.head[from..]).map(|e| from + e) else {
            if self.head.len() >= self.cap {
                self.state = Framing::Lost;
            }
            return &[];
        };
        self.state = self.parse_head(end, activity);
        self.head.clear();
        &bytes[end.saturating_sub(before)..]
    }

    /// The framing of the body after the head `self.head[..end]`.
    fn parse_head(&mut self, end: usize, activity: &ConnActivity) -> Framing {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(
            req.parse(&self.head[..end]),
            Ok(httparse::Status::Complete(_))
        ) {
            return Framing::Lost;
        }
        let seq = self.heads;
        self.heads += 1;
        let mut length = None;
        let mut te = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = Some(h.value);
            } else if h.name.eq_ignore_ascii_case("content-length") && length.is_none() {
                length = Some(h.value);
            }
        }
        match (te, length) {
            (Some(te), length) => {
                if length.is_some() {
                    activity.note_length_and_chunked(seq);
                }
                let last = te.rsplit(|&b| b == b',').next().unwrap_or(te);
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    Framing::Chunked(Chunk::Size {
                        size: 0,
                        digits: false,
                    })
                } else {
                    Framing::Lost
                }
            }
            (None, Some(v)) => {
                match std::str::from_utf8(v.trim_ascii())
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    Some(0) => Framing::Head,
                    Some(n) => Framing::Length(n),
                    None => Framing::Lost,
                }
            }
            (None, None) => Framing::Head,
        }
    }
}

/// Where a head ends in `b`: just after its empty line (CRLF or bare LF).
fn head_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(|&c| c == b'\n') {
        let at = i + p + 1;
        match b.get(at..) {
            Some([b'\n', ..]) => return Some(at + 1),
            Some([b'\r', b'\n', ..]) => return Some(at + 2),
            _ => i = at,
        }
        if i >= b.len() {
            break;
        }
    }
    None
}

fn chunk_step(c: Chunk, b: u8) -> Framing {
    let next = match (c, b) {
        (Chunk::Size { size, .. }, _) if b.is_ascii_hexdigit() => {
            let d = u64::from((b as char).to_digit(16).unwrap_or(0));
            match size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                Some(size) => Chunk::Size { size, digits: true },
                None => return Framing::Lost,
            }
        }
        (Chunk::Size { size, digits: true }, b' ' | b'\t') => Chunk::SizeSpace(size),
        (Chunk::Size { size, digits: true } | Chunk::SizeSpace(size), b';') => {
            Chunk::Extension(size)
        }
        (Chunk::Size { size, digits: true } | Chunk::SizeSpace(size), b'\r') => Chunk::SizeLf(size),
        (Chunk::SizeSpace(size), b' ' | b'\t') => Chunk::SizeSpace(size),
        (Chunk::Extension(size), b'\r') => Chunk::SizeLf(size),
        (Chunk::Extension(_), b'\n') => return Framing::Lost,
        (Chunk::Extension(size), _) => Chunk::Extension(size),
        (Chunk::SizeLf(0), b'\n') => Chunk::TrailerStart,
        (Chunk::SizeLf(size), b'\n') => Chunk::Data(size),
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Size {
            size: 0,
            digits: false,
        },
        (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
        (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
        (Chunk::TrailerStart | Chunk::Trailer, _) => Chunk::Trailer,
        (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
        (Chunk::EndLf, b'\n') => return Framing::Head,
        _ => return Framing::Lost,
    };
    Framing::Chunked(next)
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
    /// `None` only once dropped (handed over for a lingering close).
    inner: Option<S>,
    activity: std::sync::Arc<ConnActivity>,
    mode: Mode,
    phase: Phase,
    seen_started: u64,
    header_timeout: Duration,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
    request_id_header: HeaderName,
    /// The first bytes of a connection in `Detect` mode, while they are a
    /// prefix of the HTTP/2 preface (the preface may arrive in pieces).
    detect: Vec<u8>,
    /// HTTP/1.x framing, once the connection is HTTP/1.x.
    h1: Option<H1Framing>,
    head_cap: usize,
    /// portico's GOAWAY, still to be written to `inner`.
    unsent: Vec<u8>,
    /// HTTP/2 flood and rapid-reset detection, once the connection is HTTP/2.
    h2: Option<super::h2_guard::H2Guard>,
    /// Where the stream goes when dropped after an error answer.
    handoff: Option<oneshot::Sender<S>>,
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
            inner: Some(inner),
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
            detect: Vec::new(),
            h1: (mode == Mode::Http1).then(|| H1Framing::new(head_cap)),
            head_cap,
            unsent: Vec::new(),
            h2: (mode == Mode::Http2).then(Default::default),
            handoff: None,
        }
    }

    /// The stream, once this is dropped while the connection's last answer
    /// asks for a lingering close ([`ConnActivity::set_linger`]).
    pub fn lingering(&mut self) -> oneshot::Receiver<S> {
        let (tx, rx) = oneshot::channel();
        self.handoff = Some(tx);
        rx
    }

    /// The protocol as far as known (`Detect` until the first bytes of a
    /// plain connection that may be either).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn update_phase(&mut self) {
        let started = self.activity.requests_started();
        let in_flight = self.activity.in_flight();
        if in_flight > 0 {
            self.phase = Phase::Busy;
        } else if started != self.seen_started || self.phase == Phase::Busy {
            self.phase = Phase::Idle {
                since: Instant::now(),
            };
        }
        self.seen_started = started;
    }

    fn on_bytes(&mut self, read: &[u8]) {
        if self.mode == Mode::Detect {
            // hyper tells the protocols apart by the whole preface; so does
            // this, whatever pieces it comes in.
            let earlier = self.detect.len();
            let take = (H2_PREFACE.len() - earlier).min(read.len());
            self.detect.extend_from_slice(&read[..take]);
            if !H2_PREFACE.starts_with(&self.detect) {
                self.mode = Mode::Http1;
                let mut h1 = H1Framing::new(self.head_cap);
                h1.feed(&self.detect[..earlier], &self.activity);
                self.h1 = Some(h1);
                self.detect = Vec::new();
            } else if self.detect.len() == H2_PREFACE.len() {
                self.mode = Mode::Http2;
                self.phase = Phase::Idle {
                    since: Instant::now(),
                };
                let mut guard = super::h2_guard::H2Guard::default();
                guard.on_read(&self.detect[..earlier]);
                self.h2 = Some(guard);
                self.detect = Vec::new();
                return;
            } else {
                if let Phase::Head { got_bytes, .. } = &mut self.phase {
                    *got_bytes = true;
                }
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
        if let Some(h1) = self.h1.as_mut() {
            h1.feed(read, &self.activity);
        }
    }
}

impl<S> Drop for ConnIo<S> {
    fn drop(&mut self) {
        if self.activity.lingers() {
            if let (Some(tx), Some(io)) = (self.handoff.take(), self.inner.take()) {
                let _ = tx.send(io);
            }
        }
    }
}

fn gone() -> io::Error {
    io::ErrorKind::NotConnected.into()
}

impl<S: AsyncWrite + Unpin> ConnIo<S> {
    /// Writes the queued GOAWAY; Ready(Ok) once it is out.
    fn poll_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unsent.is_empty() {
            let Some(inner) = self.inner.as_mut() else {
                return Poll::Ready(Err(gone()));
            };
            match Pin::new(inner).poll_write(cx, &self.unsent) {
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

    /// Ends an HTTP/2 connection whose client floods control frames or
    /// resets streams rapidly: its GOAWAY(ENHANCE_YOUR_CALM), when hyper is
    /// between two frames, and the error that makes hyper drop the
    /// connection. Best effort: a flooding client may not be reading.
    fn end_flood(&mut self, cx: &mut Context<'_>) -> io::Error {
        let abuse = self.h2.as_ref().map_or("", |g| g.abuse());
        tracing::warn!(
            abuse,
            "HTTP/2 client abuse: GOAWAY(ENHANCE_YOUR_CALM), connection closed"
        );
        if let Some(g) = self.h2.as_ref().filter(|g| g.between_frames()) {
            self.unsent.extend_from_slice(&g.goaway());
            if self.poll_unsent(cx).is_ready() {
                if let Some(inner) = self.inner.as_mut() {
                    let _ = Pin::new(inner).poll_flush(cx);
                }
            }
        }
        io::Error::new(io::ErrorKind::ConnectionAborted, "HTTP/2 client abuse")
    }

    /// Best effort: the client may not be reading; the close lingers so
    /// that it can.
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
        self.activity.set_linger(true);
        if let Some(inner) = self.inner.as_mut() {
            let _ = Pin::new(&mut *inner).poll_write(cx, msg.as_bytes());
            let _ = Pin::new(inner).poll_flush(cx);
        }
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
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        match Pin::new(inner).poll_read(cx, buf) {
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
                        this.activity.wake_when_idle(cx.waker());
                        // The last request may have finished meanwhile.
                        if this.activity.in_flight() > 0 {
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
                        // Not while the bytes may yet be an HTTP/2 preface.
                        if got_bytes && this.mode == Mode::Http1 {
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
        std::task::ready!(this.poll_unsent(cx))?;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let written = std::task::ready!(Pin::new(inner).poll_write(cx, buf))?;
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
        std::task::ready!(this.poll_unsent(cx))?;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let written = std::task::ready!(Pin::new(inner).poll_write_vectored(cx, bufs))?;
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
        self.inner.as_ref().is_some_and(|i| i.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_unsent(cx))?;
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_unsent(cx))?;
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Err(gone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step`; (first CL+TE request, untracked from).
    fn follow(bytes: &[u8], step: usize) -> (Option<u64>, Option<u64>) {
        let activity = ConnActivity::default();
        let mut f = H1Framing::new(1024);
        for piece in bytes.chunks(step) {
            f.feed(piece, &activity);
        }
        (
            activity.first_length_and_chunked(),
            activity.untracked_from(),
        )
    }

    #[test]
    fn finds_the_request_with_length_and_chunked_in_any_piece_sizes() {
        let mut stream = b"GET /0 HTTP/1.1\r\nHost: a\r\n\r\n\r\n".to_vec();
        // A body that looks like a head with both fields: it is a body.
        stream.extend_from_slice(
            b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 63\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked",
        );
        stream.extend_from_slice(
            b"POST /2 HTTP/1.1\nHost: a\nTransfer-Encoding: gzip, chunked\n\n5;ext=\"v\"\r\nhello\r\nA \r\n0123456789\r\n0\r\nTrailer: 1\r\n\r\n",
        );
        stream.extend_from_slice(
            b"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        );
        for step in [1, 2, 3, 7, 64, stream.len()] {
            assert_eq!(follow(&stream, step), (Some(3), None), "pieces of {step}");
        }
    }

    #[test]
    fn bytes_it_cannot_follow_make_later_requests_suspect() {
        let activity = ConnActivity::default();
        let mut f = H1Framing::new(1024);
        f.feed(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            &activity,
        );
        assert!(!activity.head_has_length_and_chunked(0));
        assert!(!activity.head_has_length_and_chunked(1));
        assert!(activity.head_has_length_and_chunked(2));
        // A head over the cap.
        let (_, untracked) = follow(&vec![b'a'; 4096], 100);
        assert_eq!(untracked, Some(0));
    }
}
