//! Bearer credentials: the one parser of `Authorization: Bearer <token>`
//! (for JWT policies and the admin API alike), and the admin token.
//!
//! The admin token (admin.token_file) is the file's contents less trailing
//! newlines, read when the config is built: a missing or empty file is a
//! config error. Only its SHA-256 digest is kept, and a presented token is
//! hashed and compared in constant time.

use super::cache::sha256;
use super::failure::AuthFailure;
use crate::config::{ConfigError, LoadedConfig};
use http::header::AUTHORIZATION;
use http::HeaderMap;

/// The bearer token of a request: exactly one Authorization header (two
/// are an error), scheme "Bearer" in any case (any other scheme counts as
/// no token), then spaces or tabs, then a token that is not empty.
pub fn bearer(headers: &HeaderMap) -> Result<&[u8], AuthFailure> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let value = match (all.next(), all.next()) {
        (None, _) => return Err(AuthFailure::NoToken),
        (Some(_), Some(_)) => return Err(AuthFailure::TwoAuthorizationHeaders),
        (Some(v), None) => v.as_bytes().trim_ascii(),
    };
    let (scheme, rest) = match value.iter().position(|b| matches!(b, b' ' | b'\t')) {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(AuthFailure::NoToken);
    }
    let token = rest.trim_ascii_start();
    if token.is_empty() {
        return Err(AuthFailure::Invalid("empty bearer token"));
    }
    Ok(token)
}

/// The admin token (admin.token_file), kept as its SHA-256 digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    /// Reads admin.token_file, if set; errors point at its value.
    pub fn load(lc: &LoadedConfig) -> Result<Option<AdminToken>, ConfigError> {
        let at = &lc.config.admin.token_file;
        if at.get_ref().is_empty() {
            return Ok(None);
        }
        let path = lc.resolve(at.get_ref());
        let text = std::fs::read(&path).map_err(|e| {
            lc.error_at(
                at,
                format!("cannot read admin.token_file {}: {e}", path.display()),
            )
        })?;
        let token = trim_newlines(&text);
        if token.is_empty() {
            return Err(lc.error_at(at, format!("admin.token_file {} is empty", path.display())));
        }
        Ok(Some(AdminToken::new(token)))
    }

    pub fn new(token: &[u8]) -> AdminToken {
        AdminToken {
            digest: sha256(token),
        }
    }

    /// Whether `presented` is the token. The time taken depends only on the
    /// length of `presented`, never on how much of it matches.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d = sha256(presented);
        let diff = d
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    /// Whether the request headers carry this token as their bearer token.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_ok_and(|t| self.matches(t))
    }
}

/// `b` without the newlines (CR or LF) at its end.
pub fn trim_newlines(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && matches!(b[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &b[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn bearer_scheme() {
        assert_eq!(bearer(&h(&["Bearer abc"])), Ok(&b"abc"[..]));
        assert_eq!(bearer(&h(&["bEaReR   abc"])), Ok(&b"abc"[..]));
        assert_eq!(bearer(&h(&["BEARER\tabc "])), Ok(&b"abc"[..]));
        assert_eq!(
            bearer(&h(&["Basic dXNlcjpwYXNz"])),
            Err(AuthFailure::NoToken)
        );
        assert_eq!(bearer(&h(&[])), Err(AuthFailure::NoToken));
        assert_eq!(
            bearer(&h(&["Bearer a", "Bearer b"])),
            Err(AuthFailure::TwoAuthorizationHeaders)
        );
        assert!(matches!(
            bearer(&h(&["Bearer"])),
            Err(AuthFailure::Invalid(_))
        ));
        assert!(matches!(
            bearer(&h(&["Bearer   "])),
            Err(AuthFailure::Invalid(_))
        ));
    }

    #[test]
    fn admin_token_check() {
        let t = AdminToken::new(trim_newlines(b"s3cret\n"));
        assert!(t.admits(&h(&["Bearer s3cret"])));
        assert!(t.admits(&h(&["bearer s3cret"])));
        assert!(!t.admits(&h(&["Bearer s3cre"])));
        assert!(!t.admits(&h(&["Basic s3cret"])));
        assert!(!t.admits(&h(&[])));
        assert!(!t.admits(&h(&["Bearer s3cret", "Bearer s3cret"])));
    }

    #[test]
    fn newlines_are_trimmed_only_at_the_end() {
        assert_eq!(trim_newlines(b"a b\r\n\n"), b"a b");
        assert_eq!(trim_newlines(b"\nab"), b"\nab");
    }
}
