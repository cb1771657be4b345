//! The tunnel of an accepted WebSocket upgrade.
//!
//! Guarantees: once the server's 101 (with a valid WebSocket handshake) is
//! on its way to the client, the client's and the server's connections are
//! joined byte for byte until both sides have closed, or until the
//! listener's idle_timeout passes without a byte moving either way (a side
//! that stops reading does not keep it open). The tunnel holds the client
//! connection's max_connections slot and drain place until it closes, and
//! ends the request on its connection then.

use super::conn::ConnInfo;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Both sides of a connection that is becoming a tunnel, once the 101 is
/// on its way to the client.
pub(super) struct Tunnel {
    pub client: hyper::upgrade::OnUpgrade,
    pub upstream: crate::upstream::Upgraded,
}

/// Joins the client's and the server's upgraded connections. The task owns
/// `conn` until the tunnel closes, so the client connection keeps its
/// max_connections slot, its place in portico_connections_active and in
/// the shutdown drain (which ends it after shutdown_timeout) for as long.
pub(super) fn spawn(t: Tunnel, conn: Arc<ConnInfo>) {
    let idle = conn.listener.idle_timeout;
    tokio::spawn(async move {
        let mut u = t.upstream;
        match t.client.await {
            Ok(c) => {
                let mut c = TokioIo::new(c);
                if let Err(e) = copy_with_idle_timeout(&mut c, &mut u, idle).await {
                    tracing::debug!(error = %e, "tunnel ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
        conn.activity.request_finished();
    });
}

/// One direction of a tunnel: bytes read from one side, waiting to be
/// written to the other.
struct OneWay {
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// Written bytes not flushed yet (TLS buffers them).
    unflushed: bool,
    /// The source ended; its end is passed on as a write shutdown.
    eof: bool,
    done: bool,
}

impl OneWay {
    fn new() -> OneWay {
        OneWay {
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            pos: 0,
            len: 0,
            unflushed: false,
            eof: false,
            done: false,
        }
    }

    /// Moves what it can from `from` to `to` without waiting; whether any
    /// byte moved (read or written).
    fn pump<R, W>(&mut self, cx: &mut Context<'_>, from: &mut R, to: &mut W) -> io::Result<bool>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut moved = false;
        while !self.done {
            if self.pos < self.len {
                match Pin::new(&mut *to).poll_write(cx, &self.buf[self.pos..self.len]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.unflushed = true;
                        moved = true;
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Ok(moved),
                }
            } else if self.unflushed {
                match Pin::new(&mut *to).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Ok(moved),
                }
            } else if self.eof {
                match Pin::new(&mut *to).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => self.done = true,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Ok(moved),
                }
            } else {
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *from).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.eof = true;
                        } else {
                            (self.pos, self.len) = (0, n);
                            moved = true;
                        }
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Ok(moved),
                }
            }
        }
        Ok(moved)
    }
}

/// Copies both ways, each direction on its own, until both sides have
/// closed, or until no byte moved either way for `idle`: a write the peer
/// does not take is no movement, so a side that stops reading cannot hold
/// the tunnel (and both sockets) open.
async fn copy_with_idle_timeout<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ab, mut ba) = (OneWay::new(), OneWay::new());
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    std::future::poll_fn(|cx| {
        let moved = ab.pump(cx, a, b)? | ba.pump(cx, b, a)?;
        if ab.done && ba.done {
            return Poll::Ready(Ok(()));
        }
        if moved {
            // A duration too far out to add is no timeout at all (as
            // `tokio::time::sleep` has it).
            if let Some(at) = crate::sys::coarse_now().checked_add(idle) {
                timer.as_mut().reset(at);
            }
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!("tunnel idle: closing");
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
