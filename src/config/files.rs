//! Every file the config names that portico reads when it builds a
//! generation: certificates, private keys, CA bundles, JWT key files,
//! JWKS files, HMAC secrets and the admin token.
//!
//! Guarantees: [`named_files`] lists each of them, resolved against the
//! config's folder, with the key that names it. The tables that hold file
//! paths are destructured field by field, without `..`, so a new field in
//! one of them does not compile until it is listed here or marked as not a
//! file. `server.access_log` is not listed: portico writes it, never reads
//! it, and following it would turn every logged request into a change.

use super::auth::{AuthPolicyConfig, RevocationConfig};
use super::model::{AdminConfig, CertPair, Config, ListenerTls, LoadedConfig, UpstreamTls};
use std::path::PathBuf;
use toml::Spanned;

/// One file the config names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFile {
    /// The key that names it, e.g. `listener.tls.certs.key`.
    pub key: &'static str,
    /// The path, resolved against the config's folder.
    pub path: PathBuf,
}

/// The files of `lc` that a build reads, in the order of the config's
/// tables; keys left empty are not listed.
pub fn named_files(lc: &LoadedConfig) -> Vec<NamedFile> {
    let Config {
        server: _,
        admin,
        listeners,
        routes: _,
        upstreams,
        auth,
        revocation,
        cors: _,
    } = &lc.config;
    let mut out = Files {
        lc,
        out: Vec::new(),
    };
    out.admin(admin);
    for t in listeners.iter().filter_map(|l| l.tls.as_ref()) {
        out.listener_tls(t);
    }
    for t in upstreams.values().filter_map(|u| u.tls.as_ref()) {
        out.upstream_tls(t);
    }
    for p in auth.values() {
        out.auth_policy(p);
    }
    out.revocation(revocation);
    out.out
}

/// The list being built, and the config its paths are resolved against.
struct Files<'a> {
    lc: &'a LoadedConfig,
    out: Vec<NamedFile>,
}

impl Files<'_> {
    fn add(&mut self, key: &'static str, at: &Spanned<String>) {
        let p = at.get_ref();
        if !p.is_empty() {
            self.out.push(NamedFile {
                key,
                path: self.lc.resolve(p),
            });
        }
    }

    fn admin(&mut self, a: &AdminConfig) {
        let AdminConfig {
            bind: _,
            token_file,
            public_bind: _,
            ready_requires_healthy_pools: _,
        } = a;
        self.add("admin.token_file", token_file);
    }

    fn listener_tls(&mut self, t: &ListenerTls) {
        let ListenerTls {
            cert,
            key,
            client_ca,
            min_version: _,
            early_data: _,
            certs,
            session_tickets: _,
        } = t;
        self.add("listener.tls.cert", cert);
        self.add("listener.tls.key", key);
        self.add("listener.tls.client_ca", client_ca);
        for CertPair { cert, key } in certs {
            self.add("listener.tls.certs.cert", cert);
            self.add("listener.tls.certs.key", key);
        }
    }

    fn upstream_tls(&mut self, t: &UpstreamTls) {
        let UpstreamTls {
            ca,
            server_name: _,
            client_cert,
            client_key,
        } = t;
        self.add("upstream.tls.ca", ca);
        self.add("upstream.tls.client_cert", client_cert);
        self.add("upstream.tls.client_key", client_key);
    }

    fn auth_policy(&mut self, p: &AuthPolicyConfig) {
        let AuthPolicyConfig {
            kind: _,
            algorithms: _,
            keys,
            jwks_file,
            jwks_url: _,
            jwks_ca,
            jwks_refresh: _,
            secret_file,
            issuer: _,
            audience: _,
            leeway: _,
            required_claims: _,
            required_scopes: _,
            forward_claims: _,
            forward_token: _,
            revocation: _,
        } = p;
        for k in keys {
            self.add("auth.keys", k);
        }
        self.add("auth.jwks_file", jwks_file);
        self.add("auth.jwks_ca", jwks_ca);
        self.add("auth.secret_file", secret_file);
    }

    fn revocation(&mut self, r: &RevocationConfig) {
        let RevocationConfig {
            store: _,
            redis_url: _,
            redis_urls: _,
            sentinel_master: _,
            redis_ca,
            key_prefix: _,
            on_store_error: _,
        } = r;
        self.add("revocation.redis_ca", redis_ca);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_kind_of_file_is_listed() {
        let text = r#"
[server]
access_log = "/var/log/portico/access.log"
[admin]
token_file = "admin.token"
[[listener]]
name = "a"
bind = "127.0.0.1:8443"
tls = { cert = "l.crt", key = "l.key", client_ca = "clients.pem", certs = [{ cert = "s1.crt", key = "s1.key" }, { cert = "/abs/s2.crt", key = "s2.key" }] }
[upstream.u]
servers = ["127.0.0.1:1"]
tls = { ca = "u-ca.pem", client_cert = "u.crt", client_key = "u.key" }
[auth.pem]
type = "jwt"
algorithms = ["RS256", "HS256"]
keys = ["k1.pem", "k2.pem"]
secret_file = "hmac.key"
[auth.file]
type = "jwt"
algorithms = ["ES256"]
jwks_file = "jwks.json"
[auth.url]
type = "jwt"
algorithms = ["ES256"]
jwks_url = "https://idp.example/jwks"
jwks_ca = "idp-ca.pem"
[revocation]
store = "redis"
redis_url = "rediss://127.0.0.1:6380/0"
redis_ca = "redis-ca.pem"
"#;
        let lc = super::super::parse(Path::new("/etc/portico/proxy.toml"), text.into()).unwrap();
        let listed: Vec<(&str, String)> = named_files(&lc)
            .into_iter()
            .map(|f| (f.key, f.path.display().to_string()))
            .collect();
        let at = |key: &'static str, p: &str| (key, p.to_string());
        assert_eq!(
            listed,
            vec![
                at("admin.token_file", "/etc/portico/admin.token"),
                at("listener.tls.cert", "/etc/portico/l.crt"),
                at("listener.tls.key", "/etc/portico/l.key"),
                at("listener.tls.client_ca", "/etc/portico/clients.pem"),
                at("listener.tls.certs.cert", "/etc/portico/s1.crt"),
                at("listener.tls.certs.key", "/etc/portico/s1.key"),
                at("listener.tls.certs.cert", "/abs/s2.crt"),
                at("listener.tls.certs.key", "/etc/portico/s2.key"),
                at("upstream.tls.ca", "/etc/portico/u-ca.pem"),
                at("upstream.tls.client_cert", "/etc/portico/u.crt"),
                at("upstream.tls.client_key", "/etc/portico/u.key"),
                at("auth.jwks_file", "/etc/portico/jwks.json"),
                at("auth.keys", "/etc/portico/k1.pem"),
                at("auth.keys", "/etc/portico/k2.pem"),
                at("auth.secret_file", "/etc/portico/hmac.key"),
                at("auth.jwks_ca", "/etc/portico/idp-ca.pem"),
                at("revocation.redis_ca", "/etc/portico/redis-ca.pem"),
            ]
        );
    }

    #[test]
    fn a_config_without_files_names_none() {
        let text = "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:8080\"\n";
        let lc = super::super::parse(Path::new("/etc/portico/proxy.toml"), text.into()).unwrap();
        assert!(named_files(&lc).is_empty());
    }
}
