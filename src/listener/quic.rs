//! The HTTP/3 front door: QUIC (quinn) on UDP at a listener's address, and
//! an adapter that turns each HTTP/3 request into an
//! `http::Request<RequestBody>` for the one pipeline ([`crate::proxy::handle`])
//! and its `Response<ProxyBody>` back into HTTP/3 frames. Routing,
//! forwarding, errors, request ids and the access log are the pipeline's;
//! nothing here answers a request by itself.
//!
//! Guarantees:
//! - the UDP socket is bound once, at start or by the reload that adds
//!   "http3" to a listener, and stays bound across reloads that keep it
//!   (no re-bind that could misroute packets of live connections); a reload
//!   swaps the endpoint's server config ([`QuicListener::update`]), so new
//!   certificates and limits apply to new handshakes, and connections already
//!   open keep theirs;
//! - TLS 1.3 with ALPN `h3` and the listener's certificate (see
//!   [`crate::tls::quic_server_config`]); the handshake must finish within
//!   `header_read_timeout`, and so must each request head;
//! - request bodies stream frame by frame under QUIC flow control (a stream
//!   whose body nobody reads stops granting credit); response bodies are sent
//!   frame by frame as the upstream produces them, trailers included; an
//!   upstream body that fails midway resets the stream (H3_INTERNAL_ERROR)
//!   so a truncated body is never taken for a whole one;
//! - a request body is never stopped under its response: one the pipeline
//!   did not read to its end is read and discarded, after the response went
//!   out whole, for up to 2 s or 1 MiB (the client's end
//!   of stream is usually just behind its head), then stopped (H3_NO_ERROR);
//! - a request the client gives up while its stream stays open (it stops
//!   the response direction, or resets the request direction before the
//!   body's end while no response head was sent) is dropped at once,
//!   pipeline or response being sent, as an HTTP/2 stream reset is: the
//!   upstream exchange is aborted, the request is logged as 499 if no
//!   response head was sent, and the stream is reset (H3_REQUEST_CANCELLED)
//!   and its request side stopped (same code); the connection's other
//!   requests go on. A reset of the request direction once the response
//!   head is out (an upstream that answered early) is not a cancel: the
//!   response goes on to its end (RFC 9114 4.1.2). A reset request body
//!   fails, for whoever still holds it, once its response is out or given
//!   up;
//! - a connection on which portico has had to reset more than
//!   [`h3_transport::MAX_LINGERING`] streams the client had not stopped
//!   (request bodies reset before the response head, upstream bodies
//!   failing midway) is closed with H3_EXCESSIVE_LOAD: quinn remembers each
//!   such stream until the connection ends;
//! - limits: flow-control windows of 1 MiB per stream and 4 MiB per
//!   connection (receiving and sending), as on HTTP/2; at most
//!   `h2_max_concurrent_streams` concurrent requests per
//!   connection (QUIC's bidirectional stream limit, the same knob as
//!   HTTP/2's); `idle_timeout` is QUIC's max_idle_timeout (no packet either
//!   way for that long closes the connection); `max_header_bytes` is enforced
//!   by the pipeline (431, with request id and access log line), and
//!   SETTINGS_MAX_FIELD_SECTION_SIZE advertises it plus [`FIELD_SLACK`]
//!   (QPACK counts 32 bytes per field on top of names and values): a head
//!   over that is refused by h3 itself with a bare 431;
//! - `max_connections` bounds this listener's QUIC connections (separately
//!   from its TCP ones): at the limit, accepting pauses (a new client's
//!   handshake waits in quinn's queue until a connection closes); a reload
//!   that lowers it below the connections open keeps new ones waiting
//!   until enough have closed. Once open connections
//!   reach 90% of it, a client whose address is not yet validated gets a
//!   stateless Retry first (RFC 9000 8.1), so spoofed sources cannot make the
//!   listener spend handshakes near its limit;
//! - connection migration (a client's new address) is allowed, as quinn
//!   does by default; the pipeline sees the address in force when a request
//!   starts;
//! - 0-RTT only with tls.early_data; a request whose stream was opened before
//!   the handshake completed carries [`EarlyData`], and the pipeline answers
//!   425 unless it is a GET or HEAD;
//! - shutdown (SIGTERM, or a reload that removes the listener or its
//!   "http3"): no new connections; each open one gets GOAWAY, its requests in
//!   flight finish, then it closes with H3_NO_ERROR once what was sent has
//!   been delivered (see [`linger`]).

use crate::body::{BoxError, RequestBody};
use crate::config::Protocol;
use crate::listener::h3_transport::{self, StopWatch, Stopped};
use crate::listener::settings::STREAM_WINDOW;
use crate::listener::{ConnLimit, ConnTracker, ListenerSettings, SideControl};
use crate::proxy::{ConnActivity, ConnInfo, EarlyData, Shared};
use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use h3::server::{RequestResolver, RequestStream};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// Room above max_header_bytes in the advertised field section size: QPACK
/// counts each field as name + value + 32, the pipeline names + values.
/// Heads between the two get the pipeline's 431 (with request id and access
/// log line); larger ones h3's own.
pub const FIELD_SLACK: usize = 8192;

/// Open connections at or above this share (in tenths) of max_connections
/// make unvalidated clients go through a stateless Retry first.
const RETRY_AT_TENTHS: usize = 9;

/// H3_NO_ERROR (RFC 9114 8.1), the code of a graceful close.
const H3_NO_ERROR: u32 = 0x100;

type RecvHalf = RequestStream<h3_transport::RecvStream, Bytes>;
type SendHalf = RequestStream<h3_transport::SendStream<Bytes>, Bytes>;
type H3Conn = h3::server::Connection<h3_transport::Connection, Bytes>;
type Resolver = RequestResolver<h3_transport::Connection, Bytes>;

/// Binds the UDP socket of a listener's QUIC side.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // "[::]:443" serves IPv4 too, as on the TCP side.
        let _ = socket.set_only_v6(false);
    }
    // No SO_REUSEADDR: on UDP it would let a second process share the port
    // and receive part of this listener's packets.
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A running QUIC side of a listener: the endpoint and its accept loop,
/// controlled like the TCP side ([`crate::listener::TcpSide`]).
pub struct QuicListener {
    endpoint: quinn::Endpoint,
    control: SideControl,
}

impl QuicListener {
    /// Starts serving HTTP/3 on `socket` with `settings` (which must have a
    /// `quic` config). `stopping`: the process is already shutting down.
    pub fn start(
        socket: std::net::UdpSocket,
        settings: Arc<ListenerSettings>,
        shared: Arc<Shared>,
        tracker: Arc<ConnTracker>,
        stopping: bool,
    ) -> std::io::Result<QuicListener> {
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            settings.quic.clone(),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let (control, feed) = SideControl::new(settings, stopping);
        tokio::spawn(accept_loop(
            endpoint.clone(),
            feed.settings,
            shared,
            tracker,
            feed.stop,
        ));
        Ok(QuicListener { endpoint, control })
    }

    /// New handshakes use the certificates and limits of `settings` (a
    /// reload that kept the listener and its "http3", perhaps renamed);
    /// a new max_connections applies at once.
    pub fn update(&self, settings: &Arc<ListenerSettings>) {
        if let Some(cfg) = &settings.quic {
            self.endpoint.set_server_config(Some(cfg.clone()));
        }
        self.control.push(settings);
    }

    /// Stops accepting; open connections get GOAWAY and drain. The socket
    /// closes when the last of them is gone.
    pub fn stop(&self) {
        self.control.stop();
    }
}

/// Accepts QUIC connections until `stop` turns true. The settings a reload
/// sends on `settings` apply to connections accepted afterwards; a new
/// max_connections applies at once, also while the loop waits for room or
/// for a connection, and a lower one holds however many connections are
/// open (see [`ConnLimit`]).
///
/// At the limit the loop takes no handshake off the endpoint: a new
/// client's Initial packets wait in quinn's queue of incoming connections
/// (its handshake stalls, nothing is refused) until a connection closes;
/// a client whose own timeout ends first is never served.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    mut settings_rx: watch::Receiver<Arc<ListenerSettings>>,
    shared: Arc<Shared>,
    tracker: Arc<ConnTracker>,
    mut stop: watch::Receiver<bool>,
) {
    let mut settings = settings_rx.borrow_and_update().clone();
    let limit = ConnLimit::new(settings.max_connections);
    // False once the sender is gone (the listener is being removed).
    let mut updates = true;
    let mut retrying = false;
    while !*stop.borrow() {
        // Biased, as on the TCP side: a reload's settings apply to every
        // connection accepted after its answer.
        let permit = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = settings_rx.changed(), if updates => {
                updates = r.is_ok();
                settings = apply_settings(&limit, settings, &mut settings_rx);
                continue;
            }
            p = limit.acquire() => match p { Some(p) => p, None => break },
        };
        let incoming = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = settings_rx.changed(), if updates => {
                updates = r.is_ok();
                // The permit held goes back (or pays a debt) and is taken
                // again under the new limit.
                drop(permit);
                settings = apply_settings(&limit, settings, &mut settings_rx);
                continue;
            }
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        // Connections open before this one (its permit is taken already).
        let open = limit.in_use(settings.max_connections).saturating_sub(1);
        let near_limit = open * 10 >= settings.max_connections * RETRY_AT_TENTHS;
        if near_limit != retrying {
            retrying = near_limit;
            let name = &settings.name;
            match near_limit {
                true => {
                    tracing::info!(listener = %name, open, "QUIC: near max_connections; new clients must validate their address (stateless Retry)")
                }
                false => {
                    tracing::info!(listener = %name, open, "QUIC: below 90% of max_connections; no more Retry")
                }
            }
        }
        if near_limit && !incoming.remote_address_validated() && incoming.may_retry() {
            // A Retry costs the client one round trip and this process no
            // state; the client comes back with a token proving its address.
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let guard = tracker.track();
        let (settings, shared, stop) = (settings.clone(), shared.clone(), stop.clone());
        tokio::spawn(async move {
            serve_connection(incoming, settings, shared, stop).await;
            drop(permit);
            drop(guard);
        });
    }
    // Refuse new handshakes outright rather than leave them unanswered.
    endpoint.set_server_config(None);
    while let Some(Some(i)) = endpoint.accept().now_or_never() {
        i.refuse();
    }
    tracing::info!(listener = %settings.name, "QUIC: stopped accepting");
}

/// The settings last sent on `rx`, with the limit moved from `current`'s
/// max_connections to theirs.
fn apply_settings(
    limit: &ConnLimit,
    current: Arc<ListenerSettings>,
    rx: &mut watch::Receiver<Arc<ListenerSettings>>,
) -> Arc<ListenerSettings> {
    let new = rx.borrow_and_update().clone();
    if !Arc::ptr_eq(&new, &current) {
        limit.resize(current.max_connections, new.max_connections);
    }
    new
}

/// Whether the handshake of a connection is complete, for telling 0-RTT
/// requests apart.
enum Handshake {
    Complete,
    /// 0.5-RTT: serving before the handshake completes, so requests may
    /// come in 0-RTT data; resolves when it completes.
    Pending(quinn::ZeroRttAccepted),
    /// The connection died before the handshake completed.
    Failed,
}

impl Handshake {
    /// Checks without waiting. quinn completes the handshake and signals it
    /// under the same lock, before any stream opened after it can be
    /// accepted: a stream accepted while this says "pending" was opened by
    /// 0-RTT data (quinn's own `RecvStream::is_0rtt` rule).
    ///
    /// The signal carries whether 0-RTT was accepted (false after a plain
    /// 1-RTT handshake); it is also false when the connection died before
    /// completing, which quinn records (close reason) before signalling.
    fn complete_now(&mut self, conn: &quinn::Connection) -> bool {
        if let Handshake::Pending(z) = self {
            match z.now_or_never() {
                Some(true) => *self = Handshake::Complete,
                Some(false) if conn.close_reason().is_none() => *self = Handshake::Complete,
                Some(false) => *self = Handshake::Failed,
                None => return false,
            }
        }
        matches!(self, Handshake::Complete)
    }
}

/// Serves one QUIC connection: handshake, HTTP/3 setup, then its requests
/// until it closes or is asked to stop.
async fn serve_connection(
    incoming: quinn::Incoming,
    settings: Arc<ListenerSettings>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let handshake_deadline = tokio::time::Instant::now() + settings.header_read_timeout;
    let Some((conn, handshake)) = handshake(incoming, &settings, handshake_deadline).await else {
        return;
    };
    let stops = StopWatch::new(conn.clone());
    let Some(h3) = h3_setup(&conn, stops.clone(), &settings, handshake_deadline).await else {
        return;
    };
    let info = Arc::new(ConnInfo::new(
        super::listener_facts(&settings),
        shared,
        Arc::new(ConnActivity::default()),
        conn.remote_address(),
        true,
        Some(Protocol::Http3),
    ));
    let phase = ConnPhase {
        handshake,
        handshake_deadline,
        stop,
        stops,
    };
    serve_requests(h3, conn, info, &settings, phase).await;
}

/// Accepts a QUIC connection and completes its handshake by
/// `handshake_deadline`
/// (with early data, only starts it: 0.5-RTT).
async fn handshake(
    incoming: quinn::Incoming,
    settings: &ListenerSettings,
    handshake_deadline: tokio::time::Instant,
) -> Option<(quinn::Connection, Handshake)> {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "QUIC connection refused");
            return None;
        }
    };
    // With early data the server serves from the first flight (0.5-RTT);
    // otherwise only once the handshake is complete.
    let early = if settings.early_data {
        connecting.into_0rtt()
    } else {
        Err(connecting)
    };
    let (conn, handshake) = match early {
        Ok((conn, accepted)) => (conn, Handshake::Pending(accepted)),
        Err(connecting) => match tokio::time::timeout_at(handshake_deadline, connecting).await {
            Ok(Ok(conn)) => (conn, Handshake::Complete),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "QUIC handshake failed");
                settings.metrics.record_tls_handshake_error();
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "QUIC handshake timed out");
                settings.metrics.record_tls_handshake_error();
                return None;
            }
        },
    };
    Some((conn, handshake))
}

/// The HTTP/3 connection on `conn`, set up by `handshake_deadline`.
async fn h3_setup(
    conn: &quinn::Connection,
    stops: StopWatch,
    settings: &ListenerSettings,
    handshake_deadline: tokio::time::Instant,
) -> Option<H3Conn> {
    let peer = conn.remote_address();
    let mut builder = h3::server::builder();
    builder.max_field_section_size((settings.max_header_bytes + FIELD_SLACK) as u64);
    let h3 = match tokio::time::timeout_at(
        handshake_deadline,
        builder.build::<_, Bytes>(h3_transport::Connection::new(conn.clone(), stops)),
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 connection setup failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "HTTP/3 connection setup timed out");
            conn.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"");
            return None;
        }
    };
    Some(h3)
}

/// The handshake state and stop signal of a connection being served.
struct ConnPhase {
    handshake: Handshake,
    handshake_deadline: tokio::time::Instant,
    /// A dropped sender (the listener is gone) means stop too.
    stop: watch::Receiver<bool>,
    /// Where each request finds out whether the client stopped its stream.
    stops: StopWatch,
}

/// Serves the requests of an HTTP/3 connection, each in a task of its own,
/// until the connection ends, goes idle or is asked to stop (then GOAWAY,
/// the requests in flight finish, and it closes once delivered).
async fn serve_requests(
    mut h3: H3Conn,
    conn: quinn::Connection,
    mut info: Arc<ConnInfo>,
    settings: &Arc<ListenerSettings>,
    ConnPhase {
        mut handshake,
        handshake_deadline,
        mut stop,
        stops,
    }: ConnPhase,
) {
    let peer = info.peer;
    let mut requests = JoinSet::new();
    let mut closing = false;
    let mut stop_asked = *stop.borrow();
    let hs_timer = tokio::time::sleep_until(handshake_deadline);
    tokio::pin!(hs_timer);
    // Runs while no request is in flight; re-armed when the last one ends.
    let idle = settings.idle_timeout;
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    loop {
        if !closing && stop_asked {
            closing = true;
            // GOAWAY naming the stream after the last accepted one: every
            // request accepted so far is processed (RFC 9114 5.2).
            if let Err(e) = h3.shutdown(1).await {
                tracing::debug!(%peer, error = %e, "HTTP/3 GOAWAY failed");
                break;
            }
        }
        if closing && requests.is_empty() {
            linger(&conn, settings.idle_timeout).await;
            conn.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"");
            break;
        }
        let pending = matches!(handshake, Handshake::Pending(_));
        tokio::select! {
            r = stop.changed(), if !stop_asked => {
                stop_asked = r.is_err() || *stop.borrow();
            }
            _ = requests.join_next(), if !requests.is_empty() => {
                if requests.is_empty() {
                    idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            }
            _ = &mut idle_timer, if requests.is_empty() && !closing && !idle.is_zero() => {
                tracing::debug!(%peer, "HTTP/3 connection idle: closing");
                stop_asked = true;
            }
            _ = &mut hs_timer, if pending => {
                if !handshake.complete_now(&conn) {
                    tracing::debug!(%peer, "QUIC handshake timed out (0-RTT)");
                    conn.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"handshake timeout");
                    break;
                }
            }
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let at = RequestAt { conn: &conn, handshake: &mut handshake, stops: &stops };
                    start_request(resolver, at, &mut info, settings, &mut requests);
                }
                // The client sent GOAWAY and its requests are done.
                Ok(None) => {
                    closing = true;
                }
                Err(e) => {
                    if !e.is_h3_no_error() {
                        tracing::debug!(%peer, error = %e, "HTTP/3 connection ended with an error");
                    }
                    break;
                }
            },
        }
    }
    // The connection is gone: requests still running cannot answer anyway.
    requests.shutdown().await;
}

/// The connection a new request arrived on, as its task needs it.
struct RequestAt<'a> {
    conn: &'a quinn::Connection,
    handshake: &'a mut Handshake,
    stops: &'a StopWatch,
}

/// Starts serving one request of an HTTP/3 connection in a task of its
/// own, telling 0-RTT requests apart and following the client's address.
fn start_request(
    resolver: Resolver,
    RequestAt {
        conn,
        handshake,
        stops,
    }: RequestAt<'_>,
    info: &mut Arc<ConnInfo>,
    settings: &Arc<ListenerSettings>,
    requests: &mut JoinSet<()>,
) {
    let early = !handshake.complete_now(conn);
    // The client may have moved (migration): the pipeline sees the address
    // in force now.
    let now_at = conn.remote_address();
    if now_at != info.peer {
        *info = Arc::new(ConnInfo::new(
            info.listener.clone(),
            info.shared.clone(),
            info.activity.clone(),
            now_at,
            true,
            info.protocol,
        ));
    }
    // Boxed: with h3's request resolver in it the future is about 4 KB,
    // which the task would otherwise copy around.
    requests.spawn(Box::pin(serve_request(
        resolver,
        info.clone(),
        early,
        settings.header_read_timeout,
        stops.clone(),
    )));
}

/// Waits, before a graceful close, until the connection has delivered what
/// the requests wrote: closing a QUIC connection discards stream data not
/// yet acknowledged, and h3 exposes no per-stream acknowledgement. The
/// connection counts as delivered once it has sent nothing for a few
/// round trips (longer than a retransmission timeout, so nothing is
/// outstanding), or when the client closes it; at most `bound`.
async fn linger(conn: &quinn::Connection, bound: Duration) {
    let deadline = tokio::time::Instant::now() + bound.min(Duration::from_secs(30));
    let mut sent = conn.stats().udp_tx.datagrams;
    loop {
        let quiet = conn.rtt() * 4 + Duration::from_millis(50);
        tokio::select! {
            _ = conn.closed() => return,
            _ = tokio::time::sleep(quiet) => {}
        }
        let now = conn.stats().udp_tx.datagrams;
        if now == sent || tokio::time::Instant::now() >= deadline {
            return;
        }
        sent = now;
    }
}

/// Serves one HTTP/3 request through the pipeline. A client that gives
/// the request up while its response is being made or sent ([`ClientGone`])
/// has the pipeline dropped at once, which logs and counts it as 499 before
/// its response head (the head's status after it) and aborts the upstream
/// exchange, as an HTTP/2 stream reset does; the stream is then reset.
async fn serve_request(
    resolver: Resolver,
    info: Arc<ConnInfo>,
    early: bool,
    header_timeout: Duration,
    stops: StopWatch,
) {
    let (req, stream) = match tokio::time::timeout(header_timeout, resolver.resolve_request()).await
    {
        Ok(Ok(r)) => r,
        // A malformed head was reset, an oversized one answered 431, by h3.
        Ok(Err(e)) => {
            tracing::debug!(peer = %info.peer, error = %e, "HTTP/3 request head rejected");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %info.peer, "HTTP/3 request head timed out");
            return;
        }
    };
    let stopped = stops.take(stream.id());
    let peer = info.peer;
    let (mut send, recv) = stream.split();
    let (parts, ()) = req.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (body, side, reset) = H3Body::new(recv, declared).into_request_body();
    let mut gone = ClientGone {
        stopped,
        reset,
        peer,
    };
    let mut req = Request::from_parts(parts, body);
    if early {
        req.extensions_mut().insert(EarlyData);
    }

    // The pipeline first: polled once, a request the client gave up even
    // before it started is still logged and counted (as 499).
    let resp = tokio::select! {
        biased;
        r = crate::proxy::handle(Box::new(req), info) => match r {
            Ok(r) => r,
            Err(never) => match never {},
        },
        () = &mut gone => return give_up(&mut send, gone, side),
    };
    respond(send, resp, gone, side).await;
}

/// Sends the response of a request, unless the client gives it up first
/// (see [`serve_request`]), then ends the request side of its stream.
async fn respond(
    mut send: SendHalf,
    resp: Response<crate::body::ProxyBody>,
    mut gone: ClientGone,
    side: RequestSide,
) {
    let (mut head, body) = resp.into_parts();
    // Connection-specific fields are malformed in HTTP/3 (RFC 9114 4.2);
    // the pipeline's own errors may carry `Connection: close`.
    crate::proxy::headers::strip_hop_by_hop(&mut head.headers);
    let sent = tokio::select! {
        biased;
        () = &mut gone => return give_up(&mut send, gone, side),
        r = send.send_response(Response::from_parts(head, ())) => r,
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "HTTP/3 response head not sent");
        return side.cancel();
    }
    // From here on the client has the answer's head: a reset of its upload
    // (an upstream that answered early, a 413) no longer gives the request
    // up, and the response goes on (RFC 9114 4.1.2).
    gone.reset = None;
    let sent = tokio::select! {
        biased;
        () = &mut gone => return give_up(&mut send, gone, side),
        sent = send_body(&mut send, body) => sent,
    };
    match sent {
        Sent::Whole => {
            // A reset of the request side is nobody's concern any more.
            drop(gone);
            side.close().await;
        }
        Sent::Reset => {
            gone.stopped.reset_here();
            side.cancel();
        }
        Sent::Failed => side.cancel(),
    }
}

/// Resolves when the client gave a request up: it stopped the response
/// direction of the stream (STOP_SENDING), or reset the request direction
/// before the body's end while no response head was sent, or the
/// connection is gone.
struct ClientGone {
    stopped: Stopped,
    /// Told by the request body when the client reset it; gone once the
    /// body ended or was dropped, or once the response head is sent.
    reset: Option<oneshot::Receiver<()>>,
    peer: SocketAddr,
}

impl std::future::Future for ClientGone {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Pin::new(&mut self.stopped).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if let Some(rx) = self.reset.as_mut() {
            match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(()),
                Poll::Ready(Err(_)) => self.reset = None,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}

/// Ends the stream of a request the client gave up (its pipeline or
/// response already dropped): RESET_STREAM with H3_REQUEST_CANCELLED, as
/// the answer to a STOP_SENDING must be a reset (RFC 9000 3.5), and
/// STOP_SENDING with the same code on the request side unless the client
/// ended or reset it.
fn give_up(send: &mut SendHalf, gone: ClientGone, side: RequestSide) {
    tracing::debug!(peer = %gone.peer, "HTTP/3 request cancelled by the client");
    send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
    gone.stopped.reset_here();
    side.cancel();
}

/// How a response went out.
enum Sent {
    /// Whole, the stream finished.
    Whole,
    /// Cut by this side: the upstream body failed, the stream was reset.
    Reset,
    /// The client or the connection went away.
    Failed,
}

/// Sends a response body frame by frame, then trailers, and finishes the
/// stream.
async fn send_body(send: &mut SendHalf, mut body: crate::body::ProxyBody) -> Sent {
    let ok = |r: bool| if r { Sent::Whole } else { Sent::Failed };
    loop {
        match body.frame().await {
            None => return ok(send.finish().await.is_ok()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if !data.is_empty() && send.send_data(data).await.is_err() {
                        // The client went away; dropping the body ends
                        // the exchange (and the upstream connection).
                        return Sent::Failed;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return ok(send.send_trailers(trailers).await.is_ok()
                            && send.finish().await.is_ok());
                    }
                }
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "upstream body failed; resetting the HTTP/3 stream");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Sent::Reset;
            }
        }
    }
}

/// How long, and how many body bytes, the request side of a stream is read
/// and discarded after a complete response whose request body was not read
/// to its end (see [`close_request_side`]).
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: usize = STREAM_WINDOW as usize;

/// The request side of a stream whose body the pipeline did not read to
/// its end: held by the serving task, or on its way back from the body.
enum Unread {
    Kept(RestOfBody),
    Returning(oneshot::Receiver<RestOfBody>),
}

/// The serving task's end of a request body: the request side of the
/// stream should the body not be read to its end, and how the body learns
/// that the serving task is done with the request.
struct RequestSide {
    unread: Option<Unread>,
    /// Told, once the response is out or given up, the code with which a
    /// body dropped unfinished with nobody to take it back stops the
    /// request side; a body the client reset waits for it (see [`H3Body`]).
    done: Option<oneshot::Sender<h3::error::Code>>,
}

impl RequestSide {
    /// Ends the request side once the response is out whole (see
    /// [`close_request_side`]).
    async fn close(mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(h3::error::Code::H3_NO_ERROR);
        }
        close_request_side(self.unread).await;
    }

    /// Stops the request side of a request given up or whose response was
    /// cut: at once if the body is at hand (kept, or handed back as the
    /// pipeline was dropped), else by the body when whoever holds it drops
    /// it.
    fn cancel(mut self) {
        let code = h3::error::Code::H3_REQUEST_CANCELLED;
        if let Some(done) = self.done.take() {
            let _ = done.send(code);
        }
        let at_hand = match self.unread {
            None => None,
            Some(Unread::Kept(r)) => Some(r),
            Some(Unread::Returning(mut rx)) => rx.try_recv().ok(),
        };
        if let Some(mut rest) = at_hand {
            rest.recv.stop_sending(code);
        }
    }
}

/// Ends the request side of a stream once its response is out whole.
/// A request body that was not read to its end (a proxy answer, a GET
/// forwarded without a body, an upstream that answered early) is read and
/// discarded for a short while: most often only the client's end of stream
/// is still on its way, and stopping the stream under it would make the
/// client's last write (FIN, often behind a GREASE frame) fail, which
/// clients report as a failed request despite the complete response. A body
/// that goes on longer than that is stopped (RFC 9114 4.1.2).
async fn close_request_side(unread: Option<Unread>) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut rest = match unread {
        None => return,
        Some(Unread::Kept(r)) => r,
        // A body still held elsewhere past the deadline stops the stream
        // itself (H3_NO_ERROR) when it is dropped.
        Some(Unread::Returning(rx)) => match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            _ => return,
        },
    };
    // Past the bounds the request side is stopped, with H3_NO_ERROR: the
    // response is complete (RFC 9114 4.1.2).
    let ended = tokio::time::timeout_at(deadline, drain(&mut rest)).await;
    if !matches!(ended, Ok(true)) {
        rest.recv.stop_sending(h3::error::Code::H3_NO_ERROR);
    }
}

/// Reads and discards the rest of a request body, at most [`DRAIN_BYTES`]
/// of it. Returns whether the request side ended (read to its end, or
/// reset by the client).
async fn drain(rest: &mut RestOfBody) -> bool {
    let mut left = DRAIN_BYTES;
    if rest.state == BodyState::Data {
        loop {
            match rest.recv.recv_data().await {
                Ok(Some(b)) => match left.checked_sub(b.remaining()) {
                    Some(l) => left = l,
                    None => return false,
                },
                Ok(None) => break,
                // Reset by the client: nothing left to stop.
                Err(_) => return true,
            }
        }
    }
    // Trailers, then the end of the stream.
    let _ = rest.recv.recv_trailers().await;
    true
}

/// A request body read from HTTP/3 DATA frames, then trailers. Reading is
/// what grants the client QUIC flow-control credit, so a body nobody reads
/// stalls the client rather than filling memory. A Content-Length that the
/// DATA frames do not match is an error (RFC 9114 4.1.2).
///
/// Dropped before its end (whoever holds it did not need the rest), it
/// hands the request side of the stream back to the serving task, which
/// ends it once the response is out (see [`close_request_side`]); it never
/// stops the stream under a response still being made. With nobody to take
/// it back, it stops the request side with the code the serving task left.
///
/// Reset by the client before its end, it tells the serving task (which
/// gives the request up if no response head was sent) and then waits, as
/// failing would cut a response still being relayed through whoever holds
/// it, until the serving task is done; then it fails.
struct H3Body {
    /// Always present until the body is dropped.
    recv: Option<RecvHalf>,
    state: BodyState,
    declared: Option<u64>,
    received: u64,
    /// Where the request side goes when the body is dropped before its end.
    back: Option<oneshot::Sender<RestOfBody>>,
    /// Told when the client resets the request side before the body's end.
    reset: Option<oneshot::Sender<()>>,
    /// The serving task's word that it is done (see [`RequestSide`]).
    done: Option<oneshot::Receiver<h3::error::Code>>,
}

/// The request side of a stream, with where its body stopped being read.
struct RestOfBody {
    recv: RecvHalf,
    state: BodyState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Data,
    Trailers,
    Done,
    /// The client reset the request side: the body waits for the serving
    /// task to be done, then fails.
    Reset,
}

impl H3Body {
    fn new(recv: RecvHalf, declared: Option<u64>) -> H3Body {
        H3Body {
            recv: Some(recv),
            state: BodyState::Data,
            declared,
            received: 0,
            back: None,
            reset: None,
            done: None,
        }
    }

    /// The pipeline's request body, the serving task's end of it, and what
    /// tells that the client reset the body (see [`ClientGone`]). A body
    /// already known to be empty (the stream ended with the head, or
    /// Content-Length: 0) becomes an empty one, so a GET goes upstream
    /// without chunked framing.
    fn into_request_body(mut self) -> (RequestBody, RequestSide, Option<oneshot::Receiver<()>>) {
        if self.declared == Some(0) {
            let unread = self.take_rest().map(Unread::Kept);
            let side = RequestSide { unread, done: None };
            return (RequestBody::empty(), side, None);
        }
        let (reset_tx, reset_rx) = oneshot::channel();
        self.reset = Some(reset_tx);
        let (done_tx, done_rx) = oneshot::channel();
        self.done = Some(done_rx);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let first = match Pin::new(&mut self).poll_frame(&mut cx) {
            Poll::Pending => None,
            Poll::Ready(None) => {
                let side = RequestSide {
                    unread: None,
                    done: None,
                };
                return (RequestBody::empty(), side, None);
            }
            Poll::Ready(Some(f)) => Some(f),
        };
        let (tx, rx) = oneshot::channel();
        self.back = Some(tx);
        let body = RequestBody::boxed(Prefixed { first, rest: self }.boxed());
        let side = RequestSide {
            unread: Some(Unread::Returning(rx)),
            done: Some(done_tx),
        };
        (body, side, Some(reset_rx))
    }

    /// Whether `e` is the client's reset of the request side, which the
    /// body waits out (see [`H3Body`]) rather than fail at once: failing
    /// would answer an error nobody reads, logged in place of the cancel,
    /// or cut a response being relayed.
    fn on_reset(&mut self, e: &h3::error::StreamError) -> bool {
        if self.done.is_none() || !matches!(e, h3::error::StreamError::RemoteTerminate { .. }) {
            return false;
        }
        if let Some(tx) = self.reset.take() {
            // Nobody listens once the response head is out.
            let _ = tx.send(());
        }
        self.state = BodyState::Reset;
        true
    }

    /// Pending until the serving task is done with a request whose body
    /// the client reset; then the body fails.
    fn poll_released(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(done) = self.done.as_mut() {
            if std::future::Future::poll(Pin::new(done), cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.done = None;
        self.state = BodyState::Done;
        Poll::Ready(Some(Err("request body reset by the client".into())))
    }

    /// The request side, unless the body was read to its end (or reset).
    fn take_rest(&mut self) -> Option<RestOfBody> {
        if matches!(self.state, BodyState::Done | BodyState::Reset) {
            return None;
        }
        let state = self.state;
        self.recv.take().map(|recv| RestOfBody { recv, state })
    }
}

impl Drop for H3Body {
    fn drop(&mut self) {
        let Some(mut rest) = self.take_rest() else {
            return;
        };
        let Some(back) = self.back.take() else {
            return;
        };
        let Err(returned) = back.send(rest) else {
            return;
        };
        rest = returned;
        // Nobody to take it back (the response is long done, or was given
        // up): stopped with the serving task's code, else quinn's.
        if let Some(code) = self.done.as_mut().and_then(|d| d.try_recv().ok()) {
            rest.recv.stop_sending(code);
        }
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.poll_next_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.declared {
            Some(d) => SizeHint::with_exact(d.saturating_sub(self.received)),
            None => SizeHint::default(),
        }
    }
}

impl H3Body {
    fn poll_next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        if this.state == BodyState::Reset {
            return this.poll_released(cx);
        }
        let Some(recv) = this.recv.as_mut() else {
            return Poll::Ready(None);
        };
        if this.state == BodyState::Data {
            match recv.poll_recv_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    if this.on_reset(&e) {
                        return this.poll_released(cx);
                    }
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(Ok(Some(mut buf))) => {
                    let data = buf.copy_to_bytes(buf.remaining());
                    this.received += data.len() as u64;
                    if this.declared.is_some_and(|d| this.received > d) {
                        this.state = BodyState::Done;
                        return Poll::Ready(Some(Err(
                            "request body longer than content-length".into()
                        )));
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Ok(None)) => {
                    if this.declared.is_some_and(|d| this.received != d) {
                        this.state = BodyState::Done;
                        return Poll::Ready(Some(Err(
                            "request body shorter than content-length".into()
                        )));
                    }
                    this.state = BodyState::Trailers;
                }
            }
        }
        if this.state == BodyState::Trailers {
            let polled: Poll<Result<Option<HeaderMap>, _>> = recv.poll_recv_trailers(cx);
            return match polled {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) if this.on_reset(&e) => this.poll_released(cx),
                Poll::Ready(r) => {
                    this.state = BodyState::Done;
                    match r {
                        Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                        Ok(None) => Poll::Ready(None),
                        Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
                    }
                }
            };
        }
        Poll::Ready(None)
    }
}

/// A body whose first frame was already read.
struct Prefixed {
    first: Option<Result<Frame<Bytes>, BoxError>>,
    rest: H3Body,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.first.take() {
            Some(f) => Poll::Ready(Some(f)),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut h = self.rest.size_hint();
        if let Some(Ok(f)) = &self.first {
            if let Some(d) = f.data_ref() {
                let n = d.len() as u64;
                // Upper first: SizeHint keeps lower <= upper at every step.
                if let Some(u) = h.upper() {
                    h.set_upper(u + n);
                }
                h.set_lower(h.lower() + n);
            }
        }
        h
    }
}
