//! The admin listener (admin.bind, loopback by default).
//!
//! GET /health answers 200 "ok" while the process serves; GET /ready answers
//! 200 once every listener is bound and every pool with health checks has
//! a healthy server, else 503; POST /reload reloads the
//! config (200 `{"generation": N}` or 400 `{"error": "..."}`, the old config
//! serving on). Anything else is 404.

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
