//! The config as JSON with its secrets masked, for the admin API's
//! `GET /config`.
//!
//! Masking is generic, so tables added later are covered without a list to
//! keep up to date. The config is serialized through serde (defaults filled
//! in, as it is in force), then every string is checked:
//! - the value of a key that names a secret — containing `password`,
//!   `passwd`, `secret` or `credential`, or being `token` or ending in
//!   `_token` — becomes `"***"`, unless the key ends in `_file` or `_path`
//!   (a path is not the secret: `token_file`, `secret_file` and key paths are
//!   shown, never what the files hold, which the config does not contain);
//! - the userinfo of a URL (`redis://user:pass@host`) keeps the user name
//!   and loses the password (`redis://user:***@host`); userinfo without a
//!   `:` (`https://TOKEN@host`) is masked whole;
//! - so is the value of a header rule whose name carries credentials
//!   (`authorization`, `cookie`, `*-token`, `*api-key*`);
//! - a string holding PEM material (`-----BEGIN`) becomes `"***"`.

use super::model::Config;
use serde_json::Value;

/// What a masked secret is replaced with.
pub const MASK: &str = "***";

/// `config` as JSON, secrets masked.
pub fn redacted(config: &Config) -> Value {
    let mut v = serde_json::to_value(config).unwrap_or(Value::Null);
    mask(&mut v, false);
    v
}

fn mask(v: &mut Value, secret_key: bool) {
    match v {
        Value::String(s) => {
            if (secret_key && !s.is_empty()) || s.contains("-----BEGIN") {
                *s = MASK.to_string();
            } else if let Some(m) = mask_url_userinfo(s) {
                *s = m;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| mask(i, secret_key)),
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                mask(item, names_secret(k));
            }
        }
        _ => {}
    }
}

/// Whether a key's value is a secret itself (not a path to one).
fn names_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if k.ends_with("_file") || k.ends_with("_path") {
        return false;
    }
    ["password", "passwd", "secret", "credential"]
        .iter()
        .any(|w| k.contains(w))
        || k == "token"
        || k.ends_with("_token")
        // Header names in route header rules whose values are credentials.
        || matches!(k.as_str(), "authorization" | "cookie")
        || k.ends_with("-token")
        || k.contains("api-key")
        || k.contains("apikey")
}

/// The URL with its password masked, if `s` is a URL with userinfo.
fn mask_url_userinfo(s: &str) -> Option<String> {
    let start = s.find("://")? + 3;
    let rest = &s[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let userinfo = &rest[..at];
    let masked = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:{MASK}"),
        None => MASK.to_string(),
    };
    Some(format!("{}{masked}{}", &s[..start], &rest[at..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            mask_url_userinfo("redis://user:pa:ss@127.0.0.1:6379/0").as_deref(),
            Some("redis://user:***@127.0.0.1:6379/0")
        );
        assert_eq!(
            mask_url_userinfo("https://tok@example.com/a@b").as_deref(),
            Some("https://***@example.com/a@b")
        );
        assert_eq!(mask_url_userinfo("https://example.com/a@b"), None);
        assert_eq!(mask_url_userinfo("not a url"), None);
    }

    #[test]
    fn secret_keys_are_masked_paths_are_not() {
        let mut v = json!({
            "admin": { "token_file": "/etc/portico/token", "token": "abc" },
            "auth": { "a": { "secret_file": "hmac.key", "client_secret": "s3",
                              "forward_token": true, "jwks_url": "https://u:p@idp/jwks" } },
            "revocation": { "redis_url": "redis://:hunter2@localhost/0", "password": "" },
            "inline": ["-----BEGIN PRIVATE KEY-----\nxyz"],
            "route": [{ "request_headers": { "set": { "authorization": "Bearer x",
                              "x-api-key": "k", "x-env": "prod" } } }],
        });
        mask(&mut v, false);
        assert_eq!(v["admin"]["token_file"], "/etc/portico/token");
        assert_eq!(v["admin"]["token"], MASK);
        assert_eq!(v["auth"]["a"]["secret_file"], "hmac.key");
        assert_eq!(v["auth"]["a"]["client_secret"], MASK);
        assert_eq!(v["auth"]["a"]["forward_token"], true);
        assert_eq!(v["auth"]["a"]["jwks_url"], "https://u:***@idp/jwks");
        assert_eq!(v["revocation"]["redis_url"], "redis://:***@localhost/0");
        assert_eq!(v["revocation"]["password"], "");
        assert_eq!(v["inline"][0], MASK);
        let set = &v["route"][0]["request_headers"]["set"];
        assert_eq!(set["authorization"], MASK);
        assert_eq!(set["x-api-key"], MASK);
        assert_eq!(set["x-env"], "prod");
    }
}
