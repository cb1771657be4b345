//! Files the config names, followed on disk with `watch_config` (a
//! certificate pair chosen by SNI renewed as cert-manager does it), and
//! the access log's own failures in the operational log's format.

mod support;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::ServerName;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// Polls `f` every 50 ms until it gives `Some`, for at most `limit`.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CA and the certificates it signs, as PEM files in one folder.
struct Certs {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    dir: PathBuf,
}

impl Certs {
    fn new(dir: &Path) -> Certs {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let dir = dir.join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        Certs { ca, ca_key, dir }
    }

    /// Writes `FILE.crt` and `FILE.key` for `name` as cert-manager does:
    /// each to a temporary name first, then renamed over the old one.
    /// Returns the certificate's DER.
    fn issue(&self, file: &str, name: &str) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        for (ext, pem) in [("crt", cert.pem()), ("key", key.serialize_pem())] {
            let tmp = self.dir.join(format!(".{file}.{ext}.tmp"));
            std::fs::write(&tmp, pem).unwrap();
            std::fs::rename(&tmp, self.dir.join(format!("{file}.{ext}"))).unwrap();
        }
        cert.der().to_vec()
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// The leaf certificate (DER) the server at `addr` shows for SNI `name`,
/// verified against the test CA; `None` if the handshake fails.
fn leaf_for(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>, name: &str) -> Option<Vec<u8>> {
    let server = ServerName::try_from(name.to_string()).ok()?;
    let mut conn = rustls::ClientConnection::new(cfg.clone(), server).ok()?;
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    conn.peer_certificates()?.first().map(|c| c.to_vec())
}

#[test]
fn a_renewed_sni_certificate_is_served_without_a_reload_command() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let default = certs.issue("default", "default.test");
    let one = certs.issue("one", "one.test");
    let two = certs.issue("two", "two.test");
    let (addr, l) = listener_toml(
        "web",
        r#"protocols = ["http1"]
tls.cert = "certs/default.crt"
tls.key = "certs/default.key"
tls.certs = [{ cert = "certs/one.crt", key = "certs/one.key" }, { cert = "certs/two.crt", key = "certs/two.key" }]"#,
    );
    let config = format!(
        "[server]\naccess_log = \"off\"\nwatch_config = true\n{l}\n[[route]]\nname = \"r\"\nrespond = {{ status = 200, body = \"hi\" }}\n"
    );
    let p = Portico::start_in(dir, &config);
    let client = certs.client();
    assert_eq!(leaf_for(addr, &client, "one.test").as_ref(), Some(&one));
    assert_eq!(leaf_for(addr, &client, "two.test").as_ref(), Some(&two));

    let renewed = certs.issue("two", "two.test");
    assert_ne!(renewed, two);
    let seen = wait_for(Duration::from_secs(15), || {
        leaf_for(addr, &client, "two.test").filter(|der| *der == renewed)
    });
    assert!(
        seen.is_some(),
        "the renewed two.test certificate was not served: {}",
        p.stderr()
    );
    assert_eq!(leaf_for(addr, &client, "one.test").as_ref(), Some(&one));
    assert_eq!(
        leaf_for(addr, &client, "default.test").as_ref(),
        Some(&default)
    );
    assert!(
        p.stderr().contains("file the config names changed"),
        "{}",
        p.stderr()
    );
}

/// The JSON objects among `log`'s lines whose message contains `needle`;
/// every line of `log` must be JSON.
fn json_lines_with(log: &str, needle: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
        })
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle))
        })
        .collect()
}

#[test]
fn an_access_log_that_cannot_be_reopened_is_reported_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let access = logs.join("access.log");
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        "[server]\nlog_format = \"json\"\naccess_log = \"{}\"\n{l}\n[[route]]\nname = \"r\"\nrespond = {{ status = 200, body = \"hi\" }}\n",
        access.display()
    );
    let p = Portico::start_in(dir, &config);
    assert_eq!(http_get_raw(addr, "/"), Some((200, "hi".to_string())));
    // logrotate's folder gone: the path cannot be opened again.
    std::fs::remove_dir_all(&logs).unwrap();
    p.signal("USR1");
    let found = wait_for(Duration::from_secs(10), || {
        let lines = json_lines_with(&p.stderr(), "cannot reopen the access log");
        lines.into_iter().next()
    });
    let line = found.unwrap_or_else(|| panic!("no JSON reopen line: {}", p.stderr()));
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(
        line["fields"]["path"].as_str(),
        Some(access.to_str().unwrap()),
        "{line}"
    );
    assert!(line["fields"]["error"].is_string(), "{line}");
    // Still serving, and the log still takes lines (into the file already open).
    assert_eq!(http_get_raw(addr, "/"), Some((200, "hi".to_string())));
}

/// A respond-only config with `server` lines: the TOML.
fn respond_config(server: &str) -> String {
    let (_, l) = listener_toml("web", "");
    format!(
        "[server]\naccess_log = \"off\"\n{server}\n{l}\n[[route]]\nname = \"r\"\nrespond = {{ status = 200, body = \"hi\" }}\n"
    )
}

#[test]
fn an_empty_rust_log_leaves_server_log_level_in_force() {
    let p = Portico::start_custom(
        tempfile::tempdir().unwrap(),
        &respond_config("log_level = \"info\""),
        |cmd| {
            cmd.env("RUST_LOG", "");
        },
    );
    assert!(p.stderr().contains("admin listening"), "{}", p.stderr());
}

#[test]
fn an_invalid_rust_log_is_reported_and_server_log_level_applies() {
    let p = Portico::start_custom(
        tempfile::tempdir().unwrap(),
        &respond_config("log_format = \"json\"\nlog_level = \"info\""),
        |cmd| {
            cmd.env("RUST_LOG", "portico=loud");
        },
    );
    let log = p.stderr();
    let warned = json_lines_with(&log, "RUST_LOG is not a valid filter");
    assert_eq!(warned.len(), 1, "{log}");
    assert_eq!(warned[0]["level"], "WARN", "{}", warned[0]);
    assert_eq!(warned[0]["fields"]["rust_log"], "portico=loud");
    assert_eq!(json_lines_with(&log, "admin listening").len(), 1, "{log}");
}

/// POST /reload on `admin` with `token` as the bearer: the status.
fn post_reload(admin: SocketAddr, token: &str) -> Option<u16> {
    let req = format!(
        "POST /reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    parse_status(&raw_exchange(
        admin,
        req.as_bytes(),
        Duration::from_secs(5),
    )?)
}

#[test]
fn a_rotated_admin_token_file_applies_with_watch_config() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "first-token-0123456789\n").unwrap();
    let config = format!(
        "[admin]\nbind = \"{{admin}}\"\ntoken_file = \"admin.token\"\n\n{}",
        respond_config("watch_config = true")
    );
    let p = Portico::start_in(dir, &config);
    assert_eq!(post_reload(p.admin, "second-token-0123456789"), Some(401));
    // A Secret update: the new file renamed over the old one.
    let tmp = p.dir.path().join(".admin.token.tmp");
    std::fs::write(&tmp, "second-token-0123456789\n").unwrap();
    std::fs::rename(&tmp, &token).unwrap();
    let rotated = wait_for(Duration::from_secs(15), || {
        post_reload(p.admin, "second-token-0123456789").filter(|s| *s == 200)
    });
    assert_eq!(rotated, Some(200), "{}", p.stderr());
    assert_eq!(post_reload(p.admin, "first-token-0123456789"), Some(401));
}

#[test]
fn an_access_log_that_cannot_be_written_is_reported_once_as_json() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        "[server]\nlog_format = \"json\"\naccess_log = \"/dev/full\"\n{l}\n[[route]]\nname = \"r\"\nrespond = {{ status = 200, body = \"hi\" }}\n"
    );
    let p = Portico::start(&config);
    // Long paths fill the writer's 64 KiB buffer within some 60 lines; every
    // write after that fails (ENOSPC).
    let path = format!("/{}", "a".repeat(2000));
    let mut answered = 0;
    for _ in 0..6 {
        let mut req = String::new();
        for _ in 0..40 {
            req.push_str(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        }
        req.push_str("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = raw_exchange(addr, req.as_bytes(), Duration::from_secs(10)).unwrap();
        answered += out.matches("HTTP/1.1 200").count();
    }
    assert_eq!(answered, 6 * 41);
    let found = wait_for(Duration::from_secs(10), || {
        let lines = json_lines_with(&p.stderr(), "access log write failed");
        (!lines.is_empty()).then_some(lines)
    });
    let lines = found.unwrap_or_else(|| panic!("no JSON write-failed line: {}", p.stderr()));
    assert_eq!(lines.len(), 1, "{}", p.stderr());
    assert_eq!(lines[0]["level"], "ERROR", "{}", lines[0]);
    assert_eq!(lines[0]["fields"]["path"], "/dev/full", "{}", lines[0]);
}
