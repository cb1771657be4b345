//! The retry budget: retries may add at most 20% to a pool's requests.
//!
//! Counted in fixed windows of ten seconds. A few retries per window are
//! always allowed (so a quiet pool can still retry), beyond that retries
//! must stay under a fifth of the requests of the window. This keeps
//! retries from multiplying load during an outage.

use super::health::now_ms;
use std::sync::atomic::{AtomicU64, Ordering};

const WINDOW_MS: u64 = 10_000;
const MIN_RETRIES: u64 = 10;
const RATIO_PERCENT: u64 = 20;

#[derive(Debug, Default)]
pub struct RetryBudget {
    window: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    fn roll(&self) {
        let w = now_ms() / WINDOW_MS + 1;
        if self.window.load(Ordering::Relaxed) != w && self.window.swap(w, Ordering::Relaxed) != w {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a first attempt.
    pub fn request(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry from the budget, if one is left.
    pub fn try_retry(&self) -> bool {
        self.roll();
        let requests = self.requests.load(Ordering::Relaxed);
        let retries = self.retries.fetch_add(1, Ordering::Relaxed);
        if retries < MIN_RETRIES || retries * 100 < requests * RATIO_PERCENT {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_a_fifth_of_requests() {
        let b = RetryBudget::default();
        for _ in 0..1000 {
            b.request();
        }
        let granted = (0..1000).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 200);
    }

    #[test]
    fn a_quiet_pool_may_still_retry_a_little() {
        let b = RetryBudget::default();
        b.request();
        let granted = (0..20).filter(|_| b.try_retry()).count();
        assert_eq!(granted, MIN_RETRIES as usize);
    }
}
