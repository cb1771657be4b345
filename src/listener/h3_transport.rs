//! h3's QUIC traits ([`h3::quic`]) over a quinn connection, for the server
//! side of HTTP/3, with one addition: the client's STOP_SENDING on the
//! response direction of a request stream is reported ([`StopWatch`]), so
//! that a request whose stream alone the client cancels is given up while
//! its response is still being made.
//!
//! Guarantees:
//! - streams behave as h3 expects of a QUIC transport: ordered reads of
//!   whole chunks, writes under QUIC flow control, finish and reset, stop
//!   sending, the peer's resets and stops reported as
//!   `StreamTerminated` with their code, connection errors as such;
//! - for each bidirectional stream the client opens, a [`Stopped`] can be
//!   claimed once by stream id ([`StopWatch::take`]) until the stream is
//!   dropped; nothing is kept here for a stream after it is dropped;
//! - quinn itself keeps a small entry (about 80 bytes) for each watched
//!   stream until the client stops it, its response is delivered, or the
//!   connection ends: a stream this side resets without the client having
//!   stopped it keeps its entry for the connection's life. Such resets are
//!   counted ([`Stopped::reset_here`]); past [`MAX_LINGERING`] of them the
//!   connection is closed with H3_EXCESSIVE_LOAD, so what one connection can
//!   make quinn keep stays bounded;
//! - the server opens unidirectional streams (control, QPACK) only; opening
//!   a bidirectional one is an error (a server never does).

use bytes::{Buf, Bytes};
use futures_util::stream::{self, Stream, StreamExt};
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quinn::VarInt;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

/// A stream of what quinn accepts or opens, boxed once per connection (a
/// quinn accept future borrows its connection; this one owns a handle).
type Streams<T> = Pin<Box<dyn Stream<Item = Result<T, quinn::ConnectionError>> + Send + Sync>>;

/// quinn's `SendStream::stopped` future, which owns what it needs.
type StopFuture =
    Pin<Box<dyn Future<Output = Result<Option<VarInt>, quinn::StoppedError>> + Send + Sync>>;

/// Streams reset by this side without the client having stopped them, on
/// one connection, past which the connection is closed (H3_EXCESSIVE_LOAD).
/// Clients cancel with STOP_SENDING, which is not counted: only a client
/// that resets request bodies (or makes upstreams fail mid-response) again
/// and again gets here.
pub const MAX_LINGERING: u32 = 1000;

/// The STOP_SENDING watches of one connection's request streams, by QUIC
/// stream id: put when the stream is accepted, claimed by the request's
/// task, or removed when h3 drops the stream unclaimed.
#[derive(Clone)]
pub struct StopWatch(Arc<Watches>);

struct Watches {
    streams: Mutex<HashMap<u64, StopFuture>>,
    /// Watched streams reset by this side before the client stopped them.
    lingering: AtomicU32,
    conn: quinn::Connection,
}

impl StopWatch {
    /// The watches of `conn`'s request streams.
    pub fn new(conn: quinn::Connection) -> StopWatch {
        StopWatch(Arc::new(Watches {
            streams: Mutex::default(),
            lingering: AtomicU32::new(0),
            conn,
        }))
    }

    /// The watch of request stream `id`, if not claimed already.
    pub fn take(self, id: StreamId) -> Stopped {
        let f = self.lock().remove(&id.into_inner());
        Stopped {
            f,
            armed: false,
            fired: false,
            watch: self,
        }
    }

    fn put(&self, id: u64, f: StopFuture) {
        self.lock().insert(id, f);
    }

    fn forget(&self, id: u64) {
        let f = self.lock().remove(&id);
        // Dropped outside the lock.
        drop(f);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, StopFuture>> {
        self.0
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// One more stream whose entry quinn keeps until the connection ends.
    fn lingers(&self) {
        let n = self.0.lingering.fetch_add(1, Ordering::Relaxed) + 1;
        if n == MAX_LINGERING + 1 {
            let peer = self.0.conn.remote_address();
            tracing::info!(%peer, "HTTP/3: too many streams reset before the client stopped them; closing the connection (H3_EXCESSIVE_LOAD)");
            self.0.conn.close(
                varint(Code::H3_EXCESSIVE_LOAD.value()),
                b"too many streams reset",
            );
        }
    }
}

/// Resolves once the client has stopped the response direction of a
/// request stream (STOP_SENDING), or the connection is gone: nobody will
/// read the response. Stays pending otherwise, also once a finished
/// response has been acknowledged; stays ready once ready.
pub struct Stopped {
    f: Option<StopFuture>,
    /// quinn keeps an entry for the stream: `f` was pending.
    armed: bool,
    fired: bool,
    watch: StopWatch,
}

impl Stopped {
    /// To be told when this side has reset the stream (or is about to):
    /// unless the client had stopped it, quinn keeps the stream's entry
    /// until the connection ends, which is counted (see [`MAX_LINGERING`]).
    pub fn reset_here(mut self) {
        if self.fired || !self.armed {
            return;
        }
        let Some(f) = self.f.as_mut() else {
            return;
        };
        // A STOP_SENDING quinn took in but this task was not woken for yet
        // removes the entry itself.
        let waker = futures_util::task::noop_waker();
        if f.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
        {
            self.watch.lingers();
        }
    }
}

impl Future for Stopped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired {
            return Poll::Ready(());
        }
        let Some(f) = self.f.as_mut() else {
            return Poll::Pending;
        };
        let Poll::Ready(r) = f.as_mut().poll(cx) else {
            self.armed = true;
            return Poll::Pending;
        };
        self.f = None;
        match r {
            // Delivered (or reset by this side): nothing left to give up.
            Ok(None) => Poll::Pending,
            Ok(Some(_)) | Err(_) => {
                self.fired = true;
                Poll::Ready(())
            }
        }
    }
}

/// A QUIC connection for h3's server, over quinn.
pub struct Connection {
    incoming_bi: Streams<(quinn::SendStream, quinn::RecvStream)>,
    incoming_uni: Streams<quinn::RecvStream>,
    opener: OpenStreams,
    stops: StopWatch,
}

impl Connection {
    /// Wraps `conn`; the STOP_SENDING of its request streams are reported
    /// to `stops`.
    pub fn new(conn: quinn::Connection, stops: StopWatch) -> Connection {
        let incoming_bi = Box::pin(stream::unfold(conn.clone(), |c| async {
            let r = c.accept_bi().await;
            Some((r, c))
        }));
        let incoming_uni = Box::pin(stream::unfold(conn.clone(), |c| async {
            let r = c.accept_uni().await;
            Some((r, c))
        }));
        Connection {
            incoming_bi,
            incoming_uni,
            opener: OpenStreams::new(conn),
            stops,
        }
    }
}

/// The next item of an endless stream of accepted or opened streams.
fn next_of<T>(
    s: &mut Streams<T>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, ConnectionErrorIncoming>> {
    Poll::Ready(match ready!(s.poll_next_unpin(cx)) {
        Some(r) => r.map_err(connection_error),
        None => Err(ConnectionErrorIncoming::InternalError(
            "QUIC stream source ended".to_string(),
        )),
    })
}

impl<B: Buf> quic::Connection<B> for Connection {
    type RecvStream = RecvStream;
    type OpenStreams = OpenStreams;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<RecvStream, ConnectionErrorIncoming>> {
        let recv = ready!(next_of(&mut self.incoming_uni, cx))?;
        Poll::Ready(Ok(RecvStream(recv)))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, ConnectionErrorIncoming>> {
        let (send, recv) = ready!(next_of(&mut self.incoming_bi, cx))?;
        let id = u64::from(send.id());
        self.stops.put(id, Box::pin(send.stopped()));
        let send = SendStream {
            stream: send,
            writing: None,
            watched: Some(self.stops.clone()),
        };
        Poll::Ready(Ok(BidiStream {
            send,
            recv: RecvStream(recv),
        }))
    }

    fn opener(&self) -> OpenStreams {
        self.opener.clone()
    }
}

impl<B: Buf> quic::OpenStreams<B> for Connection {
    type BidiStream = BidiStream<B>;
    type SendStream = SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_bidi(&mut self.opener, cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendStream<B>, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_send(&mut self.opener, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        quic::OpenStreams::<B>::close(&mut self.opener, code, reason);
    }
}

/// Opens the server's unidirectional streams.
pub struct OpenStreams {
    conn: quinn::Connection,
    /// Created on first use.
    opening_uni: Option<Streams<quinn::SendStream>>,
}

impl OpenStreams {
    fn new(conn: quinn::Connection) -> OpenStreams {
        OpenStreams {
            conn,
            opening_uni: None,
        }
    }
}

impl Clone for OpenStreams {
    fn clone(&self) -> OpenStreams {
        OpenStreams::new(self.conn.clone())
    }
}

impl<B: Buf> quic::OpenStreams<B> for OpenStreams {
    type BidiStream = BidiStream<B>;
    type SendStream = SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        Poll::Ready(Err(StreamErrorIncoming::Unknown(
            "an HTTP/3 server opens no bidirectional stream".into(),
        )))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendStream<B>, StreamErrorIncoming>> {
        let conn = &self.conn;
        let opening = self.opening_uni.get_or_insert_with(|| {
            Box::pin(stream::unfold(conn.clone(), |c| async {
                let r = c.open_uni().await;
                Some((r, c))
            }))
        });
        let send = ready!(next_of(opening, cx)).map_err(|connection_error| {
            StreamErrorIncoming::ConnectionErrorIncoming { connection_error }
        })?;
        Poll::Ready(Ok(SendStream {
            stream: send,
            writing: None,
            watched: None,
        }))
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        self.conn.close(varint(code.value()), reason);
    }
}

/// A request stream: both halves.
pub struct BidiStream<B: Buf> {
    send: SendStream<B>,
    recv: RecvStream,
}

impl<B: Buf> quic::BidiStream<B> for BidiStream<B> {
    type SendStream = SendStream<B>;
    type RecvStream = RecvStream;

    fn split(self) -> (SendStream<B>, RecvStream) {
        (self.send, self.recv)
    }
}

impl<B: Buf> quic::RecvStream for BidiStream<B> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl<B: Buf> quic::SendStream<B> for BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

/// The receiving half of a stream.
pub struct RecvStream(quinn::RecvStream);

impl quic::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        // quinn's reads are cancel-safe and keep the waker registered with
        // the stream, so a read made for each poll loses no wake-up.
        let read = std::pin::pin!(self.0.read_chunk(usize::MAX, true));
        match ready!(read.poll(cx)) {
            Ok(chunk) => Poll::Ready(Ok(chunk.map(|c| c.bytes))),
            Err(e) => Poll::Ready(Err(read_error(e))),
        }
    }

    fn stop_sending(&mut self, error_code: u64) {
        // Fails only on a stream already stopped or read to its end.
        let _ = self.0.stop(varint(error_code));
    }

    fn recv_id(&self) -> StreamId {
        stream_id(self.0.id())
    }
}

/// The sending half of a stream.
pub struct SendStream<B: Buf> {
    stream: quinn::SendStream,
    /// What h3 asked to send and quinn has not taken yet.
    writing: Option<WriteBuf<B>>,
    /// A request stream's watch, whose entry goes with the stream.
    watched: Option<StopWatch>,
}

impl<B: Buf> Drop for SendStream<B> {
    fn drop(&mut self) {
        if let Some(w) = &self.watched {
            w.forget(u64::from(self.stream.id()));
        }
    }
}

impl<B: Buf> quic::SendStream<B> for SendStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        if let Some(data) = self.writing.as_mut() {
            while data.has_remaining() {
                let stream = Pin::new(&mut self.stream);
                let written = ready!(stream.poll_write(cx, data.chunk())).map_err(write_error)?;
                data.advance(written);
            }
        }
        self.writing = None;
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() {
            // h3 polls poll_ready before each send; this would be its bug.
            return Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::InternalError(
                    "send_data on a stream not ready".to_string(),
                ),
            });
        }
        self.writing = Some(data.into());
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        Poll::Ready(
            self.stream
                .finish()
                .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e))),
        )
    }

    fn reset(&mut self, reset_code: u64) {
        // Fails only on a stream already reset or finished and delivered.
        let _ = self.stream.reset(varint(reset_code));
    }

    fn send_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

/// An error code as a QUIC varint (codes above its range, which h3 never
/// uses, become the largest one).
fn varint(code: u64) -> VarInt {
    VarInt::from_u64(code).unwrap_or(VarInt::MAX)
}

fn stream_id(id: quinn::StreamId) -> StreamId {
    // Cannot fail: a QUIC stream id is a varint, which is h3's range.
    StreamId::try_from(u64::from(id)).expect("a QUIC stream id is a varint")
}

fn connection_error(e: quinn::ConnectionError) -> ConnectionErrorIncoming {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => ConnectionErrorIncoming::ApplicationClose {
            error_code: c.error_code.into_inner(),
        },
        quinn::ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        e => ConnectionErrorIncoming::Undefined(Arc::new(e)),
    }
}

fn read_error(e: quinn::ReadError) -> StreamErrorIncoming {
    match e {
        quinn::ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::ReadError::ConnectionLost(e) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(e),
        },
        e => StreamErrorIncoming::Unknown(Box::new(e)),
    }
}

fn write_error(e: quinn::WriteError) -> StreamErrorIncoming {
    match e {
        quinn::WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::WriteError::ConnectionLost(e) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(e),
        },
        e => StreamErrorIncoming::Unknown(Box::new(e)),
    }
}
