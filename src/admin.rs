//! The admin listener (admin.bind, loopback by default).
//!
//! - GET /health: 200 "ok" while the process serves;
//! - GET /ready: 200 once every listener is bound, until shutdown begins
//!   (and, with admin.ready_requires_healthy_pools, only while every pool
//!   with health checks has a healthy server), else 503;
//! - GET /metrics: every metric in the Prometheus text format;
//! - GET /config: `{"generation": N, "config": {...}}`, the config in force
//!   with secrets masked (see [`crate::config::redact`]);
//! - POST /reload: reload the config: 200 `{"generation": N}` or 400
//!   `{"error": "..."}` (the old config keeps serving);
//! - POST /revoke: record a token revocation in the store of the snapshot
//!   in force: 204; 400 for a bad body; 503 when the store does not take it;
//! - HEAD as GET; a known path with another method: 405 with `Allow`;
//!   anything else: 404.
//!
//! The public bind (admin.public_bind, [`Exposure::Public`]) is read-only:
//! it answers GET/HEAD /health, /ready and /metrics alone; another method on
//! those is 405, any other path (the POST endpoints and /config included)
//! is 404, whatever the token.
//!
//! With admin.token_file set, every request whose method is not GET or HEAD
//! (the POST endpoints, and any other state-changing method on any path)
//! must carry `Authorization: Bearer <token>`, checked before anything else
//! (so an unknown path answers 401, not 404, to a client without the
//! token). The token is read when the config is built and compared in
//! constant time (see [`crate::auth::bearer`]).

use crate::auth::AdminToken;
use crate::body::ProxyBody;
use crate::supervisor::Supervisor;
use http::header::{ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the admin endpoints report on.
pub struct AdminState {
    /// Set once every listener is bound; cleared when shutdown begins.
    pub ready: AtomicBool,
    /// The config in force (and the metrics registry), and reloads.
    pub supervisor: Arc<Supervisor>,
}

impl AdminState {
    pub fn new(supervisor: Arc<Supervisor>) -> AdminState {
        AdminState {
            ready: AtomicBool::new(false),
            supervisor,
        }
    }
}

/// Which admin bind a connection came in on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Exposure {
    /// admin.bind: every endpoint.
    Full,
    /// admin.public_bind: GET /health, /ready, /metrics only.
    Public,
}

/// The paths the public bind serves.
const PUBLIC_PATHS: [&str; 3] = ["/health", "/ready", "/metrics"];

/// Whether `req` carries the admin token (always true without one).
fn authorized<B>(req: &Request<B>, token: Option<&AdminToken>) -> bool {
    token.is_none_or(|t| t.admits(req.headers()))
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn with_type(body: String, content_type: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The GET endpoints, for the 405 answer's Allow header.
const GET_PATHS: [&str; 4] = ["/health", "/ready", "/metrics", "/config"];

fn method_not_allowed(allow: &'static str) -> Response<ProxyBody> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// GET /ready: the process is up and not shutting down, and, when the
/// config asks for it, every health-checked pool has a healthy server.
fn ready(state: &AdminState, snap: &crate::snapshot::Snapshot) -> Response<ProxyBody> {
    let pools_ok = || {
        snap.pools
            .values()
            .all(|p| !p.has_health_checks || p.any_healthy())
    };
    let needs_pools = snap.config.config.admin.ready_requires_healthy_pools;
    if state.ready.load(Ordering::Acquire) && (!needs_pools || pools_ok()) {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

fn metrics(snap: &crate::snapshot::Snapshot) -> Response<ProxyBody> {
    with_type(
        snap.metrics.render(&snap.in_force()),
        "text/plain; version=0.0.4; charset=utf-8",
    )
}

/// The public bind: the three read-only endpoints, nothing else.
fn handle_public(req: &Request<Incoming>, state: &AdminState) -> Response<ProxyBody> {
    let path = req.uri().path();
    if !PUBLIC_PATHS.contains(&path) {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD");
    }
    let snap = state.supervisor.snapshot.load();
    match path {
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => ready(state, &snap),
        _ => metrics(&snap),
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<AdminState>,
    exposure: Exposure,
) -> Result<Response<ProxyBody>, Infallible> {
    if exposure == Exposure::Public {
        return Ok(handle_public(&req, &state));
    }
    let snap = state.supervisor.snapshot.load_full();
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    if !get && !authorized(&req, snap.admin_token.as_ref()) {
        let mut r = text(StatusCode::UNAUTHORIZED, "401 admin token required\n");
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"portico-admin\""),
        );
        return Ok(r);
    }
    Ok(match (get, req.uri().path()) {
        (true, "/health") => text(StatusCode::OK, "ok\n"),
        (true, "/ready") => ready(&state, &snap),
        (true, "/metrics") => metrics(&snap),
        (true, "/config") => {
            let body = serde_json::json!({
                "generation": snap.generation,
                "config": crate::config::redact::redacted(&snap.config.config),
            });
            with_type(format!("{body}\n"), "application/json")
        }
        (false, "/reload") if req.method() == Method::POST => {
            drop(snap);
            match state.supervisor.reload().await {
                Ok(generation) => json(
                    StatusCode::OK,
                    serde_json::json!({ "generation": generation }),
                ),
                Err(e) => json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": e.to_string() }),
                ),
            }
        }
        (false, "/revoke") if req.method() == Method::POST => revoke(req, &snap).await,
        (_, "/reload" | "/revoke") => method_not_allowed("POST"),
        (_, p) if GET_PATHS.contains(&p) => method_not_allowed("GET, HEAD"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<ProxyBody> {
    let mut r = with_type(v.to_string(), "application/json");
    *r.status_mut() = status;
    r
}

fn json_error(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    json(status, serde_json::json!({ "error": msg }))
}

/// POST /revoke: `{"jti": "...", "exp": N}` or `{"sub": "...", "before": N}`.
async fn revoke(req: Request<Incoming>, snap: &crate::snapshot::Snapshot) -> Response<ProxyBody> {
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_error(StatusCode::BAD_REQUEST, "unreadable or too large body"),
    };
    match snap.auth.revoke(&body).await {
        Ok(()) => {
            let mut r = Response::new(ProxyBody::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Err(crate::auth::RevokeError::BadBody(why)) => json_error(StatusCode::BAD_REQUEST, &why),
        Err(crate::auth::RevokeError::StoreDown) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "revocation store unavailable",
        ),
    }
}

/// The status of `GET path` on a running portico's admin API at `addr`,
/// over a plain blocking HTTP/1.0 exchange (no runtime): what `portico
/// probe` runs as a container health check, where the image has no curl.
pub fn probe(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> Result<u16, String> {
    use std::io::{Read, Write};
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("the path must start with / and hold no spaces or controls".into());
    }
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    // One write: `write!` on a socket is one syscall per piece, and a peer
    // that answers after the first piece and closes would reset the rest.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    // The status line is all that is needed: "HTTP/1.x NNN ...".
    let mut head = [0u8; 12];
    s.read_exact(&mut head).map_err(|e| e.to_string())?;
    // Bytes, not text: a peer's non-ASCII byte must not split a slice.
    let code = &head[9..12];
    if !head.starts_with(b"HTTP/1.") || !code.iter().all(u8::is_ascii_digit) {
        return Err("not an HTTP answer".into());
    }
    Ok(code.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

/// Serves the admin API (all of it, or the public part) until `stop`
/// turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    exposure: Exposure,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, state.clone(), exposure));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::AUTHORIZATION;

    /// What `probe` makes of a peer that sends `answer`.
    fn probe_against(answer: &'static [u8]) -> Result<u16, String> {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // Read the whole head: closing with unread bytes would reset
            // the connection before the client reads the answer.
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(answer);
        });
        let r = probe(addr, "/health", std::time::Duration::from_secs(2));
        peer.join().unwrap();
        r
    }

    #[test]
    fn probe_reads_the_status_and_refuses_what_is_not_http() {
        assert_eq!(probe_against(b"HTTP/1.1 204 No Content\r\n\r\n"), Ok(204));
        assert_eq!(probe_against(b"HTTP/1.0 503 x\r\n\r\n"), Ok(503));
        // A multi-byte character where the status goes: an error, no panic.
        assert!(probe_against("HTTP/1.1\u{e9}99 x\r\n\r\n".as_bytes()).is_err());
        assert!(probe_against(b"SSH-2.0-OpenSSH_9.2\r\n").is_err());
        assert!(probe(
            "127.0.0.1:9".parse().unwrap(),
            "no slash",
            std::time::Duration::from_secs(1)
        )
        .is_err());
    }

    fn req(auth: &[&str]) -> Request<()> {
        let mut b = Request::builder().method("POST").uri("/x");
        for a in auth {
            b = b.header(AUTHORIZATION, *a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn bearer_token_check() {
        let t = AdminToken::new(b"s3cret");
        assert!(authorized(&req(&["Bearer s3cret"]), Some(&t)));
        assert!(!authorized(&req(&["Bearer s3cre"]), Some(&t)));
        assert!(!authorized(&req(&[]), Some(&t)));
        assert!(authorized(&req(&[]), None));
    }
}
