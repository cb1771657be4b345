//! The HTTP/1 head path with portico's per-connection byte layer: the fuzz
//! input is everything a client sends on one connection (so pipelined
//! requests, bodies and garbage after them are in reach). It goes through
//! `ConnIo` (head/idle timeouts and their 408, the framing tracker that
//! follows every head and body) into hyper's HTTP/1 server connection, set up as the
//! listener sets it up, with a trivial service in place of the pipeline.
//! All in memory (a duplex pipe) on a current-thread runtime whose clock
//! is paused, so a stalled connection meets its head timeout at once.
//!
//! The service marks its requests started and finished on the
//! connection's `ConnActivity`, as the pipeline does, so ConnIo's phases
//! and framing tracker work as in portico.
//!
//! Properties, beyond "never panics":
//! - the connection ends (hyper closes it, or ConnIo's head or idle
//!   timeout does, on the paused clock);
//! - what the client gets back is a well-framed sequence of responses:
//!   one per request the service answered, in order, plus at most one last
//!   error answer of hyper's or ConnIo's own (4xx/5xx); nothing after it.
//!   ConnIo's 408 carries a request id; hyper's parser answers may lack
//!   one (SPEC: they are logged instead). Allowed short: the last answer
//!   when the client half-closed (hyper then drops the connection), and
//!   ConnIo's 408 (one best-effort write);
//! - when the first request carries Transfer-Encoding,
//!   `ConnActivity::head_has_length_and_chunked(0)` is true exactly when
//!   the head the client sent has Content-Length too (the pipeline's 400
//!   for CL+TE depends on it; hyper drops Content-Length).
#![no_main]

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use libfuzzer_sys::fuzz_target;
use portico::listener::{ConnActivity, ConnIo, Mode};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// As the listener's defaults: max_header_bytes 16 KiB plus its slack.
const MAX_BUF: usize = 16 * 1024 + 8192;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Far beyond any timeout above: reaching it means the connection hung.
const HANG: Duration = Duration::from_secs(24 * 3600);
const SEEN: &str = "x-fuzz-seen";

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
}

#[derive(Default)]
struct Seen {
    calls: AtomicUsize,
    /// Whether each request the service got, in order, was a HEAD.
    head: Mutex<Vec<bool>>,
    /// head_has_length_and_chunked(0), if the first request reached the
    /// service with Transfer-Encoding.
    first_cl_te: Mutex<Option<bool>>,
}

fuzz_target!(|data: &[u8]| {
    // The pipe's capacity decides how the bytes are cut into reads; vary it
    // with the input so heads split across reads are covered too.
    let cap = [5, 64, 1024, 64 * 1024][data.len() % 4];
    let seen = Arc::new(Seen::default());
    // Half of the inputs half-close after their last byte; the others keep
    // the connection open until portico's head or idle timeout ends it.
    let half_close = no_conn_io() || (data.len() / 4) % 2 == 1;
    let out = RT.with(|rt| rt.block_on(exchange(data, cap, half_close, seen.clone())));
    check_responses(data, &out, half_close, &seen);
});

/// What the client got.
async fn exchange(data: &[u8], cap: usize, half_close: bool, seen: Arc<Seen>) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(cap);
    let activity = Arc::new(ConnActivity::default());
    let conn_activity = activity.clone();
    let io = move |server| {
        ConnIo::new(
            server,
            conn_activity,
            Mode::Http1,
            HEADER_TIMEOUT,
            IDLE_TIMEOUT,
            HeaderName::from_static("x-request-id"),
            MAX_BUF,
        )
    };
    let svc = service_fn(move |req: Request<Incoming>| {
        let (activity, seen) = (activity.clone(), seen.clone());
        async move {
            let seq = activity.request_started();
            seen.head
                .lock()
                .unwrap()
                .push(req.method() == http::Method::HEAD);
            if seq == 0 && req.headers().contains_key(http::header::TRANSFER_ENCODING) {
                let both = activity.head_has_length_and_chunked(0);
                *seen.first_cl_te.lock().unwrap() = Some(both);
            }
            // The pipeline's route timeout bounds a body that stalls (ConnIo
            // has no timeout while a request is in flight); this stands in.
            let body = tokio::time::timeout(ROUTE_TIMEOUT, req.into_body().collect()).await;
            let body_len = match body {
                Ok(Ok(b)) => b.to_bytes().len().to_string(),
                Ok(Err(_)) => "error".to_string(),
                Err(_) => "timeout".to_string(),
            };
            activity.request_finished();
            seen.calls.fetch_add(1, Ordering::Relaxed);
            Ok::<_, Infallible>(
                Response::builder()
                    .header(SEEN, seq.to_string())
                    .header("x-body-len", body_len)
                    .header("x-request-id", "fuzz")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
        }
    });
    let mut conn = hyper::server::conn::http1::Builder::new();
    conn.timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(MAX_BUF);
    // FUZZ_NO_CONNIO=1 serves the bare pipe: tells portico's layer from
    // hyper when replaying a finding.
    let server: std::pin::Pin<Box<dyn std::future::Future<Output = hyper::Result<()>>>> =
        if no_conn_io() {
            Box::pin(conn.serve_connection(TokioIo::new(server), svc))
        } else {
            Box::pin(conn.serve_connection(TokioIo::new(io(server)), svc))
        };
    // Reads while it writes, as a real client does: the pipe is small
    // both ways, so writing first and reading later would deadlock.
    let (mut rx, mut tx) = tokio::io::split(client);
    let send = async move {
        // The write fails when the server has closed: the rest is unread.
        let _ = tx.write_all(data).await;
        if half_close {
            let _ = tx.shutdown().await;
        }
        // Keeps the write half (open or shut) until the server is done.
        std::future::pending::<()>().await;
        drop(tx);
    };
    let receive = async move {
        let mut out = Vec::new();
        let _ = rx.read_to_end(&mut out).await;
        out
    };
    let client = async move {
        tokio::select! {
            out = receive => out,
            () = send => unreachable!(),
        }
    };
    let both = async {
        let (served, out) = tokio::join!(server, client);
        if debug() {
            eprintln!(
                "hyper: {served:?}\nclient got: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
        out
    };
    match tokio::time::timeout(HANG, both).await {
        Ok(out) => out,
        Err(_) => panic!("the connection did not end"),
    }
}

/// FUZZ_DEBUG=1: print how hyper ended each connection (for replays).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("FUZZ_DEBUG").is_some_and(|v| v == "1"))
}

fn no_conn_io() -> bool {
    static BARE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BARE.get_or_init(|| std::env::var_os("FUZZ_NO_CONNIO").is_some_and(|v| v == "1"))
}

fn is_408_start(b: &[u8]) -> bool {
    const LINE: &[u8] = b"HTTP/1.1 408 ";
    b[..b.len().min(LINE.len())] == LINE[..b.len().min(LINE.len())]
}

/// `half_close`: hyper drops a connection whose client half-closed (its
/// default), cutting the answer in progress: the last answer may then be
/// missing or cut short.
///
/// ConnIo's 408 (hyper never sends one here) is one best-effort write as
/// the connection closes: a client that has not drained its socket gets
/// only part of it.
fn check_responses(data: &[u8], out: &[u8], half_close: bool, seen: &Seen) {
    let calls = seen.calls.load(Ordering::Relaxed);
    let shown = String::from_utf8_lossy(out);
    let mut rest = out;
    let mut answered = 0usize;
    let mut own_error = false;
    while !rest.is_empty() {
        assert!(
            !own_error,
            "bytes after the connection's last answer: {shown:?}"
        );
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if half_close => break,
            Ok(httparse::Status::Partial) if is_408_start(rest) => break,
            other => panic!("not a whole response ({other:?}) in {shown:?}"),
        };
        let code = resp.code.unwrap_or(0);
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let seq = header(SEEN).map(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .expect("the service's own header")
        });
        let to_head = seq.is_some_and(|i| seen.head.lock().unwrap().get(i) == Some(&true));
        let body_len = match header("content-length") {
            // A HEAD response has no body, whatever it says.
            _ if to_head => 0,
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("bad content-length in {shown:?}")),
            None => {
                assert!(
                    (100..200).contains(&code) || code == 204 || code == 304,
                    "{code} without content-length in {shown:?}"
                );
                0
            }
        };
        if rest.len() < head_len + body_len {
            assert!(half_close || code == 408, "truncated response in {shown:?}");
            break;
        }
        if (100..200).contains(&code) {
            // 100 Continue, before the final answer.
        } else if let Some(seq) = seq {
            assert_eq!(seq, answered, "answers out of order: {shown:?}");
            answered += 1;
        } else {
            assert!(
                (400..600).contains(&code),
                "unexpected answer {code} in {shown:?}"
            );
            // hyper never answers 408 here (its header timeout is off):
            // a 408 is ConnIo's, which carries an id.
            if code == 408 {
                assert!(
                    header("x-request-id").is_some(),
                    "408 without a request id: {shown:?}"
                );
            }
            own_error = true;
        }
        rest = &rest[head_len + body_len..];
    }
    let lost = calls.checked_sub(answered);
    assert!(
        lost == Some(0) || (half_close && lost == Some(1)),
        "{calls} requests served, {answered} answers: {shown:?}"
    );

    if let Some(both) = seen.first_cl_te.lock().unwrap().filter(|_| !no_conn_io()) {
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut headers);
        let sent_both = match req.parse(data) {
            Ok(httparse::Status::Complete(_)) => {
                let has = |n: &str| req.headers.iter().any(|h| h.name.eq_ignore_ascii_case(n));
                has("content-length") && has("transfer-encoding")
            }
            _ => false,
        };
        assert_eq!(both, sent_both, "CL+TE of the first head misread");
    }
}
