//! The admin listener (admin.bind, loopback by default).
//!
//! GET /health answers 200 "ok" while the process serves; GET /ready answers
//! 200 once every listener is bound and every pool with health checks has
//! a healthy server, else 503; POST /reload reloads the
//! config (200 `{"generation": N}` or 400 `{"error": "..."}`, the old config
//! serving on); POST /revoke records a token revocation in the store of the
//! snapshot in force (204; 400 for a bad body; 503 when the store does not
//! take it). POST endpoints need `Authorization: Bearer <admin.token_file
//! contents>` when token_file is set. Anything else is 404.

use crate::body::ProxyBody;
use crate::supervisor::Supervisor;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the admin endpoints report on and act through.
pub struct AdminState {
    /// Set once every listener is bound.
    pub ready: AtomicBool,
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

fn json(status: StatusCode, v: serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<AdminState>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/ready") => {
            let pools_ok = state
                .supervisor
                .shared
                .snapshot
                .load()
                .pools
                .values()
                .all(|p| !p.has_health_checks || p.any_healthy());
            if state.ready.load(Ordering::Acquire) && pools_ok {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::POST, _)
            if !post_allowed(&req, &state.supervisor.shared.snapshot.load_full()).await =>
        {
            json_error(StatusCode::UNAUTHORIZED, "admin token required")
        }
        (&Method::POST, "/revoke") => revoke(req, &state).await,
        (&Method::POST, "/reload") => match state.supervisor.reload().await {
            Ok(generation) => json(
                StatusCode::OK,
                serde_json::json!({ "generation": generation }),
            ),
            Err(e) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": e.to_string() }),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn json_error(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    json(status, serde_json::json!({ "error": msg }))
}

/// Whether a POST may proceed: admin.token_file unset, or its contents
/// (trailing newline trimmed) sent as a bearer token. The file is read per
/// request, so a changed token applies at once; an unreadable file refuses.
async fn post_allowed(req: &Request<Incoming>, snap: &crate::snapshot::Snapshot) -> bool {
    let lc = &snap.config;
    let file = lc.config.admin.token_file.get_ref();
    if file.is_empty() {
        return true;
    }
    let Ok(expected) = tokio::fs::read_to_string(lc.resolve(file)).await else {
        return false;
    };
    let expected = expected.trim_end_matches(['\r', '\n']);
    let sent = match crate::auth::policy::bearer(req.headers()) {
        Ok(t) => t,
        Err(_) => return false,
    };
    !expected.is_empty() && same_bytes(sent.as_bytes(), expected.as_bytes())
}

/// Compares two byte strings in time that depends on their length only.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// POST /revoke: `{"jti": "...", "exp": N}` or `{"sub": "...", "before": N}`.
async fn revoke(req: Request<Incoming>, state: &AdminState) -> Response<ProxyBody> {
    use http_body_util::BodyExt;
    let snap = state.supervisor.shared.snapshot.load_full();
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

/// Serves the admin API until `stop` turns true.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
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
            let svc = service_fn(move |req| handle(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
