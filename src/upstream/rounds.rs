//! The clock of a pool's background work (active health checks, DNS
//! lookups): rounds at a fixed interval for as long as the pool lives and
//! its generation is in force.

use super::pool::UpstreamPool;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

/// Rounds every `every`, the first at once; a round that overran delays
/// the next rather than bunching them up.
pub(super) struct Rounds {
    pool: Weak<UpstreamPool>,
    interval: Interval,
    stop: watch::Receiver<bool>,
}

impl Rounds {
    pub(super) fn new(
        pool: Weak<UpstreamPool>,
        every: Duration,
        stop: watch::Receiver<bool>,
    ) -> Rounds {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Rounds {
            pool,
            interval,
            stop,
        }
    }

    /// Waits for the next round: the pool, or `None` once `stop` turned
    /// true (or its sender is gone) or the pool was dropped.
    pub(super) async fn next(&mut self) -> Option<Arc<UpstreamPool>> {
        tokio::select! {
            _ = self.interval.tick() => {}
            _ = self.stop.wait_for(|s| *s) => return None,
        }
        self.pool.upgrade()
    }

    /// Runs `work`, given up when `stop` turns true meanwhile (`None`).
    pub(super) async fn until_stopped<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            r = work => Some(r),
            _ = self.stop.wait_for(|s| *s) => None,
        }
    }
}
