//! JWT test support: keys made by the test, tokens minted by the test, a
//! JWKS server on 127.0.0.1, a real redis-server on a free port.
//!
//! RSA keys come from the `openssl` CLI (ring cannot generate them; made
//! once per test binary); EC and Ed25519 keys from rcgen (ring).

use super::{free_port, Pki};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A key pair made for a test.
#[derive(Clone)]
pub struct TestKey {
    /// PKCS#8 (EC, Ed25519) or PKCS#1 (RSA) private key, DER.
    private_der: Vec<u8>,
    pub public_pem: String,
    /// The public JWK, without kid.
    pub jwk: Value,
    pub kind: &'static str,
}

impl TestKey {
    /// A 2048-bit RSA key (the same one for the whole test binary).
    pub fn rsa() -> TestKey {
        static RSA: OnceLock<TestKey> = OnceLock::new();
        RSA.get_or_init(make_rsa).clone()
    }

    /// A second RSA key, different from [`TestKey::rsa`].
    pub fn rsa_other() -> TestKey {
        static RSA: OnceLock<TestKey> = OnceLock::new();
        RSA.get_or_init(make_rsa).clone()
    }

    pub fn ec256() -> TestKey {
        ring_key(&rcgen::PKCS_ECDSA_P256_SHA256, "ec256", Some(("P-256", 32)))
    }

    pub fn ec384() -> TestKey {
        ring_key(&rcgen::PKCS_ECDSA_P384_SHA384, "ec384", Some(("P-384", 48)))
    }

    pub fn ed25519() -> TestKey {
        ring_key(&rcgen::PKCS_ED25519, "ed25519", None)
    }

    pub fn encoding(&self) -> EncodingKey {
        match self.kind {
            "rsa" => EncodingKey::from_rsa_der(&self.private_der),
            "ed25519" => EncodingKey::from_ed_der(&self.private_der),
            _ => EncodingKey::from_ec_der(&self.private_der),
        }
    }

    /// The public JWK with a kid.
    pub fn jwk_with_kid(&self, kid: &str) -> Value {
        let mut j = self.jwk.clone();
        j["kid"] = json!(kid);
        j
    }

    /// Signs `claims` with this key.
    pub fn mint(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        mint_with(&self.encoding(), alg, kid, claims)
    }
}

fn ring_key(
    alg: &'static rcgen::SignatureAlgorithm,
    kind: &'static str,
    ec: Option<(&str, usize)>,
) -> TestKey {
    let kp = rcgen::KeyPair::generate_for(alg).expect("generate key");
    let raw = kp.public_key_raw();
    let jwk = match ec {
        Some((crv, n)) => {
            assert_eq!(raw.len(), 1 + 2 * n);
            json!({"kty": "EC", "crv": crv, "x": b64(&raw[1..1 + n]), "y": b64(&raw[1 + n..])})
        }
        None => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}),
    };
    TestKey {
        private_der: kp.serialize_der(),
        public_pem: kp.public_key_pem(),
        jwk,
        kind,
    }
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().expect(
        "the openssl command is needed to make RSA test keys (scripts/test.sh installs it)",
    );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn make_rsa() -> TestKey {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("rsa.pem");
    let key_s = key.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key_s,
    ]);
    let der = openssl(&["rsa", "-in", key_s, "-traditional", "-outform", "DER"]);
    let public_pem = String::from_utf8(openssl(&["pkey", "-in", key_s, "-pubout"])).unwrap();
    let modulus = String::from_utf8(openssl(&["rsa", "-in", key_s, "-noout", "-modulus"])).unwrap();
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    TestKey {
        private_der: der,
        public_pem,
        jwk: json!({"kty": "RSA", "n": b64(&n), "e": "AQAB"}),
        kind: "rsa",
    }
}

pub fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Signs `claims` with `key` as `alg`.
pub fn mint_with(key: &EncodingKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, key).expect("mint token")
}

/// A token with any header, signed (HMAC-SHA256) with `secret`, or with an
/// empty signature when `secret` is None (alg "none" forgeries).
pub fn raw_token(header: &Value, claims: &Value, secret: Option<&[u8]>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = match secret {
        Some(s) => {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s);
            b64(ring::hmac::sign(&k, input.as_bytes()).as_ref())
        }
        None => String::new(),
    };
    format!("{input}.{sig}")
}

/// Standard good claims: sub, iat now, exp in an hour, a jti.
pub fn claims(sub: &str) -> Value {
    let n = now();
    json!({"sub": sub, "iat": n, "exp": n + 3600, "jti": format!("{sub}-{}", fastrand_u64())})
}

fn fastrand_u64() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    (now() as u64) << 16 | N.fetch_add(1, Ordering::SeqCst) as u64
}

/// Writes a JWKS document of `keys` (kid, key).
pub fn jwks(keys: &[(&str, &TestKey)]) -> String {
    json!({"keys": keys.iter().map(|(kid, k)| k.jwk_with_kid(kid)).collect::<Vec<_>>()}).to_string()
}

/// An HTTPS server on 127.0.0.1 serving JWKS documents: `/jwks.json`
/// (the current `doc`) and `/flaky.json` (`doc` once, then 500s). Counts
/// hits per path.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub doc: Arc<Mutex<String>>,
    pub hits: Arc<AtomicUsize>,
    pub flaky_hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(pki: &Pki, doc: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let certs: Vec<_> =
            rustls_pki_types::CertificateDer::pem_file_iter(pki.dir.join("server.crt"))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
        let key =
            rustls_pki_types::PrivateKeyDer::from_pem_file(pki.dir.join("server.key")).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let doc = Arc::new(Mutex::new(doc));
        let hits = Arc::new(AtomicUsize::new(0));
        let flaky_hits = Arc::new(AtomicUsize::new(0));
        let (d, h, f) = (doc.clone(), hits.clone(), flaky_hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    break;
                };
                let (acceptor, d, h, f) = (acceptor.clone(), d.clone(), h.clone(), f.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (d, h, f) = (d.clone(), h.clone(), f.clone());
                        async move {
                            let body = d.lock().unwrap().clone();
                            let mut status = 200;
                            match req.uri().path() {
                                "/jwks.json" => {
                                    h.fetch_add(1, Ordering::SeqCst);
                                }
                                "/flaky.json" => {
                                    if f.fetch_add(1, Ordering::SeqCst) > 0 {
                                        status = 500;
                                    }
                                }
                                _ => status = 404,
                            }
                            let mut r = http::Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            doc,
            hits,
            flaky_hits,
            task,
        }
    }

    pub fn set(&self, doc: String) {
        *self.doc.lock().unwrap() = doc;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A real redis-server on a free 127.0.0.1 port, without persistence.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed for the shared revocation tests (scripts/test.sh installs it)");
        let r = Redis {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if r.ping() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer PING on port {port}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// PING over a raw connection.
    pub fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// Kills the server and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes a file into `dir`, returning its name.
pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> String {
    std::fs::write(dir.join(name), contents).unwrap();
    name.to_string()
}

use rustls_pki_types::pem::PemObject;
