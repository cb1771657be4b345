//! The checks a parsed config must pass beyond its schema: limits, formats
//! and references between tables.
//!
//! Guarantees: [`validate`] runs [`CHECKS`] in order and reports the first
//! failure, at the position of the offending value (`PATH:LINE:COL`), or at
//! the start of the file for a value the file left out. Each check is a
//! small named function over the whole config; a table's checks run item
//! by item, so that of two bad items the first in the file is reported.

use super::auth::RevocationStoreKind;
use super::error::ConfigError;
use super::model::{
    ListenerConfig, LoadedConfig, Protocol, RouteConfig, MAX_CONNECTIONS, MAX_HEADER_BYTES,
};
use std::collections::HashSet;
use toml::Spanned;

/// One check over the whole config.
type Check = fn(&LoadedConfig) -> Result<(), ConfigError>;

/// Every check, in the order they run.
const CHECKS: &[(&str, Check)] = &[
    ("server", server),
    ("log level", log_level),
    ("admin", admin),
    ("admin public bind", admin_public_bind),
    ("listeners", listeners),
    ("listener binds", listener_binds),
    ("upstreams", upstreams),
    ("cors policies", cors_policies),
    ("routes", routes),
    ("auth policies", auth_policies),
    ("revocation", revocation),
    ("route auth", route_auth),
    ("route headers", route_headers),
];

/// Runs every check; the first failure is the error.
pub(super) fn validate(lc: &LoadedConfig) -> Result<(), ConfigError> {
    CHECKS.iter().try_for_each(|(_, check)| check(lc))
}

fn server(lc: &LoadedConfig) -> Result<(), ConfigError> {
    let c = &lc.config;
    if c.server.resolver_addrs().is_none() {
        return Err(lc.error_at(
            &c.server.resolvers,
            "server.resolvers entries must be \"ip\" or \"ip:port\"",
        ));
    }
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
    Ok(())
}

fn admin(lc: &LoadedConfig) -> Result<(), ConfigError> {
    let bind = &lc.config.admin.bind;
    if bind.get_ref().parse::<std::net::SocketAddr>().is_err() {
        return Err(lc.error_at(
            bind,
            "admin.bind must be an address like \"127.0.0.1:9901\"",
        ));
    }
    Ok(())
}

/// server.log_level must be a filter the log setup takes as it is (an
/// EnvFilter directive such as "info" or "portico=debug,warn").
fn log_level(lc: &LoadedConfig) -> Result<(), ConfigError> {
    let level = &lc.config.server.log_level;
    match tracing_subscriber::EnvFilter::try_new(level.get_ref()) {
        Ok(_) => Ok(()),
        Err(e) => Err(lc.error_at(level, format!("bad server.log_level: {e}"))),
    }
}

/// admin.public_bind: empty, or an address other than admin.bind.
fn admin_public_bind(lc: &LoadedConfig) -> Result<(), ConfigError> {
    let admin = &lc.config.admin;
    let public = &admin.public_bind;
    if public.get_ref().is_empty() {
        return Ok(());
    }
    let Ok(addr) = public.get_ref().parse::<std::net::SocketAddr>() else {
        return Err(lc.error_at(
            public,
            "admin.public_bind must be \"\" or an address like \"0.0.0.0:9902\"",
        ));
    };
    if admin.bind.get_ref().parse::<std::net::SocketAddr>() == Ok(addr) {
        return Err(lc.error_at(public, "admin.public_bind must differ from admin.bind"));
    }
    Ok(())
}

fn listeners(lc: &LoadedConfig) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for l in &lc.config.listeners {
        if l.name.get_ref().is_empty() {
            return Err(lc.error_at(&l.name, "listener name must not be empty"));
        }
        if !names.insert(l.name.get_ref().as_str()) {
            return Err(lc.error_at(
                &l.name,
                format!("duplicate listener name \"{}\"", l.name.get_ref()),
            ));
        }
        listener_protocols(lc, l)?;
        listener_limits(lc, l)?;
        listener_edge(lc, l)?;
        if let Some(tls) = &l.tls {
            if tls.cert.get_ref().is_empty() {
                return Err(lc.error_at(&tls.cert, "tls.cert must not be empty"));
            }
            if tls.key.get_ref().is_empty() {
                return Err(lc.error_at(&tls.key, "tls.key must not be empty"));
            }
            for pair in &tls.certs {
                if pair.cert.get_ref().is_empty() || pair.key.get_ref().is_empty() {
                    return Err(
                        lc.error_at(&pair.cert, "tls.certs: cert and key must not be empty")
                    );
                }
            }
        }
    }
    Ok(())
}

/// A listener's bind address and protocols.
fn listener_protocols(lc: &LoadedConfig, l: &ListenerConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

/// A listener's size and count limits.
fn listener_limits(lc: &LoadedConfig, l: &ListenerConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

/// A listener's PROXY protocol, trusted proxies and body limits.
fn listener_edge(lc: &LoadedConfig, l: &ListenerConfig) -> Result<(), ConfigError> {
    for cidr in &l.trusted_proxies {
        if parse_cidr(cidr.get_ref()).is_none() {
            return Err(lc.error_at(
                cidr,
                format!(
                    "trusted_proxies: \"{}\" is not an address or CIDR like \"10.0.0.0/8\"",
                    cidr.get_ref()
                ),
            ));
        }
    }
    timeout_in_range(lc, l, "body_timeout", l.body_timeout.0)?;
    if l.proxy_protocol && l.protocols.get_ref() == &[Protocol::Http3] {
        return Err(lc.error_at(
            &l.protocols,
            "proxy_protocol applies to TCP connections only; this listener serves HTTP/3 (QUIC) only",
        ));
    }
    Ok(())
}

/// Shortest timeout a listener accepts: below it, ordinary scheduling
/// delays would cut healthy clients off.
const MIN_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(10);

/// A timeout that is neither zero (or too short to be meant) nor above a
/// day.
fn timeout_in_range(
    lc: &LoadedConfig,
    l: &ListenerConfig,
    key: &str,
    d: std::time::Duration,
) -> Result<(), ConfigError> {
    if d < MIN_TIMEOUT || d > std::time::Duration::from_secs(24 * 3600) {
        return Err(lc.error_at(
            &l.name,
            format!(
                "listener \"{}\": {key} must be 10ms to 24h",
                l.name.get_ref()
            ),
        ));
    }
    Ok(())
}

/// An address (`10.1.2.3`, `::1`) or a CIDR (`10.0.0.0/8`).
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn listener_binds(lc: &LoadedConfig) -> Result<(), ConfigError> {
    let mut binds = HashSet::new();
    for l in &lc.config.listeners {
        if !binds.insert(l.bind.get_ref().as_str()) {
            return Err(lc.error_at(
                &l.bind,
                format!("two listeners bind \"{}\"", l.bind.get_ref()),
            ));
        }
    }
    Ok(())
}

fn upstreams(lc: &LoadedConfig) -> Result<(), ConfigError> {
    for (name, u) in &lc.config.upstreams {
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
        if u.resolve_interval.0.is_zero() {
            return Err(lc.error_at(
                &u.servers,
                format!("upstream \"{name}\": resolve_interval must be more than 0"),
            ));
        }
        let rt = u.read_timeout.0;
        if rt < std::time::Duration::from_millis(10)
            || rt > std::time::Duration::from_secs(24 * 3600)
        {
            return Err(lc.error_at(
                &u.servers,
                format!("upstream \"{name}\": read_timeout must be 10ms to 24h"),
            ));
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
    Ok(())
}

fn cors_policies(lc: &LoadedConfig) -> Result<(), ConfigError> {
    for (name, p) in &lc.config.cors {
        super::cors::validate(&lc.source, name, p)?;
    }
    Ok(())
}

fn routes(lc: &LoadedConfig) -> Result<(), ConfigError> {
    let c = &lc.config;
    let listeners: HashSet<&str> = c
        .listeners
        .iter()
        .map(|l| l.name.get_ref().as_str())
        .collect();
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
        route_target(lc, r)?;
        for l in &r.listeners {
            if !listeners.contains(l.get_ref().as_str()) {
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
        route_match(lc, r)?;
    }
    Ok(())
}

/// A route's `upstream` or `respond`: exactly one, and valid.
fn route_target(lc: &LoadedConfig, r: &RouteConfig) -> Result<(), ConfigError> {
    match (&r.upstream, &r.respond) {
        (Some(u), None) => {
            if !lc.config.upstreams.contains_key(u.get_ref()) {
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
                return Err(lc.error_at(resp, "respond.content_type is not a valid header value"));
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
    Ok(())
}

/// A route's `match` table.
fn route_match(lc: &LoadedConfig, r: &RouteConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

fn auth_policies(lc: &LoadedConfig) -> Result<(), ConfigError> {
    let request_id_header = lc.config.server.request_id_header.get_ref();
    for (name, p) in &lc.config.auth {
        super::auth::validate_policy(&lc.source, name, p, request_id_header)?;
    }
    Ok(())
}

fn revocation(lc: &LoadedConfig) -> Result<(), ConfigError> {
    let r = &lc.config.revocation;
    let urls: Vec<&Spanned<String>> = match r.store {
        RevocationStoreKind::Memory => return Ok(()),
        RevocationStoreKind::Redis => {
            redis_url_shape(lc, "redis_url", &r.redis_url)?;
            vec![&r.redis_url]
        }
        RevocationStoreKind::RedisCluster | RevocationStoreKind::RedisSentinel => {
            if r.redis_urls.is_empty() {
                return Err(lc.error_at(
                    &r.redis_url,
                    "this store needs redis_urls: the cluster's seed nodes, or the sentinels",
                ));
            }
            for u in &r.redis_urls {
                redis_url_shape(lc, "redis_urls", u)?;
            }
            r.redis_urls.iter().collect()
        }
    };
    let tls = urls[0].get_ref().starts_with("rediss://");
    if let Some(u) = urls
        .iter()
        .find(|u| u.get_ref().starts_with("rediss://") != tls)
    {
        return Err(lc.error_at(u, "mixed redis:// and rediss:// URLs: use one scheme"));
    }
    if !tls && !r.redis_ca.get_ref().is_empty() {
        return Err(lc.error_at(
            &r.redis_ca,
            "redis_ca is set but the store's URLs are not rediss://",
        ));
    }
    if r.store == RevocationStoreKind::RedisSentinel && r.sentinel_master.get_ref().is_empty() {
        return Err(lc.error_at(
            &r.sentinel_master,
            "store = \"redis-sentinel\" needs sentinel_master: the name the sentinels monitor",
        ));
    }
    Ok(())
}

/// A `redis://` or `rediss://` URL that the client accepts.
fn redis_url_shape(lc: &LoadedConfig, key: &str, u: &Spanned<String>) -> Result<(), ConfigError> {
    let url = u.get_ref();
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(lc.error_at(
            u,
            format!("{key}: a Redis URL looks like \"redis://HOST:PORT/DB\" or \"rediss://HOST:PORT/DB\" (unix sockets are not supported)"),
        ));
    }
    if redis::Client::open(url.as_str()).is_err() {
        return Err(lc.error_at(u, format!("{key}: not a valid redis:// or rediss:// URL")));
    }
    Ok(())
}

/// Every route's `auth` names a policy.
fn route_auth(lc: &LoadedConfig) -> Result<(), ConfigError> {
    let c = &lc.config;
    for r in &c.routes {
        let a = r.auth.get_ref();
        if !a.is_empty() && !c.auth.contains_key(a) {
            return Err(lc.error_at(
                &r.auth,
                format!(
                    "route \"{}\" names unknown auth policy \"{a}\"",
                    r.name.get_ref()
                ),
            ));
        }
    }
    Ok(())
}

/// Each route's header rules, `respond.headers` and `respond.location`
/// (see [`super::headers`]).
fn route_headers(lc: &LoadedConfig) -> Result<(), ConfigError> {
    lc.config
        .routes
        .iter()
        .try_for_each(|r| super::headers::check_route(lc, r))
}

fn valid_host_port(s: &str) -> bool {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => port.parse::<u16>().is_ok() && valid_dns_name(host),
        None => false,
    }
}

/// A DNS name as a resolver takes it: dot-separated labels of letters,
/// digits and inner hyphens (1 to 63 each, 253 in all), a trailing dot
/// allowed.
fn valid_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_hosts_are_ips_or_dns_names() {
        for ok in [
            "127.0.0.1:80",
            "[::1]:80",
            "svc.ns.svc.cluster.local:8080",
            "a-b.c.:1",
        ] {
            assert!(valid_host_port(ok), "{ok}");
        }
        for bad in ["a..b:80", "-a:80", "a-:80", "a_b:80", ":80", "a:port", "a"] {
            assert!(!valid_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn checks_have_distinct_names_and_the_first_failure_is_reported() {
        let mut names: Vec<&str> = CHECKS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CHECKS.len());
        // Two listeners on one address, and a route naming no upstream:
        // the listener checks run first.
        let text = "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:8080\"\n\
                    [[listener]]\nname = \"b\"\nbind = \"127.0.0.1:8080\"\n\
                    [[route]]\nname = \"r\"\nupstream = \"nope\"\n";
        let path = std::path::Path::new("/etc/portico/proxy.toml");
        let e = super::super::parse(path, text.to_string()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/portico/proxy.toml:6:8: two listeners bind \"127.0.0.1:8080\""
        );
    }
}
