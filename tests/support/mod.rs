//! Test support: real backends, the real portico binary, real certificates.
//!
//! Everything listens on 127.0.0.1 only.
#![allow(dead_code)]

pub mod dns;
pub mod fleet;
pub mod h2frames;
pub mod http3;
pub mod jwt;
pub mod prom;
pub mod raw;
pub mod redis;
pub mod script;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::Digest;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A port that is free on 127.0.0.1 for both TCP and UDP, and that no
/// other call in this process returns.
///
/// Ports come from below the kernel's ephemeral range (32768–60999 here),
/// so the outgoing connections that tests and portico open all the time
/// never take one between this call and the bind that uses it; a counter
/// keeps parallel tests of one binary apart, and a start derived from the
/// pid keeps test processes that run at once (nextest) apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        let addr = ("127.0.0.1", port);
        if StdListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

/// The connections a listener accepts, as a stream (for servers such as
/// tonic's that take one).
fn incoming(
    l: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

/// A real gRPC server on 127.0.0.1 (HTTP/2 cleartext): tonic's health
/// service, with "portico.Test" SERVING.
pub struct GrpcHealth {
    pub addr: SocketAddr,
    pub reporter: tonic_health::server::HealthReporter,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl GrpcHealth {
    pub async fn start() -> GrpcHealth {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("portico.Test", tonic_health::ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        GrpcHealth {
            addr,
            reporter,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

/// A real HTTP/1.1 + h2c backend on 127.0.0.1 that counts TCP accepts and
/// requests and records what it saw.
///
/// Paths: `/download/N` streams N bytes; `/upload` answers
/// "COUNT SHA256HEX" of the request body; `/echo` streams the body back;
/// `/slow/MS` answers after MS milliseconds; `/status/N` answers status N;
/// `/close` answers with `connection: close`; anything else answers
/// "NAME METHOD URI".
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Status that `/health` answers (200 by default).
    pub health: Arc<std::sync::atomic::AtomicU16>,
    killed: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve(name, listener)
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind backend");
        Self::serve(name, listener)
    }

    /// A backend that speaks TLS (HTTP/1.1 and h2 by ALPN) with `tls`.
    pub async fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve_with(name, listener, Some(tls))
    }

    fn serve(name: &str, listener: tokio::net::TcpListener) -> Backend {
        Self::serve_with(name, listener, None)
    }

    fn serve_with(
        name: &str,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Backend {
        let addr = listener.local_addr().expect("addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let (killed, _) = tokio::sync::watch::channel(false);
        let (a, r, o, s, n, h, k) = (
            accepts.clone(),
            requests.clone(),
            open.clone(),
            seen.clone(),
            name.to_string(),
            health.clone(),
            killed.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let (r, o, s, n, h, tls) = (
                    r.clone(),
                    o.clone(),
                    s.clone(),
                    n.clone(),
                    h.clone(),
                    tls.clone(),
                );
                let mut kill = k.subscribe();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        backend_handle(req, n.clone(), r.clone(), s.clone(), h.clone())
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let serve = async {
                        match tls {
                            Some(cfg) => {
                                if let Ok(t) =
                                    tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await
                                {
                                    let _ = builder
                                        .serve_connection_with_upgrades(TokioIo::new(t), svc)
                                        .await;
                                }
                            }
                            None => {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                    .await;
                            }
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = kill.wait_for(|k| *k) => {}
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            accepts,
            requests,
            open,
            seen,
            health,
            killed,
            task,
        }
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("backend saw no request")
    }

    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops accepting (open connections keep going until they close).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Dies: stops accepting and drops every open connection at once.
    pub fn kill(&self) {
        self.task.abort();
        let _ = self.killed.send(true);
    }

    /// Waits until a [`Backend::kill`] has taken effect: the accept loop
    /// has ended and no connection task is left, so no request can be
    /// counted any more.
    pub async fn wait_dead(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.task.is_finished() || self.open.load(Ordering::SeqCst) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "backend {} still has connections 5 s after kill",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How many requests to `path` it saw.
    pub fn count_path(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.uri == path)
            .count()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(s: impl Into<Bytes>) -> TestBody {
    Full::new(s.into()).map_err(|e| match e {}).boxed()
}

async fn backend_handle(
    req: Request<Incoming>,
    name: String,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    health: Arc<std::sync::atomic::AtomicU16>,
) -> Result<Response<TestBody>, Box<dyn std::error::Error + Send + Sync>> {
    if req.uri().path() == "/health" {
        let mut r = Response::new(full("health"));
        *r.status_mut() =
            StatusCode::from_u16(health.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
        return Ok(r);
    }
    requests.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_string();
    if path == "/reset" || path.strip_prefix("/reset-on/") == Some(name.as_str()) {
        // Read the request, then break the connection without an answer.
        let _ = req.into_body().collect().await;
        return Err("reset".into());
    }
    let mut resp = if let Some(n) = path.strip_prefix("/download/") {
        let total: u64 = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len() as u64);
                Some((
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(
                        chunk.slice(..n as usize),
                    )),
                    left - n,
                ))
            }
        });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, total.into());
        r
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut hasher = sha2::Sha256::new();
        let mut count: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        count += d.len() as u64;
                        hasher.update(d);
                    }
                }
                Err(_) => break,
            }
        }
        Response::new(full(format!("{count} {}", hex(&hasher.finalize()))))
    } else if path == "/echo" {
        let body = req
            .into_body()
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
        Response::new(body.boxed())
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full(format!("{name} slow")))
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(format!("{name} status")));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        r
    } else if let Some(spec) = path.strip_prefix("/drip/") {
        // /drip/N/MS: N chunks of "tick\n", one every MS milliseconds.
        let (n, ms) = spec.split_once('/').unwrap_or((spec, "10"));
        let (n, ms): (u32, u64) = (n.parse().unwrap_or(1), ms.parse().unwrap_or(10));
        let stream = futures_util::stream::unfold(0u32, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(
                    b"tick\n",
                ))),
                i + 1,
            ))
        });
        Response::new(BodyExt::boxed(StreamBody::new(stream)))
    } else if path == "/close" {
        let mut r = Response::new(full(format!("{name} close")));
        r.headers_mut()
            .insert(http::header::CONNECTION, "close".parse().unwrap());
        r
    } else {
        Response::new(full(format!("{name} {} {}", req.method(), req.uri())))
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    Ok(resp)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A running portico process with its own folder, config and admin port.
pub struct Portico {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
}

impl Portico {
    /// Writes `config` (its `{admin}` placeholder replaced by a free admin
    /// address) to a fresh folder, starts the binary and waits for /ready.
    pub fn start(config: &str) -> Portico {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config)
    }

    /// As [`Portico::start`], in a folder prepared by the caller (certs...).
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Portico {
        Self::start_custom(dir, config, |_| {})
    }

    /// As [`Portico::start_in`], with the command adjusted by the caller
    /// (environment, inherited descriptors...).
    pub fn start_custom(
        dir: tempfile::TempDir,
        config: &str,
        customize: impl FnOnce(&mut Command),
    ) -> Portico {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let text = config.replace("{admin}", &admin.to_string());
        let text = if text.contains("[admin]") {
            text
        } else {
            format!("[admin]\nbind = \"{admin}\"\n\n{text}")
        };
        let config_path = dir.path().join("proxy.toml");
        std::fs::write(&config_path, text).expect("write config");
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout log");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        // PORTICO_BENCH_BIN: a bench measuring another build of portico
        // (`PORTICO_BENCH_BIN=target/dist/portico cargo bench --bench
        // h3load`); the tests leave it unset and run cargo's own build.
        let bin = std::env::var_os("PORTICO_BENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_portico").into());
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config_path)
            // PORTICO_TEST_LOG=portico=debug to see more of a failing test.
            .env(
                "RUST_LOG",
                std::env::var("PORTICO_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(stdout)
            .stderr(stderr);
        customize(&mut cmd);
        let child = cmd.spawn().expect("spawn portico");
        let mut p = Portico {
            child,
            dir,
            admin,
            config_path,
        };
        p.wait_ready();
        p
    }

    /// Starts portico as systemd's socket activation does: `fds` become
    /// descriptors 3, 4, ... of the process, with LISTEN_FDS and its own
    /// pid in LISTEN_PID; `env` is added to its environment.
    pub fn start_activated(
        dir: tempfile::TempDir,
        config: &str,
        fds: Vec<std::os::fd::RawFd>,
        env: Vec<(String, std::ffi::OsString)>,
    ) -> Portico {
        use std::os::unix::process::CommandExt;
        let logs = dir.path().to_path_buf();
        Portico::start_custom(dir, config, move |cmd| {
            // LISTEN_PID must be portico's own pid: a shell sets it, then execs.
            let args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_owned()).collect();
            let mut sh = Command::new("/bin/sh");
            sh.arg("-c")
                .arg(format!(
                    "LISTEN_PID=$$ LISTEN_FDS={} exec \"$0\" \"$@\"",
                    fds.len()
                ))
                .arg(env!("CARGO_BIN_EXE_portico"))
                .args(args);
            std::mem::swap(cmd, &mut sh);
            cmd.env("RUST_LOG", "info")
                .envs(env)
                .stdout(std::fs::File::create(logs.join("stdout.log")).unwrap())
                .stderr(std::fs::File::create(logs.join("stderr.log")).unwrap());
            // SAFETY: dup2 is async-signal-safe; the descriptors stay open
            // in the parent until the child has exec'd.
            unsafe {
                cmd.pre_exec(move || {
                    for (i, fd) in fds.iter().enumerate() {
                        if libc::dup2(*fd, 3 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        })
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("portico exited early ({status}): {}", self.stderr());
            }
            if let Some((200, _)) = http_get_raw(self.admin, "/ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("portico did not become ready: {}", self.stderr());
    }

    /// Rewrites the config file (the `{admin}` placeholder and admin table
    /// handled as at start).
    pub fn write_config(&self, config: &str) {
        let text = config.replace("{admin}", &self.admin.to_string());
        let text = if text.contains("[admin]") {
            text
        } else {
            format!("[admin]\nbind = \"{}\"\n\n{text}", self.admin)
        };
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// POST /reload on the admin listener: status and body.
    pub async fn reload(&self) -> (u16, String) {
        let r = client()
            .post(format!("http://{}/reload", self.admin))
            .send()
            .await
            .expect("POST /reload");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Sends SIGTERM and waits for the exit status (at most `within`).
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "portico did not exit after SIGTERM: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny blocking HTTP/1.1 GET (connection: close): status and body.
pub fn http_get_raw(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let raw = raw_exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(2),
    )?;
    parse_status(&raw).map(|s| {
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (s, body)
    })
}

/// Writes `req` on a fresh TCP connection and reads until the peer closes
/// (or `timeout` passes): the raw answer.
pub fn raw_exchange(addr: SocketAddr, req: &[u8], timeout: Duration) -> Option<String> {
    let mut s = StdStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(req).ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

pub fn parse_status(raw: &str) -> Option<u16> {
    raw.strip_prefix("HTTP/1.1 ")
        .or_else(|| raw.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
}

/// A config fragment: `[upstream.NAME]` with these backends.
pub fn upstream_toml(name: &str, backends: &[&Backend], extra: &str) -> String {
    let servers: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        "[upstream.{name}]\nservers = [{}]\n{extra}\n",
        servers.join(", ")
    )
}

/// A listener fragment on a free port; returns the address and the TOML.
pub fn listener_toml(name: &str, extra: &str) -> (SocketAddr, String) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    (
        addr,
        format!("[[listener]]\nname = \"{name}\"\nbind = \"{addr}\"\n{extra}\n"),
    )
}

/// A plain reqwest client (HTTP/1.1, no proxy from the environment).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// An h2c prior-knowledge client.
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client")
}

/// A private CA with a server certificate for localhost/127.0.0.1 and a
/// client certificate, written as PEM files into `dir`.
pub struct Pki {
    pub ca_pem: String,
    pub dir: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "portico test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let mut sp =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        sp.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        let server = sp.signed_by(&server_key, &ca, &ca_key).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(vec!["client".to_string()]).unwrap();
        cp.distinguished_name
            .push(DnType::CommonName, "test client");
        cp.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
        let client = cp.signed_by(&client_key, &ca, &ca_key).unwrap();

        let other_key = KeyPair::generate().unwrap();
        let other = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&other_key)
            .unwrap();

        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let w = |n: &str, s: String| std::fs::write(certs.join(n), s).unwrap();
        w("ca.crt", ca.pem());
        w("server.crt", server.pem());
        w("server.key", server_key.serialize_pem());
        w("client.crt", client.pem());
        w("client.key", client_key.serialize_pem());
        w("other.crt", other.pem());
        w("other.key", other_key.serialize_pem());
        Pki {
            ca_pem: ca.pem(),
            dir: certs,
        }
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap()
    }

    /// A rustls client config that trusts this CA (TLS 1.3 and 1.2, ALPN as given).
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        cfg
    }

    /// A server config with this PKI's server certificate (ALPN h2 and
    /// http/1.1), requiring a client certificate from this CA when asked.
    pub fn server_config(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<_> =
            rustls_pki_types::CertificateDer::pem_slice_iter(self.read("server.crt").as_bytes())
                .map(|c| c.unwrap())
                .collect();
        let key =
            rustls_pki_types::PrivateKeyDer::from_pem_slice(self.read("server.key").as_bytes())
                .unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(v)
        } else {
            builder.with_no_client_auth()
        };
        let mut cfg = builder.with_single_cert(certs, key).unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// A reqwest client trusting this CA.
    pub fn reqwest_client(&self, http2: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap());
        if http2 {
            b = b.http2_prior_knowledge();
        } else {
            b = b.http1_only();
        }
        b.build().unwrap()
    }
}

use rustls_pki_types::pem::PemObject;

/// Counts per backend name from `x-backend` answers.
pub fn tally(names: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n).or_insert(0) += 1;
    }
    m
}

/// A WebSocket echo server (tungstenite) on 127.0.0.1.
pub async fn ws_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_close() || ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}
