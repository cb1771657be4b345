//! The pool: servers, their keepalive connections, and sending a request
//! (see the guarantees in [`crate::upstream`]).

use super::balancer::Balancer;
use super::health::{ActiveChecks, ServerHealth};
use super::retry::RetryBudget;
use crate::body::{BodyWatch, RequestBody};
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::observe::metrics::{Metrics, ServerMetrics, UpstreamOutcome};
use crate::tls::{ClientIo, ClientTls, ConnectError};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

/// Why an upstream exchange failed, in the terms of metrics and of the
/// status the client gets.
#[derive(Debug)]
pub enum UpstreamError {
    /// TCP connect refused or failed.
    Connect(std::io::Error),
    /// TCP connect took longer than connect_timeout.
    ConnectTimeout,
    /// The connection broke after the request was sent, before a response head.
    Reset(hyper::Error),
    /// The upstream answered with something that is not HTTP.
    InvalidResponse(hyper::Error),
    /// The client's own request body failed (bad chunked framing, or the client went away).
    ClientBody(hyper::Error),
    /// hyper gave up on the exchange for a reason that is neither the
    /// client's body nor the server (the connection's task is gone).
    Internal(hyper::Error),
}

impl UpstreamError {
    /// The `outcome` label of portico_upstream_requests_total.
    pub fn outcome(&self) -> UpstreamOutcome {
        match self {
            UpstreamError::Connect(_) => UpstreamOutcome::ConnectError,
            UpstreamError::ConnectTimeout => UpstreamOutcome::Timeout,
            UpstreamError::Reset(_) | UpstreamError::ClientBody(_) | UpstreamError::Internal(_) => {
                UpstreamOutcome::Reset
            }
            UpstreamError::InvalidResponse(_) => UpstreamOutcome::Http5xx,
        }
    }

    /// `body`: the watch of the request body, if it was not empty. hyper
    /// calls both a failed request body and its own misuse "user" errors;
    /// only the body's own failure is the client's.
    fn from_hyper(e: hyper::Error, body: Option<&BodyWatch>) -> UpstreamError {
        if e.is_user() {
            if body.is_some_and(BodyWatch::failed) {
                UpstreamError::ClientBody(e)
            } else {
                UpstreamError::Internal(e)
            }
        } else if e.is_parse() || e.is_parse_status() {
            UpstreamError::InvalidResponse(e)
        } else {
            UpstreamError::Reset(e)
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect failed: {e}"),
            UpstreamError::ConnectTimeout => f.write_str("connect timed out"),
            UpstreamError::Reset(e) => write!(f, "connection failed before a response: {e}"),
            UpstreamError::InvalidResponse(e) => write!(f, "invalid response: {e}"),
            UpstreamError::ClientBody(e) => write!(f, "client request body failed: {e}"),
            UpstreamError::Internal(e) => write!(f, "upstream exchange abandoned: {e}"),
        }
    }
}

/// Settings a pool applies to every server's connections.
#[derive(Debug, Clone)]
struct PoolSettings {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    passive_eject: Duration,
}

/// One `[upstream.NAME]`: its servers, balancer and connection settings.
pub struct UpstreamPool {
    pub name: Arc<str>,
    /// The definition it was built from; a reload reuses this pool, with its
    /// connections, when the new definition is equal.
    pub definition: UpstreamConfig,
    pub servers: Box<[Arc<UpstreamServer>]>,
    /// Present: HTTPS to every server.
    pub tls: Option<ClientTls>,
    /// Whether active checks run (so /ready waits for a healthy server).
    pub has_health_checks: bool,
    pub retry_budget: RetryBudget,
    pub(super) checks: ActiveChecks,
    balancer: Balancer,
    settings: PoolSettings,
}

/// No server can take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoServer {
    /// Every server failed its active checks.
    Unhealthy,
    /// Every usable server was already tried for this request.
    AllTried,
}

/// Where to connect: an address, or a name resolved at connect time.
#[derive(Debug)]
enum Target {
    Addr(SocketAddr),
    Name(String),
}

struct IdleConn {
    sender: http1::SendRequest<RequestBody>,
    /// The task driving the connection, to close it at once when needed.
    task: AbortHandle,
    since: Instant,
}

/// One server of a pool with its idle connections.
pub struct UpstreamServer {
    /// The address as written in the config: the `server` label and the
    /// access log's upstream field.
    pub label: Arc<str>,
    /// Host part of the address: the TLS server name unless one is configured.
    host: String,
    /// portico_upstream_requests_total of this server; the pipeline records
    /// one outcome per attempt.
    pub metrics: Arc<ServerMetrics>,
    target: Target,
    pub health: Arc<ServerHealth>,
    idle: Mutex<Vec<IdleConn>>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Held while an HTTP/2 connection is being made, so that concurrent
    /// first requests share one connection instead of racing to open several.
    h2_connecting: tokio::sync::Mutex<()>,
    max_idle: usize,
}

/// A pooled HTTP/1.1 connection on loan to one exchange; give it back with
/// [`PoolReturn::release`] once the response body was read to the end, or
/// close it with [`PoolReturn::discard`].
pub struct PoolReturn {
    sender: http1::SendRequest<RequestBody>,
    task: AbortHandle,
    server: Arc<UpstreamServer>,
    /// Tells whether the request body was read to its end; `None`: the
    /// body was empty (nothing to wait for).
    body_sent: Option<BodyWatch>,
}

impl PoolReturn {
    fn new(
        sender: http1::SendRequest<RequestBody>,
        task: AbortHandle,
        server: &Arc<UpstreamServer>,
        body_sent: Option<BodyWatch>,
    ) -> PoolReturn {
        PoolReturn {
            sender,
            task,
            server: server.clone(),
            body_sent,
        }
    }

    /// Returns the connection to its server's idle stack if the request
    /// went out in full too; otherwise closes it: hyper would send the next
    /// request only after the rest of this one's body, which may never come
    /// (a server that answered an upload early, without reading it).
    pub fn release(self) {
        if self.body_sent.as_ref().is_some_and(|s| !s.ended()) {
            return self.discard();
        }
        self.server.put_idle(self.sender, self.task);
    }

    /// Closes the connection now, ending whatever of the exchange is still
    /// under way (a request body still being sent, a response body unread).
    pub fn discard(self) {
        self.task.abort();
    }
}

/// A failed send, with the request when none of it reached the server
/// (so it may go to another server).
pub struct SendFailure {
    pub error: UpstreamError,
    pub unsent: Option<Request<RequestBody>>,
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
    pub response: Response<Incoming>,
    /// For HTTP/1.1: the connection, to return when the body is done.
    pub pooled: Option<PoolReturn>,
}

impl Exchange {
    fn pooled(response: Response<Incoming>, pooled: PoolReturn) -> Exchange {
        Exchange {
            response,
            pooled: Some(pooled),
        }
    }
}

impl UpstreamPool {
    /// Builds a pool and starts its idle reaper; its health checks start
    /// with [`UpstreamPool::activate`]. Health
    /// state is carried over from `previous` (the pool of the same name in
    /// the config being replaced). Each server's counters come from
    /// `metrics`, keyed by (pool, address), so they go on when a reload
    /// rebuilds the pool. Must run inside the runtime.
    pub fn new(
        name: &str,
        def: &UpstreamConfig,
        tls: Option<ClientTls>,
        previous: Option<&UpstreamPool>,
        metrics: &Metrics,
    ) -> Arc<UpstreamPool> {
        let settings = PoolSettings {
            protocol: def.protocol,
            connect_timeout: def.connect_timeout.0,
            idle_timeout: def.idle_timeout.0,
            max_idle: def.max_idle_per_server,
            passive_eject: def.passive_eject.0,
        };
        let servers: Vec<Arc<UpstreamServer>> = def
            .servers
            .get_ref()
            .iter()
            .map(|s| {
                let host = match s.addr.parse::<SocketAddr>() {
                    Ok(a) => a.ip().to_string(),
                    Err(_) => s
                        .addr
                        .rsplit_once(':')
                        .map(|(h, _)| h.to_string())
                        .unwrap_or_default(),
                };
                Arc::new(UpstreamServer {
                    label: Arc::from(s.addr.as_str()),
                    host,
                    metrics: metrics.server(name, &s.addr),
                    target: match s.addr.parse::<SocketAddr>() {
                        Ok(a) => Target::Addr(a),
                        Err(_) => Target::Name(s.addr.clone()),
                    },
                    health: inherit(previous, &s.addr),
                    idle: Mutex::new(Vec::new()),
                    h2: Mutex::new(None),
                    h2_connecting: tokio::sync::Mutex::new(()),
                    max_idle: settings.max_idle,
                })
            })
            .collect();
        let weights: Vec<u32> = def.servers.get_ref().iter().map(|s| s.weight).collect();
        let pool = Arc::new(UpstreamPool {
            name: Arc::from(name),
            definition: def.clone(),
            servers: servers.into_boxed_slice(),
            tls,
            has_health_checks: def.health.is_some(),
            retry_budget: RetryBudget::default(),
            checks: ActiveChecks::new(def.health.clone()),
            balancer: Balancer::new(&weights),
            settings,
        });
        spawn_reaper(Arc::downgrade(&pool), pool.settings.idle_timeout);
        pool
    }

    /// Whether `previous` can serve in place of a pool built from `def`
    /// with `tls`: same definition, same certificate files.
    pub fn reusable_for(&self, def: &UpstreamConfig, tls: Option<&ClientTls>) -> bool {
        &self.definition == def
            && self.tls.as_ref().map(|t| t.fingerprint) == tls.map(|t| t.fingerprint)
    }

    /// Whether some server passes its active checks (always, without checks).
    pub fn any_healthy(&self) -> bool {
        self.servers.iter().any(|s| s.health.is_healthy())
    }

    /// The next server in round-robin order among those in rotation and not
    /// in `tried` (indexes). Panic mode: when every healthy server is
    /// passively ejected, ejection is ignored.
    pub fn pick(&self, tried: &[usize]) -> Result<usize, NoServer> {
        let s = &self.servers;
        let (i, found) = self
            .balancer
            .pick(|i| !tried.contains(&i) && s[i].health.is_healthy() && !s[i].health.is_ejected());
        if found {
            return Ok(i);
        }
        let (i, found) = self
            .balancer
            .pick(|i| !tried.contains(&i) && s[i].health.is_healthy());
        if found {
            return Ok(i);
        }
        if self.any_healthy() {
            Err(NoServer::AllTried)
        } else {
            Err(NoServer::Unhealthy)
        }
    }

    /// Records a failed exchange with `server`: refused connects and resets
    /// take it out of rotation for passive_eject.
    pub fn record_failure(&self, server: &UpstreamServer, e: &UpstreamError) {
        if matches!(e, UpstreamError::Connect(_) | UpstreamError::Reset(_)) {
            server.health.eject_for(self.settings.passive_eject);
            (!self.settings.passive_eject.is_zero()).then(|| server.metrics.record_ejection());
        }
    }

    /// Sends `req` to `server`, on a pooled connection when one is idle.
    pub async fn send(
        &self,
        server: &Arc<UpstreamServer>,
        req: Request<RequestBody>,
    ) -> Result<Exchange, SendFailure> {
        match self.settings.protocol {
            UpstreamProtocol::Http1 => self.send_h1(server, req).await,
            UpstreamProtocol::Http2 => self.send_h2(server, req).await,
        }
    }

    async fn send_h1(
        &self,
        server: &Arc<UpstreamServer>,
        mut req: Request<RequestBody>,
    ) -> Result<Exchange, SendFailure> {
        let body_sent =
            (!http_body::Body::is_end_stream(req.body())).then(|| req.body_mut().watch());
        while let Some((mut sender, task)) = server.take_idle(self.settings.idle_timeout) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let pooled = PoolReturn::new(sender, task, server, body_sent);
                    return Ok(Exchange::pooled(response, pooled));
                }
                Err(mut e) => match e.take_message() {
                    // Nothing was sent: the connection died while idle.
                    Some(r) => req = r,
                    None => {
                        let e = UpstreamError::from_hyper(e.into_error(), body_sent.as_ref());
                        return Err(e.into());
                    }
                },
            }
        }
        // The rare path, boxed so the hot path's future stays small.
        let (mut sender, task) = match Box::pin(self.connect_h1(server)).await {
            Ok(s) => s,
            Err(error) => {
                return Err(SendFailure {
                    error,
                    unsent: Some(req),
                })
            }
        };
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::from_hyper(e, body_sent.as_ref()))?;
        let pooled = PoolReturn::new(sender, task, server, body_sent);
        Ok(Exchange::pooled(response, pooled))
    }

    async fn connect_h1(
        &self,
        server: &UpstreamServer,
    ) -> Result<(http1::SendRequest<RequestBody>, AbortHandle), UpstreamError> {
        let io = self.connect(server).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(UpstreamError::Reset)?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok((sender, task.abort_handle()))
    }

    async fn send_h2(
        &self,
        server: &Arc<UpstreamServer>,
        mut req: Request<RequestBody>,
    ) -> Result<Exchange, SendFailure> {
        let mut sender = match server.h2_sender() {
            Some(s) => s,
            None => match Box::pin(self.connect_h2(server)).await {
                Ok(s) => s,
                Err(error @ (UpstreamError::Connect(_) | UpstreamError::ConnectTimeout)) => {
                    return Err(SendFailure {
                        error,
                        unsent: Some(req),
                    })
                }
                Err(error) => return Err(error.into()),
            },
        };
        sender.ready().await.map_err(UpstreamError::Reset)?;
        let body = (!http_body::Body::is_end_stream(req.body())).then(|| req.body_mut().watch());
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::from_hyper(e, body.as_ref()))?;
        Ok(Exchange {
            response,
            pooled: None,
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
            .map_err(UpstreamError::Reset)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection ended");
            }
        });
        server.set_h2_sender(sender.clone());
        Ok(sender)
    }

    async fn connect(&self, server: &UpstreamServer) -> Result<TokioIo<ClientIo>, UpstreamError> {
        let (tls, host) = (self.tls.as_ref(), server.host.as_str());
        let timeout = self.settings.connect_timeout;
        let io = match &server.target {
            Target::Addr(a) => crate::tls::connect(*a, tls, host, timeout).await,
            Target::Name(n) => crate::tls::connect(n.as_str(), tls, host, timeout).await,
        };
        match io {
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
                let (sender, conn) = http1::handshake(io).await.map_err(UpstreamError::Reset)?;
                tokio::spawn(conn);
                Ok(FreshSender::H1(sender))
            }
            UpstreamProtocol::Http2 => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(UpstreamError::Reset)?;
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
                format!("{scheme}://{}{path}", server.label).parse().ok()
            }
        }
    }

    /// Whether requests to this pool go over TLS (for :scheme on HTTP/2).
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// Closes connections idle longer than idle_timeout.
    fn reap(&self) {
        for s in self.servers.iter() {
            s.reap(self.settings.idle_timeout);
        }
    }

    /// Idle HTTP/1.1 connections per server, for tests and the admin API.
    pub fn idle_counts(&self) -> Vec<usize> {
        self.servers
            .iter()
            .map(|s| s.idle.lock().map(|v| v.len()).unwrap_or(0))
            .collect()
    }
}

impl UpstreamServer {
    /// Whether the server passes its active checks (portico_upstream_healthy).
    /// Every server starts healthy.
    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    fn take_idle(
        &self,
        idle_timeout: Duration,
    ) -> Option<(http1::SendRequest<RequestBody>, AbortHandle)> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < idle_timeout && !c.sender.is_closed() {
                return Some((c.sender, c.task));
            }
        }
        None
    }

    fn put_idle(&self, sender: http1::SendRequest<RequestBody>, task: AbortHandle) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(IdleConn {
                    sender,
                    task,
                    since: Instant::now(),
                });
            }
        }
    }

    fn reap(&self, idle_timeout: Duration) {
        let expired: Vec<IdleConn> = match self.idle.lock() {
            Ok(mut idle) => {
                // The stack is LIFO, so the oldest connections are at the front.
                let keep_from = idle
                    .iter()
                    .position(|c| c.since.elapsed() < idle_timeout && !c.sender.is_closed())
                    .unwrap_or(idle.len());
                idle.drain(..keep_from).collect()
            }
            Err(_) => return,
        };
        // Dropping the senders outside the lock ends their connection tasks,
        // which closes the sockets.
        drop(expired);
    }

    fn h2_sender(&self) -> Option<http2::SendRequest<RequestBody>> {
        let slot = self.h2.lock().ok()?;
        slot.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn set_h2_sender(&self, s: http2::SendRequest<RequestBody>) {
        if let Ok(mut slot) = self.h2.lock() {
            *slot = Some(s);
        }
    }
}

/// Health state of a pool's servers, to carry into the next generation.
fn inherit(previous: Option<&UpstreamPool>, addr: &str) -> Arc<ServerHealth> {
    previous
        .and_then(|p| p.servers.iter().find(|s| &*s.label == addr))
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
