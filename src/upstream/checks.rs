//! The active health checker of a pool: probes its servers and writes
//! what it learns into their [`ServerHealth`](super::health::ServerHealth)
//! (the guarantees are in [`super::health`]).

use super::pool::UpstreamPool;
use super::rounds::Rounds;
use super::server::UpstreamServer;
use crate::body::RequestBody;
use crate::config::HealthCheck;
use http::{Method, Request};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

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
        self.start_resolving(self.checks.stop.subscribe());
        match &self.checks.cfg {
            Some(cfg) => spawn_checker(
                Arc::downgrade(self),
                cfg.clone(),
                self.checks.stop.subscribe(),
            ),
            None => {
                for s in self.members().servers.iter() {
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

/// Runs the active checks of a pool until it is retired or dropped. Each
/// round probes the members in force then; the counts in a row are kept
/// per server (by address), so a DNS change does not reset the others.
fn spawn_checker(pool: Weak<UpstreamPool>, cfg: HealthCheck, stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        // (good, bad) checks in a row.
        let mut runs: HashMap<Arc<str>, (u32, u32)> = HashMap::new();
        let mut rounds = Rounds::new(pool, cfg.interval.0, stop);
        while let Some(p) = rounds.next().await {
            let servers: Vec<Arc<UpstreamServer>> = p.members().servers.to_vec();
            let checks = servers.iter().map(|s| {
                let p = p.clone();
                let s = s.clone();
                let path = cfg.path.get_ref().clone();
                async move { check_once(&p, &s, &path, cfg.timeout.0).await }
            });
            let Some(results) = rounds
                .until_stopped(futures_util::future::join_all(checks))
                .await
            else {
                break;
            };
            let retired = p.checks.retired();
            if *retired {
                break;
            }
            runs.retain(|label, _| servers.iter().any(|s| s.label == *label));
            for (server, ok) in servers.iter().zip(results) {
                let run = runs.entry(server.label.clone()).or_default();
                record(&p, server, &cfg, run, ok);
            }
        }
    });
}

/// Counts one probe result and turns the server in or out of rotation
/// when a threshold is reached.
fn record(
    p: &UpstreamPool,
    server: &UpstreamServer,
    cfg: &HealthCheck,
    (good, bad): &mut (u32, u32),
    ok: bool,
) {
    if ok {
        *good += 1;
        *bad = 0;
        if !server.health.is_healthy() && *good >= cfg.healthy_threshold {
            server.health.set_healthy(true);
            tracing::info!(upstream = %p.name, server = %server.label, "server healthy again");
        }
    } else {
        *bad += 1;
        *good = 0;
        if server.health.is_healthy() && *bad >= cfg.unhealthy_threshold {
            server.health.set_healthy(false);
            tracing::warn!(upstream = %p.name, server = %server.label, "server failed its health checks: out of rotation");
        }
    }
}

async fn check_once(
    pool: &UpstreamPool,
    server: &UpstreamServer,
    path: &str,
    timeout: Duration,
) -> bool {
    let probe = async {
        let mut sender = pool.connect_fresh(server).await.ok()?;
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = pool.probe_uri(server, path)?;
        if let Ok(v) = http::HeaderValue::from_str(&server.authority) {
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
