//! The pool: servers, their keepalive connections, and sending a request
//! (see the guarantees in [`crate::upstream`]).

use super::h1::{H1Conn, H1Error, Upgraded};
use super::health::{ActiveChecks, ServerHealth};
use super::members::{CurrentMembers, MemberBuild, Members, Names};
use super::resolve::Resolver;
use super::retry::RetryBudget;
use super::server::UpstreamServer;
use crate::body::{BodyFault, BodyWatch, BoxError, RequestBody};
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::observe::metrics::{Metrics, UpstreamOutcome};
use crate::tls::{ClientIo, ClientTls, ConnectError};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::request::Parts;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Why an upstream exchange failed, in the terms of metrics and of the
/// status the client gets.
#[derive(Debug)]
pub enum UpstreamError {
    /// TCP connect refused or failed.
    Connect(std::io::Error),
    /// TCP connect took longer than connect_timeout.
    ConnectTimeout,
    /// The connection broke after the request was sent, before a response head.
    Reset(BoxError),
    /// The connection closed before a response head while the request was
    /// still being written, or before any answer on a reused connection: a
    /// server that refused an upload, or closed an idle connection as the
    /// request came. Not taken as a sign that the server is down (no
    /// passive ejection: a client's slow or large upload could cause it).
    Closed(BoxError),
    /// The upstream answered with something that is not HTTP.
    InvalidResponse(BoxError),
    /// The client's own request body failed (bad chunked framing, or the
    /// client went away).
    ClientBody(BoxError),
    /// portico failed the request body for its limits.
    BodyLimit(BodyFault),
    /// hyper gave up on the exchange for a reason that is neither the
    /// client's body nor the server (the connection's task is gone).
    Internal(BoxError),
}

impl UpstreamError {
    /// The `outcome` label of portico_upstream_requests_total.
    pub fn outcome(&self) -> UpstreamOutcome {
        match self {
            UpstreamError::Connect(_) => UpstreamOutcome::ConnectError,
            UpstreamError::ConnectTimeout => UpstreamOutcome::Timeout,
            UpstreamError::Reset(_)
            | UpstreamError::Closed(_)
            | UpstreamError::ClientBody(_)
            | UpstreamError::BodyLimit(_)
            | UpstreamError::Internal(_) => UpstreamOutcome::Reset,
            UpstreamError::InvalidResponse(_) => UpstreamOutcome::Http5xx,
        }
    }

    /// `body`: the watch of the request body, if it was not empty. A
    /// failed request body is the client's, whatever hyper calls it: on
    /// HTTP/1.1 a "user" error, on HTTP/2 the stream reset hyper sent
    /// because of it, which must not pass for the server's failure (a 502,
    /// and a passive ejection a client could cause at will). hyper's other
    /// "user" errors are its own misuse.
    fn from_hyper(e: hyper::Error, body: Option<&BodyWatch>) -> UpstreamError {
        if let Some(f) = body.and_then(BodyWatch::fault) {
            UpstreamError::BodyLimit(f)
        } else if body.is_some_and(BodyWatch::failed) {
            UpstreamError::ClientBody(Box::new(e))
        } else if e.is_user() {
            UpstreamError::Internal(Box::new(e))
        } else if e.is_parse() || e.is_parse_status() {
            UpstreamError::InvalidResponse(Box::new(e))
        } else {
            UpstreamError::reset(e)
        }
    }

    /// A failure of hyper's connection before a response head.
    fn reset(e: hyper::Error) -> UpstreamError {
        UpstreamError::Reset(Box::new(e))
    }

    /// As [`UpstreamError::from_hyper`], for portico's own HTTP/1.1 client.
    fn from_h1(e: H1Error, body: Option<&BodyWatch>) -> UpstreamError {
        if let Some(f) = body.and_then(BodyWatch::fault) {
            return UpstreamError::BodyLimit(f);
        }
        match e {
            H1Error::ClientBody(e) => UpstreamError::ClientBody(e),
            H1Error::Invalid(_) => UpstreamError::InvalidResponse(Box::new(e)),
            H1Error::Io(_) => UpstreamError::Reset(Box::new(e)),
            H1Error::Closed(_) => UpstreamError::Closed(Box::new(e)),
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect failed: {e}"),
            UpstreamError::ConnectTimeout => f.write_str("connect timed out"),
            UpstreamError::Reset(e) => write!(f, "connection failed before a response: {e}"),
            UpstreamError::Closed(e) => write!(f, "connection closed before a response: {e}"),
            UpstreamError::InvalidResponse(e) => write!(f, "invalid response: {e}"),
            UpstreamError::ClientBody(e) => write!(f, "client request body failed: {e}"),
            UpstreamError::BodyLimit(fault) => write!(f, "client request body failed: {fault}"),
            UpstreamError::Internal(e) => write!(f, "upstream exchange abandoned: {e}"),
        }
    }
}

/// Settings a pool applies to every server's connections.
#[derive(Debug, Clone)]
pub(super) struct PoolSettings {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    idle_timeout: Duration,
    pub(super) max_idle: usize,
    passive_eject: Duration,
}

/// One `[upstream.NAME]`: its servers, balancer and connection settings.
pub struct UpstreamPool {
    pub name: Arc<str>,
    /// The definition it was built from; a reload reuses this pool, with its
    /// connections, when the new definition is equal.
    pub definition: UpstreamConfig,
    members: MemberList,
    /// Present: HTTPS to every server.
    pub tls: Option<ClientTls>,
    /// Whether active checks run (so /ready waits for a healthy server).
    pub has_health_checks: bool,
    pub retry_budget: RetryBudget,
    pub(super) checks: ActiveChecks,
    /// Present when `servers` names a host by DNS: the lookups and their
    /// last good answers.
    pub(super) dns: Option<Names>,
    pub(super) settings: PoolSettings,
}

/// A pool's members: fixed when every server is an IP address (read
/// without even an atomic), else swapped whole by each new DNS answer.
enum MemberList {
    Fixed(Members),
    Resolved(ArcSwap<Members>),
}

/// A failed send, with the request's body when none of the request reached
/// the server (so it may go to another server).
pub struct SendFailure {
    pub error: UpstreamError,
    pub unsent: Option<RequestBody>,
}

impl From<UpstreamError> for SendFailure {
    fn from(error: UpstreamError) -> SendFailure {
        SendFailure {
            error,
            unsent: None,
        }
    }
}

/// A connection made for one purpose outside the pool.
pub(crate) enum FreshSender {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

impl FreshSender {
    pub(crate) async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            FreshSender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            FreshSender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// What a successful send gives back.
pub struct Exchange {
    pub response: Response<ResponseBody>,
    /// The connection itself, after a 101 to a request that asked to
    /// upgrade (HTTP/1.1 only).
    pub upgraded: Option<Upgraded>,
}

/// An upstream's response body: read from its HTTP/1.1 connection by
/// portico's own client (an [`H1Body`](super::h1::H1Body), which gives the
/// connection back to the pool at its end; boxed once, here, so that the
/// response moves as a pointer), or from hyper's HTTP/2 client.
pub enum ResponseBody {
    H1(BoxBody<Bytes, BoxError>),
    H2(Incoming),
}

impl UpstreamPool {
    /// Builds a pool and starts its idle reaper; its health checks and DNS
    /// lookups start with [`UpstreamPool::activate`] (so `portico check`,
    /// which never activates, resolves nothing). Health state is carried
    /// over from `previous` (the pool of the same name in the config being
    /// replaced), and so are its last DNS answers for names still listed.
    /// Each server's counters come from `metrics`, keyed by (pool,
    /// address), so they go on when a reload rebuilds the pool. Must run
    /// inside the runtime.
    pub fn new(
        name: &str,
        def: &UpstreamConfig,
        tls: Option<ClientTls>,
        previous: Option<&UpstreamPool>,
        metrics: &Arc<Metrics>,
        resolver: &Resolver,
    ) -> Arc<UpstreamPool> {
        let settings = PoolSettings {
            protocol: def.protocol,
            connect_timeout: def.connect_timeout.0,
            idle_timeout: def.idle_timeout.0,
            max_idle: def.max_idle_per_server,
            passive_eject: def.passive_eject.0,
        };
        let dns = Names::new(
            name,
            def,
            resolver,
            previous.and_then(|p| p.dns.as_ref()),
            metrics,
        );
        let build = MemberBuild {
            pool: name,
            max_idle: settings.max_idle,
            metrics,
        };
        let members = match &dns {
            None => MemberList::Fixed(build.members(def, None, |addr| inherit(previous, addr))),
            Some(d) => MemberList::Resolved(ArcSwap::from_pointee(build.members(
                def,
                Some(&d.answers()),
                |addr| inherit(previous, addr),
            ))),
        };
        let pool = Arc::new(UpstreamPool {
            name: Arc::from(name),
            definition: def.clone(),
            members,
            tls,
            has_health_checks: def.health.is_some(),
            retry_budget: RetryBudget::default(),
            checks: ActiveChecks::new(def.health.clone()),
            dns,
            settings,
        });
        spawn_reaper(Arc::downgrade(&pool), pool.settings.idle_timeout);
        pool
    }

    /// Whether `previous` can serve in place of a pool built from `def`
    /// with `tls` and `resolver`: same definition, same certificate files,
    /// and, when it has DNS names, the same resolver.
    pub fn reusable_for(
        &self,
        def: &UpstreamConfig,
        tls: Option<&ClientTls>,
        resolver: &Resolver,
    ) -> bool {
        &self.definition == def
            && self.tls.as_ref().map(|t| t.fingerprint) == tls.map(|t| t.fingerprint)
            && self.dns.as_ref().is_none_or(|d| d.resolver == *resolver)
    }

    /// The servers in force, for one request (or one scrape).
    pub fn members(&self) -> CurrentMembers<'_> {
        match &self.members {
            MemberList::Fixed(m) => CurrentMembers::Fixed(m),
            MemberList::Resolved(m) => CurrentMembers::Resolved(m.load_full()),
        }
    }

    /// Puts a new member set in force (after a DNS answer changed it).
    /// Servers it no longer holds close their idle connections now and
    /// those their requests in flight give back.
    pub(super) fn replace_members(&self, next: Members) {
        let MemberList::Resolved(list) = &self.members else {
            return;
        };
        let old = list.swap(Arc::new(next));
        let now = list.load();
        for s in old.servers.iter() {
            if !now.servers.iter().any(|n| Arc::ptr_eq(n, s)) {
                s.retire();
            }
        }
    }

    /// Whether some server passes its active checks (always, without checks).
    pub fn any_healthy(&self) -> bool {
        self.members().any_healthy()
    }

    /// Records a failed exchange with `server`: refused connects and resets
    /// take it out of rotation for passive_eject.
    pub fn record_failure(&self, server: &UpstreamServer, e: &UpstreamError) {
        if matches!(e, UpstreamError::Connect(_) | UpstreamError::Reset(_)) {
            server.health.eject_for(self.settings.passive_eject);
            (!self.settings.passive_eject.is_zero()).then(|| server.metrics.record_ejection());
        }
    }

    /// Sends the request `head` + `body` to `server`, on a pooled
    /// connection when one is idle. The head is borrowed: the caller keeps
    /// it for another attempt, and an HTTP/1.1 exchange never copies it.
    pub async fn send(
        &self,
        server: &Arc<UpstreamServer>,
        head: &Parts,
        body: RequestBody,
    ) -> Result<Exchange, SendFailure> {
        match self.settings.protocol {
            UpstreamProtocol::Http1 => self.send_h1(server, head, body).await,
            // Boxed: hyper's HTTP/2 client's futures would make every
            // request's future (HTTP/1.1 upstreams' too) kilobytes larger.
            UpstreamProtocol::Http2 => Box::pin(self.send_h2(server, head, body)).await,
        }
    }

    async fn send_h1(
        &self,
        server: &Arc<UpstreamServer>,
        head: &Parts,
        mut body: RequestBody,
    ) -> Result<Exchange, SendFailure> {
        let body_sent = (!http_body::Body::is_end_stream(&body)).then(|| body.watch());
        let conn = loop {
            match server.take_idle(self.settings.idle_timeout) {
                // Closed while idle (the keepalive race): nothing is sent on it.
                Some(mut c) => {
                    if c.alive() {
                        break c;
                    }
                }
                // The rare path, boxed so the hot path's future stays small.
                None => match Box::pin(self.connect_h1(server)).await {
                    Ok(c) => break c,
                    Err(error) => {
                        return Err(SendFailure {
                            error,
                            unsent: Some(body),
                        })
                    }
                },
            }
        };
        match conn.send(head, body, server.clone()).await {
            Ok(answer) => Ok(Exchange {
                response: answer.response.map(|b| ResponseBody::H1(b.boxed())),
                upgraded: answer.upgraded,
            }),
            Err(e) => Err(UpstreamError::from_h1(e, body_sent.as_ref()).into()),
        }
    }

    async fn connect_h1(&self, server: &UpstreamServer) -> Result<H1Conn, UpstreamError> {
        Ok(H1Conn::new(self.connect(server).await?.into_inner()))
    }

    async fn send_h2(
        &self,
        server: &Arc<UpstreamServer>,
        head: &Parts,
        mut body: RequestBody,
    ) -> Result<Exchange, SendFailure> {
        let mut sender = match server.h2_sender() {
            Some(s) => s,
            None => match Box::pin(self.connect_h2(server)).await {
                Ok(s) => s,
                Err(error @ (UpstreamError::Connect(_) | UpstreamError::ConnectTimeout)) => {
                    return Err(SendFailure {
                        error,
                        unsent: Some(body),
                    })
                }
                Err(error) => return Err(error.into()),
            },
        };
        sender.ready().await.map_err(UpstreamError::reset)?;
        let watch = (!http_body::Body::is_end_stream(&body)).then(|| body.watch());
        // hyper's client takes the request whole: the head is copied.
        let response = sender
            .send_request(Request::from_parts(head.clone(), body))
            .await
            .map_err(|e| UpstreamError::from_hyper(e, watch.as_ref()))?;
        Ok(Exchange {
            response: response.map(ResponseBody::H2),
            upgraded: None,
        })
    }

    async fn connect_h2(
        &self,
        server: &Arc<UpstreamServer>,
    ) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        let _connecting = server.h2_connecting.lock().await;
        if let Some(s) = server.h2_sender() {
            return Ok(s);
        }
        let io = self.connect(server).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake(io)
            .await
            .map_err(UpstreamError::reset)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection ended");
            }
        });
        server.set_h2_sender(sender.clone());
        Ok(sender)
    }

    async fn connect(&self, server: &UpstreamServer) -> Result<TokioIo<ClientIo>, UpstreamError> {
        let (tls, host) = (self.tls.as_ref(), &*server.host);
        let timeout = self.settings.connect_timeout;
        match crate::tls::connect(server.addr, tls, host, timeout).await {
            Ok(io) => Ok(TokioIo::new(io)),
            Err(ConnectError::Io(e)) => Err(UpstreamError::Connect(e)),
            Err(ConnectError::Timeout) => Err(UpstreamError::ConnectTimeout),
        }
    }

    /// A new connection outside the pool (health checks).
    pub(crate) async fn connect_fresh(
        &self,
        server: &UpstreamServer,
    ) -> Result<FreshSender, UpstreamError> {
        let io = self.connect(server).await?;
        match self.settings.protocol {
            UpstreamProtocol::Http1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(UpstreamError::reset)?;
                tokio::spawn(conn);
                Ok(FreshSender::H1(sender))
            }
            UpstreamProtocol::Http2 => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(UpstreamError::reset)?;
                tokio::spawn(conn);
                Ok(FreshSender::H2(sender))
            }
        }
    }

    /// The request target of a probe: origin-form for HTTP/1.1, absolute
    /// for HTTP/2.
    pub(crate) fn probe_uri(&self, server: &UpstreamServer, path: &str) -> Option<http::Uri> {
        match self.settings.protocol {
            UpstreamProtocol::Http1 => path.parse().ok(),
            UpstreamProtocol::Http2 => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}{path}", server.authority)
                    .parse()
                    .ok()
            }
        }
    }

    /// Whether requests to this pool go over TLS (for :scheme on HTTP/2).
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// Closes connections idle longer than idle_timeout.
    fn reap(&self) {
        for s in self.members().servers.iter() {
            s.reap(self.settings.idle_timeout);
        }
    }

    /// Idle HTTP/1.1 connections per server, for tests and the admin API.
    pub fn idle_counts(&self) -> Vec<usize> {
        self.members()
            .servers
            .iter()
            .map(|s| s.idle_count())
            .collect()
    }
}

/// Health state of a pool's servers, to carry into the next generation.
fn inherit(previous: Option<&UpstreamPool>, label: &str) -> Arc<ServerHealth> {
    previous
        .and_then(|p| {
            p.members()
                .servers
                .iter()
                .find(|s| &*s.label == label)
                .cloned()
        })
        .map(|s| s.health.clone())
        .unwrap_or_default()
}

fn spawn_reaper(pool: Weak<UpstreamPool>, idle_timeout: Duration) {
    let tick = (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            match pool.upgrade() {
                Some(p) => p.reap(),
                None => break,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::net::TcpStream;

    /// A request whose body never ends, sent on a connection to a server
    /// that reads and never answers; `fail` makes the body fail at once.
    async fn exchange(fail: bool) -> UpstreamError {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
        let task = tokio::spawn(conn);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stream = futures_util::stream::once(async move {
            let _ = rx.await;
            Err::<http_body::Frame<bytes::Bytes>, crate::body::BoxError>("client went away".into())
        });
        let mut body = RequestBody::boxed(http_body_util::StreamBody::new(stream).boxed());
        let watch = body.watch();
        let req = Request::post("/").body(body).unwrap();
        let sent = tokio::spawn(async move { sender.send_request(req).await });
        if fail {
            let _ = tx.send(());
        } else {
            // The connection's task goes away under the pending request.
            tokio::task::yield_now().await;
            task.abort();
        }
        let e = sent.await.unwrap().unwrap_err();
        server.abort();
        UpstreamError::from_hyper(e, Some(&watch))
    }

    #[tokio::test]
    async fn only_the_request_body_s_own_failure_is_the_client_s() {
        assert!(matches!(exchange(true).await, UpstreamError::ClientBody(_)));
        assert!(matches!(exchange(false).await, UpstreamError::Internal(_)));
    }
}
