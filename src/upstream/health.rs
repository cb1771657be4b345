//! Server health: active checks and passive ejection.
//!
//! Each server has one [`ServerHealth`], shared by every generation of its
//! pool (matched by upstream name and address), so a reload keeps what the
//! checks learned. Only the generation in force checks: a pool's checker
//! starts when its snapshot is swapped in and stops when a reload replaces
//! the pool (see [`ActiveChecks`]). Guarantees:
//! - a server counts as healthy until active checks say otherwise: it turns
//!   unhealthy after `unhealthy_threshold` failed checks in a row and
//!   healthy again after `healthy_threshold` good ones; a check is a GET of
//!   `health.path` on a fresh connection, good when it answers 2xx or 3xx
//!   within `health.timeout`; checks are not upstream requests (not counted,
//!   not pooled);
//! - a pool without a `health` table (also one whose table a reload
//!   removed) has no active checks: its servers count as healthy;
//! - a refused connect or a connection reset takes the server out for
//!   `passive_eject` (0 turns this off); 5xx answers do not;
//! - the choice order: servers healthy and not ejected; if every healthy
//!   server is ejected, all healthy ones (panic mode: better to try than to
//!   fail); if no server is healthy, none (the caller answers 503).

use super::UpstreamPool;
use crate::body::RequestBody;
use crate::config::HealthCheck;
use http::{Method, Request};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sys::monotonic_ms;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// Health of one server, shared across reloads.
#[derive(Debug)]
pub struct ServerHealth {
    /// Result of active checks (true until checks say otherwise).
    healthy: AtomicBool,
    /// Passively ejected until this time ([`monotonic_ms`]), 0 when not ejected.
    ejected_until: AtomicU64,
}

impl Default for ServerHealth {
    fn default() -> Self {
        ServerHealth {
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
        }
    }
}

impl ServerHealth {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, v: bool) {
        self.healthy.store(v, Ordering::Relaxed);
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && monotonic_ms() < until
    }

    pub fn eject_for(&self, d: Duration) {
        if !d.is_zero() {
            self.ejected_until
                .store(monotonic_ms() + d.as_millis() as u64, Ordering::Relaxed);
        }
    }
}

/// The active checks of one pool, as built for one generation of the
/// config.
///
/// Guarantees: no probe is sent before [`UpstreamPool::activate`] (a pool
/// built for a reload that is then rejected never probes), and no result
/// is written after [`UpstreamPool::retire`] returns (a superseded
/// generation stops at the swap, even while requests in flight still hold
/// its snapshot).
pub(super) struct ActiveChecks {
    cfg: Option<HealthCheck>,
    /// Set by the first `activate`: the checker runs at most once.
    started: AtomicBool,
    /// True once retired. Held while a round's results are written, so a
    /// write never lands after `retire`.
    retired: Mutex<bool>,
    stop: watch::Sender<bool>,
}

impl ActiveChecks {
    pub(super) fn new(cfg: Option<HealthCheck>) -> ActiveChecks {
        ActiveChecks {
            cfg,
            started: AtomicBool::new(false),
            retired: Mutex::new(false),
            stop: watch::channel(false).0,
        }
    }

    fn retired(&self) -> MutexGuard<'_, bool> {
        // A bool cannot be left half-written by a panic.
        self.retired.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl UpstreamPool {
    /// Puts this pool's health checking in force: called once its snapshot
    /// is the one serving (after [`UpstreamPool::retire`] on the pool it
    /// replaces). With a `health` table the checker starts; without one the
    /// servers count as healthy, whatever checks of an earlier generation
    /// had found. Idempotent: a pool a reload keeps goes on as it was.
    pub fn activate(self: &Arc<Self>) {
        if self.checks.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let retired = self.checks.retired();
        if *retired {
            return;
        }
        match &self.checks.cfg {
            Some(cfg) => spawn_checker(
                Arc::downgrade(self),
                cfg.clone(),
                self.checks.stop.subscribe(),
            ),
            None => {
                for s in self.servers.iter() {
                    s.health.set_healthy(true);
                }
            }
        }
    }

    /// Stops this pool's checks for good: a reload replaced the pool. Once
    /// this returns, its checker writes no more health state (which the
    /// next generation's servers share).
    pub fn retire(&self) {
        *self.checks.retired() = true;
        let _ = self.checks.stop.send(true);
    }
}

/// Runs the active checks of a pool until it is retired or dropped.
fn spawn_checker(pool: Weak<UpstreamPool>, cfg: HealthCheck, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let n = match pool.upgrade() {
            Some(p) => p.servers.len(),
            None => return,
        };
        let mut good = vec![0u32; n];
        let mut bad = vec![0u32; n];
        let mut interval = tokio::time::interval(cfg.interval.0);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A dropped sender (the pool is gone) ends the checker too.
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let Some(p) = pool.upgrade() else { break };
            let checks = p.servers.iter().map(|s| {
                let p = p.clone();
                let s = s.clone();
                let path = cfg.path.get_ref().clone();
                async move { check_once(&p, &s, &path, cfg.timeout.0).await }
            });
            let results = tokio::select! {
                r = futures_util::future::join_all(checks) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            let retired = p.checks.retired();
            if *retired {
                break;
            }
            for (i, ok) in results.into_iter().enumerate() {
                let server = &p.servers[i];
                if ok {
                    good[i] += 1;
                    bad[i] = 0;
                    if !server.health.is_healthy() && good[i] >= cfg.healthy_threshold {
                        server.health.set_healthy(true);
                        tracing::info!(upstream = %p.name, server = %server.label, "server healthy again");
                    }
                } else {
                    bad[i] += 1;
                    good[i] = 0;
                    if server.health.is_healthy() && bad[i] >= cfg.unhealthy_threshold {
                        server.health.set_healthy(false);
                        tracing::warn!(upstream = %p.name, server = %server.label, "server failed its health checks: out of rotation");
                    }
                }
            }
        }
    });
}

async fn check_once(
    pool: &UpstreamPool,
    server: &super::UpstreamServer,
    path: &str,
    timeout: Duration,
) -> bool {
    let probe = async {
        let mut sender = pool.connect_fresh(server).await.ok()?;
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = pool.probe_uri(server, path)?;
        if let Ok(v) = http::HeaderValue::from_str(&server.label) {
            req.headers_mut().insert(http::header::HOST, v);
        }
        req.headers_mut().insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("portico-health-check"),
        );
        let resp = sender.send(req).await.ok()?;
        let status = resp.status();
        Some(status.is_success() || status.is_redirection())
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(true)))
}

/// Health state of a pool's servers, to carry into the next generation.
pub(super) fn inherit(previous: Option<&UpstreamPool>, addr: &str) -> Arc<ServerHealth> {
    previous
        .and_then(|p| p.servers.iter().find(|s| &*s.label == addr))
        .map(|s| s.health.clone())
        .unwrap_or_default()
}
