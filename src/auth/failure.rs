//! Why a request did not pass authentication, in auth's own terms.
//!
//! The pipeline maps an [`AuthFailure`] to its answer (`crate::proxy::error`
//! has the `From` impl); auth maps it to the `result` label of
//! portico_jwt_validations_total ([`AuthFailure::result`]).

use crate::observe::metrics::JwtResult;

/// Why a request did not pass a JWT policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No Authorization header, or one with a scheme other than Bearer.
    NoToken,
    /// More than one Authorization header.
    TwoAuthorizationHeaders,
    /// Malformed, badly signed, unlisted algorithm, wrong iss/aud, a
    /// required claim missing, not yet valid.
    Invalid(&'static str),
    Expired,
    Revoked,
    /// Valid, but a required scope is missing.
    InsufficientScope,
    /// No key was ever obtained (the jwks_url has not answered).
    NoKey,
    /// The revocation store is down and on_store_error = "deny".
    StoreUnavailable,
}

impl AuthFailure {
    /// The `result` label it counts under.
    pub fn result(self) -> JwtResult {
        match self {
            AuthFailure::NoToken => JwtResult::Missing,
            AuthFailure::TwoAuthorizationHeaders | AuthFailure::Invalid(_) => JwtResult::Invalid,
            AuthFailure::Expired => JwtResult::Expired,
            AuthFailure::Revoked => JwtResult::Revoked,
            AuthFailure::InsufficientScope => JwtResult::Forbidden,
            AuthFailure::NoKey | AuthFailure::StoreUnavailable => JwtResult::Unavailable,
        }
    }
}
