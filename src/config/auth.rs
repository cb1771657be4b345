//! The `[auth.NAME]` and `[revocation]` tables, and the route's `auth`.
//!
//! Guarantees: unknown keys are errors; defaults are SPEC.md's; everything
//! that can be checked without reading a file is checked, at the position
//! of the offending value (`PATH:LINE:COL`): a policy on its own here, the
//! revocation store and the routes' references among the config's checks
//! (`validate`). Key files, JWKS files
//! and the HMAC secret are read and checked by the snapshot builder
//! (`crate::auth`), through the same error type. Nothing here touches the
//! network: a `jwks_url` is only parsed.

use super::duration::Dur;
use super::error::{ConfigError, SourceFile};
use super::spanned::empty_spanned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use toml::Spanned;

/// The kinds of `[auth.NAME]` policy. Only "jwt" exists.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    Jwt,
}

/// A JWS algorithm a policy may accept. "none" is not one of them.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    /// HMAC with a shared secret (the `secret_file`).
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }

    /// Bytes a secret needs for this HMAC algorithm (RFC 7518 3.2: at least
    /// the hash output size); 0 for the others.
    pub fn min_secret_len(self) -> usize {
        match self {
            JwtAlgorithm::HS256 => 32,
            JwtAlgorithm::HS384 => 48,
            JwtAlgorithm::HS512 => 64,
            _ => 0,
        }
    }
}

/// One `[auth.NAME]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicyConfig {
    #[serde(rename = "type")]
    pub kind: Spanned<AuthType>,
    pub algorithms: Spanned<Vec<Spanned<JwtAlgorithm>>>,
    #[serde(default)]
    pub keys: Vec<Spanned<String>>,
    #[serde(default = "empty_spanned")]
    pub jwks_file: Spanned<String>,
    #[serde(default = "empty_spanned")]
    pub jwks_url: Spanned<String>,
    #[serde(default = "empty_spanned")]
    pub jwks_ca: Spanned<String>,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Spanned<Dur>,
    #[serde(default = "empty_spanned")]
    pub secret_file: Spanned<String>,
    #[serde(default)]
    pub issuer: Vec<String>,
    #[serde(default)]
    pub audience: Vec<String>,
    #[serde(default = "default_leeway")]
    pub leeway: Spanned<Dur>,
    #[serde(default = "default_required_claims")]
    pub required_claims: Vec<Spanned<String>>,
    #[serde(default)]
    pub required_scopes: Vec<Spanned<String>>,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, Spanned<String>>,
    #[serde(default = "yes")]
    pub forward_token: bool,
    #[serde(default)]
    pub revocation: bool,
}

fn default_jwks_refresh() -> Spanned<Dur> {
    Spanned::new(0..0, Dur::secs(300))
}
fn default_leeway() -> Spanned<Dur> {
    Spanned::new(0..0, Dur::secs(30))
}
fn default_required_claims() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "exp".to_string())]
}
fn yes() -> bool {
    true
}

/// Where revocations live.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationStoreKind {
    /// This process only.
    #[default]
    Memory,
    /// Shared by every instance through one Redis server (`redis_url`).
    Redis,
    /// Shared through a Redis Cluster (`redis_urls`: seed nodes).
    RedisCluster,
    /// Shared through the master that Sentinels name (`redis_urls`: the
    /// sentinels; `sentinel_master`: the master's name).
    RedisSentinel,
}

impl RevocationStoreKind {
    /// Whether the store is shared through Redis.
    pub fn is_redis(self) -> bool {
        self != RevocationStoreKind::Memory
    }
}

/// What a request gets when the revocation store cannot answer.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Fail closed: 503.
    #[default]
    Deny,
    /// Fail open: the request passes (and is counted).
    Allow,
}

/// The `[revocation]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationConfig {
    pub store: RevocationStoreKind,
    pub redis_url: Spanned<String>,
    pub redis_urls: Vec<Spanned<String>>,
    pub sentinel_master: Spanned<String>,
    /// PEM CA bundle that rediss:// servers are verified against; empty:
    /// the system's trust roots.
    pub redis_ca: Spanned<String>,
    pub key_prefix: String,
    pub on_store_error: OnStoreError,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        RevocationConfig {
            store: RevocationStoreKind::Memory,
            redis_url: Spanned::new(0..0, "redis://127.0.0.1:6379/0".into()),
            redis_urls: Vec::new(),
            sentinel_master: Spanned::new(0..0, String::new()),
            redis_ca: Spanned::new(0..0, String::new()),
            key_prefix: "portico:revoked:".into(),
            on_store_error: OnStoreError::Deny,
        }
    }
}

/// Header names a client's claim header may never take: they frame the
/// message, route it, or carry the credential itself.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "expect",
    "cookie",
];

/// Checks one policy; `name` is its table name, `request_id_header` the
/// server's (claims may not be forwarded in it).
pub(super) fn validate_policy(
    src: &SourceFile,
    name: &str,
    p: &AuthPolicyConfig,
    request_id_header: &str,
) -> Result<(), ConfigError> {
    policy_algorithms(src, name, p)?;
    policy_keys(src, name, p)?;
    policy_claims(src, name, p)?;
    policy_forward_claims(src, name, p, request_id_header)
}

/// The algorithms, and the kind of key each needs.
fn policy_algorithms(
    src: &SourceFile,
    name: &str,
    p: &AuthPolicyConfig,
) -> Result<(), ConfigError> {
    let algs = p.algorithms.get_ref();
    if algs.is_empty() {
        return Err(src.error_in(
            &p.algorithms,
            format!("auth \"{name}\": algorithms must list at least one algorithm"),
        ));
    }
    let hmac = algs.iter().find(|a| a.get_ref().is_hmac());
    let asymmetric = algs.iter().find(|a| !a.get_ref().is_hmac());
    let has_secret = !p.secret_file.get_ref().is_empty();
    let has_public =
        !p.keys.is_empty() || !p.jwks_file.get_ref().is_empty() || !p.jwks_url.get_ref().is_empty();
    if let Some(a) = hmac {
        if !has_secret {
            return Err(src.error_in(
                a,
                format!(
                    "auth \"{name}\": {:?} needs secret_file (HMAC keys never come from JWKS or PEM files)",
                    a.get_ref()
                ),
            ));
        }
    } else if has_secret {
        return Err(src.error_in(
            &p.secret_file,
            format!(
                "auth \"{name}\": secret_file is set but no HS256/HS384/HS512 algorithm is listed"
            ),
        ));
    }
    if let Some(a) = asymmetric {
        if !has_public {
            return Err(src.error_in(
                a,
                format!(
                    "auth \"{name}\": {:?} needs public keys: set keys, jwks_file or jwks_url",
                    a.get_ref()
                ),
            ));
        }
    } else if has_public {
        let at = if let Some(k) = p.keys.first() {
            k
        } else if !p.jwks_file.get_ref().is_empty() {
            &p.jwks_file
        } else {
            &p.jwks_url
        };
        return Err(src.error_in(
            at,
            format!("auth \"{name}\": public keys are set but only HMAC algorithms are listed"),
        ));
    }
    Ok(())
}

/// Where the public keys come from: key files, a JWKS file or a JWKS URL.
fn policy_keys(src: &SourceFile, name: &str, p: &AuthPolicyConfig) -> Result<(), ConfigError> {
    for k in &p.keys {
        if k.get_ref().is_empty() {
            return Err(src.error_in(k, format!("auth \"{name}\": a key path is empty")));
        }
    }
    if !p.jwks_file.get_ref().is_empty() && !p.jwks_url.get_ref().is_empty() {
        return Err(src.error_in(
            &p.jwks_url,
            format!("auth \"{name}\": set jwks_file or jwks_url, not both"),
        ));
    }
    let url = p.jwks_url.get_ref();
    if !url.is_empty() {
        match jwks_url_parts(url) {
            Some((https, _, _)) => {
                if !https && !p.jwks_ca.get_ref().is_empty() {
                    return Err(src.error_in(
                        &p.jwks_ca,
                        format!("auth \"{name}\": jwks_ca is only used with an https jwks_url"),
                    ));
                }
            }
            None => {
                return Err(src.error_in(
                    &p.jwks_url,
                    format!(
                        "auth \"{name}\": jwks_url must be an http:// or https:// URL with a host"
                    ),
                ))
            }
        }
        if p.jwks_refresh.get_ref().0 < std::time::Duration::from_secs(1) {
            return Err(src.error_in(
                &p.jwks_refresh,
                format!("auth \"{name}\": jwks_refresh must be at least 1s"),
            ));
        }
    } else if !p.jwks_ca.get_ref().is_empty() {
        return Err(src.error_in(
            &p.jwks_ca,
            format!("auth \"{name}\": jwks_ca is set without a jwks_url"),
        ));
    }
    Ok(())
}

/// The leeway and the claims and scopes a token must carry.
fn policy_claims(src: &SourceFile, name: &str, p: &AuthPolicyConfig) -> Result<(), ConfigError> {
    if p.leeway.get_ref().0 > std::time::Duration::from_secs(24 * 3600) {
        return Err(src.error_in(
            &p.leeway,
            format!("auth \"{name}\": leeway must be at most 24h"),
        ));
    }
    for c in &p.required_claims {
        if c.get_ref().is_empty() {
            return Err(src.error_in(
                c,
                format!("auth \"{name}\": a required claim name is empty"),
            ));
        }
    }
    for s in &p.required_scopes {
        let v = s.get_ref();
        if v.is_empty() || v.contains(char::is_whitespace) {
            return Err(src.error_in(
                s,
                format!("auth \"{name}\": a required scope must be one non-empty word"),
            ));
        }
    }
    Ok(())
}

/// The headers claims are forwarded in: valid, not reserved, one claim each.
fn policy_forward_claims(
    src: &SourceFile,
    name: &str,
    p: &AuthPolicyConfig,
    request_id_header: &str,
) -> Result<(), ConfigError> {
    let mut headers = std::collections::HashSet::new();
    for (claim, header) in &p.forward_claims {
        let h = header.get_ref().to_ascii_lowercase();
        if claim.is_empty() {
            return Err(src.error_in(
                header,
                format!("auth \"{name}\": a forwarded claim name is empty"),
            ));
        }
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return Err(src.error_in(
                header,
                format!(
                    "auth \"{name}\": \"{}\" is not a valid header name",
                    header.get_ref()
                ),
            ));
        }
        if RESERVED_HEADERS.contains(&h.as_str()) || h.starts_with("x-forwarded-") {
            return Err(src.error_in(
                header,
                format!("auth \"{name}\": claims cannot be forwarded in the \"{h}\" header"),
            ));
        }
        if h == request_id_header.to_ascii_lowercase() {
            return Err(src.error_in(
                header,
                format!("auth \"{name}\": \"{h}\" is the request id header"),
            ));
        }
        if !headers.insert(h.clone()) {
            return Err(src.error_in(
                header,
                format!("auth \"{name}\": two claims are forwarded in the \"{h}\" header"),
            ));
        }
    }
    Ok(())
}

/// Splits a JWKS URL: (https?, authority "host:port", path and query).
/// `None` unless it is an absolute http(s) URL with a host.
pub fn jwks_url_parts(url: &str) -> Option<(bool, http::uri::Authority, String)> {
    let uri: http::Uri = url.parse().ok()?;
    let https = match uri.scheme_str()? {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    let authority = uri.authority()?.clone();
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return None;
    }
    let pq = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_string());
    Some((https, authority, pq))
}
