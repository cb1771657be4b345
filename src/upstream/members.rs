//! The members of a pool: the servers requests are sent to, and how they
//! are built from `servers` and the DNS answers for its names.
//!
//! Guarantees:
//! - every address of a name is a member; the name's weight is split
//!   evenly among its addresses (exactly, by scaling every weight, as far
//!   as the round-robin cycle stays at most [`MAX_CYCLE`] long);
//! - an address that stays in the answer keeps its server (connections,
//!   health, counters); one that joins starts healthy;
//! - a [`Members`] never changes: a new answer builds a new one, so the
//!   index a request picked means the same server until it ends;
//! - a pool rebuilt by a reload starts from the answers of the pool it
//!   replaces ([`Names::new`]).

use super::balancer::Balancer;
use super::health::ServerHealth;
use super::resolve::Resolver;
use super::server::UpstreamServer;
use crate::config::UpstreamConfig;
use crate::observe::metrics::Metrics;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The servers a pool sends to, at one moment, with their round-robin
/// order. Immutable: a new DNS answer builds a new one.
pub struct Members {
    pub servers: Box<[Arc<UpstreamServer>]>,
    balancer: Balancer,
}

/// The members of a pool as one request sees them: the index [`Members::pick`]
/// gives stays valid for the whole request, whatever DNS says meanwhile.
pub enum CurrentMembers<'a> {
    Fixed(&'a Members),
    Resolved(Arc<Members>),
}

impl Deref for CurrentMembers<'_> {
    type Target = Members;
    fn deref(&self) -> &Members {
        match self {
            CurrentMembers::Fixed(m) => m,
            CurrentMembers::Resolved(m) => m,
        }
    }
}

impl Members {
    /// `servers` with their balancer weights (each at least 1).
    pub(super) fn new(servers: Vec<Arc<UpstreamServer>>, weights: &[u32]) -> Members {
        Members {
            servers: servers.into_boxed_slice(),
            balancer: Balancer::new(weights),
        }
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
        if s.is_empty() {
            // A DNS name whose first answer has not come yet.
            return Err(NoServer::Unhealthy);
        }
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
}

/// No server can take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoServer {
    /// Every server failed its active checks.
    Unhealthy,
    /// Every usable server was already tried for this request.
    AllTried,
}

/// The longest round-robin cycle exact weight splitting may build; past
/// it, weights are rounded.
pub const MAX_CYCLE: u64 = 1 << 14;

/// The DNS side of a pool: what to look up, where, and the last answers.
pub(super) struct Names {
    pub(super) resolver: Resolver,
    pub(super) interval: Duration,
    /// The `servers` entries as written ("host:port"), in order.
    entries: Vec<String>,
    /// Per entry: the last good answer of a name (`None` for an IP
    /// literal, or a name not yet answered). Written by the one lookup task.
    pub(super) answers: Mutex<Vec<Option<Vec<IpAddr>>>>,
    pub(super) failures: Arc<AtomicU64>,
    /// The registry new members take their counters from.
    pub(super) metrics: Arc<Metrics>,
    pub(super) started: AtomicBool,
}

impl Names {
    /// `None` when every server of `def` is an IP address. The answers of
    /// `previous` (the pool being replaced) for entries still listed are
    /// kept.
    pub(super) fn new(
        pool: &str,
        def: &UpstreamConfig,
        resolver: &Resolver,
        previous: Option<&Names>,
        metrics: &Arc<Metrics>,
    ) -> Option<Names> {
        let servers = def.servers.get_ref();
        if servers.iter().all(|s| s.addr.parse::<SocketAddr>().is_ok()) {
            return None;
        }
        let before = previous.map(|p| (&p.entries, p.answers()));
        let answers = servers
            .iter()
            .map(|s| {
                let (entries, answers) = before.as_ref()?;
                let i = entries.iter().position(|e| *e == s.addr)?;
                answers.get(i).cloned().flatten()
            })
            .collect();
        Some(Names {
            resolver: resolver.clone(),
            interval: def.resolve_interval.0,
            entries: servers.iter().map(|s| s.addr.clone()).collect(),
            answers: Mutex::new(answers),
            failures: metrics.dns_failures(pool),
            metrics: metrics.clone(),
            started: AtomicBool::new(false),
        })
    }

    pub(super) fn answers(&self) -> Vec<Option<Vec<IpAddr>>> {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What building a member set needs besides the config and answers.
pub(super) struct MemberBuild<'a> {
    pub(super) pool: &'a str,
    pub(super) max_idle: usize,
    pub(super) metrics: &'a Metrics,
}

impl MemberBuild<'_> {
    /// The members of `def` given `answers` (per entry; `None`: every
    /// entry is an IP literal). `server_for` gives the health of an
    /// address's server by label (from an earlier member set or pool).
    pub(super) fn members(
        &self,
        def: &UpstreamConfig,
        answers: Option<&[Option<Vec<IpAddr>>]>,
        health_for: impl Fn(&str) -> Arc<ServerHealth>,
    ) -> Members {
        self.members_reusing(def, answers, &[], health_for)
    }

    /// As [`MemberBuild::members`], keeping the servers of `current`
    /// whose address is still a member.
    pub(super) fn members_reusing(
        &self,
        def: &UpstreamConfig,
        answers: Option<&[Option<Vec<IpAddr>>]>,
        current: &[Arc<UpstreamServer>],
        health_for: impl Fn(&str) -> Arc<ServerHealth>,
    ) -> Members {
        let mut groups: Vec<(Arc<str>, Vec<SocketAddr>, u32)> = Vec::new();
        for (i, s) in def.servers.get_ref().iter().enumerate() {
            let addrs = match s.addr.parse::<SocketAddr>() {
                Ok(a) => vec![a],
                Err(_) => {
                    let port = s.addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
                    let ips = answers.and_then(|a| a.get(i)).and_then(Option::as_ref);
                    match (port, ips) {
                        (Some(port), Some(ips)) => {
                            ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
                        }
                        _ => Vec::new(),
                    }
                }
            };
            groups.push((Arc::from(s.addr.as_str()), addrs, s.weight));
        }
        let counts: Vec<(u32, usize)> = groups.iter().map(|g| (g.2, g.1.len())).collect();
        let weights = split_weights(&counts);
        let mut servers = Vec::new();
        for (authority, addrs, _) in &groups {
            for addr in addrs {
                let label = match authority.parse::<SocketAddr>() {
                    Ok(_) => authority.to_string(),
                    Err(_) => addr.to_string(),
                };
                let kept = current
                    .iter()
                    .find(|s| *s.label == *label && s.authority == *authority);
                servers.push(match kept {
                    Some(s) => s.clone(),
                    None => Arc::new(UpstreamServer::new(
                        authority,
                        *addr,
                        self.metrics.server(self.pool, &label),
                        health_for(&label),
                        self.max_idle,
                    )),
                });
            }
        }
        Members::new(servers, &weights)
    }
}

/// The balancer weight of each address: an entry's weight `w` over its
/// `n` addresses is `w * L / n` for `L` the least common multiple of every
/// `n`, reduced by the common divisor; rounded (at least 1) when the exact
/// cycle would be longer than [`MAX_CYCLE`].
fn split_weights(entries: &[(u32, usize)]) -> Vec<u32> {
    let lcm = entries
        .iter()
        .filter(|e| e.1 > 0)
        .fold(1u64, |l, e| l / gcd(l, e.1 as u64) * e.1 as u64)
        .min(MAX_CYCLE);
    let mut weights = Vec::new();
    for &(w, n) in entries {
        for _ in 0..n {
            weights.push((u64::from(w) * lcm / n as u64).max(1));
        }
    }
    let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let total: u64 = weights.iter().map(|w| w / g).sum();
    let scale = if total > MAX_CYCLE {
        total / MAX_CYCLE + 1
    } else {
        1
    };
    weights
        .iter()
        .map(|w| ((w / g) / scale).clamp(1, u64::from(u32::MAX)) as u32)
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_s_weight_is_split_evenly() {
        // "a" weight 1 with two addresses, an IP literal of weight 1.
        assert_eq!(split_weights(&[(1, 2), (1, 1)]), vec![1, 1, 2]);
        assert_eq!(split_weights(&[(3, 3)]), vec![1, 1, 1]);
        assert_eq!(
            split_weights(&[(2, 2), (3, 3), (1, 1)]),
            vec![1, 1, 1, 1, 1, 1]
        );
        assert_eq!(split_weights(&[(1, 0), (1, 1)]), vec![1]);
        let big = split_weights(&[(1000, 7), (1000, 11), (1000, 13)]);
        assert_eq!(big.len(), 31);
        assert!(big.iter().map(|&w| u64::from(w)).sum::<u64>() <= 2 * MAX_CYCLE);
    }
}
