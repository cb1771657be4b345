//! The pipeline's contract with the front doors (TCP with HTTP/1.1 and
//! HTTP/2, QUIC with HTTP/3).
//!
//! Guarantees:
//! - what a request knows about its connection travels in one [`ConnInfo`],
//!   built by one constructor, [`ConnInfo::new`];
//! - what a front door knows about one request travels with the request as
//!   an extension: [`EarlyData`] (TLS early data, RFC 8470) and
//!   [`LengthAndChunked`] (a framing conflict the byte layer saw in the raw
//!   head);
//! - [`ConnActivity`] counts the requests of a connection, so the byte
//!   layer under hyper knows whether the connection is busy or idle.

use super::runtime::Runtime;
use crate::config::Protocol;
use crate::observe::metrics::{ConnGauge, ConnProtocol, ListenerMetrics, Metrics};
use arc_swap::ArcSwap;
use futures_util::task::AtomicWaker;
use http::HeaderValue;
use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;
use tokio::sync::Notify;

/// State shared by every connection of the process.
pub struct Shared {
    /// What requests read of the config in force; swapped whole on reload.
    pub runtime: ArcSwap<Runtime>,
    /// The metrics registry: the one every runtime carries.
    pub metrics: Arc<Metrics>,
}

/// The peer's IP as a header value (x-forwarded-for), made once per connection.
fn client_ip_value(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// What the pipeline needs to know of the listener a connection came in on.
#[derive(Clone)]
pub struct ListenerFacts {
    pub name: Arc<str>,
    pub max_header_bytes: usize,
    /// Also how long a tunnel may go without a byte moving.
    pub idle_timeout: Duration,
    /// portico_connections_active of this listener.
    pub metrics: Arc<ListenerMetrics>,
    /// Peers whose X-Forwarded-* headers are believed; empty: none (and
    /// X-Forwarded-For is appended to, as without the setting).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Largest request body; 0: no limit.
    pub max_body_bytes: u64,
    /// Longest wait for the next request body bytes.
    pub body_timeout: Duration,
}

/// What a request knows about the connection it came on.
pub struct ConnInfo {
    pub listener: ListenerFacts,
    pub peer: SocketAddr,
    /// The peer's IP as a header value, for x-forwarded-for.
    pub client_ip: HeaderValue,
    pub https: bool,
    /// The connection's protocol when the front door knows it at accept
    /// (ALPN, a one-protocol listener, QUIC); `None` on a plain listener
    /// that tells HTTP/1.1 from HTTP/2 by the first bytes (each request's
    /// version says which).
    pub protocol: Option<Protocol>,
    pub shared: Arc<Shared>,
    pub activity: Arc<ConnActivity>,
    /// The connection's place in portico_connections_active.
    pub gauge: ConnGauge,
    /// What the front door holds for the connection until its last user is
    /// gone (a TCP connection's max_connections permit and drain guard; QUIC
    /// connections hold theirs in their own task): released with the last
    /// holder of this ConnInfo, a tunnel included.
    slot: Option<Box<dyn Any + Send + Sync>>,
}

impl ConnInfo {
    /// A connection's facts as its front door knows them at accept (or, on
    /// QUIC, after the client moved). The connection is counted in
    /// portico_connections_active now if `protocol` is known, else at its
    /// first request.
    pub fn new(
        listener: ListenerFacts,
        shared: Arc<Shared>,
        activity: Arc<ConnActivity>,
        peer: SocketAddr,
        https: bool,
        protocol: Option<Protocol>,
    ) -> ConnInfo {
        let gauge = ConnGauge::new(listener.metrics.clone());
        if let Some(p) = protocol {
            gauge.set_protocol(match p {
                Protocol::Http1 => ConnProtocol::Http1,
                Protocol::Http2 => ConnProtocol::Http2,
                Protocol::Http3 => ConnProtocol::Http3,
            });
        }
        ConnInfo {
            listener,
            peer,
            client_ip: client_ip_value(peer),
            https,
            protocol,
            shared,
            activity,
            gauge,
            slot: None,
        }
    }

    /// Keeps `slot` until the last holder of this ConnInfo is gone.
    pub fn holding(mut self, slot: impl Any + Send + Sync) -> ConnInfo {
        self.slot = Some(Box::new(slot));
        self
    }
}

/// Request extension set by a front door on a request that arrived in TLS
/// early data (HTTP/3 0-RTT) on a connection whose handshake was not yet
/// complete: such a request may be a replay (RFC 8470).
#[derive(Debug, Clone, Copy)]
pub struct EarlyData;

/// Request extension set by a front door on an HTTP/1.x request with
/// Transfer-Encoding whose raw head also carried Content-Length, or may
/// have (see [`ConnActivity::head_has_length_and_chunked`]). hyper resolves
/// that conflict by dropping Content-Length (RFC 9112 6.1 allows it);
/// portico answers 400 instead, as SPEC requires.
#[derive(Debug, Clone, Copy)]
pub struct LengthAndChunked;

/// No request (a sequence number no connection reaches).
const NONE: u64 = u64::MAX;

/// Request counters of one client connection, shared by its byte layer
/// (`ConnIo`) and the requests on it.
pub struct ConnActivity {
    in_flight: AtomicUsize,
    started: AtomicU64,
    /// The reader parked while requests were in flight: woken when the last
    /// one finishes, so the idle timer gets armed even if no byte arrives.
    reader: AtomicWaker,
    /// Signalled when an HTTP/2 connection has been idle for idle_timeout.
    pub idle: Notify,
    /// HTTP/1.x: the first request whose head carried both Content-Length
    /// and Transfer-Encoding (hyper closes the connection after it).
    length_and_chunked: AtomicU64,
    /// HTTP/1.x: from this request on, the byte layer lost track of where
    /// heads start (bytes hyper rejects too, or a tunnel).
    untracked_from: AtomicU64,
    /// The connection ends with an error answer the client must be able to
    /// read: close it lingering.
    linger: AtomicBool,
    /// The TLS version a TCP connection's handshake agreed ("TLSv1.3"),
    /// for the access log; unset on plain and QUIC connections.
    pub tls_version: std::sync::OnceLock<&'static str>,
    /// HTTP/1.x parking: the request count when the byte layer asked to
    /// park the idle connection (`NONE`: not asked).
    park_asked: AtomicU64,
    /// HTTP/1.x parking: the listener is ending hyper's connection to park
    /// the stream, so a shutdown must leave the stream open.
    parking: AtomicBool,
    /// HTTP/1.x: the last exchange leaves the connection open (HTTP/1.1,
    /// and no `Connection: close` from either side).
    keep_alive: AtomicBool,
    /// HTTP/1.x: a request asked for an upgrade (an `Upgrade` field, or
    /// CONNECT): hyper holds it pending to the end of its connection,
    /// which therefore cannot be parked.
    upgrade_asked: AtomicBool,
}

impl Default for ConnActivity {
    fn default() -> Self {
        ConnActivity {
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            reader: AtomicWaker::new(),
            idle: Notify::new(),
            length_and_chunked: AtomicU64::new(NONE),
            untracked_from: AtomicU64::new(NONE),
            linger: AtomicBool::new(false),
            tls_version: std::sync::OnceLock::new(),
            park_asked: AtomicU64::new(NONE),
            parking: AtomicBool::new(false),
            keep_alive: AtomicBool::new(true),
            upgrade_asked: AtomicBool::new(false),
        }
    }
}

impl ConnActivity {
    /// Marks a request as started; returns its sequence number on the
    /// connection (0 for the first).
    pub fn request_started(&self) -> u64 {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed)
    }

    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.reader.wake();
        }
    }

    /// How many requests have started: on HTTP/1.x, whose requests come one
    /// after the other, the sequence number of the next one.
    pub fn requests_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// How many requests are in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Wakes `waker` when the last request in flight finishes.
    pub fn wake_when_idle(&self, waker: &Waker) {
        self.reader.register(waker);
    }

    /// The byte layer saw both Content-Length and Transfer-Encoding in the
    /// head of HTTP/1.x request `seq` (only the first such one counts).
    pub fn note_length_and_chunked(&self, seq: u64) {
        let _ = self.length_and_chunked.compare_exchange(
            NONE,
            seq,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The byte layer lost track of the HTTP/1.x request stream at request
    /// `seq`: from it on, every request counts as suspect.
    pub fn lost_track_from(&self, seq: u64) {
        self.untracked_from.fetch_min(seq, Ordering::AcqRel);
    }

    /// Whether the raw head of HTTP/1.x request `seq` carried both
    /// Content-Length and Transfer-Encoding, or may have (the byte layer
    /// lost track of the request stream before it). The byte layer follows
    /// every head and body of the connection to know. Callers ask only
    /// about requests with Transfer-Encoding.
    pub fn head_has_length_and_chunked(&self, seq: u64) -> bool {
        seq == self.length_and_chunked.load(Ordering::Acquire)
            || seq >= self.untracked_from.load(Ordering::Acquire)
    }

    /// Whether the connection, when it ends, closes lingering: after an
    /// error answer that closes it (400, 408, 413, 431). The last answer
    /// decides, so a normal keepalive close does not linger.
    pub fn set_linger(&self, on: bool) {
        self.linger.store(on, Ordering::Relaxed);
    }

    pub fn lingers(&self) -> bool {
        self.linger.load(Ordering::Relaxed)
    }

    /// Notes how an HTTP/1.x exchange left the connection: open or not
    /// (`keep_alive`), and whether its request asked for an upgrade.
    pub fn note_exchange(&self, keep_alive: bool, upgrade: bool) {
        self.keep_alive.store(keep_alive, Ordering::Relaxed);
        if upgrade {
            self.upgrade_asked.store(true, Ordering::Relaxed);
        }
    }

    /// Whether an idle HTTP/1.x connection may be parked as far as its
    /// exchanges go: the last one kept it open, none asked for an upgrade,
    /// and the last answer does not close it lingering.
    pub fn parkable(&self) -> bool {
        self.keep_alive.load(Ordering::Relaxed)
            && !self.upgrade_asked.load(Ordering::Relaxed)
            && !self.lingers()
    }

    /// The byte layer asks to park the idle connection (and signals
    /// [`ConnActivity::idle`]).
    pub fn ask_park(&self) {
        self.park_asked
            .store(self.requests_started(), Ordering::Relaxed);
        self.idle.notify_one();
    }

    /// Whether the park asked for still holds: no request started since,
    /// none in flight, and the connection is still parkable.
    pub fn park_still_asked(&self) -> bool {
        self.park_asked.load(Ordering::Relaxed) == self.requests_started()
            && self.in_flight() == 0
            && self.parkable()
    }

    /// The listener is ending hyper's connection to park the stream (true)
    /// or is done with that (false).
    pub fn set_parking(&self, on: bool) {
        self.parking.store(on, Ordering::Relaxed);
        if !on {
            self.park_asked.store(NONE, Ordering::Relaxed);
        }
    }

    /// Whether a shutdown is to leave the stream open for parking.
    pub fn parking(&self) -> bool {
        self.parking.load(Ordering::Relaxed)
    }
}
