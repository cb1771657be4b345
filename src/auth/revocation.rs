//! Revoked tokens: by `jti`, and per subject ("log out everywhere").
//!
//! Two stores, one contract:
//! - **memory**: this process only; survives a reload, not a restart;
//! - **redis**: shared by every instance through one Redis server, a Redis
//!   Cluster or the master that Sentinels name (see [`super::redis_conn`]:
//!   connections, failover, TLS). A revocation made through any instance
//!   holds on every instance from the next request on.
//!
//! Guarantees:
//! - a check asks the store on every request: a "not revoked" answer is
//!   never cached, so a revocation applies from the very next request;
//! - the jti and the subject cut-off are checked in one round trip (one
//!   `MGET`; on a Cluster, one GET per key sent at once), bounded by
//!   [`CHECK_TIMEOUT`]; a store that does not answer in
//!   time, or fails, is a [`StoreDown`], which the caller turns into 503
//!   ("deny") or a pass ("allow"), counted here either way, and logged at
//!   most once per 10 s (with the number of failures held back since);
//! - a jti revocation lives exp − now + leeway seconds (after that the
//!   token is refused as expired anyway); a revocation of a token already
//!   past that is accepted and stores nothing;
//! - a subject revocation refuses every token of that `sub` whose `iat` is
//!   before `before` (strictly), and also the subject's tokens that carry
//!   no `iat` (their issue time is unknown, so they fail closed). A later
//!   cut-off replaces an earlier one, never the reverse. Subject cut-offs
//!   do not expire.
//!
//! Redis keys: `{key_prefix}jti:{jti}` (value "1", with a TTL) and
//! `{key_prefix}sub:{sub}` (value: the cut-off, seconds since the epoch).

use super::redis_conn::{RedisConn, Target};
use crate::config::OnStoreError;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Longest a request waits for the shared store.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest an admin revocation waits for the shared store.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// The store did not answer (in time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreDown;

/// One revocation, as POST /revoke takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The token with this jti, which expires at `exp`.
    Jti { jti: String, exp: i64 },
    /// Every token of `sub` issued before `before`.
    Subject { sub: String, before: i64 },
}

/// Strict form of the admin body: exactly one of the two shapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JtiBody {
    jti: String,
    exp: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubBody {
    sub: String,
    before: i64,
}

impl Revocation {
    /// Parses a POST /revoke body: `{"jti": "...", "exp": N}` or
    /// `{"sub": "...", "before": N}`, nothing else.
    pub fn parse(body: &[u8]) -> Result<Revocation, String> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
        let r = if v.get("jti").is_some() {
            serde_json::from_value::<JtiBody>(v)
                .map(|b| Revocation::Jti {
                    jti: b.jti,
                    exp: b.exp,
                })
                .map_err(|e| format!("expected {{\"jti\": \"...\", \"exp\": N}}: {e}"))?
        } else if v.get("sub").is_some() {
            serde_json::from_value::<SubBody>(v)
                .map(|b| Revocation::Subject {
                    sub: b.sub,
                    before: b.before,
                })
                .map_err(|e| format!("expected {{\"sub\": \"...\", \"before\": N}}: {e}"))?
        } else {
            return Err(
                "expected {\"jti\": \"...\", \"exp\": N} or {\"sub\": \"...\", \"before\": N}"
                    .into(),
            );
        };
        match &r {
            Revocation::Jti { jti, .. } if jti.is_empty() => Err("jti is empty".into()),
            Revocation::Subject { sub, .. } if sub.is_empty() => Err("sub is empty".into()),
            _ => Ok(r),
        }
    }
}

/// The store behind every policy with `revocation = true`.
pub struct RevocationStore {
    backend: Arc<Backend>,
    on_error: OnStoreError,
    /// Shared with the stores that replace this one on a reload, so the
    /// counts run from process start.
    errors: Arc<StoreErrors>,
}

/// Requests that met a store failure, by the decision taken.
#[derive(Default)]
struct StoreErrors {
    denied: AtomicU64,
    allowed: AtomicU64,
}

enum Backend {
    Memory(MemoryStore),
    /// Boxed: the Redis clients are large, and the enum lives once per store.
    Redis(Box<RedisStore>),
}

impl RevocationStore {
    /// A store of this process.
    pub fn memory(on_error: OnStoreError) -> RevocationStore {
        RevocationStore::with(Backend::Memory(MemoryStore::default()), on_error)
    }

    /// A Redis store. Nothing is connected until first use.
    pub fn redis(
        target: Target,
        prefix: &str,
        on_error: OnStoreError,
    ) -> Result<RevocationStore, String> {
        let conn = RedisConn::new(&target)?;
        Ok(RevocationStore::with(
            Backend::Redis(Box::new(RedisStore {
                conn,
                target,
                prefix: prefix.to_string(),
                check_failures: LogGate::default(),
            })),
            on_error,
        ))
    }

    fn with(backend: Backend, on_error: OnStoreError) -> RevocationStore {
        RevocationStore {
            backend: Arc::new(backend),
            on_error,
            errors: Arc::default(),
        }
    }

    /// Whether this store's backend is the one described (memory: `None`;
    /// Redis: the same target and key prefix), so a reload may keep it.
    pub fn same_backend(&self, target: Option<&Target>, prefix: &str) -> bool {
        match (&*self.backend, target) {
            (Backend::Memory(_), None) => true,
            (Backend::Redis(r), Some(t)) => r.target == *t && r.prefix == prefix,
            _ => false,
        }
    }

    /// This store's contents and connection with another on_store_error.
    pub fn with_on_error(&self, on_error: OnStoreError) -> RevocationStore {
        RevocationStore {
            backend: self.backend.clone(),
            on_error,
            errors: self.errors.clone(),
        }
    }

    /// This store, counting on from `previous`'s failure counts (a reload
    /// that changed the backend).
    pub fn counting_on(mut self, previous: &RevocationStore) -> RevocationStore {
        self.errors = previous.errors.clone();
        self
    }

    pub fn on_error(&self) -> OnStoreError {
        self.on_error
    }

    /// Requests that met a store failure: (denied with 503, allowed through).
    pub fn error_counts(&self) -> (u64, u64) {
        (
            self.errors.denied.load(Ordering::Relaxed),
            self.errors.allowed.load(Ordering::Relaxed),
        )
    }

    /// Counts a store failure under the on_store_error decision.
    pub(crate) fn count_failure(&self) {
        match self.on_error {
            OnStoreError::Deny => &self.errors.denied,
            OnStoreError::Allow => &self.errors.allowed,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a token (its jti, sub and iat) is revoked at `now`.
    pub async fn is_revoked(
        &self,
        jti: Option<&str>,
        sub: Option<&str>,
        iat: Option<i64>,
        now: i64,
    ) -> Result<bool, StoreDown> {
        if jti.is_none() && sub.is_none() {
            return Ok(false);
        }
        match &*self.backend {
            Backend::Memory(m) => Ok(m.is_revoked(jti, sub, iat, now)),
            Backend::Redis(r) => r.is_revoked(jti, sub, iat).await,
        }
    }

    /// Records a revocation. `leeway`: the longest leeway of any policy
    /// (a jti entry must outlive every policy's acceptance of the token).
    pub async fn revoke(&self, r: &Revocation, now: i64, leeway: i64) -> Result<(), StoreDown> {
        match &*self.backend {
            Backend::Memory(m) => {
                m.revoke(r, now, leeway);
                Ok(())
            }
            Backend::Redis(s) => s.revoke(r, now, leeway).await,
        }
    }
}

/// Whether a subject cut-off refuses a token issued at `iat` (unknown: yes).
fn cut_off_applies(before: i64, iat: Option<i64>) -> bool {
    match iat {
        None => true,
        Some(iat) => iat < before,
    }
}

/// Revocations of this process.
#[derive(Default)]
struct MemoryStore {
    /// jti → unix time after which the entry can go.
    jti: RwLock<HashMap<String, i64>>,
    /// sub → cut-off.
    sub: RwLock<HashMap<String, i64>>,
    /// Something was revoked once: until then checks take no lock.
    any: AtomicBool,
    /// jti entries at the last sweep of expired ones.
    swept_at: AtomicU64,
}

impl MemoryStore {
    fn is_revoked(&self, jti: Option<&str>, sub: Option<&str>, iat: Option<i64>, now: i64) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        if let Some(j) = jti {
            let m = self.jti.read().unwrap_or_else(|p| p.into_inner());
            if m.get(j).is_some_and(|&until| now < until) {
                return true;
            }
        }
        if let Some(s) = sub {
            let m = self.sub.read().unwrap_or_else(|p| p.into_inner());
            if m.get(s).is_some_and(|&before| cut_off_applies(before, iat)) {
                return true;
            }
        }
        false
    }

    fn revoke(&self, r: &Revocation, now: i64, leeway: i64) {
        match r {
            Revocation::Jti { jti, exp } => {
                let until = exp.saturating_add(leeway);
                if until <= now {
                    return;
                }
                let mut m = self.jti.write().unwrap_or_else(|p| p.into_inner());
                // Drop expired entries whenever the map doubled since the
                // last sweep: amortised O(1) per revocation.
                if m.len() as u64 >= 2 * self.swept_at.load(Ordering::Relaxed).max(512) {
                    m.retain(|_, &mut u| u > now);
                    self.swept_at.store(m.len() as u64, Ordering::Relaxed);
                }
                let e = m.entry(jti.clone()).or_insert(until);
                *e = (*e).max(until);
            }
            Revocation::Subject { sub, before } => {
                let mut m = self.sub.write().unwrap_or_else(|p| p.into_inner());
                let e = m.entry(sub.clone()).or_insert(*before);
                *e = (*e).max(*before);
            }
        }
        self.any.store(true, Ordering::Release);
    }
}

/// Revocations shared through Redis.
struct RedisStore {
    conn: RedisConn,
    target: Target,
    prefix: String,
    check_failures: LogGate,
}

/// Failed checks are logged at most once per this many milliseconds.
const LOG_EVERY_MS: u64 = 10_000;

/// Lets one line through per [`LOG_EVERY_MS`] about checks that fail: a
/// store that is down fails every request's check, and a line each would
/// flood the log at the request rate. Every failure is still counted
/// (portico_revocation_store_errors_total); the line that passes says how
/// many were held back since the last.
#[derive(Default)]
struct LogGate {
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl LogGate {
    /// `Some(lines held back since the last one)`: log this one.
    fn admit(&self) -> Option<u64> {
        let now = crate::sys::monotonic_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        let due = now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + LOG_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if due {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Keeps the greater of the stored and the new cut-off.
const SET_MAX_SCRIPT: &str = "local c = redis.call('GET', KEYS[1]) \
     if (not c) or (tonumber(c) == nil) or (tonumber(c) < tonumber(ARGV[1])) then \
     redis.call('SET', KEYS[1], ARGV[1]) end return 1";

impl RedisStore {
    fn jti_key(&self, jti: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 4 + jti.len());
        k.push_str(&self.prefix);
        k.push_str("jti:");
        k.push_str(jti);
        k
    }

    fn sub_key(&self, sub: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 4 + sub.len());
        k.push_str(&self.prefix);
        k.push_str("sub:");
        k.push_str(sub);
        k
    }

    async fn is_revoked(
        &self,
        jti: Option<&str>,
        sub: Option<&str>,
        iat: Option<i64>,
    ) -> Result<bool, StoreDown> {
        let mut keys = Vec::with_capacity(2);
        if let Some(j) = jti {
            keys.push(self.jti_key(j));
        }
        if let Some(s) = sub {
            keys.push(self.sub_key(s));
        }
        let answer: Vec<Option<String>> = match tokio::time::timeout(
            CHECK_TIMEOUT,
            self.conn.mget(&keys),
        )
        .await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                if let Some(held_back) = self.check_failures.admit() {
                    tracing::warn!(error = %e, held_back, "revocation store: redis check failed");
                }
                return Err(StoreDown);
            }
            Err(_) => {
                if let Some(held_back) = self.check_failures.admit() {
                    tracing::warn!(held_back, "revocation store: redis check timed out");
                }
                return Err(StoreDown);
            }
        };
        let mut values = answer.into_iter();
        if jti.is_some() && values.next().flatten().is_some() {
            return Ok(true);
        }
        if sub.is_some() {
            if let Some(v) = values.next().flatten() {
                // A cut-off that does not parse fails closed.
                let before = v.trim().parse::<i64>().unwrap_or(i64::MAX);
                if cut_off_applies(before, iat) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    async fn revoke(&self, r: &Revocation, now: i64, leeway: i64) -> Result<(), StoreDown> {
        let cmd = match r {
            Revocation::Jti { jti, exp } => {
                let ttl = exp.saturating_add(leeway).saturating_sub(now);
                if ttl <= 0 {
                    return Ok(());
                }
                let mut c = redis::cmd("SET");
                c.arg(self.jti_key(jti)).arg("1").arg("EX").arg(ttl);
                c
            }
            Revocation::Subject { sub, before } => {
                let mut c = redis::cmd("EVAL");
                c.arg(SET_MAX_SCRIPT)
                    .arg(1)
                    .arg(self.sub_key(sub))
                    .arg(*before);
                c
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, self.conn.query::<redis::Value>(&cmd)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "revocation store: redis write failed");
                Err(StoreDown)
            }
            Err(_) => {
                tracing::warn!("revocation store: redis write timed out");
                Err(StoreDown)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_gate_lets_one_line_through_per_interval_and_counts_the_rest() {
        let g = LogGate::default();
        assert_eq!(g.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(g.admit(), None);
        }
        // The interval is over: the next line says how many were held back.
        g.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(g.admit(), Some(5));
        assert_eq!(g.admit(), None);
    }

    #[test]
    fn admin_bodies() {
        assert_eq!(
            Revocation::parse(br#"{"jti":"a","exp":5}"#).unwrap(),
            Revocation::Jti {
                jti: "a".into(),
                exp: 5
            }
        );
        assert_eq!(
            Revocation::parse(br#"{"sub":"u","before":7}"#).unwrap(),
            Revocation::Subject {
                sub: "u".into(),
                before: 7
            }
        );
        for bad in [
            &br#"{"jti":"a"}"#[..],
            br#"{"jti":"a","exp":"5"}"#,
            br#"{"jti":"","exp":5}"#,
            br#"{"jti":"a","exp":5,"sub":"u"}"#,
            br#"{"sub":"u","before":1.5}"#,
            br#"{}"#,
            br#"[]"#,
            b"nope",
        ] {
            assert!(
                Revocation::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn memory_store_by_jti_and_subject() {
        let s = RevocationStore::memory(OnStoreError::Deny);
        assert_eq!(
            s.is_revoked(Some("j"), Some("u"), Some(100), 1000).await,
            Ok(false)
        );
        s.revoke(
            &Revocation::Jti {
                jti: "j".into(),
                exp: 1010,
            },
            1000,
            30,
        )
        .await
        .unwrap();
        assert_eq!(s.is_revoked(Some("j"), None, None, 1000).await, Ok(true));
        assert_eq!(s.is_revoked(Some("j"), None, None, 1040).await, Ok(false));
        assert_eq!(s.is_revoked(Some("k"), None, None, 1000).await, Ok(false));
        s.revoke(
            &Revocation::Subject {
                sub: "u".into(),
                before: 500,
            },
            1000,
            30,
        )
        .await
        .unwrap();
        assert_eq!(
            s.is_revoked(None, Some("u"), Some(499), 1000).await,
            Ok(true)
        );
        assert_eq!(
            s.is_revoked(None, Some("u"), Some(500), 1000).await,
            Ok(false)
        );
        assert_eq!(s.is_revoked(None, Some("u"), None, 1000).await, Ok(true));
        // An earlier cut-off never lowers a later one.
        s.revoke(
            &Revocation::Subject {
                sub: "u".into(),
                before: 10,
            },
            1000,
            30,
        )
        .await
        .unwrap();
        assert_eq!(
            s.is_revoked(None, Some("u"), Some(499), 1000).await,
            Ok(true)
        );
        // Already dead: nothing stored.
        s.revoke(
            &Revocation::Jti {
                jti: "old".into(),
                exp: 900,
            },
            1000,
            30,
        )
        .await
        .unwrap();
        assert_eq!(s.is_revoked(Some("old"), None, None, 1000).await, Ok(false));
    }
}
