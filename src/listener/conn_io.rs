//! The byte layer under hyper: one client stream, read and written through.
//!
//! [`ConnIo`] wraps a client stream and passes its bytes on unchanged,
//! feeding what it reads to small single-purpose parts, each in its own
//! file with what it guarantees:
//! - [`Timeouts`](super::timeouts): the head and idle timeouts, from the
//!   request counters the pipeline keeps in [`ConnActivity`]. At the head
//!   timeout the client gets `408` (if it sent anything) and the connection
//!   closes (hyper's own header timeout closes without an answer, hence
//!   this layer); at the idle timeout an HTTP/1.1 connection is closed and
//!   an HTTP/2 one is asked to shut down gracefully (GOAWAY) through
//!   [`ConnActivity::idle`];
//! - [`Preface`](super::preface): on a plain listener that serves both
//!   protocols, which one the connection speaks, decided as hyper decides;
//! - [`H1Framing`](super::h1_framing): on HTTP/1.x, where every head starts
//!   and which request carried both Content-Length and Transfer-Encoding,
//!   published into [`ConnActivity`] for the pipeline
//!   ([`ConnActivity::head_has_length_and_chunked`]);
//! - [`H2Guard`](super::h2_guard): on HTTP/2, PING/SETTINGS floods and rapid
//!   reset, which end the connection with GOAWAY(ENHANCE_YOUR_CALM).
//!
//! An error answer that closes the connection hands the stream over, when
//! this is dropped, for a lingering close ([`linger`](super::linger)).
//!
//! **Parking.** An HTTP/1.x connection idle for
//! [`PARK_AFTER`](super::timeouts::PARK_AFTER) is parked: the byte layer
//! asks for it through [`ConnActivity::idle`] when every byte read so far
//! belongs to a complete request the pipeline has received (so the next
//! byte starts a head), and then shuts nothing down when hyper closes; the
//! listener takes the stream back from hyper, waits with no buffer
//! ([`ConnIo::poll_parked`]) and serves it with a new hyper connection. So
//! an idle connection holds no HTTP/1 buffers, and the client sees nothing
//! of it. Bytes read but not yet served (the first bytes of a connection
//! whose protocol had to be told, blank lines hyper had read) go back in
//! front of the stream with [`ConnIo::unread`].
//!
//! One wrapper holding the parts, not a stack of wrappers, because the
//! parts are not independent: which of them sees the bytes, and what a
//! timeout does, depends on the protocol, which the preface decides only
//! after the first reads; the GOAWAY of the flood guard must go out through
//! the writer that knows where hyper's frames end; and the lingering close
//! needs the raw stream back. A stack would share that state across layers
//! through the [`ConnActivity`] atomics on every read. Here each read costs
//! one pass of each part that applies over the bytes read, and no copy.

use super::h1_framing::H1Framing;
use super::h2_guard::H2Guard;
pub use super::linger::linger;
use super::preface::{Preface, Verdict};
use super::timeouts::{answer_408, Expired, Timeouts};
use crate::proxy::conn::ConnActivity;
use crate::sys::Tcp;
use bytes::{Buf, Bytes};
use http::HeaderName;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// A stream that can wait for bytes to read without reading them (and so
/// without a buffer).
pub trait ReadReady {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for Tcp {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

/// Ready when the socket is: tokio-rustls reads the socket until it would
/// block before it says Pending, so no whole record waits in rustls.
impl ReadReady for tokio_rustls::server::TlsStream<Tcp> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
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

/// A client stream with head and idle timeouts, HTTP/1.x framing checks
/// and the HTTP/2 flood guard.
pub struct ConnIo<S> {
    /// `None` only once dropped (handed over for a lingering close).
    inner: Option<S>,
    activity: std::sync::Arc<ConnActivity>,
    mode: Mode,
    timeouts: Timeouts,
    request_id_header: HeaderName,
    /// The first bytes of a connection in `Detect` mode.
    preface: Preface,
    /// HTTP/1.x framing, once the connection is HTTP/1.x.
    h1: Option<H1Framing>,
    head_cap: usize,
    /// portico's GOAWAY, still to be written to `inner`.
    unsent: Vec<u8>,
    /// HTTP/2 flood and rapid-reset detection, once the connection is HTTP/2.
    /// Boxed: an HTTP/1.x connection, parked, should not carry its room.
    h2: Option<Box<H2Guard>>,
    /// Where the stream goes when dropped after an error answer.
    handoff: Option<oneshot::Sender<S>>,
    /// Bytes already seen by the parts, to be read before the stream's.
    unread: Bytes,
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
        ConnIo {
            inner: Some(inner),
            activity,
            mode,
            timeouts: Timeouts::new(mode == Mode::Http2, header_timeout, idle_timeout),
            request_id_header,
            preface: Preface::default(),
            h1: (mode == Mode::Http1).then(|| H1Framing::new(head_cap)),
            head_cap,
            unsent: Vec::new(),
            h2: (mode == Mode::Http2).then(Default::default),
            handoff: None,
            unread: Bytes::new(),
        }
    }

    /// Puts `bytes`, already read through this and so seen by the parts,
    /// back in front of the stream.
    pub fn unread(&mut self, bytes: Bytes) {
        debug_assert!(self.unread.is_empty());
        self.unread = bytes;
    }

    /// Whether an idle HTTP/1.x connection can be parked: every byte read
    /// belongs to a complete request the pipeline has taken, and the
    /// exchanges leave it parkable ([`ConnActivity::parkable`]).
    fn may_park(&self) -> bool {
        self.mode == Mode::Http1
            && self.unread.is_empty()
            && self.activity.parkable()
            && self.h1.as_ref().and_then(|h1| h1.between_requests())
                == Some(self.activity.requests_started())
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

    fn observe_requests(&mut self) {
        let started = self.activity.requests_started();
        let in_flight = self.activity.in_flight();
        self.timeouts.observe(started, in_flight);
    }

    /// Passes bytes read to the parts that follow them; true once the
    /// HTTP/2 guard finds the client abusive.
    fn on_bytes(&mut self, read: &[u8]) -> bool {
        if self.mode == Mode::Detect {
            match self.preface.feed(read) {
                Verdict::Undecided => {
                    self.timeouts.on_bytes(false);
                    return false;
                }
                Verdict::Http1 { earlier } => {
                    self.mode = Mode::Http1;
                    let mut h1 = H1Framing::new(self.head_cap);
                    let news = h1.feed(earlier);
                    self.h1 = Some(h1);
                    if news {
                        self.publish_framing();
                    }
                }
                Verdict::Http2 { earlier } => {
                    self.mode = Mode::Http2;
                    self.timeouts.http2_started();
                    let mut guard = Box::<H2Guard>::default();
                    guard.on_read(earlier);
                    self.h2 = Some(guard);
                    return guard_read(&mut self.h2, read);
                }
            }
        }
        self.timeouts.on_bytes(self.mode == Mode::Http1);
        if let Some(h1) = self.h1.as_mut() {
            if h1.feed(read) {
                self.publish_framing();
            }
        }
        guard_read(&mut self.h2, read)
    }

    /// Tells the pipeline what the HTTP/1.x framing learned.
    fn publish_framing(&self) {
        let Some(h1) = self.h1.as_ref() else {
            return;
        };
        if let Some(seq) = h1.length_and_chunked() {
            self.activity.note_length_and_chunked(seq);
        }
        if let Some(from) = h1.lost_from() {
            self.activity.lost_track_from(from);
        }
    }
}

fn guard_read(guard: &mut Option<Box<H2Guard>>, read: &[u8]) -> bool {
    guard.as_mut().is_some_and(|g| g.on_read(read))
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
        let msg = answer_408(&self.request_id_header, id.to_str().unwrap_or(""));
        self.activity.set_linger(true);
        if let Some(inner) = self.inner.as_mut() {
            let _ = Pin::new(&mut *inner).poll_write(cx, msg.as_bytes());
            let _ = Pin::new(inner).poll_flush(cx);
        }
    }

    /// No bytes to read: whether a timeout has passed, and what it does.
    fn poll_timeouts(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // On HTTP/1.x also when not known busy: a request answered at once
        // (a `respond` route) starts and ends between two reads, and hyper
        // reads again only when bytes come, so the end of the request must
        // wake the connection to start the idle clock (and parking).
        if self.timeouts.is_busy() || self.mode != Mode::Http2 {
            self.activity.wake_when_idle(cx.waker());
        }
        if self.timeouts.is_busy() {
            // The last request may have finished meanwhile.
            if self.activity.in_flight() > 0 {
                return Poll::Pending;
            }
            self.observe_requests();
        }
        let expired = loop {
            match std::task::ready!(self.timeouts.poll_expired(cx)) {
                Expired::Park => {
                    if self.may_park() {
                        self.activity.ask_park();
                    }
                    // On to the idle timeout, which stays armed.
                }
                other => break other,
            }
        };
        match expired {
            Expired::Head { got_bytes } => {
                // Not while the bytes may yet be an HTTP/2 preface.
                if got_bytes && self.mode == Mode::Http1 {
                    self.write_408(cx);
                }
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head timeout",
                )))
            }
            Expired::Idle if self.mode == Mode::Http2 => {
                self.timeouts.closing();
                self.activity.idle.notify_one();
                Poll::Pending
            }
            // An idle HTTP/1.1 connection just ends (a park never gets
            // here: the loop above took it).
            Expired::Idle | Expired::Park => Poll::Ready(Ok(())),
        }
    }

    /// A parked connection: Ready(Ok(true)) once the client has sent bytes
    /// (or closed), Ready(Ok(false)) once the idle timeout has passed.
    /// Holds no buffer while it waits.
    pub fn poll_parked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>>
    where
        S: ReadReady,
    {
        let Some(inner) = self.inner.as_ref() else {
            return Poll::Ready(Err(gone()));
        };
        if let Poll::Ready(r) = inner.poll_read_ready(cx) {
            return Poll::Ready(r.map(|()| true));
        }
        self.timeouts.poll_expired(cx).map(|_| Ok(false))
    }

    /// Back from parking, woken by the client.
    pub fn resumed(&mut self) {
        self.timeouts.resumed();
    }

    /// Reads the first bytes of a connection in `Detect` mode until they
    /// tell its protocol, and puts them back in front of the stream.
    pub async fn detect(&mut self) -> io::Result<Mode>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut first = [0u8; super::preface::H2_PREFACE.len()];
        let mut filled = 0;
        while self.mode == Mode::Detect {
            let n = std::future::poll_fn(|cx| {
                let mut buf = ReadBuf::new(&mut first[filled..]);
                std::task::ready!(Pin::new(&mut *self).poll_read(cx, &mut buf))?;
                Poll::Ready(Ok::<_, io::Error>(buf.filled().len()))
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            filled += n;
        }
        self.unread = Bytes::copy_from_slice(&first[..filled]);
        Ok(self.mode)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.observe_requests();
        let before = buf.filled().len();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        match Pin::new(inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() && this.on_bytes(read) {
                    return Poll::Ready(Err(this.end_flood(cx)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_timeouts(cx),
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
        if self.activity.parking() {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(self.poll_unsent(cx))?;
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Err(gone())),
        }
    }
}
