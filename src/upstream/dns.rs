//! Looking the DNS names of a pool up again every `resolve_interval`.
//!
//! Guarantees:
//! - a changed answer puts a new member set in force (see [`super::members`]);
//!   an address that left gets no new request and its connections close as
//!   their requests end;
//! - a failed lookup changes nothing (the last good answer stays), is
//!   logged and counted in portico_upstream_dns_failures_total{upstream};
//! - until a name's first answer it has no member (requests to a pool
//!   with no member get 503);
//! - only an activated pool looks names up (`portico check` and a build a
//!   reload then rejects send no query), and a retired one stops.
//!
//! An IP-literal server is never looked up, and a pool of IP literals only
//! has no [`Names`] at all.

use super::members::MemberBuild;
use super::pool::UpstreamPool;
use super::rounds::Rounds;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::watch;

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
        // One slot per entry, by construction of `Names`.
        for (s, slot) in entries.iter().zip(answers.iter_mut()) {
            if s.addr.parse::<SocketAddr>().is_ok() {
                continue;
            }
            let host = s.addr.rsplit_once(':').map_or("", |(h, _)| h);
            match names.resolver.lookup(host).await {
                Ok(ips) => {
                    if slot.as_ref() != Some(&ips) {
                        tracing::info!(upstream = %self.name, server = %s.addr, addresses = ?ips, "DNS answer changed");
                        *slot = Some(ips);
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
            max_idle: self.settings.max_idle,
            metrics: &names.metrics,
        };
        let next =
            build.members_reusing(&self.definition, Some(&answers), &current.servers, |_| {
                Arc::default()
            });
        drop(current);
        *names.answers.lock().unwrap_or_else(PoisonError::into_inner) = answers;
        self.replace_members(next);
    }
}

async fn resolve_loop(pool: Weak<UpstreamPool>, every: Duration, stop: watch::Receiver<bool>) {
    let mut rounds = Rounds::new(pool, every, stop);
    while let Some(p) = rounds.next().await {
        if rounds.until_stopped(p.refresh()).await.is_none() {
            break;
        }
    }
}
