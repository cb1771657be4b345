//! JWT validation at the edge, and token revocation.
//!
//! - [`policy`]: a compiled `[auth.NAME]` policy and the authenticate phase
//!   the pipeline runs for a route with `auth`;
//! - [`failure`]: why a request did not pass ([`AuthFailure`]), which the
//!   pipeline turns into its answer;
//! - [`bearer`]: the one `Authorization: Bearer` parser, and the admin
//!   token ([`AdminToken`]) the admin API checks with it;
//! - [`token`]: compact JWS parsing and claim checks;
//! - [`keys`]: PEM, JWKS and HMAC keys, and which algorithm fits which key;
//! - [`jwks`]: a jwks_url kept fresh in the background;
//! - [`cache`]: the verified-token cache;
//! - [`revocation`]: the memory and Redis revocation stores.
//!
//! [`AuthSet`] is what a [`crate::snapshot::Snapshot`] holds: every policy
//! and the one revocation store. Building it reads and checks every key
//! file, JWKS file and secret (so `portico check` does) and contacts no
//! network; [`AuthSet::start`] starts the jwks_url fetches. A reload keeps
//! the previous revocation store (its contents, its Redis connection) and
//! any jwks_url source whose url, CA and refresh did not change.

pub mod bearer;
pub mod cache;
pub mod failure;
pub mod jwks;
pub mod keys;
pub mod policy;
mod redis_conn;
pub mod revocation;
pub mod token;

pub use bearer::AdminToken;
pub use failure::AuthFailure;
pub use policy::JwtPolicy;
pub use revocation::{Revocation, RevocationStore};

use crate::config::{
    AuthPolicyConfig, ConfigError, JwtAlgorithm, LoadedConfig, RevocationStoreKind,
};
use http::HeaderName;
use jwks::{JwksIdentity, JwksSource};
use keys::{KeySet, VerifyingKey};
use policy::PolicyParts;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every auth policy of a config, and the revocation store.
pub struct AuthSet {
    policies: BTreeMap<String, Arc<JwtPolicy>>,
    revocation: Arc<RevocationStore>,
    /// Longest leeway of any policy: how long a jti revocation must last
    /// past the token's exp.
    revoke_leeway: i64,
}

/// The Redis store `[revocation]` describes (None: memory), its CA read.
fn redis_target(lc: &LoadedConfig) -> Result<Option<redis_conn::Target>, ConfigError> {
    use redis_conn::Kind;
    let rc = &lc.config.revocation;
    let (kind, urls) = match rc.store {
        RevocationStoreKind::Memory => return Ok(None),
        RevocationStoreKind::Redis => (Kind::Single, vec![rc.redis_url.get_ref().clone()]),
        RevocationStoreKind::RedisCluster => (Kind::Cluster, spanned_strings(&rc.redis_urls)),
        RevocationStoreKind::RedisSentinel => (Kind::Sentinel, spanned_strings(&rc.redis_urls)),
    };
    let ca = if rc.redis_ca.get_ref().is_empty() {
        None
    } else {
        Some(crate::tls::ca_pem(lc, &rc.redis_ca)?)
    };
    Ok(Some(redis_conn::Target {
        kind,
        urls,
        master: rc.sentinel_master.get_ref().clone(),
        ca,
    }))
}

fn spanned_strings(v: &[toml::Spanned<String>]) -> Vec<String> {
    v.iter().map(|s| s.get_ref().clone()).collect()
}

/// Why POST /revoke failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeError {
    /// 400: the body is not one of the two accepted shapes.
    BadBody(String),
    /// 503: the store did not take it.
    StoreDown,
}

fn jwt_algorithm(a: JwtAlgorithm) -> jsonwebtoken::Algorithm {
    use jsonwebtoken::Algorithm as A;
    match a {
        JwtAlgorithm::HS256 => A::HS256,
        JwtAlgorithm::HS384 => A::HS384,
        JwtAlgorithm::HS512 => A::HS512,
        JwtAlgorithm::RS256 => A::RS256,
        JwtAlgorithm::RS384 => A::RS384,
        JwtAlgorithm::RS512 => A::RS512,
        JwtAlgorithm::PS256 => A::PS256,
        JwtAlgorithm::PS384 => A::PS384,
        JwtAlgorithm::PS512 => A::PS512,
        JwtAlgorithm::ES256 => A::ES256,
        JwtAlgorithm::ES384 => A::ES384,
        JwtAlgorithm::EdDSA => A::EdDSA,
    }
}

impl AuthSet {
    /// Builds every policy of `lc`, reading its files. `previous`: the set
    /// of the snapshot in force, whose store and jwks sources may be kept.
    pub fn build(lc: &LoadedConfig, previous: Option<&AuthSet>) -> Result<AuthSet, ConfigError> {
        let c = &lc.config;
        let rc = &c.revocation;
        let target = redis_target(lc)?;
        let revocation = match previous.map(|p| &p.revocation) {
            Some(prev) if prev.same_backend(target.as_ref(), &rc.key_prefix) => {
                if prev.on_error() == rc.on_store_error {
                    prev.clone()
                } else {
                    Arc::new(prev.with_on_error(rc.on_store_error))
                }
            }
            prev => {
                let store = match target {
                    None => RevocationStore::memory(rc.on_store_error),
                    Some(t) => RevocationStore::redis(t, &rc.key_prefix, rc.on_store_error)
                        .map_err(|e| lc.error_at(&rc.redis_url, e))?,
                };
                Arc::new(match prev {
                    Some(p) => store.counting_on(p),
                    None => store,
                })
            }
        };
        let mut policies = BTreeMap::new();
        let mut revoke_leeway = 30;
        for (name, p) in &c.auth {
            let prev = previous.and_then(|s| s.policies.get(name));
            let policy = build_policy(lc, name, p, prev, &revocation)?;
            revoke_leeway = revoke_leeway.max(policy.leeway());
            policies.insert(name.clone(), Arc::new(policy));
        }
        Ok(AuthSet {
            policies,
            revocation,
            revoke_leeway,
        })
    }

    /// The policy called `name`.
    pub fn policy(&self, name: &str) -> Option<Arc<JwtPolicy>> {
        self.policies.get(name).cloned()
    }

    /// Every policy, by name (for /metrics).
    pub fn policies(&self) -> impl Iterator<Item = (&str, &Arc<JwtPolicy>)> {
        self.policies.iter().map(|(n, p)| (n.as_str(), p))
    }

    /// The revocation store (for /metrics: its failure counts).
    pub fn revocation(&self) -> &Arc<RevocationStore> {
        &self.revocation
    }

    /// Starts fetching every jwks_url. Needs the runtime; idempotent.
    pub fn start(&self) {
        for p in self.policies.values() {
            if let Some(s) = p.jwks_source() {
                s.start();
            }
        }
    }

    /// POST /revoke: parses the body and records the revocation.
    pub async fn revoke(&self, body: &[u8]) -> Result<(), RevokeError> {
        let r = Revocation::parse(body).map_err(RevokeError::BadBody)?;
        self.revocation
            .revoke(&r, crate::sys::unix_now() as i64, self.revoke_leeway)
            .await
            .map_err(|_| RevokeError::StoreDown)
    }
}

fn read_file(
    lc: &LoadedConfig,
    at: &toml::Spanned<String>,
    what: &str,
) -> Result<Vec<u8>, ConfigError> {
    let path = lc.resolve(at.get_ref());
    std::fs::read(&path)
        .map_err(|e| lc.error_at(at, format!("cannot read {what} {}: {e}", path.display())))
}

fn build_policy(
    lc: &LoadedConfig,
    name: &str,
    p: &AuthPolicyConfig,
    previous: Option<&Arc<JwtPolicy>>,
    store: &Arc<RevocationStore>,
) -> Result<JwtPolicy, ConfigError> {
    let static_keys = static_keys(lc, p)?;
    let jwks_file = jwks_file(lc, p)?;
    let algorithms: Vec<_> = p
        .algorithms
        .get_ref()
        .iter()
        .map(|a| jwt_algorithm(*a.get_ref()))
        .collect();
    if p.jwks_url.get_ref().is_empty() {
        every_algorithm_has_a_key(lc, name, p, &static_keys, jwks_file.as_ref())?;
    }
    let jwks_url = jwks_source(lc, p, previous)?;
    let forward_claims = forward_claims(lc, p)?;
    Ok(JwtPolicy::new(PolicyParts {
        name: name.to_string(),
        algorithms,
        static_keys,
        jwks_file,
        jwks_url,
        issuer: p.issuer.clone(),
        audience: p.audience.clone(),
        leeway: p.leeway.get_ref().0.as_secs() as i64,
        required_claims: p
            .required_claims
            .iter()
            .map(|c| c.get_ref().clone())
            .collect(),
        required_scopes: p
            .required_scopes
            .iter()
            .map(|c| c.get_ref().clone())
            .collect(),
        forward_claims,
        forward_token: p.forward_token,
        revocation: p.revocation.then(|| store.clone()),
        cache_entries: cache::DEFAULT_MAX_ENTRIES,
        cache_bytes: cache::DEFAULT_MAX_BYTES,
        // Counters go on across reloads for a policy that keeps its name.
        counts: previous.map_or_else(Default::default, |p| p.counters().clone()),
    }))
}

/// The keys without a kid: PEM key files and the HMAC secret.
fn static_keys(lc: &LoadedConfig, p: &AuthPolicyConfig) -> Result<Vec<VerifyingKey>, ConfigError> {
    let mut static_keys = Vec::new();
    for k in &p.keys {
        let text = read_file(lc, k, "key file")?;
        let keys = keys::from_pem(&text).map_err(|e| {
            lc.error_at(
                k,
                format!("key file {}: {e}", lc.resolve(k.get_ref()).display()),
            )
        })?;
        static_keys.extend(keys);
    }
    if !p.secret_file.get_ref().is_empty() {
        let raw = read_file(lc, &p.secret_file, "secret_file")?;
        // As for admin.token_file: a trailing newline is not part of it.
        let secret = raw
            .strip_suffix(b"\n")
            .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
            .unwrap_or(&raw);
        if secret.is_empty() {
            return Err(lc.error_at(&p.secret_file, "secret_file is empty"));
        }
        let need = p
            .algorithms
            .get_ref()
            .iter()
            .map(|a| a.get_ref().min_secret_len())
            .max()
            .unwrap_or(0);
        if secret.len() < need {
            return Err(lc.error_at(
                &p.secret_file,
                format!(
                    "secret_file holds {} bytes; the HMAC algorithms listed need at least {need} (RFC 7518 3.2)",
                    secret.len()
                ),
            ));
        }
        static_keys.push(VerifyingKey::hmac(secret));
    }
    Ok(static_keys)
}

/// The jwks_file's keys, if one is set.
fn jwks_file(lc: &LoadedConfig, p: &AuthPolicyConfig) -> Result<Option<KeySet>, ConfigError> {
    Ok(if p.jwks_file.get_ref().is_empty() {
        None
    } else {
        let doc = read_file(lc, &p.jwks_file, "jwks_file")?;
        let parsed = keys::parse_jwks(&doc, true).map_err(|e| {
            lc.error_at(
                &p.jwks_file,
                format!(
                    "jwks_file {}: {e}",
                    lc.resolve(p.jwks_file.get_ref()).display()
                ),
            )
        })?;
        if parsed.keys.is_empty() {
            return Err(lc.error_at(
                &p.jwks_file,
                "jwks_file has no key usable for JWS signatures (RSA, P-256, P-384, Ed25519)",
            ));
        }
        Some(KeySet::new(parsed.keys))
    })
}

/// Every listed algorithm must have a key that can check it (unless a
/// jwks_url may bring one later: the caller asks only without one).
fn every_algorithm_has_a_key(
    lc: &LoadedConfig,
    name: &str,
    p: &AuthPolicyConfig,
    static_keys: &[VerifyingKey],
    jwks_file: Option<&KeySet>,
) -> Result<(), ConfigError> {
    for a in p.algorithms.get_ref() {
        let alg = jwt_algorithm(*a.get_ref());
        let usable = static_keys.iter().any(|k| k.fits(alg))
            || jwks_file.is_some_and(|s| s.keys.iter().any(|k| k.fits(alg)));
        if !usable {
            return Err(lc.error_at(
                a,
                format!(
                    "auth \"{name}\": no configured key can verify {:?} tokens",
                    a.get_ref()
                ),
            ));
        }
    }
    Ok(())
}

/// The jwks_url source: the previous generation's when its url, CA and
/// refresh are the same (it keeps its keys and its refresh task).
fn jwks_source(
    lc: &LoadedConfig,
    p: &AuthPolicyConfig,
    previous: Option<&Arc<JwtPolicy>>,
) -> Result<Option<Arc<JwksSource>>, ConfigError> {
    Ok(if p.jwks_url.get_ref().is_empty() {
        None
    } else {
        let (ca_pem, ca_certs) = if p.jwks_ca.get_ref().is_empty() {
            (None, None)
        } else {
            let pem = read_file(lc, &p.jwks_ca, "jwks_ca")?;
            (Some(pem), Some(crate::tls::load_certs(lc, &p.jwks_ca)?))
        };
        let identity = JwksIdentity {
            url: p.jwks_url.get_ref().clone(),
            ca_pem,
            refresh: p.jwks_refresh.get_ref().0,
        };
        let reused = previous
            .and_then(|prev| prev.jwks_source())
            .filter(|s| s.identity == identity)
            .cloned();
        Some(match reused {
            Some(s) => s,
            None => Arc::new(
                JwksSource::new(identity, ca_certs).map_err(|e| lc.error_at(&p.jwks_url, e))?,
            ),
        })
    })
}

/// The forward_claims headers, by claim.
fn forward_claims(
    lc: &LoadedConfig,
    p: &AuthPolicyConfig,
) -> Result<Vec<(String, HeaderName)>, ConfigError> {
    p.forward_claims
        .iter()
        .map(|(claim, h)| {
            HeaderName::from_bytes(h.get_ref().to_ascii_lowercase().as_bytes())
                .map(|n| (claim.clone(), n))
                .map_err(|_| lc.error_at(h, "not a valid header name"))
        })
        .collect()
}
