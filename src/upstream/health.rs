//! Server health: active checks and passive ejection.
//!
//! Each server has one [`ServerHealth`], shared by every generation of its
//! pool (matched by upstream name and address), so a reload keeps what the
//! checks learned. Only the generation in force checks: a pool's checker
//! (in `checks.rs`) starts when its snapshot is swapped in and stops when a
//! reload replaces the pool (see [`ActiveChecks`]). Guarantees:
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

use crate::config::HealthCheck;
use crate::sys::monotonic_ms;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
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
/// Guarantees: no probe is sent before `UpstreamPool::activate` (a pool
/// built for a reload that is then rejected never probes), and no result
/// is written after `UpstreamPool::retire` returns (a superseded
/// generation stops at the swap, even while requests in flight still hold
/// its snapshot).
pub(super) struct ActiveChecks {
    pub(super) cfg: Option<HealthCheck>,
    /// Set by the first `activate`: the checker runs at most once.
    pub(super) started: AtomicBool,
    /// True once retired. Held while a round's results are written, so a
    /// write never lands after `retire`.
    retired: Mutex<bool>,
    pub(super) stop: watch::Sender<bool>,
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

    pub(super) fn retired(&self) -> MutexGuard<'_, bool> {
        // A bool cannot be left half-written by a panic.
        self.retired.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
