//! Client-facing listeners: bind, accept, TLS, and serving HTTP/1.1 and
//! HTTP/2 through the one pipeline.
//!
//! Guarantees:
//! - sockets are bound with SO_REUSEADDR and the configured backlog;
//!   accepted ones get TCP_NODELAY;
//! - at `max_connections` open connections a listener stops accepting until
//!   one closes; nothing already open is hurt; a reload that lowers the
//!   limit below the connections open keeps new ones waiting until enough
//!   have closed;
//! - TLS handshakes use the TLS config of the settings last pushed to the
//!   listener when the connection was accepted (so new certificates apply to
//!   new connections) and must finish within `header_read_timeout`;
//! - ALPN picks HTTP/2 or HTTP/1.1; a plain listener that allows both tells
//!   them apart by the HTTP/2 preface (h2c prior knowledge), read by the
//!   byte layer and put back in front of the stream;
//! - an HTTP/1.x connection idle for 100 ms, between two requests, is
//!   parked: hyper's connection and its buffers are freed and the stream
//!   waits with none, to be served by a new one when the client sends
//!   (see `conn_io.rs`); the client sees no difference;
//! - HTTP/2 limits: `h2_max_concurrent_streams`, SETTINGS_MAX_HEADER_LIST_SIZE
//!   = `max_header_bytes`, and h2's rapid-reset and CONTINUATION-flood
//!   defences (GOAWAY ENHANCE_YOUR_CALM);
//! - on shutdown a listener stops accepting and every connection is asked to
//!   finish gracefully (HTTP/1.1: after the response in flight; HTTP/2:
//!   GOAWAY);
//! - on a listener with http3, every response of the TCP side carries
//!   `Alt-Svc: h3=":PORT"; ma=86400` (any upstream Alt-Svc is replaced: it
//!   would describe the upstream, not this listener). The value is the one of
//!   the settings the connection was accepted with.
//!
//! HTTP/3 (QUIC on UDP at the same address) is in [`quic`], over h3 on
//! quinn through [`h3_transport`].

mod conn_io;
mod h1_framing;
mod h2_guard;
mod h3_transport;
mod linger;
mod preface;
pub mod proxy_protocol;
pub mod quic;
mod settings;
mod timeouts;

pub use crate::proxy::ConnActivity;
pub use conn_io::{ConnIo, Mode};
pub use settings::ListenerSettings;

use crate::config::Protocol;
use crate::proxy::{ConnInfo, LengthAndChunked, ListenerFacts, Shared};
use crate::sys::Tcp;
use conn_io::ReadReady;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

/// Room beyond max_header_bytes for the request line and the ": " and CRLF
/// of each header: hyper's parser answers 431 past max_header_bytes plus
/// this; the pipeline's exact count (names + values) answers 431 below it.
const HEAD_SLACK: usize = 8192;

/// Counts open client connections so shutdown can wait for them to drain.
#[derive(Default)]
pub struct ConnTracker {
    open: AtomicUsize,
    drained: Notify,
}

/// Held by each connection task; the last one dropped wakes the drain.
pub struct ConnGuard(Arc<ConnTracker>);

impl ConnTracker {
    pub fn track(self: &Arc<Self>) -> ConnGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        ConnGuard(self.clone())
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits until no connection is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// A TCP client connection's claim on its listener: one of its
/// max_connections permits and its place in the shutdown drain. The
/// connection's [`ConnInfo`] owns it, so it is given back when the last
/// user of the connection is gone: the HTTP exchange, or a WebSocket tunnel
/// that outlives it.
pub struct ConnSlot {
    _permit: ConnPermit,
    _guard: ConnGuard,
}

/// The supervisor's end of one running side (TCP or QUIC) of a listener:
/// its settings are pushed through a watch channel, never read from the
/// snapshot by the accept loop. Each side has a channel of its own because
/// a rename at the same bind may hand one side of a listener over to
/// another listener and not the other.
pub struct SideControl {
    stop: watch::Sender<bool>,
    settings: watch::Sender<Arc<ListenerSettings>>,
}

/// The accept loop's end of a [`SideControl`].
pub struct SideFeed {
    /// The settings for connections accepted from now on.
    pub settings: watch::Receiver<Arc<ListenerSettings>>,
    /// True: stop accepting (and drain).
    pub stop: watch::Receiver<bool>,
}

impl SideControl {
    /// A channel pair starting at `settings`; `stopping`: the process is
    /// already shutting down.
    pub fn new(settings: Arc<ListenerSettings>, stopping: bool) -> (SideControl, SideFeed) {
        let (stop, stop_rx) = watch::channel(stopping);
        let (settings, settings_rx) = watch::channel(settings);
        let feed = SideFeed {
            settings: settings_rx,
            stop: stop_rx,
        };
        (SideControl { stop, settings }, feed)
    }

    /// Connections accepted from now on use `settings`.
    pub fn push(&self, settings: &Arc<ListenerSettings>) {
        self.settings.send_replace(settings.clone());
    }

    /// Stops accepting; open connections are asked to finish.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// A running TCP side of a listener: its accept loop, controlled like the
/// QUIC side ([`quic::QuicListener`]).
pub struct TcpSide {
    control: SideControl,
}

impl TcpSide {
    /// Starts accepting on `listener` with `settings`. `stopping`: the
    /// process is already shutting down.
    pub fn start(
        listener: TcpListener,
        settings: Arc<ListenerSettings>,
        shared: Arc<Shared>,
        tracker: Arc<ConnTracker>,
        stopping: bool,
    ) -> TcpSide {
        let (control, feed) = SideControl::new(settings, stopping);
        tokio::spawn(accept_loop(
            listener,
            feed.settings,
            shared,
            tracker,
            feed.stop,
        ));
        TcpSide { control }
    }

    /// New connections use `settings`; a new max_connections and backlog
    /// apply at once.
    pub fn update(&self, settings: &Arc<ListenerSettings>) {
        self.control.push(settings);
    }

    /// Stops accepting; open connections finish their requests and close.
    pub fn stop(&self) {
        self.control.stop();
    }
}

/// What the pipeline needs to know of a listener.
pub(crate) fn listener_facts(s: &ListenerSettings) -> ListenerFacts {
    ListenerFacts {
        name: s.name.clone(),
        max_header_bytes: s.max_header_bytes,
        idle_timeout: s.idle_timeout,
        metrics: s.metrics.clone(),
        trusted_proxies: s.trusted_proxies.clone(),
        max_body_bytes: s.max_body_bytes,
        body_timeout: s.body_timeout,
    }
}

/// Binds a listening socket as the settings say.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // "[::]:443" serves IPv4 too, as users of other proxies expect.
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(socket.into())
}

/// A listener's max_connections (one for its TCP side, one for its QUIC
/// side), changeable while connections are open.
///
/// Lowering it takes free permits out of circulation at once and, for the
/// rest, leaves a debt that the next connections to close pay with their
/// permits instead of returning them, so the lower limit holds however many
/// connections were open (a semaphore alone can only forget free permits).
pub(crate) struct ConnLimit {
    permits: Arc<Semaphore>,
    debt: Arc<AtomicUsize>,
}

/// One connection's place under a [`ConnLimit`]; given back (or used to
/// pay a debt) when dropped.
pub(crate) struct ConnPermit {
    permit: Option<OwnedSemaphorePermit>,
    debt: Arc<AtomicUsize>,
}

/// Takes one unit of `debt`, if there is any.
fn take_one(debt: &AtomicUsize) -> bool {
    debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
        .is_ok()
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            if take_one(&self.debt) {
                p.forget();
            }
        }
    }
}

impl ConnLimit {
    pub(crate) fn new(max: usize) -> ConnLimit {
        ConnLimit {
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            debt: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits for room for one more connection.
    pub(crate) async fn acquire(&self) -> Option<ConnPermit> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        Some(ConnPermit {
            permit: Some(permit),
            debt: self.debt.clone(),
        })
    }

    /// The connections holding a permit, `max` being the limit in force:
    /// the free permits are what it leaves, the debt what closing ones
    /// still owe. A snapshot, for heuristics.
    pub(crate) fn in_use(&self, max: usize) -> usize {
        let max = max.min(Semaphore::MAX_PERMITS);
        (max + self.debt.load(Ordering::Acquire)).saturating_sub(self.permits.available_permits())
    }

    /// Moves the limit from `old` to `new`.
    pub(crate) fn resize(&self, old: usize, new: usize) {
        // As in `new`: a semaphore holds at most MAX_PERMITS.
        let (old, new) = (
            old.min(Semaphore::MAX_PERMITS),
            new.min(Semaphore::MAX_PERMITS),
        );
        if new >= old {
            let up = new - old;
            let owed = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d.saturating_sub(up))
                })
                .unwrap_or(0);
            self.permits.add_permits(up - owed.min(up));
        } else {
            let down = old - new;
            let forgotten = self.permits.forget_permits(down);
            self.debt.fetch_add(down - forgotten, Ordering::AcqRel);
            // A connection that closed between the two steps returned its
            // permit instead of paying: take such permits out now.
            while take_one(&self.debt) {
                if self.permits.forget_permits(1) == 0 {
                    self.debt.fetch_add(1, Ordering::AcqRel);
                    break;
                }
            }
        }
    }
}

/// The hyper server builders of one listener.
struct Frontend {
    settings: Arc<ListenerSettings>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Frontend {
    fn new(settings: Arc<ListenerSettings>) -> Frontend {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // ConnIo enforces the head timeout (with a 408); hyper's closes silently.
            .header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(settings.max_header_bytes + HEAD_SLACK);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(settings.h2_max_concurrent_streams)
            .max_header_list_size(settings.max_header_bytes.min(u32::MAX as usize) as u32)
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(256))
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_send_buf_size(1 << 20);
        Frontend {
            settings,
            http1,
            http2,
        }
    }
}

/// Accepts connections until `stop` turns true. The settings a reload
/// sends on `settings` (the listener kept its bind; its name may be new)
/// apply to connections accepted afterwards; a new max_connections applies
/// at once, also while the loop waits for room or for a connection.
async fn accept_loop(
    listener: TcpListener,
    mut settings: watch::Receiver<Arc<ListenerSettings>>,
    shared: Arc<Shared>,
    tracker: Arc<ConnTracker>,
    mut stop: watch::Receiver<bool>,
) {
    let mut fe = Arc::new(Frontend::new(settings.borrow_and_update().clone()));
    let limit = ConnLimit::new(fe.settings.max_connections);
    // False once the sender is gone (the listener is being removed).
    let mut updates = true;
    loop {
        // Biased, stop and settings first: a reload's settings, sent before
        // its answer, apply to every connection accepted after it, even
        // when the connection is already waiting as this task wakes.
        let permit = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = settings.changed(), if updates => {
                updates = r.is_ok();
                fe = apply_settings(&listener, &limit, &fe, &mut settings);
                continue;
            }
            p = limit.acquire() => match p { Some(p) => p, None => break },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = settings.changed(), if updates => {
                updates = r.is_ok();
                // The permit held goes back (or pays a debt) and is taken
                // again under the new limit.
                drop(permit);
                fe = apply_settings(&listener, &limit, &fe, &mut settings);
                continue;
            }
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %fe.settings.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let guard = tracker.track();
        let slot = ConnSlot {
            _permit: permit,
            _guard: guard,
        };
        let (fe, shared, stop) = (fe.clone(), shared.clone(), stop.clone());
        tokio::spawn(serve_connection(stream, peer, fe, shared, stop, slot));
    }
    tracing::info!(listener = %fe.settings.name, "stopped accepting");
}

/// The frontend for the settings last sent on `settings`, with the limit
/// and the listen backlog moved to them.
fn apply_settings(
    listener: &TcpListener,
    limit: &ConnLimit,
    fe: &Arc<Frontend>,
    settings: &mut watch::Receiver<Arc<ListenerSettings>>,
) -> Arc<Frontend> {
    let new = settings.borrow_and_update().clone();
    if Arc::ptr_eq(&new, &fe.settings) {
        return fe.clone();
    }
    let old = &fe.settings;
    limit.resize(old.max_connections, new.max_connections);
    if new.backlog != old.backlog {
        // listen() again on a listening socket only changes its backlog.
        let backlog = new.backlog.min(i32::MAX as u32) as i32;
        if let Err(e) = socket2::SockRef::from(listener).listen(backlog) {
            tracing::warn!(listener = %new.name, error = %e, "cannot change the backlog");
        }
    }
    Arc::new(Frontend::new(new))
}

/// The access log's name of the TLS version a handshake agreed.
fn tls_version_name(c: &rustls::ServerConnection) -> &'static str {
    match c.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    fe: Arc<Frontend>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    slot: ConnSlot,
) {
    let mut stream = Tcp::from(stream);
    let _ = stream.set_nodelay(true);
    let s = &fe.settings;
    let peer = if s.proxy_protocol {
        // Boxed, as the handshake below: a state the connection passes
        // through once must not size its task for good.
        match Box::pin(proxy_header(&mut stream, peer, s.header_read_timeout)).await {
            Some(client) => client,
            None => return,
        }
    } else {
        peer
    };
    let tls = s.tls.clone();
    let activity = Arc::new(ConnActivity::default());
    match tls {
        Some(cfg) => {
            let Some((io, mode)) = tls_handshake(stream, cfg, peer, s, &activity).await else {
                return;
            };
            let protocol = Some(match mode {
                Mode::Http2 => Protocol::Http2,
                _ => Protocol::Http1,
            });
            let conn = (peer, true, protocol, slot);
            Box::pin(serve_http(io, &fe, conn, activity, shared, stop)).await;
        }
        None => {
            let mode = match (s.http1, s.http2) {
                (true, true) => Mode::Detect,
                (true, false) => Mode::Http1,
                _ => Mode::Http2,
            };
            let io = byte_layer(stream, s, mode, &activity);
            let protocol = match mode {
                Mode::Http1 => Some(Protocol::Http1),
                Mode::Http2 => Some(Protocol::Http2),
                Mode::Detect => None,
            };
            let conn = (peer, false, protocol, slot);
            // Boxed (both arms): a task is sized by its largest state, and
            // a plain connection would otherwise carry room for TLS.
            Box::pin(serve_http(io, &fe, conn, activity, shared, stop)).await;
        }
    }
}

/// The TLS handshake of a connection of listener `s`, within its
/// `header_read_timeout`: the byte layer over the TLS stream, and the
/// protocol ALPN agreed. `None`: it failed (logged and counted).
///
/// Its own function so that the TLS stream, a kilobyte, is never a local
/// of the connection's task across an await (an async fn keeps room for a
/// local for as long as it is in scope, moved out or not).
async fn tls_handshake(
    stream: Tcp,
    cfg: Arc<rustls::ServerConfig>,
    peer: SocketAddr,
    s: &ListenerSettings,
    activity: &Arc<ConnActivity>,
) -> Option<(Box<ConnIo<tokio_rustls::server::TlsStream<Tcp>>>, Mode)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    // Boxed, so that the handshake's state is freed once done.
    let handshake = Box::pin(acceptor.accept(stream));
    let tls_stream = match tokio::time::timeout(s.header_read_timeout, handshake).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            s.metrics.record_tls_handshake_error();
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            s.metrics.record_tls_handshake_error();
            return None;
        }
    };
    let _ = activity
        .tls_version
        .set(tls_version_name(tls_stream.get_ref().1));
    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let mode = if h2 || !s.http1 {
        Mode::Http2
    } else {
        Mode::Http1
    };
    Some((byte_layer(tls_stream, s, mode, activity), mode))
}

/// The client address from the PROXY protocol header at the start of
/// `stream` (`peer`'s own for a LOCAL command), read within `timeout`;
/// `None`: no valid header in time, and the connection is to be closed.
async fn proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<SocketAddr> {
    match tokio::time::timeout(timeout, proxy_protocol::read_header(stream, peer)).await {
        Ok(Ok(client)) => Some(client),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection closed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "PROXY header timed out");
            None
        }
    }
}

/// The byte layer under hyper for one connection of listener `s`, boxed:
/// the futures that serve the connection (and a parked one's) hold a
/// pointer, not a TLS session each.
fn byte_layer<S>(
    stream: S,
    s: &ListenerSettings,
    mode: Mode,
    activity: &Arc<ConnActivity>,
) -> Box<ConnIo<S>> {
    Box::new(ConnIo::new(
        stream,
        activity.clone(),
        mode,
        s.header_read_timeout,
        s.idle_timeout,
        s.request_id_header.clone(),
        s.max_header_bytes + HEAD_SLACK,
    ))
}

/// Serves one client connection: HTTP/2, or HTTP/1.x parked while idle.
async fn serve_http<S>(
    mut io: Box<ConnIo<S>>,
    fe: &Frontend,
    (peer, https, protocol, slot): (SocketAddr, bool, Option<Protocol>, ConnSlot),
    activity: Arc<ConnActivity>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    let lingering = io.lingering();
    // Counted in portico_connections_active now if the protocol is known
    // (TLS with ALPN, or a listener with one protocol), else at the first
    // request (plain HTTP/1.1 or h2c on a listener that serves both).
    let info = ConnInfo::new(
        listener_facts(&fe.settings),
        shared.clone(),
        activity.clone(),
        peer,
        https,
        protocol,
    );
    let info = Arc::new(info.holding(slot));
    let alt_svc = fe.settings.alt_svc.clone();
    // hyper moves the service's future by value: into the HTTP/1.1
    // dispatcher's slot, into a task per HTTP/2 stream and through each of
    // that task's state changes.
    let svc =
        service_fn(move |req| pin_in_place!(serve_request(req, info.clone(), alt_svc.clone())));
    let mode = match io.mode() {
        // A stop ends a connection that has not yet said which protocol it
        // speaks: it has no request in flight.
        Mode::Detect => tokio::select! {
            r = io.detect(), if !*stop.borrow() => match r {
                Ok(mode) => mode,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "client connection ended before its protocol was known");
                    return;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        },
        known => known,
    };
    let conn = Conn {
        fe,
        peer,
        activity: &activity,
        shared: &shared,
    };
    // Each boxed: a parked HTTP/1.x connection frees its hyper state, and
    // neither protocol's state sizes the other's.
    match mode {
        Mode::Http2 => Box::pin(conn.serve_http2(io, svc, &mut stop)).await,
        _ => Box::pin(conn.serve_http1(io, svc, &mut stop)).await,
    }
    // Only then: a connection that became a tunnel keeps its stream.
    if activity.lingers() {
        Box::pin(linger(lingering, stop)).await;
    }
}

/// What serving one client connection needs besides its stream.
struct Conn<'a> {
    fe: &'a Frontend,
    peer: SocketAddr,
    activity: &'a ConnActivity,
    shared: &'a Shared,
}

impl Conn<'_> {
    /// HTTP/2 until the client closes, an error, or a graceful shutdown
    /// (portico's stop, or the byte layer's idle timeout) has completed.
    async fn serve_http2<S, Svc>(
        &self,
        io: Box<ConnIo<S>>,
        svc: Svc,
        stop: &mut watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        Svc: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::body::ProxyBody>
            + Send,
        Svc::Future: Send + 'static,
        Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let conn = self.fe.http2.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let mut closing = *stop.borrow();
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %self.peer, error = %e, "client connection ended with an error");
                    }
                    return;
                }
                _ = stop.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = self.activity.idle.notified(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }

    /// HTTP/1.x (with upgrades) until the client closes, an error, a
    /// graceful shutdown, or an idle timeout. While idle the connection is
    /// parked: hyper's connection is ended without touching the stream,
    /// which waits with no buffer and is then served by a new one (see
    /// [`conn_io`]'s module docs).
    async fn serve_http1<S, Svc>(
        &self,
        mut io: Box<ConnIo<S>>,
        svc: Svc,
        stop: &mut watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
        Svc: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::body::ProxyBody>
            + Clone
            + Unpin,
        Svc::Future: Send + 'static,
        Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut closing = *stop.borrow();
        loop {
            let mut conn = Box::new(
                self.fe
                    .http1
                    .serve_connection(TokioIo::new(io), svc.clone())
                    .with_upgrades(),
            );
            if closing {
                Pin::new(&mut *conn).graceful_shutdown();
            }
            loop {
                tokio::select! {
                    r = &mut *conn => {
                        if let Err(e) = r {
                            self.log_error(&e);
                            // Dropping the connection drops its ConnIo, which
                            // hands the stream over if the close is to linger.
                            return;
                        }
                        break;
                    }
                    _ = stop.changed(), if !closing && !self.activity.parking() => {
                        closing = true;
                        Pin::new(&mut *conn).graceful_shutdown();
                    }
                    // The byte layer asked to park: unless a request came
                    // in since (the same poll that asked may have read one).
                    _ = self.activity.idle.notified(), if !closing && !self.activity.parking() => {
                        if self.activity.park_still_asked() {
                            self.activity.set_parking(true);
                            Pin::new(&mut *conn).graceful_shutdown();
                        }
                    }
                }
            }
            let parking = self.activity.parking();
            // hyper may also have ended the connection for reasons of its
            // own while it was asked to (a close asked for by a request that
            // came in first): then the stream is not kept, as it is not
            // when the park was not asked at all.
            let keep = parking && !closing && self.activity.park_still_asked();
            self.activity.set_parking(false);
            // Upgraded (the tunnel has the stream), or ended. The service and
            // hyper's state go with the temporary.
            let Some(http1::Parts {
                io: tokio_io,
                read_buf,
                ..
            }) = conn.into_parts()
            else {
                return;
            };
            io = tokio_io.into_inner();
            if !parking {
                // hyper shut the stream down itself.
                return;
            }
            if !keep {
                // hyper's shutdown was skipped for the park.
                break;
            }
            // Blank lines before a next head, which hyper had read and would
            // skip, are all the byte layer lets hyper hold when it asks to
            // park. Anything else goes back in front of the stream.
            if !read_buf.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                io.unread(read_buf);
                continue;
            }
            // Even empty, it holds hyper's whole read buffer.
            drop(read_buf);
            tracing::debug!(peer = %self.peer, "idle connection parked");
            let woke = tokio::select! {
                r = std::future::poll_fn(|cx| io.poll_parked(cx)) => r,
                _ = stop.changed(), if !closing => Ok(false),
            };
            if !matches!(woke, Ok(true)) {
                break;
            }
            io.resumed();
        }
        // A parked stream that is not to be served again.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
    }

    /// Logs how an HTTP/1.x connection ended in error; hyper's own answer
    /// to a head it could not parse is logged and counted as a request.
    fn log_error(&self, e: &hyper::Error) {
        match parser_answer(e) {
            Some(status) => {
                self.activity.set_linger(true);
                let tls = self.activity.tls_version.get().copied().unwrap_or("");
                log_parser_answer(self.shared, &self.fe.settings, self.peer, tls, status, e);
            }
            None => {
                tracing::debug!(peer = %self.peer, error = %e, "client connection ended with an error")
            }
        }
    }
}

/// Serves one request of a TCP connection through the pipeline, with the
/// listener's Alt-Svc. A request whose raw head the byte layer saw carry
/// both Content-Length and Transfer-Encoding goes with [`LengthAndChunked`].
async fn serve_request(
    req: http::Request<hyper::body::Incoming>,
    info: Arc<ConnInfo>,
    alt_svc: Option<http::HeaderValue>,
) -> Result<http::Response<crate::body::ProxyBody>, std::convert::Infallible> {
    let http1 = req.version() <= http::Version::HTTP_11;
    // Boxed once here: the pipeline passes it down by pointer.
    let mut req = Box::new(req.map(crate::body::RequestBody::incoming));
    // HTTP/1.x requests come one after the other: this one is the next to
    // start on the connection.
    if http1
        && req.headers().contains_key(http::header::TRANSFER_ENCODING)
        && info
            .activity
            .head_has_length_and_chunked(info.activity.requests_started())
    {
        req.extensions_mut().insert(LengthAndChunked);
    }
    // How hyper leaves the connection after this exchange, as far as the
    // request says: hyper keeps an upgrade asked for pending to the end of
    // its connection, and closes after `Connection: close`. HTTP/1.0 counts
    // as closing: hyper keeps such a connection open only for some answers
    // (a body of known length, keep-alive asked for), and it is not worth
    // parking.
    let (upgrade, close) = if http1 {
        (
            req.extensions()
                .get::<hyper::upgrade::OnUpgrade>()
                .is_some(),
            req.version() == http::Version::HTTP_10
                || crate::upstream::connection_lists(req.headers(), b"close"),
        )
    } else {
        (false, false)
    };
    let mut resp = crate::proxy::handle(req, info.clone()).await?;
    if let Some(v) = alt_svc {
        resp.headers_mut().insert(http::header::ALT_SVC, v);
    }
    // An error answer after which the client may still be writing (the
    // request body, the rest of a head): if the connection ends after it,
    // it closes lingering.
    if http1 {
        info.activity
            .set_linger(matches!(resp.status().as_u16(), 400 | 408 | 413 | 431));
        let close = close || crate::upstream::connection_lists(resp.headers(), b"close");
        info.activity.note_exchange(!close, upgrade);
    }
    Ok(resp)
}

/// Closes a connection lingering once its stream is handed over (see
/// [`conn_io::linger`]), cut short by a stop.
async fn linger<S>(lingering: tokio::sync::oneshot::Receiver<S>, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Ok(io) = lingering.await {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        conn_io::linger(io, stopped).await;
    }
}

/// The status hyper answered an HTTP/1.x head it could not parse with, if
/// `e` is such an error (hyper answers 431 for a head over its buffer, 400
/// for the rest, and nothing to an HTTP/2 preface on an HTTP/1-only
/// connection).
fn parser_answer(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if !e.is_parse() || e.is_parse_version_h2() || e.is_parse_status() {
        return None;
    }
    Some(if e.is_parse_too_large() { 431 } else { 400 })
}

/// hyper's answer to a head it could not parse never reaches the pipeline:
/// it is logged and counted here, as a request that matched no route, with
/// a request id of its own, from client `peer` on a connection of TLS
/// version `tls` ("" on plain HTTP), as the pipeline's lines say.
fn log_parser_answer(
    shared: &Shared,
    settings: &ListenerSettings,
    peer: SocketAddr,
    tls: &'static str,
    status: u16,
    e: &(dyn std::error::Error + 'static),
) {
    let snap = shared.runtime.load();
    let id = crate::observe::request_id::generate();
    let id = id.to_str().unwrap_or("");
    tracing::debug!(%peer, request_id = id, status, error = %e, "request head rejected by the HTTP/1 parser");
    snap.metrics.no_route.record(status, Duration::ZERO);
    if snap.access_log.enabled() {
        let written = snap.access_log.write(crate::observe::access_log::LogEntry {
            time: std::time::SystemTime::now(),
            request_id: id.to_string(),
            listener: settings.name.clone(),
            route: None,
            // Nothing of the head is known for sure.
            method: http::Method::from_bytes(b"-").unwrap_or_default(),
            path: String::new(),
            version: http::Version::HTTP_11,
            status,
            upstream: None,
            duration: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            client: peer,
            host: None,
            referer: None,
            user_agent: None,
            upstream_status: None,
            upstream_duration: None,
            attempts: 0,
            tls,
            trace_id: None,
            // hyper's parse error kind, e.g. "invalid HTTP method parsed".
            error: e.to_string().into(),
        });
        if !written {
            snap.metrics
                .access_log_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
