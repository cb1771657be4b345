//! The proxy.toml schema: plain data that mirrors the file.
//!
//! Guarantees: every table denies unknown keys (typos are errors), every
//! default matches SPEC.md, and every error is reported as
//! `PATH:LINE:COL: message` through [`ConfigError`]. Nothing here touches the
//! network or binds a socket; [`load`] reads the file and validates references
//! between tables. Files named by the config (certs, keys) are read later, by
//! the snapshot builder, which reports through the same error type.

mod auth;
mod cors;
mod duration;
mod error;
pub mod redact;

pub use auth::{
    jwks_url_parts, AuthPolicyConfig, AuthType, JwtAlgorithm, OnStoreError, RevocationConfig,
    RevocationStoreKind,
};
pub use cors::CorsConfig;
pub use duration::Dur;
pub use error::{ConfigError, SourceFile};

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    #[serde(default, rename = "upstream")]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub auth: BTreeMap<String, AuthPolicyConfig>,
    #[serde(default)]
    pub revocation: RevocationConfig,
    #[serde(default)]
    pub cors: BTreeMap<String, CorsConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub worker_threads: usize,
    pub shutdown_timeout: Dur,
    pub access_log: String,
    pub access_log_format: AccessLogFormat,
    pub request_id_header: Spanned<String>,
    pub trust_request_id: bool,
    pub watch_config: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            worker_threads: 0,
            shutdown_timeout: Dur::secs(30),
            access_log: "stdout".into(),
            access_log_format: AccessLogFormat::Json,
            request_id_header: Spanned::new(0..0, "x-request-id".into()),
            trust_request_id: true,
            watch_config: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    Json,
    Combined,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub bind: Spanned<String>,
    pub token_file: Spanned<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: Spanned::new(0..0, "127.0.0.1:9901".into()),
            token_file: Spanned::new(0..0, String::new()),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    Http2,
    Http3,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: Spanned<String>,
    pub bind: Spanned<String>,
    #[serde(default = "default_protocols")]
    pub protocols: Spanned<Vec<Protocol>>,
    pub tls: Option<ListenerTls>,
    #[serde(default)]
    pub alt_svc_port: u16,
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    #[serde(default = "default_client_idle_timeout")]
    pub idle_timeout: Dur,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    #[serde(default = "default_h2_streams")]
    pub h2_max_concurrent_streams: u32,
}

fn empty_spanned() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}

fn default_protocols() -> Spanned<Vec<Protocol>> {
    Spanned::new(0..0, vec![Protocol::Http1, Protocol::Http2])
}
fn default_max_header_bytes() -> usize {
    16384
}
fn default_header_read_timeout() -> Dur {
    Dur::secs(10)
}
fn default_client_idle_timeout() -> Dur {
    Dur::secs(60)
}
fn default_max_connections() -> usize {
    50_000
}
fn default_backlog() -> u32 {
    4096
}
fn default_h2_streams() -> u32 {
    256
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    #[serde(default = "empty_spanned")]
    pub client_ca: Spanned<String>,
    #[serde(default)]
    pub min_version: TlsVersion,
    #[serde(default)]
    pub early_data: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[default]
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: Spanned<String>,
    #[serde(default)]
    pub listeners: Vec<Spanned<String>>,
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    pub upstream: Option<Spanned<String>>,
    pub respond: Option<Spanned<Respond>>,
    #[serde(default)]
    pub strip_prefix: bool,
    /// Name of an `[auth.NAME]` policy; empty: none.
    #[serde(default = "empty_spanned")]
    pub auth: Spanned<String>,
    #[serde(default = "default_route_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Name of a `[cors.NAME]` policy; empty: none.
    #[serde(default = "empty_spanned")]
    pub cors: Spanned<String>,
}

fn default_route_timeout() -> Dur {
    Dur::secs(30)
}
fn default_retries() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteMatch {
    pub host: Spanned<String>,
    pub path_prefix: Spanned<String>,
    pub methods: Vec<Spanned<String>>,
}

impl Default for RouteMatch {
    fn default() -> Self {
        RouteMatch {
            host: Spanned::new(0..0, String::new()),
            path_prefix: Spanned::new(0..0, "/".into()),
            methods: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    #[serde(default = "default_respond_status")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_respond_status() -> u16 {
    200
}
fn default_content_type() -> String {
    "text/plain".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub servers: Spanned<Vec<ServerEntry>>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default = "default_max_idle")]
    pub max_idle_per_server: usize,
    #[serde(default = "default_upstream_idle")]
    pub idle_timeout: Dur,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "default_passive_eject")]
    pub passive_eject: Dur,
    /// Present: HTTPS to the upstream.
    pub tls: Option<UpstreamTls>,
    /// Present: active health checks.
    pub health: Option<HealthCheck>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM CA bundle; empty: the system's trust roots.
    #[serde(default = "empty_spanned")]
    pub ca: Spanned<String>,
    /// Name to verify and send as SNI; empty: the server's host.
    #[serde(default = "empty_spanned")]
    pub server_name: Spanned<String>,
    #[serde(default = "empty_spanned")]
    pub client_cert: Spanned<String>,
    #[serde(default = "empty_spanned")]
    pub client_key: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default = "default_health_path")]
    pub path: Spanned<String>,
    #[serde(default = "default_health_interval")]
    pub interval: Dur,
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

fn default_health_path() -> Spanned<String> {
    Spanned::new(0..0, "/health".into())
}
fn default_health_interval() -> Dur {
    Dur::secs(5)
}
fn default_health_timeout() -> Dur {
    Dur::secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

fn default_max_idle() -> usize {
    32
}
fn default_upstream_idle() -> Dur {
    Dur::secs(90)
}
fn default_connect_timeout() -> Dur {
    Dur::secs(2)
}
fn default_passive_eject() -> Dur {
    Dur::secs(10)
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

/// One upstream server: `"host:port"` or `{ addr = "host:port", weight = 2 }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ServerEntry {
    pub addr: String,
    pub weight: u32,
}

impl<'de> Deserialize<'de> for ServerEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            addr: String,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ServerEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#""host:port" or { addr = "host:port", weight = N }"#)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ServerEntry, E> {
                Ok(ServerEntry {
                    addr: s.to_string(),
                    weight: 1,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ServerEntry, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ServerEntry {
                    addr: t.addr,
                    weight: t.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A parsed config with the file it came from, so later stages can report
/// errors at a position in it.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub source: SourceFile,
}

impl LoadedConfig {
    /// Folder that relative file paths in the config are resolved against.
    pub fn base_dir(&self) -> &Path {
        self.source.path.parent().unwrap_or_else(|| Path::new("."))
    }

    /// Resolves a path written in the config against the config's folder.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir().join(p)
        }
    }

    /// An error at the position of a spanned value.
    pub fn error_at<T>(&self, at: &Spanned<T>, msg: impl Into<String>) -> ConfigError {
        self.source.error_at(at.span().start, msg)
    }
}

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
    validate(&loaded)?;
    Ok(loaded)
}

fn validate(lc: &LoadedConfig) -> Result<(), ConfigError> {
    let c = &lc.config;
    if c.listeners.is_empty() {
        return Err(lc
            .source
            .error_at(0, "at least one [[listener]] is required"));
    }
    if c.server.worker_threads > 1024 {
        return Err(lc
            .source
            .error_at(0, "server.worker_threads must be at most 1024"));
    }
    if !matches!(c.server.access_log.as_str(), "stdout" | "off") && c.server.access_log.is_empty() {
        return Err(lc.source.error_at(
            0,
            "server.access_log must be \"stdout\", \"off\" or a file path",
        ));
    }
    if http::HeaderName::from_bytes(c.server.request_id_header.get_ref().as_bytes()).is_err() {
        return Err(lc.error_at(
            &c.server.request_id_header,
            "request_id_header is not a valid header name",
        ));
    }
    if c.admin
        .bind
        .get_ref()
        .parse::<std::net::SocketAddr>()
        .is_err()
    {
        return Err(lc.error_at(
            &c.admin.bind,
            "admin.bind must be an address like \"127.0.0.1:9901\"",
        ));
    }

    let mut names = HashSet::new();
    for l in &c.listeners {
        if l.name.get_ref().is_empty() {
            return Err(lc.error_at(&l.name, "listener name must not be empty"));
        }
        if !names.insert(l.name.get_ref().as_str()) {
            return Err(lc.error_at(
                &l.name,
                format!("duplicate listener name \"{}\"", l.name.get_ref()),
            ));
        }
        if l.bind.get_ref().parse::<std::net::SocketAddr>().is_err() {
            return Err(lc.error_at(
                &l.bind,
                format!(
                    "bind \"{}\" is not an address like \"0.0.0.0:8443\"",
                    l.bind.get_ref()
                ),
            ));
        }
        let protos = l.protocols.get_ref();
        if protos.is_empty() {
            return Err(lc.error_at(
                &l.protocols,
                "protocols must list at least one of \"http1\", \"http2\", \"http3\"",
            ));
        }
        // QUIC always runs TLS 1.3: HTTP/3 needs the listener's certificate.
        if protos.contains(&Protocol::Http3) && l.tls.is_none() {
            return Err(lc.error_at(
                &l.protocols,
                "protocol \"http3\" needs tls (QUIC is always encrypted): add tls.cert and tls.key",
            ));
        }
        if l.max_header_bytes < 1024 {
            return Err(lc.error_at(&l.name, "max_header_bytes must be at least 1024"));
        }
        if l.max_header_bytes > MAX_HEADER_BYTES {
            return Err(lc.error_at(
                &l.name,
                format!("max_header_bytes must be at most {MAX_HEADER_BYTES}"),
            ));
        }
        if l.max_connections == 0 || l.max_connections > MAX_CONNECTIONS {
            return Err(lc.error_at(
                &l.name,
                format!("max_connections must be 1 to {MAX_CONNECTIONS}"),
            ));
        }
        if l.backlog > i32::MAX as u32 {
            return Err(lc.error_at(
                &l.name,
                format!(
                    "backlog must be at most {} (the kernel caps it at net.core.somaxconn anyway)",
                    i32::MAX
                ),
            ));
        }
        if l.h2_max_concurrent_streams == 0 {
            return Err(lc.error_at(&l.name, "h2_max_concurrent_streams must be at least 1"));
        }
        if let Some(tls) = &l.tls {
            if tls.cert.get_ref().is_empty() {
                return Err(lc.error_at(&tls.cert, "tls.cert must not be empty"));
            }
            if tls.key.get_ref().is_empty() {
                return Err(lc.error_at(&tls.key, "tls.key must not be empty"));
            }
        }
    }
    let mut binds = HashSet::new();
    for l in &c.listeners {
        if !binds.insert(l.bind.get_ref().as_str()) {
            return Err(lc.error_at(
                &l.bind,
                format!("two listeners bind \"{}\"", l.bind.get_ref()),
            ));
        }
    }

    for (name, u) in &c.upstreams {
        if u.servers.get_ref().is_empty() {
            return Err(lc.error_at(
                &u.servers,
                format!("upstream \"{name}\" needs at least one server"),
            ));
        }
        for s in u.servers.get_ref() {
            if !valid_host_port(&s.addr) {
                return Err(lc.error_at(
                    &u.servers,
                    format!("server \"{}\" is not host:port", s.addr),
                ));
            }
            if s.weight == 0 || s.weight > 1000 {
                return Err(lc.error_at(
                    &u.servers,
                    format!("server \"{}\": weight must be 1 to 1000", s.addr),
                ));
            }
        }
        if let Some(h) = &u.health {
            if h.interval.0.is_zero() {
                return Err(lc.error_at(
                    &u.servers,
                    format!("upstream \"{name}\": health.interval must be more than 0"),
                ));
            }
        }
    }

    for (name, p) in &c.cors {
        cors::validate(lc, name, p)?;
    }

    let mut route_names = HashSet::new();
    for r in &c.routes {
        if r.name.get_ref().is_empty() {
            // route="" is the metrics label of requests that matched no route.
            return Err(lc.error_at(&r.name, "route name must not be empty"));
        }
        let cors = r.cors.get_ref();
        if !cors.is_empty() && !c.cors.contains_key(cors) {
            return Err(lc.error_at(
                &r.cors,
                format!(
                    "route \"{}\" names unknown cors policy \"{cors}\"",
                    r.name.get_ref()
                ),
            ));
        }
        if !route_names.insert(r.name.get_ref().as_str()) {
            return Err(lc.error_at(
                &r.name,
                format!("duplicate route name \"{}\"", r.name.get_ref()),
            ));
        }
        match (&r.upstream, &r.respond) {
            (Some(u), None) => {
                if !c.upstreams.contains_key(u.get_ref()) {
                    return Err(lc.error_at(
                        u,
                        format!(
                            "route \"{}\" names unknown upstream \"{}\"",
                            r.name.get_ref(),
                            u.get_ref()
                        ),
                    ));
                }
            }
            (None, Some(resp)) => {
                if http::StatusCode::from_u16(resp.get_ref().status).is_err()
                    || resp.get_ref().status < 200
                {
                    return Err(lc.error_at(resp, "respond.status must be 200 to 999"));
                }
                if http::HeaderValue::from_str(&resp.get_ref().content_type).is_err() {
                    return Err(
                        lc.error_at(resp, "respond.content_type is not a valid header value")
                    );
                }
            }
            _ => {
                return Err(lc.error_at(
                    &r.name,
                    format!(
                        "route \"{}\" needs exactly one of `upstream` and `respond`",
                        r.name.get_ref()
                    ),
                ))
            }
        }
        for l in &r.listeners {
            if !names.contains(l.get_ref().as_str()) {
                return Err(lc.error_at(
                    l,
                    format!(
                        "route \"{}\" names unknown listener \"{}\"",
                        r.name.get_ref(),
                        l.get_ref()
                    ),
                ));
            }
        }
        let host = r.matcher.host.get_ref();
        if let Some(rest) = host.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(lc.error_at(
                    &r.matcher.host,
                    "match.host wildcard must look like \"*.example.com\"",
                ));
            }
        } else if host.contains('*') {
            return Err(lc.error_at(&r.matcher.host, "match.host may only have a leading \"*.\""));
        }
        if !r.matcher.path_prefix.get_ref().starts_with('/') {
            return Err(lc.error_at(
                &r.matcher.path_prefix,
                "match.path_prefix must start with \"/\"",
            ));
        }
        for m in &r.matcher.methods {
            if http::Method::from_bytes(m.get_ref().as_bytes()).is_err() {
                return Err(lc.error_at(m, format!("\"{}\" is not an HTTP method", m.get_ref())));
            }
        }
    }
    auth::validate(lc)?;
    Ok(())
}

/// Largest max_header_bytes: Envoy's ceiling too; hyper, h2 and h3 size
/// their head buffers and advertised limits from it.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Largest max_connections: far above what file descriptor limits allow, and
/// far below what would overflow a semaphore or the arithmetic on it.
pub const MAX_CONNECTIONS: usize = 10_000_000;

fn valid_host_port(s: &str) -> bool {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        }
        None => false,
    }
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
    fn bad_duration_is_an_error() {
        let e = parse_str("[server]\nshutdown_timeout = \"soon\"\n[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:8080\"\n").unwrap_err();
        assert!(e.to_string().contains(":2:"), "{e}");
    }
}
