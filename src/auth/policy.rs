//! One `[auth.NAME]` policy, compiled: what the authenticate phase runs.
//!
//! Per request, in order:
//! 1. the bearer token ([`super::bearer`]): exactly one Authorization header
//!    (two: 400), scheme "Bearer" in any case (anything else, or none: 401
//!    without an error code, counted `missing`);
//! 2. the verified-token cache, by a keyed hash of the token; on a miss the
//!    cold check: header, algorithm listed and fitting the key, signature,
//!    then claims (see [`super::token`]); a success is cached;
//! 3. revocation, on every request, hit or miss, when the policy has
//!    `revocation = true`;
//! 4. scopes (403 `insufficient_scope` when one is missing);
//! 5. the headers: every forward_claims header is removed from the request
//!    and then set from the token; Authorization is removed when
//!    forward_token = false. (Before this phase the pipeline has removed
//!    every spelling of every policy's claim headers from every request,
//!    see `crate::proxy::headers::ClaimHeaders`.)
//!
//! Key choice (SPEC): a token's kid picks the JWKS key of that kid (and
//! nothing else: a known kid whose key refuses the token is a bad
//! signature); otherwise the keys without a kid (PEM files, the secret)
//! whose type fits the alg are tried, and, for a token without a kid, the
//! JWKS keys that fit too (at most [`MAX_TRIES`] keys in all, so a token
//! costs a bounded number of signature checks). An unknown kid makes a
//! jwks_url source fetch again (at most once a minute). A policy with no
//! key at all for a token, because its jwks_url has never answered,
//! answers 503, not 401.

use super::bearer::bearer;
use super::cache::{TokenCache, Weigh};
use super::failure::AuthFailure;
use super::jwks::JwksSource;
use super::keys::{KeySet, VerifyingKey};
use super::revocation::RevocationStore;
use super::token::{self, Checked, ClaimRules, Parts, Rejection};
use crate::config::OnStoreError;
use crate::observe::metrics::{JwtMetrics, JwtResult};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use std::sync::Arc;

/// Most keys tried for one token.
pub const MAX_TRIES: usize = 8;

impl From<Rejection> for AuthFailure {
    fn from(r: Rejection) -> AuthFailure {
        match r {
            Rejection::Invalid(why) => AuthFailure::Invalid(why),
            Rejection::Expired => AuthFailure::Expired,
        }
    }
}

/// A token that passed the signature and claim checks: what later requests
/// with the same token reuse.
#[derive(Debug)]
pub struct VerifiedToken {
    pub claims: Checked,
    /// Headers to set upstream, from forward_claims, built once.
    pub forward: Vec<(HeaderName, HeaderValue)>,
    /// Key-set epoch it was verified under (jwks_url sources change).
    epoch: u64,
}

impl Weigh for VerifiedToken {
    fn weight(&self) -> usize {
        std::mem::size_of::<VerifiedToken>()
            + self.claims.sub.as_ref().map_or(0, |s| s.len())
            + self.claims.jti.as_ref().map_or(0, |s| s.len())
            + self
                .forward
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 64)
                .sum::<usize>()
    }
}

/// A compiled JWT policy.
pub struct JwtPolicy {
    pub name: Arc<str>,
    algorithms: Vec<Algorithm>,
    /// Keys without a kid: PEM files and the HMAC secret.
    static_keys: Vec<VerifyingKey>,
    jwks_file: Option<KeySet>,
    jwks_url: Option<Arc<JwksSource>>,
    issuer: Vec<String>,
    audience: Vec<String>,
    leeway: i64,
    required_claims: Vec<String>,
    required_scopes: Vec<String>,
    forward_claims: Vec<(String, HeaderName)>,
    forward_token: bool,
    revocation: Option<Arc<RevocationStore>>,
    cache: TokenCache<VerifiedToken>,
    /// portico_jwt_validations_total of this policy; handed from one
    /// generation of the policy to the next by name, so reloads keep it.
    counts: Arc<JwtMetrics>,
}

/// What [`JwtPolicy`] is made of; built by [`super::AuthSet`].
pub struct PolicyParts {
    pub name: String,
    pub algorithms: Vec<Algorithm>,
    pub static_keys: Vec<VerifyingKey>,
    pub jwks_file: Option<KeySet>,
    pub jwks_url: Option<Arc<JwksSource>>,
    pub issuer: Vec<String>,
    pub audience: Vec<String>,
    pub leeway: i64,
    pub required_claims: Vec<String>,
    pub required_scopes: Vec<String>,
    pub forward_claims: Vec<(String, HeaderName)>,
    pub forward_token: bool,
    pub revocation: Option<Arc<RevocationStore>>,
    pub cache_entries: usize,
    pub cache_bytes: usize,
    /// The counters to record into: the previous generation's, for a
    /// policy a reload keeps.
    pub counts: Arc<JwtMetrics>,
}

/// Outcome of trying keys on one token.
struct KeyVerdict {
    verified: bool,
    /// Keys whose signature check ran.
    tried: usize,
    /// The token has a kid no JWKS knows.
    kid_unknown: bool,
}

impl JwtPolicy {
    pub fn new(p: PolicyParts) -> JwtPolicy {
        JwtPolicy {
            name: Arc::from(p.name.as_str()),
            algorithms: p.algorithms,
            static_keys: p.static_keys,
            jwks_file: p.jwks_file,
            jwks_url: p.jwks_url,
            issuer: p.issuer,
            audience: p.audience,
            leeway: p.leeway,
            required_claims: p.required_claims,
            required_scopes: p.required_scopes,
            forward_claims: p.forward_claims,
            forward_token: p.forward_token,
            revocation: p.revocation,
            cache: TokenCache::new(p.cache_entries, p.cache_bytes),
            counts: p.counts,
        }
    }

    /// Validations so far, by result: `(label, count)` in
    /// [`JwtResult::ALL`] order.
    pub fn counts(&self) -> [(&'static str, u64); 7] {
        JwtResult::ALL.map(|r| (r.as_str(), self.counts.get(r)))
    }

    /// The counters this policy records into.
    pub fn counters(&self) -> &Arc<JwtMetrics> {
        &self.counts
    }

    /// The JWKS source of this policy, if it has a jwks_url.
    pub fn jwks_source(&self) -> Option<&Arc<JwksSource>> {
        self.jwks_url.as_ref()
    }

    /// The headers forward_claims sets.
    pub fn forward_claim_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.forward_claims.iter().map(|(_, h)| h)
    }

    /// The leeway, in seconds.
    pub fn leeway(&self) -> i64 {
        self.leeway
    }

    pub fn checks_revocation(&self) -> bool {
        self.revocation.is_some()
    }

    /// Verified tokens held by the cache now: (entries, bytes).
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }

    fn count(&self, result: JwtResult) {
        self.counts.record(result);
    }

    /// The authenticate phase for one request: passes (the request's
    /// headers rewritten for upstream) or says why not (counted); the
    /// pipeline turns an [`AuthFailure`] into its answer.
    pub async fn authenticate(&self, headers: &mut HeaderMap) -> Result<(), AuthFailure> {
        let verified = match self.check(headers).await {
            Ok(v) => v,
            Err(f) => {
                self.count(f.result());
                return Err(f);
            }
        };
        for (_, h) in &self.forward_claims {
            headers.remove(h);
        }
        for (h, v) in &verified.forward {
            headers.insert(h.clone(), v.clone());
        }
        if !self.forward_token {
            headers.remove(AUTHORIZATION);
        }
        self.count(JwtResult::Ok);
        Ok(())
    }

    async fn check(&self, headers: &HeaderMap) -> Result<Arc<VerifiedToken>, AuthFailure> {
        let token = bearer(headers)?;
        // JWT's NumericDate is signed; the clock is far below i64::MAX.
        let now = crate::sys::unix_now() as i64;
        let key = self.cache.key(token);
        let epoch = self.epoch();
        let verified = match self.cache.get(&key, now) {
            Some(v) if v.epoch == epoch => v,
            _ => {
                // Checked here, not before the lookup: a hit is a token
                // byte for byte the same as one that was verified.
                let token = std::str::from_utf8(token)
                    .map_err(|_| AuthFailure::Invalid("Authorization is not text"))?;
                // Boxed, as the store's check below: their futures are
                // kilobytes, and every request's future would be as large.
                let v = Arc::new(Box::pin(self.verify(token, now, epoch)).await?);
                let until = v.claims.exp.unwrap_or(i64::MAX);
                self.cache.insert(key, v.clone(), until, now);
                v
            }
        };
        if let Some(store) = &self.revocation {
            let c = &verified.claims;
            let revoked = store.is_revoked(c.jti.as_deref(), c.sub.as_deref(), c.iat, now);
            match Box::pin(revoked).await {
                Ok(false) => {}
                Ok(true) => return Err(AuthFailure::Revoked),
                Err(_) => {
                    store.count_failure();
                    if store.on_error() == OnStoreError::Deny {
                        return Err(AuthFailure::StoreUnavailable);
                    }
                }
            }
        }
        if !verified.claims.scope_ok {
            return Err(AuthFailure::InsufficientScope);
        }
        Ok(verified)
    }

    fn epoch(&self) -> u64 {
        self.jwks_url.as_ref().map_or(0, |s| s.epoch())
    }

    /// The cold check of a token, with every key source, fetching the
    /// jwks_url again when the token names an unknown kid.
    async fn verify(
        &self,
        token: &str,
        now: i64,
        epoch: u64,
    ) -> Result<VerifiedToken, AuthFailure> {
        let parts = token::split(token)?;
        if !self.algorithms.contains(&parts.alg) {
            return Err(AuthFailure::Invalid("algorithm not allowed by the policy"));
        }
        let mut url_keys = self.jwks_url.as_ref().and_then(|s| s.current());
        let mut v = self.try_keys(&parts, url_keys.as_deref());
        if !v.verified {
            if let Some(src) = &self.jwks_url {
                if !src.is_started() {
                    src.start();
                }
                let retry = if url_keys.is_none() {
                    src.wait_first_attempt().await;
                    true
                } else if v.kid_unknown {
                    src.refresh_for_unknown_kid().await;
                    true
                } else {
                    false
                };
                if retry {
                    url_keys = src.current();
                    if url_keys.is_some() {
                        v = self.try_keys(&parts, url_keys.as_deref());
                    }
                }
                if !v.verified && v.tried == 0 && url_keys.is_none() {
                    return Err(AuthFailure::NoKey);
                }
            }
        }
        if !v.verified {
            return Err(AuthFailure::Invalid(if v.tried == 0 {
                "no key for this token"
            } else {
                "bad signature"
            }));
        }
        self.claims(&parts, now, epoch)
    }

    /// The cold check with the keys in hand (no fetch, no cache), for
    /// benches and tests.
    pub fn verify_uncached(&self, token: &str, now: i64) -> Result<VerifiedToken, AuthFailure> {
        let parts = token::split(token)?;
        if !self.algorithms.contains(&parts.alg) {
            return Err(AuthFailure::Invalid("algorithm not allowed by the policy"));
        }
        let url_keys = self.jwks_url.as_ref().and_then(|s| s.current());
        let v = self.try_keys(&parts, url_keys.as_deref());
        if !v.verified {
            return Err(AuthFailure::Invalid("bad signature or no key"));
        }
        self.claims(&parts, now, self.epoch())
    }

    fn try_keys(&self, parts: &Parts, url_keys: Option<&KeySet>) -> KeyVerdict {
        let alg = parts.alg;
        let msg = parts.signing_input.as_bytes();
        let sets = [self.jwks_file.as_ref(), url_keys];
        if let Some(kid) = parts.kid.as_deref() {
            for set in sets.iter().flatten() {
                if let Some(k) = set.by_kid(kid) {
                    let fits = k.fits(alg);
                    return KeyVerdict {
                        verified: fits && k.verify(alg, msg, parts.signature),
                        tried: fits as usize,
                        kid_unknown: false,
                    };
                }
            }
        }
        // The static keys, then (for a token without kid) every JWKS key:
        // those that fit the algorithm, at most MAX_TRIES of them.
        let jwks_keys = sets
            .iter()
            .flatten()
            .filter(|_| parts.kid.is_none())
            .flat_map(|set| set.keys.iter());
        let mut tried = 0;
        for k in self
            .static_keys
            .iter()
            .chain(jwks_keys)
            .filter(|k| k.fits(alg))
            .take(MAX_TRIES)
        {
            tried += 1;
            if k.verify(alg, msg, parts.signature) {
                return KeyVerdict {
                    verified: true,
                    tried,
                    kid_unknown: false,
                };
            }
        }
        KeyVerdict {
            verified: false,
            tried,
            kid_unknown: parts.kid.is_some(),
        }
    }

    fn claims(&self, parts: &Parts, now: i64, epoch: u64) -> Result<VerifiedToken, AuthFailure> {
        let m = token::claims(parts.payload)?;
        let rules = ClaimRules {
            issuer: &self.issuer,
            audience: &self.audience,
            leeway: self.leeway,
            required_claims: &self.required_claims,
            required_scopes: &self.required_scopes,
        };
        let claims = token::check(&m, &rules, now)?;
        let forward = self
            .forward_claims
            .iter()
            .filter_map(|(claim, h)| {
                token::claim_header_value(m.get(claim)).map(|v| (h.clone(), v))
            })
            .collect();
        Ok(VerifiedToken {
            claims,
            forward,
            epoch,
        })
    }
}
