//! One upstream server (one address) and its keepalive connections.
//!
//! Guarantees: the idle stack is LIFO and capped at `max_idle` (0: no
//! fixed cap, so it holds at most the connections that recent demand
//! opened, and the reaper expires those unused for idle_timeout); a
//! connection goes onto it only while the server is a member of its pool:
//! once [`UpstreamServer::retire`] ran (a DNS answer dropped the address),
//! idle connections are closed and returned ones are closed too.

use super::h1::{H1Conn, Home};
use super::health::ServerHealth;
use crate::body::RequestBody;
use crate::observe::metrics::ServerMetrics;
use crate::sys::coarse_now;
use hyper::client::conn::http2;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

struct IdleConn {
    conn: H1Conn,
    since: Instant,
}

/// One server of a pool with its idle connections.
pub struct UpstreamServer {
    /// The address connected to ("ip:port"): the `server` label and the
    /// access log's upstream field.
    pub label: Arc<str>,
    /// The server as written in the config ("host:port"): the Host of
    /// health checks. The same as `label` for an IP address.
    pub(super) authority: Arc<str>,
    /// Host part of `authority`: the TLS server name unless one is configured.
    pub(super) host: Arc<str>,
    /// portico_upstream_requests_total of this server; the pipeline records
    /// one outcome per attempt.
    pub metrics: Arc<ServerMetrics>,
    pub(super) addr: SocketAddr,
    pub health: Arc<ServerHealth>,
    /// Set once a DNS answer dropped this address: connections coming back
    /// from requests still in flight are closed instead of kept.
    retired: AtomicBool,
    idle: Mutex<Vec<IdleConn>>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Held while an HTTP/2 connection is being made, so that concurrent
    /// first requests share one connection instead of racing to open several.
    pub(super) h2_connecting: tokio::sync::Mutex<()>,
    max_idle: usize,
}

impl UpstreamServer {
    /// A server at `addr`, written `authority` in the config.
    pub(super) fn new(
        authority: &Arc<str>,
        addr: SocketAddr,
        metrics: Arc<ServerMetrics>,
        health: Arc<ServerHealth>,
        max_idle: usize,
    ) -> UpstreamServer {
        let label: Arc<str> = if authority.parse::<SocketAddr>().is_ok() {
            authority.clone()
        } else {
            Arc::from(addr.to_string())
        };
        let host = match authority.parse::<SocketAddr>() {
            Ok(a) => Arc::from(a.ip().to_string()),
            Err(_) => Arc::from(authority.rsplit_once(':').map_or("", |(h, _)| h)),
        };
        UpstreamServer {
            label,
            authority: authority.clone(),
            host,
            metrics,
            addr,
            health,
            retired: AtomicBool::new(false),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
            max_idle,
        }
    }

    /// Takes the server out of its pool for good: its idle connections
    /// close now, an HTTP/2 connection once its streams in flight end.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        let idle = self.idle.lock().map(|mut v| std::mem::take(&mut *v));
        drop(idle);
        let h2 = self.h2.lock().map(|mut s| s.take());
        drop(h2);
    }

    /// Idle HTTP/1.1 connections now.
    pub(super) fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Whether the server passes its active checks (portico_upstream_healthy).
    /// Every server starts healthy.
    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    /// The most recently used idle connection not older than
    /// `idle_timeout`, without checking that it is still open (see
    /// [`H1Conn::alive`]; closing it is better done outside the lock).
    pub(super) fn take_idle(&self, idle_timeout: Duration) -> Option<H1Conn> {
        let mut expired = Vec::new();
        let now = coarse_now();
        let mut idle = self.idle.lock().ok()?;
        let found = loop {
            match idle.pop() {
                Some(c) if now.saturating_duration_since(c.since) < idle_timeout => {
                    break Some(c.conn)
                }
                Some(c) => expired.push(c),
                None => break None,
            }
        };
        drop(idle);
        // The sockets close outside the lock.
        drop(expired);
        found
    }

    /// Closes the connections idle longer than `idle_timeout` and those
    /// their server closed.
    pub(super) fn reap(&self, idle_timeout: Duration) {
        let mut expired = Vec::new();
        let now = coarse_now();
        if let Ok(mut idle) = self.idle.lock() {
            // The stack is LIFO, so the oldest connections are at the front.
            let keep_from = idle
                .iter()
                .position(|c| now.saturating_duration_since(c.since) < idle_timeout)
                .unwrap_or(idle.len());
            expired.extend(idle.drain(..keep_from));
            let mut i = 0;
            while i < idle.len() {
                if idle[i].conn.alive() {
                    i += 1;
                } else {
                    expired.push(idle.remove(i));
                }
            }
        }
        // The sockets close outside the lock.
        drop(expired);
    }

    pub(super) fn h2_sender(&self) -> Option<http2::SendRequest<RequestBody>> {
        let slot = self.h2.lock().ok()?;
        slot.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    pub(super) fn set_h2_sender(&self, s: http2::SendRequest<RequestBody>) {
        if let Ok(mut slot) = self.h2.lock() {
            *slot = Some(s);
        }
    }
}

impl Home for UpstreamServer {
    fn put_idle(&self, conn: H1Conn) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        // Checked under the lock, so that `retire` cannot miss it.
        let room = self.max_idle == 0 || idle.len() < self.max_idle;
        if room && !self.retired.load(Ordering::Relaxed) {
            idle.push(IdleConn {
                conn,
                since: coarse_now(),
            });
        } else {
            // The socket closes outside the lock.
            drop(idle);
            drop(conn);
        }
    }
}
