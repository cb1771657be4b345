//! Config → Snapshot: the composition root of one generation.
//!
//! A [`Snapshot`] is immutable. Building one does every check and every bit
//! of file I/O a run needs (TLS certs and keys, JWT keys, JWKS files and
//! secrets; never a jwks_url fetch), so a snapshot that exists is
//! one that can serve. It builds nothing itself: each module compiles its
//! own part ([`ListenerSettings::build`], `UpstreamPool::new`,
//! `AuthSet::build`, [`Runtime::build`], `AdminToken::load`) and the
//! snapshot holds them together. Requests read only its [`Runtime`], which
//! the supervisor swaps in alongside it.
//!
//! Metrics: the snapshot carries the process's one [`Metrics`] registry,
//! taken from `previous` (a new one only for the first snapshot), and every
//! route, listener and upstream server holds its metric handle from it, so
//! counters of what a reload keeps go on counting.

use crate::auth::AdminToken;
use crate::config::{ConfigError, LoadedConfig};
use crate::listener::ListenerSettings;
use crate::observe::metrics::{InForce, Metrics};
use crate::proxy::runtime::{Parts, Runtime};
use crate::upstream::UpstreamPool;
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::proxy::runtime::BuildMode;

/// Everything one generation of the config runs on.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<LoadedConfig>,
    pub listeners: Vec<Arc<ListenerSettings>>,
    pub pools: HashMap<String, Arc<UpstreamPool>>,
    /// JWT policies and the revocation store.
    pub auth: crate::auth::AuthSet,
    /// What requests read: routes, request ids, access log.
    pub runtime: Arc<Runtime>,
    /// The metrics registry of the process (the same for every snapshot).
    pub metrics: Arc<Metrics>,
    /// What POST admin requests must present, when admin.token_file is set.
    pub admin_token: Option<AdminToken>,
}

impl Snapshot {
    /// Builds a snapshot, reusing pools of `previous` whose definition did
    /// not change (with their keepalive connections and health state), and
    /// its access log while the log settings are the same. Must run inside
    /// the runtime.
    pub fn build(
        lc: Arc<LoadedConfig>,
        generation: u64,
        previous: Option<&Snapshot>,
        mode: BuildMode,
    ) -> Result<Snapshot, ConfigError> {
        let metrics = previous.map_or_else(Metrics::new, |p| p.metrics.clone());
        let admin_token = AdminToken::load(&lc)?;
        let listeners = lc
            .config
            .listeners
            .iter()
            .map(|l| {
                let prev = previous.and_then(|p| p.listener(l.name.get_ref()));
                ListenerSettings::build(&lc, l, &metrics, prev.map(|p| &**p)).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pools = build_pools(&lc, previous, &metrics)?;
        let auth = crate::auth::AuthSet::build(&lc, previous.map(|p| &p.auth))?;
        let parts = Parts {
            generation,
            pools: &pools,
            auth: &auth,
            metrics: &metrics,
        };
        let runtime = Runtime::build(&lc, parts, previous.map(|p| &*p.runtime), mode)?;
        Ok(Snapshot {
            generation,
            listeners,
            pools,
            auth,
            runtime: Arc::new(runtime),
            metrics,
            admin_token,
            config: lc,
        })
    }

    /// Called once this snapshot is the one in force (swapped in, or the
    /// first): stops the health checks of the pools of `previous` that it
    /// does not keep, then starts its own. So only the generation in force
    /// ever checks, and a build that is never swapped in sends no probe.
    pub fn take_over(&self, previous: Option<&Snapshot>) {
        if let Some(prev) = previous {
            for (name, old) in &prev.pools {
                if !self.pools.get(name).is_some_and(|p| Arc::ptr_eq(p, old)) {
                    old.retire();
                }
            }
        }
        for pool in self.pools.values() {
            pool.activate();
        }
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSettings>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }

    /// What a metrics scrape shows of this generation besides the
    /// registry's handles: its number, the protocols of its listeners,
    /// and which upstream servers are current and healthy.
    pub fn in_force(&self) -> InForce<'_> {
        let mut pools: Vec<_> = self.pools.values().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        InForce {
            generation: self.generation,
            listeners: self
                .listeners
                .iter()
                .map(|l| (&*l.name, [l.http1, l.http2, false]))
                .collect(),
            servers: pools
                .into_iter()
                .flat_map(|p| {
                    p.members()
                        .servers
                        .iter()
                        .map(|s| (&*p.name, s.label.clone(), s.is_healthy()))
                        .collect::<Vec<_>>()
                })
                .collect(),
            jwt_policies: self.auth.policies().map(|(n, p)| (n, p.counts())).collect(),
            revocation_store_errors: self.auth.revocation().error_counts(),
        }
    }
}

/// The upstream pools of `lc`: those of `previous` whose definition did not
/// change are kept (with their connections and health state).
fn build_pools(
    lc: &LoadedConfig,
    previous: Option<&Snapshot>,
    metrics: &Arc<Metrics>,
) -> Result<HashMap<String, Arc<UpstreamPool>>, ConfigError> {
    let mut pools = HashMap::new();
    let resolver = crate::upstream::Resolver::from_config(lc.config.server.resolver_addrs());
    for (name, def) in &lc.config.upstreams {
        let tls = match &def.tls {
            Some(t) => Some(crate::tls::upstream_settings(lc, t, def.protocol)?),
            None => None,
        };
        let prev = previous.and_then(|p| p.pools.get(name));
        let pool = match prev {
            Some(p) if p.reusable_for(def, tls.as_ref(), &resolver) => p.clone(),
            _ => UpstreamPool::new(name, def, tls, prev.map(|p| &**p), metrics, &resolver),
        };
        pools.insert(name.clone(), pool);
    }
    Ok(pools)
}
