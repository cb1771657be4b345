//! Round-robin server choice with one lock-free cursor.
//!
//! Weights are expanded once, at build time, into NGINX's smooth weighted
//! round-robin order (weights 5,1,1 give a,a,b,a,c,a,a rather than
//! a,a,a,a,a,b,c). A request then costs one `fetch_add` and an index: nothing
//! about the client takes part, so no client is ever pinned to a server.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The precomputed pick order and the shared cursor into it.
#[derive(Debug)]
pub struct Balancer {
    order: Box<[u16]>,
    cursor: AtomicUsize,
}

impl Balancer {
    /// Builds the order for servers with these weights (each at least 1).
    pub fn new(weights: &[u32]) -> Balancer {
        let order = smooth_weighted_order(weights);
        // Start each pool at a random point so a fleet of instances (or a
        // restart) does not send its first requests all to the first server.
        let start = if order.len() > 1 {
            fastrand::usize(..order.len())
        } else {
            0
        };
        Balancer {
            order: order.into_boxed_slice(),
            cursor: AtomicUsize::new(start),
        }
    }

    /// The next server index, skipping servers for which `usable` says no.
    /// When no server is usable, returns the plain round-robin choice so the
    /// caller can decide what to do (e.g. panic mode).
    pub fn pick(&self, usable: impl Fn(usize) -> bool) -> (usize, bool) {
        let n = self.order.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let idx = self.order[(start.wrapping_add(i)) % n] as usize;
            if usable(idx) {
                if i > 0 {
                    // Keep the spread even when we skipped over servers.
                    self.cursor.fetch_add(i, Ordering::Relaxed);
                }
                return (idx, true);
            }
        }
        (self.order[start % n] as usize, false)
    }
}

/// NGINX's smooth weighted round-robin, unrolled over one full cycle.
fn smooth_weighted_order(weights: &[u32]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u16);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_order_interleaves() {
        assert_eq!(smooth_weighted_order(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted_order(&[1, 1, 1]), vec![0, 1, 2]);
    }

    #[test]
    fn weights_give_proportional_spread() {
        let b = Balancer::new(&[1, 2]);
        let mut counts = [0; 2];
        for _ in 0..300 {
            counts[b.pick(|_| true).0] += 1;
        }
        assert_eq!(counts, [100, 200]);
    }

    #[test]
    fn unusable_servers_are_skipped() {
        let b = Balancer::new(&[1, 1, 1]);
        for _ in 0..30 {
            let (i, ok) = b.pick(|i| i != 1);
            assert!(ok);
            assert_ne!(i, 1);
        }
        let (_, ok) = b.pick(|_| false);
        assert!(!ok);
    }
}
