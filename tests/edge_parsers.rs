//! Key material and JWKS documents from the attacker's side: key files and
//! JWKs with an empty RSA modulus, a JWKS over HTTPS with a private CA (and
//! without it), a JWKS endpoint that streams without end or redirects.

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::jwt::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn status(addr: SocketAddr, path: &str, token: Option<&str>) -> u16 {
    let mut r = client().get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.send().await.expect("request").status().as_u16()
}

/// One DER element.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        out.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

/// An RSA public key whose modulus is the INTEGER 0 (valid DER, no key),
/// as PKCS#1 and as SubjectPublicKeyInfo.
fn zero_modulus_keys() -> (String, String) {
    let mut seq = tlv(0x02, &[0x00]);
    seq.extend(tlv(0x02, &[0x01, 0x00, 0x01]));
    let pkcs1 = tlv(0x30, &seq);
    let mut alg = tlv(
        0x06,
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01],
    );
    alg.extend([0x05, 0x00]);
    let mut bits = vec![0x00];
    bits.extend_from_slice(&pkcs1);
    let mut spki = tlv(0x30, &alg);
    spki.extend(tlv(0x03, &bits));
    let spki = tlv(0x30, &spki);
    (pem("RSA PUBLIC KEY", &pkcs1), pem("PUBLIC KEY", &spki))
}

fn check(dir: &std::path::Path, config: &str) -> std::process::Output {
    let path = dir.join("check.toml");
    std::fs::write(
        &path,
        format!("[admin]\nbind = \"127.0.0.1:{}\"\n{config}", free_port()),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn empty_rsa_modulus_in_a_key_file_or_jwks_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let (pkcs1, spki) = zero_modulus_keys();
    write(dir.path(), "pkcs1.pem", &pkcs1);
    write(dir.path(), "spki.pem", &spki);
    write(
        dir.path(),
        "jwks.json",
        json!({"keys": [{"kty": "RSA", "kid": "z", "n": "", "e": "AQAB"}]}).to_string(),
    );
    let (_, l) = listener_toml("web", "");
    for (source, setting) in [
        ("keys = [\"pkcs1.pem\"]", "pkcs1.pem"),
        ("keys = [\"spki.pem\"]", "spki.pem"),
        ("jwks_file = \"jwks.json\"", "jwks.json"),
    ] {
        let config = format!(
            "{l}\n[auth.a]\ntype = \"jwt\"\nalgorithms = [\"RS256\"]\n{source}\n\n\
             [upstream.api]\nservers = [\"127.0.0.1:9\"]\n\n\
             [[route]]\nname = \"r\"\nmatch.path_prefix = \"/\"\nupstream = \"api\"\nauth = \"a\"\n"
        );
        let out = check(dir.path(), &config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{source}: {stderr}");
        assert!(!stderr.contains("panicked"), "{source}: {stderr}");
        assert!(
            stderr.contains(setting) && stderr.contains("RSA key of 0 bits"),
            "{source}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_key_with_empty_modulus_is_skipped_and_its_tokens_refused() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (good, rsa) = (TestKey::ec256(), TestKey::rsa());
    let doc = json!({"keys": [
        {"kty": "RSA", "kid": "empty", "n": "", "e": "AQAB"},
        {"kty": "RSA", "kid": "zero", "n": "AA", "e": "AQAB"},
        good.jwk_with_kid("good"),
    ]});
    let server = JwksServer::start(&pki, doc.to_string()).await;
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        "{l}\n[auth.idp]\ntype = \"jwt\"\nalgorithms = [\"ES256\", \"RS256\"]\n\
         jwks_url = \"https://127.0.0.1:{}/jwks.json\"\njwks_ca = \"certs/ca.crt\"\njwks_refresh = \"1h\"\n\n\
         [[route]]\nname = \"r\"\nmatch.path_prefix = \"/\"\nupstream = \"api\"\nauth = \"idp\"\n\n{}",
        server.addr.port(),
        upstream_toml("api", &[&b], "")
    );
    let p = Portico::start_in(dir, &config);
    let t = good.mint(Algorithm::ES256, Some("good"), &claims("g"));
    assert_eq!(status(addr, "/a", Some(&t)).await, 200, "{}", p.stderr());
    for kid in ["empty", "zero"] {
        let t = rsa.mint(Algorithm::RS256, Some(kid), &claims(kid));
        assert_eq!(status(addr, "/a", Some(&t)).await, 401, "{kid}");
    }
    assert_eq!(status(addr, "/a", Some(&t)).await, 200);
    assert_eq!(b.request_count(), 2);
    let log = p.stderr();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("WARN") && log.contains("ignored a broken key: key 0: RSA key of 0 bits"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_jwks_needs_its_private_ca() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let key = TestKey::ed25519();
    let trusted = JwksServer::start(&pki, jwks(&[("k", &key)])).await;
    let untrusted = JwksServer::start(&pki, jwks(&[("k", &key)])).await;
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        "{l}\n[auth.ca]\ntype = \"jwt\"\nalgorithms = [\"EdDSA\"]\n\
         jwks_url = \"https://127.0.0.1:{}/jwks.json\"\njwks_ca = \"certs/ca.crt\"\n\n\
         [auth.system]\ntype = \"jwt\"\nalgorithms = [\"EdDSA\"]\n\
         jwks_url = \"https://127.0.0.1:{}/jwks.json\"\n\n\
         [[route]]\nname = \"ca\"\nmatch.path_prefix = \"/ca/\"\nupstream = \"api\"\nauth = \"ca\"\n\n\
         [[route]]\nname = \"system\"\nmatch.path_prefix = \"/system/\"\nupstream = \"api\"\nauth = \"system\"\n\n{}",
        trusted.addr.port(),
        untrusted.addr.port(),
        upstream_toml("api", &[&b], "")
    );
    let p = Portico::start_in(dir, &config);
    let t = key.mint(Algorithm::EdDSA, Some("k"), &claims("u"));
    assert_eq!(status(addr, "/ca/a", Some(&t)).await, 200, "{}", p.stderr());
    assert!(trusted.hits.load(Ordering::SeqCst) >= 1);
    // The test CA is not among the system's roots: the handshake fails, no
    // request is ever sent, and the policy never has a key.
    assert_eq!(status(addr, "/system/a", Some(&t)).await, 503);
    assert_eq!(untrusted.hits.load(Ordering::SeqCst), 0);
    assert_eq!(b.request_count(), 1);
}

/// A plain-HTTP JWKS endpoint on 127.0.0.1. Its first connection gets a
/// 200 whose chunked body never ends (written until the peer goes away);
/// later ones get `doc`. `/moved` answers 302 to `/jwks.json`.
struct HostileJwks {
    addr: SocketAddr,
    streamed: Arc<AtomicU64>,
    stream_ended: Arc<AtomicBool>,
    good_requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileJwks {
    async fn start(doc: String) -> HostileJwks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let streamed = Arc::new(AtomicU64::new(0));
        let stream_ended = Arc::new(AtomicBool::new(false));
        let good_requests = Arc::new(AtomicUsize::new(0));
        let (s, e, g) = (
            streamed.clone(),
            stream_ended.clone(),
            good_requests.clone(),
        );
        let task = tokio::spawn(async move {
            let mut first = true;
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    break;
                };
                let endless = std::mem::take(&mut first);
                let (s, e, g, doc) = (s.clone(), e.clone(), g.clone(), doc.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if head.starts_with(b"GET /moved ") {
                        let _ = tcp
                            .write_all(
                                b"HTTP/1.1 302 Found\r\nlocation: /jwks.json\r\ncontent-length: 0\r\n\r\n",
                            )
                            .await;
                        return;
                    }
                    if !endless {
                        g.fetch_add(1, Ordering::SeqCst);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{doc}",
                            doc.len()
                        );
                        let _ = tcp.write_all(resp.as_bytes()).await;
                        return;
                    }
                    let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                    if tcp.write_all(head).await.is_err() {
                        e.store(true, Ordering::SeqCst);
                        return;
                    }
                    let mut chunk = format!("{:x}\r\n{{\"keys\":[", 64 * 1024).into_bytes();
                    chunk.resize(chunk.len() + 64 * 1024 - 9, b' ');
                    chunk.extend_from_slice(b"\r\n");
                    let mut filler = format!("{:x}\r\n", 64 * 1024).into_bytes();
                    filler.resize(filler.len() + 64 * 1024, b' ');
                    filler.extend_from_slice(b"\r\n");
                    let mut next = &chunk;
                    // Bounded: 4 GiB, far beyond any sane JWKS.
                    for _ in 0..65536 {
                        if tcp.write_all(next).await.is_err() {
                            break;
                        }
                        s.fetch_add(64 * 1024, Ordering::SeqCst);
                        next = &filler;
                    }
                    e.store(true, Ordering::SeqCst);
                });
            }
        });
        HostileJwks {
            addr,
            streamed,
            stream_ended,
            good_requests,
            task,
        }
    }
}

impl Drop for HostileJwks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_jwks_body_is_cut_off_and_portico_keeps_serving() {
    let b = Backend::start("api").await;
    let key = TestKey::ec256();
    let server = HostileJwks::start(jwks(&[("k", &key)])).await;
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        "{l}\n[auth.idp]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\n\
         jwks_url = \"http://{}/jwks.json\"\njwks_refresh = \"1s\"\n\n\
         [[route]]\nname = \"open\"\nmatch.path_prefix = \"/open/\"\nupstream = \"api\"\n\n\
         [[route]]\nname = \"r\"\nmatch.path_prefix = \"/\"\nupstream = \"api\"\nauth = \"idp\"\n\n{}",
        server.addr,
        upstream_toml("api", &[&b], "")
    );
    let p = Portico::start(&config);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.stream_ended.load(Ordering::SeqCst) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        server.stream_ended.load(Ordering::SeqCst),
        "portico never hung up on the endless JWKS body"
    );
    // 1 MiB is the limit; the rest is what the loopback socket buffers
    // took before portico hung up.
    let streamed = server.streamed.load(Ordering::SeqCst);
    assert!(
        streamed < 64 << 20,
        "portico read {streamed} bytes of a JWKS body"
    );
    assert_eq!(status(addr, "/open/a", None).await, 200, "{}", p.stderr());
    // The next refresh gets a good document and tokens pass.
    let t = key.mint(Algorithm::ES256, Some("k"), &claims("u"));
    let mut last = 0;
    while Instant::now() < deadline {
        last = status(addr, "/a", Some(&t)).await;
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 200, "{}", p.stderr());
    assert!(server.good_requests.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_redirects_are_not_followed() {
    let b = Backend::start("api").await;
    let key = TestKey::ec256();
    let server = HostileJwks::start(jwks(&[("k", &key)])).await;
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        "{l}\n[auth.idp]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\n\
         jwks_url = \"http://{}/moved\"\n\n\
         [[route]]\nname = \"r\"\nmatch.path_prefix = \"/\"\nupstream = \"api\"\nauth = \"idp\"\n\n{}",
        server.addr,
        upstream_toml("api", &[&b], "")
    );
    let p = Portico::start(&config);
    let t = key.mint(Algorithm::ES256, Some("k"), &claims("u"));
    assert_eq!(status(addr, "/a", Some(&t)).await, 503, "{}", p.stderr());
    assert_eq!(server.good_requests.load(Ordering::SeqCst), 0);
    assert_eq!(server.streamed.load(Ordering::SeqCst), 0);
    assert_eq!(b.request_count(), 0);
}
