//! `[cors.NAME]` tables: the CORS policies a route names with `cors = "NAME"`.
//!
//! Validation guarantees (each error at the offending value's
//! `PATH:LINE:COL`): `allow_origins` is either `["*"]` or a list of exact
//! origins (`scheme://host[:port]`, no path, no wildcard, not "null");
//! `["*"]` is never combined with `allow_credentials = true` (browsers refuse
//! that pair, and echoing every origin with credentials would hand any site
//! the user's cookies); methods are HTTP method tokens and headers are header
//! names, each listed by name (`"*"` is accepted only in `allow_origins`).
//! The runtime policy is compiled from this by `proxy::cors`.

use super::duration::Dur;
use super::error::{ConfigError, SourceFile};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// One `[cors.NAME]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins, or `["*"]` for any origin.
    #[serde(default)]
    pub allow_origins: Vec<Spanned<String>>,
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow_headers: Vec<Spanned<String>>,
    #[serde(default)]
    pub expose_headers: Vec<Spanned<String>>,
    #[serde(default = "no_credentials")]
    pub allow_credentials: Spanned<bool>,
    #[serde(default = "default_max_age")]
    pub max_age: Dur,
}

impl CorsConfig {
    /// Whether the policy allows any origin (`allow_origins = ["*"]`).
    pub fn any_origin(&self) -> bool {
        self.allow_origins.iter().any(|o| o.get_ref() == "*")
    }
}

fn default_methods() -> Vec<Spanned<String>> {
    ["GET", "HEAD", "POST"]
        .iter()
        .map(|m| Spanned::new(0..0, m.to_string()))
        .collect()
}

fn no_credentials() -> Spanned<bool> {
    Spanned::new(0..0, false)
}

fn default_max_age() -> Dur {
    Dur::secs(600)
}

/// Checks one policy; `name` is its table name.
pub(super) fn validate(src: &SourceFile, name: &str, p: &CorsConfig) -> Result<(), ConfigError> {
    if p.any_origin() {
        if p.allow_origins.len() > 1 {
            return Err(src.error_in(
                &p.allow_origins[0],
                format!("cors.{name}: \"*\" must be the only entry of allow_origins"),
            ));
        }
        if *p.allow_credentials.get_ref() {
            return Err(src.error_in(
                &p.allow_credentials,
                format!(
                    "cors.{name}: allow_credentials = true cannot be combined with allow_origins = [\"*\"]; list the origins"
                ),
            ));
        }
    } else {
        for o in &p.allow_origins {
            if !is_origin(o.get_ref()) {
                return Err(src.error_in(
                    o,
                    format!(
                        "cors.{name}: \"{}\" is not an origin like \"https://app.example.com\" or \"http://localhost:3000\"",
                        o.get_ref()
                    ),
                ));
            }
        }
    }
    for m in &p.allow_methods {
        if m.get_ref() == "*" || http::Method::from_bytes(m.get_ref().as_bytes()).is_err() {
            return Err(src.error_in(
                m,
                format!(
                    "cors.{name}: allow_methods: \"{}\" is not an HTTP method (list them by name)",
                    m.get_ref()
                ),
            ));
        }
    }
    for h in p.allow_headers.iter().chain(&p.expose_headers) {
        if h.get_ref() == "*" || http::HeaderName::from_bytes(h.get_ref().as_bytes()).is_err() {
            return Err(src.error_in(
                h,
                format!(
                    "cors.{name}: \"{}\" is not a header name (list them by name)",
                    h.get_ref()
                ),
            ));
        }
    }
    Ok(())
}

/// `scheme://host[:port]`, as browsers serialize an Origin header.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let (host_ok, port) = if let Some(r) = rest.strip_prefix('[') {
        // An IPv6 literal: "[::1]" or "[::1]:8080".
        let Some((h, after)) = r.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        let ok = !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        (ok, port)
    } else {
        let (h, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        let ok = !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        (ok, port)
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    scheme_ok && host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::is_origin;

    #[test]
    fn origins() {
        for ok in [
            "https://app.example.com",
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
        ] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "null",
            "app.example.com",
            "https://app.example.com/",
            "https://*.example.com",
            "https://",
            "https://a.example.com:x",
            "https://a.example.com:",
            "*",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
