//! The proxy.toml schema as data: every table of the file, and the parsed
//! file with its source ([`LoadedConfig`]).
//!
//! Guarantees: every table denies unknown keys (typos are errors) and every
//! default matches SPEC.md. The `[auth.NAME]`, `[revocation]` and
//! `[cors.NAME]` tables are in their own files.

use super::auth::{AuthPolicyConfig, RevocationConfig};
use super::cors::CorsConfig;
use super::duration::Dur;
use super::error::{ConfigError, SourceFile};
use super::spanned::empty_spanned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// After a stop signal: how long /ready answers 503 while listeners
    /// still accept and serve, before the drain.
    pub shutdown_delay: Dur,
    /// Operational logs (stderr): plain text or one JSON object a line.
    pub log_format: LogFormat,
    /// The operational log filter (an EnvFilter directive); RUST_LOG wins.
    pub log_level: Spanned<String>,
    /// DNS servers ("ip" or "ip:port") that upstream names are looked up
    /// on; empty: the system's resolver (/etc/resolv.conf, /etc/hosts).
    pub resolvers: Spanned<Vec<String>>,
}

impl ServerConfig {
    /// The addresses of `resolvers`: "ip:port", "[v6]:port", or an IP
    /// alone for port 53. `None` for an entry that is none of these.
    pub fn resolver_addrs(&self) -> Option<Vec<std::net::SocketAddr>> {
        self.resolvers
            .get_ref()
            .iter()
            .map(|r| {
                r.parse::<std::net::SocketAddr>().ok().or_else(|| {
                    let ip = r.parse::<std::net::IpAddr>().ok()?;
                    Some(std::net::SocketAddr::new(ip, 53))
                })
            })
            .collect()
    }
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
            shutdown_delay: Dur::secs(0),
            log_format: LogFormat::Text,
            log_level: Spanned::new(0..0, "info".into()),
            resolvers: Spanned::new(0..0, Vec::new()),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    Json,
    Combined,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub bind: Spanned<String>,
    pub token_file: Spanned<String>,
    /// A second, read-only bind (GET /health, /ready, /metrics); "" = none.
    pub public_bind: Spanned<String>,
    /// Whether /ready also needs every health-checked pool to have a
    /// healthy server.
    pub ready_requires_healthy_pools: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: Spanned::new(0..0, "127.0.0.1:9901".into()),
            token_file: Spanned::new(0..0, String::new()),
            public_bind: Spanned::new(0..0, String::new()),
            ready_requires_healthy_pools: false,
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
    /// Each connection starts with a PROXY protocol (v1 or v2) header.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// CIDRs of the peers whose X-Forwarded-* headers are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// 0: no limit.
    #[serde(default)]
    pub max_body_bytes: u64,
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Dur,
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
fn default_body_timeout() -> Dur {
    Dur::secs(60)
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
    /// More certificates, chosen by SNI against each one's DNS names.
    #[serde(default)]
    pub certs: Vec<CertPair>,
    #[serde(default = "default_true")]
    pub session_tickets: bool,
}

/// One `{ cert, key }` entry of `tls.certs`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

fn default_true() -> bool {
    true
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
    /// Header rules on the request as the upstream gets it.
    #[serde(default)]
    pub request_headers: HeaderRulesConfig,
    /// Header rules on the answer to the client.
    #[serde(default)]
    pub response_headers: HeaderRulesConfig,
}

/// `{ set = { name = "value" }, remove = ["name"] }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderRulesConfig {
    pub set: Spanned<BTreeMap<String, String>>,
    pub remove: Vec<Spanned<String>>,
}

impl Default for HeaderRulesConfig {
    fn default() -> Self {
        HeaderRulesConfig {
            set: Spanned::new(0..0, BTreeMap::new()),
            remove: Vec::new(),
        }
    }
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
    /// More headers of the answer.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A `Location` template: `{host}`, `{path}`, `{path_and_query}`.
    #[serde(default)]
    pub location: String,
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
    /// How often the DNS names among `servers` are looked up again.
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: Dur,
    /// Present: HTTPS to the upstream.
    pub tls: Option<UpstreamTls>,
    /// Present: active health checks.
    pub health: Option<HealthCheck>,
    /// After the response head: no response body bytes for this long
    /// aborts the response.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Dur,
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

/// 0: no fixed cap (the pool holds what recent demand opened; idle_timeout
/// expires the rest).
fn default_max_idle() -> usize {
    0
}
fn default_upstream_idle() -> Dur {
    Dur::secs(90)
}
fn default_connect_timeout() -> Dur {
    Dur::secs(2)
}
fn default_read_timeout() -> Dur {
    Dur::secs(60)
}
fn default_passive_eject() -> Dur {
    Dur::secs(10)
}
fn default_resolve_interval() -> Dur {
    Dur::secs(30)
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
        self.source.error_in(at, msg)
    }
}

/// Largest max_header_bytes: Envoy's ceiling too; hyper, h2 and h3 size
/// their head buffers and advertised limits from it.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Largest max_connections: far above what file descriptor limits allow, and
/// far below what would overflow a semaphore or the arithmetic on it.
pub const MAX_CONNECTIONS: usize = 10_000_000;
