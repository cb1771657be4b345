//! Pools whose `servers` name hosts by DNS: building members from the
//! answers, and looking the names up again every `resolve_interval`.
//!
//! Guarantees:
//! - every address of a name is a member; the name's weight is split
//!   evenly among its addresses (exactly, by scaling every weight, as far
//!   as the round-robin cycle stays at most [`MAX_CYCLE`] long);
//! - an address that stays in the answer keeps its server (connections,
//!   health, counters); one that joins starts healthy; one that leaves gets
//!   no new request and its connections close as their requests end;
//! - a failed lookup changes nothing (the last good answer stays), is
//!   logged and counted in portico_upstream_dns_failures_total{upstream};
//! - until a name's first answer it has no member (requests to a pool
//!   with no member get 503); a pool rebuilt by a reload starts from the
//!   answers of the pool it replaces, so a reload opens no such gap;
//! - only an activated pool looks names up (`portico check` and a build a
//!   reload then rejects send no query), and a retired one stops.
//!
//! An IP-literal server is never looked up, and a pool of IP literals only
//! has no [`Names`] at all.

use super::health::ServerHealth;
use super::pool::{Members, PoolSettings, UpstreamPool, UpstreamServer};
use super::resolve::Resolver;
use crate::config::UpstreamConfig;
use crate::observe::metrics::Metrics;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// The longest round-robin cycle exact weight splitting may build; past
/// it, weights are rounded.
pub const MAX_CYCLE: u64 = 1 << 14;

/// The DNS side of a pool: what to look up, where, and the last answers.
pub(super) struct Names {
    pub(super) resolver: Resolver,
    interval: Duration,
    /// Per entry of `servers`: the last good answer of a name (`None` for
    /// an IP literal, or a name not yet answered).
    answers: Mutex<Vec<Option<Vec<IpAddr>>>>,
    failures: Arc<AtomicU64>,
    /// The registry new members take their counters from.
    metrics: Arc<Metrics>,
    started: AtomicBool,
}

impl Names {
    /// `None` when every server of `def` is an IP address.
    pub(super) fn new(
        pool: &str,
        def: &UpstreamConfig,
        resolver: &Resolver,
        previous: Option<&UpstreamPool>,
        metrics: &Arc<Metrics>,
    ) -> Option<Names> {
        let servers = def.servers.get_ref();
        if servers.iter().all(|s| s.addr.parse::<SocketAddr>().is_ok()) {
            return None;
        }
        let before = previous.and_then(|p| {
            let d = p.dns.as_ref()?;
            Some((p.definition.servers.get_ref(), d.answers()))
        });
        let answers = servers
            .iter()
            .map(|s| {
                let (entries, answers) = before.as_ref()?;
                let i = entries.iter().position(|e| e.addr == s.addr)?;
                answers.get(i).cloned().flatten()
            })
            .collect();
        Some(Names {
            resolver: resolver.clone(),
            interval: def.resolve_interval.0,
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
    pub(super) settings: &'a PoolSettings,
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
                        self.settings.max_idle,
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
    let scale = if total > MAX_CYCLE { total / MAX_CYCLE + 1 } else { 1 };
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

impl UpstreamPool {
    /// Starts the lookups of this pool's names, once (see the module docs).
    pub(super) fn start_resolving(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        let Some(names) = &self.dns else { return };
        if names.started.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(resolve_loop(Arc::downgrade(self), names.interval, stop));
    }

    /// Looks every name up once and puts the answers in force.
    async fn refresh(&self) {
        let Some(names) = &self.dns else { return };
        let entries = self.definition.servers.get_ref();
        let mut answers = names.answers();
        let mut changed = false;
        for (i, s) in entries.iter().enumerate() {
            if s.addr.parse::<SocketAddr>().is_ok() {
                continue;
            }
            let host = s.addr.rsplit_once(':').map_or("", |(h, _)| h);
            match names.resolver.lookup(host).await {
                Ok(ips) => {
                    if answers[i].as_ref() != Some(&ips) {
                        tracing::info!(upstream = %self.name, server = %s.addr, addresses = ?ips, "DNS answer changed");
                        answers[i] = Some(ips);
                        changed = true;
                    }
                }
                Err(e) => {
                    names.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(upstream = %self.name, server = %s.addr, error = %e, "DNS lookup failed: keeping the last answer");
                }
            }
        }
        if !changed {
            return;
        }
        let current = self.members();
        let build = MemberBuild {
            pool: &self.name,
            settings: &self.settings,
            metrics: &names.metrics,
        };
        let next = build.members_reusing(&self.definition, Some(&answers), &current.servers, |_| {
            Arc::default()
        });
        drop(current);
        *names.answers.lock().unwrap_or_else(PoisonError::into_inner) = answers;
        self.replace_members(next);
    }
}

async fn resolve_loop(
    pool: Weak<UpstreamPool>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A dropped sender (the pool is gone) ends the lookups too.
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let Some(p) = pool.upgrade() else { break };
        tokio::select! {
            _ = p.refresh() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
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
        assert_eq!(split_weights(&[(2, 2), (3, 3), (1, 1)]), vec![1, 1, 1, 1, 1, 1]);
        assert_eq!(split_weights(&[(1, 0), (1, 1)]), vec![1]);
        let big = split_weights(&[(1000, 7), (1000, 11), (1000, 13)]);
        assert_eq!(big.len(), 31);
        assert!(big.iter().map(|&w| u64::from(w)).sum::<u64>() <= 2 * MAX_CYCLE);
    }
}
