//! The head and idle timeouts of one client connection.
//!
//! [`Timeouts`] knows which phase the connection is in, from the request
//! counters the byte layer hands it and from the bytes read:
//! - **head** (HTTP/1.x: from accept, or from the first byte of a next
//!   request, until the pipeline receives the request): bounded by
//!   `header_read_timeout`;
//! - **busy** (a request in flight): not bounded here; the route's timeout
//!   bounds the upstream side;
//! - **idle** (keepalive, no request in flight): bounded by `idle_timeout`,
//!   counted from the end of the last request. On HTTP/2, frames that are
//!   not requests (PING, WINDOW_UPDATE) do not reset it. On HTTP/1.x, once
//!   `PARK_AFTER` of it has passed (if that is shorter), [`Expired::Park`]
//!   comes first, once per idle spell: the time to give buffers back;
//! - **closing** (HTTP/2 idle timeout fired, graceful shutdown asked for):
//!   no further timeout.
//!
//! It only says when a bound has passed ([`Expired`]); what happens then
//! (a 408, a close, a GOAWAY) is the caller's. The timer is one `Sleep` per
//! connection, re-armed only when the deadline changes, so a busy
//! keepalive connection costs a comparison per read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Head {
        since: Instant,
        got_bytes: bool,
    },
    Busy,
    /// `parked`: [`Expired::Park`] was said for this idle spell.
    Idle {
        since: Instant,
        parked: bool,
    },
    Closing,
}

/// A bound that has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The request head did not arrive in time; `got_bytes` if any of it
    /// did.
    Head { got_bytes: bool },
    /// No request for `idle_timeout`.
    Idle,
    /// An HTTP/1.x connection has been idle for [`PARK_AFTER`].
    Park,
}

/// How long an HTTP/1.x connection waits idle before it is parked: its
/// HTTP state and buffers freed until the client sends again. Long enough
/// that a connection under load (the next request within a round trip) is
/// not parked between two requests; short enough that a burst of
/// connections that go quiet gives its buffers back for the next ones
/// instead of holding them all. Parking costs a new hyper connection state
/// when the client comes back, a few allocations.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// Head and idle deadlines of one connection.
pub struct Timeouts {
    phase: Phase,
    seen_started: u64,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// [`PARK_AFTER`] on HTTP/1.x when it is shorter than `idle_timeout`;
    /// `None` otherwise (HTTP/2 is never parked).
    park_after: Option<Duration>,
    timer: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
}

impl Timeouts {
    /// Starts in the head phase, or idle for a connection known to be
    /// HTTP/2 (which has no head phase of its own).
    pub fn new(http2: bool, header_timeout: Duration, idle_timeout: Duration) -> Timeouts {
        let now = crate::sys::coarse_now();
        let phase = if http2 {
            Phase::Idle {
                since: now,
                parked: false,
            }
        } else {
            Phase::Head {
                since: now,
                got_bytes: false,
            }
        };
        Timeouts {
            phase,
            seen_started: 0,
            header_timeout,
            idle_timeout,
            park_after: (!http2 && PARK_AFTER < idle_timeout).then_some(PARK_AFTER),
            timer: Box::pin(tokio::time::sleep_until(
                now + header_timeout.max(idle_timeout),
            )),
            armed_for: None,
        }
    }

    /// Follows the connection's request counters: `started` requests so
    /// far, `in_flight` of them unfinished.
    pub fn observe(&mut self, started: u64, in_flight: usize) {
        if in_flight > 0 {
            self.phase = Phase::Busy;
        } else if started != self.seen_started || self.phase == Phase::Busy {
            self.phase = Phase::Idle {
                since: crate::sys::coarse_now(),
                parked: false,
            };
        }
        self.seen_started = started;
    }

    pub fn is_busy(&self) -> bool {
        self.phase == Phase::Busy
    }

    /// Bytes arrived. On HTTP/1.x they start the next head when idle; on
    /// HTTP/2 bytes alone (PING, WINDOW_UPDATE, SETTINGS) do not make a
    /// connection busy, only a request does. A request whose HEADERS are
    /// arriving as the timer fires is still served: the shutdown is
    /// graceful (GOAWAY names the last stream taken).
    pub fn on_bytes(&mut self, http1: bool) {
        match &mut self.phase {
            Phase::Head { got_bytes, .. } => *got_bytes = true,
            Phase::Idle { .. } if http1 => {
                self.phase = Phase::Head {
                    since: crate::sys::coarse_now(),
                    got_bytes: true,
                }
            }
            _ => {}
        }
    }

    /// A parked connection was woken by the client: if no request comes of
    /// it (a close, TLS records with no data), it may be parked again.
    pub fn resumed(&mut self) {
        if let Phase::Idle { parked, .. } = &mut self.phase {
            *parked = false;
        }
    }

    /// The connection turned out to be HTTP/2: idle from now.
    pub fn http2_started(&mut self) {
        self.park_after = None;
        self.phase = Phase::Idle {
            since: crate::sys::coarse_now(),
            parked: false,
        };
    }

    /// The HTTP/2 idle timeout was acted on: no further timeout.
    pub fn closing(&mut self) {
        self.phase = Phase::Closing;
    }

    /// Ready once the bound of the current phase has passed; registers
    /// `cx` with the timer otherwise. Busy and closing connections have no
    /// bound: Pending, with no wake-up from here.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        let deadline = match self.phase {
            Phase::Busy | Phase::Closing => return Poll::Pending,
            Phase::Head { since, .. } => since + self.header_timeout,
            Phase::Idle { since, parked } => match self.park_after {
                Some(p) if !parked => since + p,
                _ => since + self.idle_timeout,
            },
        };
        if self.armed_for != Some(deadline) {
            self.timer.as_mut().reset(deadline);
            self.armed_for = Some(deadline);
        }
        std::task::ready!(self.timer.as_mut().poll(cx));
        Poll::Ready(match &mut self.phase {
            Phase::Head { got_bytes, .. } => Expired::Head {
                got_bytes: *got_bytes,
            },
            Phase::Idle { parked, .. } if !*parked && self.park_after.is_some() => {
                *parked = true;
                Expired::Park
            }
            _ => Expired::Idle,
        })
    }
}

/// The 408 answer written when a head does not arrive in time, naming the
/// request id `id` under `request_id_header`.
pub fn answer_408(request_id_header: &http::HeaderName, id: &str) -> String {
    let body = "408 request head not received in time\n";
    format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        request_id_header,
        id,
        body
    )
}
