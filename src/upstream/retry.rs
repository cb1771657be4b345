//! The retry budget of a pool: retries may not multiply load in an outage.
//!
//! Guarantees:
//! - at least [`MIN_PER_SEC`] retries are allowed in every second;
//! - over the last [`WINDOW_SECS`] seconds, retries are allowed while they
//!   number fewer than `MIN_PER_SEC * WINDOW_SECS` (so a burst may spend the
//!   floor of the whole window at once) or fewer than [`RATIO_PERCENT`] % of
//!   the pool's requests in that window, whichever is more.
//!
//! The window slides by whole seconds: one bucket per second, each an atomic
//! word holding the second it counts and its count, so a bucket from an
//! older second is reset by the first update that sees it, without a lock.
//! Concurrent retries may overshoot a limit by the number racing for it.

use crate::sys::monotonic_ms;
use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds of history that the ratio looks at.
pub const WINDOW_SECS: u64 = 10;
/// Retries always allowed per second, whatever the request count.
pub const MIN_PER_SEC: u64 = 10;
/// Retries allowed as a share of requests over the window, in percent.
pub const RATIO_PERCENT: u64 = 20;

const BUCKETS: usize = WINDOW_SECS as usize;

/// One counter per second of the window: the second (low 32 bits of it) in
/// the high half, the count in the low half.
#[derive(Debug, Default)]
struct Window {
    buckets: [AtomicU64; BUCKETS],
}

fn pack(sec: u64, count: u64) -> u64 {
    (sec << 32) | count.min(u32::MAX as u64)
}

fn unpack(word: u64) -> (u64, u64) {
    (word >> 32, word & u32::MAX as u64)
}

impl Window {
    /// Adds one to the count of second `sec`.
    fn add(&self, sec: u64) {
        let stamp = sec & u32::MAX as u64;
        let b = &self.buckets[(sec % WINDOW_SECS) as usize];
        let mut cur = b.load(Ordering::Relaxed);
        let (s, n) = unpack(cur);
        if s == stamp && n < u32::MAX as u64 {
            // The usual case, one plain add: the bucket is only reset by a
            // caller ten seconds later, and an add that lands just after
            // such a reset merely counts one event in the newer second.
            b.fetch_add(1, Ordering::Relaxed);
            return;
        }
        loop {
            let (s, n) = unpack(cur);
            let next = if s == stamp {
                pack(stamp, n + 1)
            } else {
                pack(stamp, 1)
            };
            match b.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The count of second `sec` alone.
    fn at(&self, sec: u64) -> u64 {
        let (s, n) = unpack(self.buckets[(sec % WINDOW_SECS) as usize].load(Ordering::Relaxed));
        if s == sec & u32::MAX as u64 {
            n
        } else {
            0
        }
    }

    /// The count of the window that ends with second `sec`.
    fn sum(&self, sec: u64) -> u64 {
        let stamp = sec & u32::MAX as u64;
        self.buckets
            .iter()
            .map(|b| unpack(b.load(Ordering::Relaxed)))
            .filter(|&(s, _)| (stamp.wrapping_sub(s) & u32::MAX as u64) < WINDOW_SECS)
            .map(|(_, n)| n)
            .sum()
    }
}

#[derive(Debug, Default)]
pub struct RetryBudget {
    requests: Window,
    retries: Window,
}

fn now_sec() -> u64 {
    monotonic_ms() / 1000
}

impl RetryBudget {
    /// Counts a first attempt.
    pub fn request(&self) {
        self.requests.add(now_sec());
    }

    /// Takes a retry from the budget, if one is left.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(now_sec())
    }

    fn try_retry_at(&self, sec: u64) -> bool {
        let allowed = self.retries.at(sec) < MIN_PER_SEC || {
            let retries = self.retries.sum(sec);
            retries < MIN_PER_SEC * WINDOW_SECS
                || retries * 100 < self.requests.sum(sec) * RATIO_PERCENT
        };
        if allowed {
            self.retries.add(sec);
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(b: &RetryBudget, sec: u64, n: usize) {
        for _ in 0..n {
            b.requests.add(sec);
        }
    }

    fn granted(b: &RetryBudget, sec: u64, tries: usize) -> usize {
        (0..tries).filter(|_| b.try_retry_at(sec)).count()
    }

    #[test]
    fn a_quiet_pool_may_spend_the_floor_of_the_window_at_once() {
        let b = RetryBudget::default();
        requests(&b, 100, 20);
        // 20 requests alone allow 4; the floor is 10 a second over 10 s.
        assert_eq!(granted(&b, 100, 500), 100);
    }

    #[test]
    fn at_least_ten_retries_every_second() {
        let b = RetryBudget::default();
        assert_eq!(granted(&b, 100, 500), 100);
        for sec in 101..130 {
            assert_eq!(granted(&b, sec, 50), MIN_PER_SEC as usize, "second {sec}");
        }
    }

    #[test]
    fn busy_pools_may_retry_a_fifth_of_their_requests() {
        let b = RetryBudget::default();
        // 10 000 requests over the window: 2 000 retries.
        for sec in 100..110 {
            requests(&b, sec, 1000);
        }
        assert_eq!(granted(&b, 109, 5000), 2000);
        // One second later the first second's 1000 requests left the window
        // but none of the retries did: only the per-second floor is left.
        requests(&b, 110, 0);
        assert_eq!(granted(&b, 110, 50), MIN_PER_SEC as usize);
    }

    #[test]
    fn the_window_slides() {
        let b = RetryBudget::default();
        requests(&b, 100, 1000);
        assert_eq!(granted(&b, 100, 500), 200);
        assert_eq!(granted(&b, 105, 50), MIN_PER_SEC as usize);
        // Second 100 is out of the window that ends at 110: its 1000
        // requests and 200 retries no longer count.
        assert_eq!(b.requests.sum(110), 0);
        assert_eq!(b.retries.sum(110), MIN_PER_SEC);
        assert_eq!(granted(&b, 110, 500), 100 - MIN_PER_SEC as usize);
    }

    #[test]
    fn concurrent_counts_are_exact() {
        let b = std::sync::Arc::new(RetryBudget::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || requests(&b, 100, 10_000))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.requests.sum(100), 40_000);
    }

    #[test]
    fn a_bucket_from_an_older_second_starts_over() {
        let b = RetryBudget::default();
        requests(&b, 7, 5);
        requests(&b, 17, 2);
        assert_eq!(b.requests.at(17), 2);
        assert_eq!(b.requests.at(7), 0);
        assert_eq!(b.requests.sum(17), 2);
    }
}
