//! The proxy.toml schema: plain data that mirrors the file.
//!
//! Guarantees: every table denies unknown keys (typos are errors), every
//! default matches SPEC.md, and every error is reported as
//! `PATH:LINE:COL: message` through [`ConfigError`]. Nothing here touches the
//! network or binds a socket; [`load`] reads the file and validates references
//! between tables. Files named by the config (certs, keys) are read later, by
//! the snapshot builder, which reports through the same error type.
//!
//! The tables are in `model` (with `[auth]`/`[revocation]` in `auth` and
//! `[cors]` in `cors`); the checks a parsed file must pass are in
//! `validate`; the files a config names are listed by `files`.

mod auth;
mod cors;
mod duration;
mod error;
mod files;
pub mod headers;
mod model;
pub mod redact;
mod spanned;
mod validate;

pub use auth::{
    jwks_url_parts, AuthPolicyConfig, AuthType, JwtAlgorithm, OnStoreError, RevocationConfig,
    RevocationStoreKind,
};
pub use cors::CorsConfig;
pub use duration::Dur;
pub use error::{ConfigError, SourceFile};
pub use files::{named_files, NamedFile};
pub use model::{
    AccessLogFormat, AdminConfig, CertPair, Config, HeaderRulesConfig, HealthCheck, ListenerConfig,
    ListenerTls, LoadedConfig, LogFormat, Protocol, Respond, RouteConfig, RouteMatch, ServerConfig,
    ServerEntry, TlsVersion, UpstreamConfig, UpstreamProtocol, UpstreamTls, MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
};
pub use validate::parse_cidr;

use std::path::Path;

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::plain(path, format!("cannot read config: {e}")))?;
    parse(path, text)
}

/// Parses and validates config text that came from `path`.
pub fn parse(path: &Path, text: String) -> Result<LoadedConfig, ConfigError> {
    let source = SourceFile {
        path: path.to_path_buf(),
        text,
    };
    let config: Config = match toml::from_str(&source.text) {
        Ok(c) => c,
        Err(e) => {
            let at = e.span().map(|s| s.start).unwrap_or(0);
            return Err(source.error_at(at, e.message().trim().to_string()));
        }
    };
    let loaded = LoadedConfig { config, source };
    validate::validate(&loaded)?;
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<LoadedConfig, ConfigError> {
        parse(Path::new("/etc/portico/proxy.toml"), s.to_string())
    }

    #[test]
    fn minimal_config_gets_spec_defaults() {
        let lc = parse_str("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:8080\"\n").unwrap();
        let l = &lc.config.listeners[0];
        assert_eq!(
            l.protocols.get_ref(),
            &vec![Protocol::Http1, Protocol::Http2]
        );
        assert_eq!(l.max_header_bytes, 16384);
        assert_eq!(l.header_read_timeout.0, std::time::Duration::from_secs(10));
        assert_eq!(
            lc.config.server.shutdown_timeout.0,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(lc.config.admin.bind.get_ref(), "127.0.0.1:9901");
    }

    #[test]
    fn unknown_field_is_reported_with_line_and_column() {
        let e = parse_str("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:8080\"\nbogus = 1\n")
            .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("/etc/portico/proxy.toml:4:1: "), "{s}");
        assert!(s.contains("bogus"), "{s}");
    }

    #[test]
    fn unknown_upstream_is_reported_at_the_reference() {
        let e = parse_str(
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:8080\"\n[[route]]\nname = \"r\"\nupstream = \"nope\"\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("/etc/portico/proxy.toml:6:12: "),
            "{e}"
        );
    }

    #[test]
    fn server_entries_take_both_forms() {
        let lc = parse_str(
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:8080\"\n[upstream.u]\nservers = [\"127.0.0.1:1\", { addr = \"localhost:2\", weight = 3 }]\n",
        )
        .unwrap();
        let s = lc.config.upstreams["u"].servers.get_ref();
        assert_eq!(
            s[0],
            ServerEntry {
                addr: "127.0.0.1:1".into(),
                weight: 1
            }
        );
        assert_eq!(
            s[1],
            ServerEntry {
                addr: "localhost:2".into(),
                weight: 3
            }
        );
    }

    #[test]
    fn http3_needs_tls_and_is_reported_at_protocols() {
        let e = parse_str(
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:8443\"\nprotocols = [\"http1\", \"http3\"]\n",
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("/etc/portico/proxy.toml:4:13: "), "{s}");
        assert!(s.contains("needs tls"), "{s}");
        let lc = parse_str(
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:8443\"\nprotocols = [\"http3\"]\nalt_svc_port = 443\ntls = { cert = \"c.pem\", key = \"k.pem\", early_data = true }\n",
        )
        .unwrap();
        let l = &lc.config.listeners[0];
        assert_eq!(l.protocols.get_ref(), &vec![Protocol::Http3]);
        assert_eq!(l.alt_svc_port, 443);
        assert!(l.tls.as_ref().is_some_and(|t| t.early_data));
    }

    #[test]
    fn resolvers_take_an_ip_with_or_without_port() {
        let base = "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:8080\"\n";
        let lc = parse_str(&format!(
            "[server]\nresolvers = [\"127.0.0.1:5353\", \"::1\", \"[::1]:54\"]\n{base}"
        ))
        .unwrap();
        let addrs = lc.config.server.resolver_addrs().unwrap();
        let want: Vec<std::net::SocketAddr> = ["127.0.0.1:5353", "[::1]:53", "[::1]:54"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(addrs, want);
        let e = parse_str(&format!("[server]\nresolvers = [\"dns.example\"]\n{base}")).unwrap_err();
        assert!(e.to_string().contains(":2:13: server.resolvers"), "{e}");
        let e = parse_str(&format!(
            "{base}[upstream.u]\nservers = [\"svc:80\"]\nresolve_interval = \"0s\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("resolve_interval"), "{e}");
    }

    #[test]
    fn bad_duration_is_an_error() {
        let e = parse_str("[server]\nshutdown_timeout = \"soon\"\n[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:8080\"\n").unwrap_err();
        assert!(e.to_string().contains(":2:"), "{e}");
    }
}
