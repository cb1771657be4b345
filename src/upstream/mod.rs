//! Upstream pools: server choice, keepalive connections, sending a request.
//!
//! An [`UpstreamPool`] is built from one `[upstream.NAME]` table and is
//! immutable apart from atomics and the per-server idle stacks. Guarantees:
//! - servers are chosen by [`Balancer`] (round-robin, smooth weighted),
//!   never by anything about the client;
//! - an HTTP/1.1 connection goes back to its server's idle stack only after
//!   its response body was read to the end; the stack is LIFO (hot
//!   connections stay hot, surplus ones age out), capped at
//!   `max_idle_per_server`, and a reaper task closes connections idle longer
//!   than `idle_timeout` even when no request comes;
//! - HTTP/2 upstreams share one multiplexed connection per server;
//! - a request that a reused connection could not even start sending (the
//!   server closed it while idle: the keepalive race) is sent again on
//!   another connection, whatever its method, since nothing reached the
//!   server.
//!
//! Built on hyper's `client::conn` directly: checkout is a mutex-guarded
//! `Vec::pop` (never held across an await), with no per-request task or
//! channel of a general-purpose client.

mod balancer;

pub use balancer::Balancer;

use crate::body::RequestBody;
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::observe::metrics::{Metrics, ServerMetrics, UpstreamOutcome};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

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
}

impl UpstreamError {
    /// The `outcome` label of portico_upstream_requests_total.
    pub fn outcome(&self) -> UpstreamOutcome {
        match self {
            UpstreamError::Connect(_) => UpstreamOutcome::ConnectError,
            UpstreamError::ConnectTimeout => UpstreamOutcome::Timeout,
            UpstreamError::Reset(_) | UpstreamError::ClientBody(_) => UpstreamOutcome::Reset,
            UpstreamError::InvalidResponse(_) => UpstreamOutcome::Http5xx,
        }
    }

    fn from_hyper(e: hyper::Error) -> UpstreamError {
        if e.is_user() {
            UpstreamError::ClientBody(e)
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
}

/// One `[upstream.NAME]`: its servers, balancer and connection settings.
pub struct UpstreamPool {
    pub name: Arc<str>,
    /// The definition it was built from; a reload reuses this pool, with its
    /// connections, when the new definition is equal.
    pub definition: UpstreamConfig,
    pub servers: Box<[Arc<UpstreamServer>]>,
    balancer: Balancer,
    settings: PoolSettings,
}

/// Where to connect: an address, or a name resolved at connect time.
#[derive(Debug)]
enum Target {
    Addr(SocketAddr),
    Name(String),
}

struct IdleConn {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// One server of a pool with its idle connections.
pub struct UpstreamServer {
    /// The address as written in the config: the `server` label and the
    /// access log's upstream field.
    pub label: Arc<str>,
    /// portico_upstream_requests_total of this server; the pipeline records
    /// one outcome per attempt.
    pub metrics: Arc<ServerMetrics>,
    /// True until health checks say otherwise ([`UpstreamServer::set_healthy`]).
    healthy: AtomicBool,
    target: Target,
    idle: Mutex<Vec<IdleConn>>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Held while an HTTP/2 connection is being made, so that concurrent
    /// first requests share one connection instead of racing to open several.
    h2_connecting: tokio::sync::Mutex<()>,
    max_idle: usize,
}

/// A pooled HTTP/1.1 connection on loan to one exchange; give it back with
/// [`PoolReturn::release`] once the response body was read to the end.
pub struct PoolReturn {
    sender: http1::SendRequest<RequestBody>,
    server: Arc<UpstreamServer>,
}

impl PoolReturn {
    pub fn release(self) {
        self.server.put_idle(self.sender);
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

/// What a successful send gives back.
pub struct Exchange {
    pub response: Response<Incoming>,
    /// For HTTP/1.1: the connection, to return when the body is done.
    pub pooled: Option<PoolReturn>,
}

impl UpstreamPool {
    /// Builds a pool and starts its idle reaper. Must run inside the runtime.
    /// Each server's counters come from `metrics`, keyed by (pool, address),
    /// so they go on when a reload rebuilds the pool.
    pub fn new(name: &str, def: &UpstreamConfig, metrics: &Metrics) -> Arc<UpstreamPool> {
        let settings = PoolSettings {
            protocol: def.protocol,
            connect_timeout: def.connect_timeout.0,
            idle_timeout: def.idle_timeout.0,
            max_idle: def.max_idle_per_server,
        };
        let servers: Vec<Arc<UpstreamServer>> = def
            .servers
            .get_ref()
            .iter()
            .map(|s| {
                Arc::new(UpstreamServer {
                    label: Arc::from(s.addr.as_str()),
                    metrics: metrics.server(name, &s.addr),
                    healthy: AtomicBool::new(true),
                    target: match s.addr.parse::<SocketAddr>() {
                        Ok(a) => Target::Addr(a),
                        Err(_) => Target::Name(s.addr.clone()),
                    },
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
            balancer: Balancer::new(&weights),
            settings,
        });
        spawn_reaper(Arc::downgrade(&pool), pool.settings.idle_timeout);
        pool
    }

    /// The next server in round-robin order.
    pub fn pick(&self) -> &Arc<UpstreamServer> {
        let (i, _) = self.balancer.pick(|_| true);
        &self.servers[i]
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
        while let Some(mut sender) = server.take_idle(self.settings.idle_timeout) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => {
                    return Ok(Exchange {
                        response,
                        pooled: Some(PoolReturn {
                            sender,
                            server: server.clone(),
                        }),
                    })
                }
                Err(mut e) => match e.take_message() {
                    // Nothing was sent: the connection died while idle.
                    Some(r) => req = r,
                    None => return Err(UpstreamError::from_hyper(e.into_error()).into()),
                },
            }
        }
        let io = match self.connect(server).await {
            Ok(io) => io,
            Err(error) => {
                return Err(SendFailure {
                    error,
                    unsent: Some(req),
                })
            }
        };
        let (mut sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(UpstreamError::Reset)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        let response = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::from_hyper)?;
        Ok(Exchange {
            response,
            pooled: Some(PoolReturn {
                sender,
                server: server.clone(),
            }),
        })
    }

    async fn send_h2(
        &self,
        server: &Arc<UpstreamServer>,
        req: Request<RequestBody>,
    ) -> Result<Exchange, SendFailure> {
        let mut sender = match server.h2_sender() {
            Some(s) => s,
            None => match self.connect_h2(server).await {
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
        let response = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::from_hyper)?;
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

    async fn connect(&self, server: &UpstreamServer) -> Result<TokioIo<TcpStream>, UpstreamError> {
        let connect = async {
            match &server.target {
                Target::Addr(a) => TcpStream::connect(*a).await,
                Target::Name(n) => TcpStream::connect(n.as_str()).await,
            }
        };
        let stream = match tokio::time::timeout(self.settings.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Err(_) => return Err(UpstreamError::ConnectTimeout),
        };
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
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
    /// Whether the server counts as healthy (portico_upstream_healthy).
    /// Every server starts healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// For the health checker: mark the server healthy or not. (Server
    /// choice does not read it yet; active health checks will.)
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    fn take_idle(&self, idle_timeout: Duration) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < idle_timeout && !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(IdleConn {
                    sender,
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
