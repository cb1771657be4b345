//! The HTTP/1 head path with portico's per-connection byte layer: the fuzz
//! input is everything a client sends on one connection (so pipelined
//! requests, bodies and garbage after them are in reach). It goes through
//! `ConnIo` (head/idle timeouts, head capture, request ids on hyper's own
//! error answers) into hyper's HTTP/1 server connection, set up as the
//! listener sets it up, with a trivial service in place of the pipeline.
//! All in memory (a duplex pipe) on a current-thread runtime whose clock
//! is paused, so a stalled connection meets its head timeout at once.
//!
//! Properties, beyond "never panics":
//! - the connection ends (the client's bytes end, then hyper or the head
//!   timeout closes it);
//! - what the client gets back is a well-framed sequence of responses:
//!   one per request the service answered, in order, plus at most one last
//!   error answer of hyper's or ConnIo's own (4xx/5xx); nothing after it;
//! - for the first request, the captured head says "Content-Length and
//!   Transfer-Encoding" exactly when the head the client sent has both
//!   (the pipeline's 400 for CL+TE depends on it).
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
    /// head_has_length_and_chunked(0), if the first request reached the service.
    first_cl_te: Mutex<Option<bool>>,
}

fuzz_target!(|data: &[u8]| {
    // The pipe's capacity decides how the bytes are cut into reads; vary it
    // with the input so heads split across reads are covered too.
    let cap = [5, 64, 1024, 64 * 1024][data.len() % 4];
    let seen = Arc::new(Seen::default());
    let out = RT.with(|rt| rt.block_on(exchange(data, cap, seen.clone())));
    check_responses(data, &out, &seen);
});

async fn exchange(data: &[u8], cap: usize, seen: Arc<Seen>) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(cap);
    let activity = Arc::new(ConnActivity::default());
    let io = ConnIo::new(
        server,
        activity.clone(),
        Mode::Http1,
        HEADER_TIMEOUT,
        IDLE_TIMEOUT,
        HeaderName::from_static("x-request-id"),
        MAX_BUF,
    );
    let svc = service_fn(move |req: Request<Incoming>| {
        let (activity, seen) = (activity.clone(), seen.clone());
        async move {
            let seq = activity.request_started();
            if seq == 0 {
                let both = activity.head_has_length_and_chunked(0);
                *seen.first_cl_te.lock().unwrap() = Some(both);
            }
            let body_len = match req.into_body().collect().await {
                Ok(b) => b.to_bytes().len().to_string(),
                Err(_) => "error".to_string(),
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
    let server = conn.serve_connection(TokioIo::new(io), svc);
    let client = async move {
        // The write fails when the server has closed: the rest is unread.
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out).await;
        out
    };
    let both = async {
        let (_, out) = tokio::join!(server, client);
        out
    };
    match tokio::time::timeout(HANG, both).await {
        Ok(out) => out,
        Err(_) => panic!("the connection did not end"),
    }
}

fn check_responses(data: &[u8], out: &[u8], seen: &Seen) {
    let calls = seen.calls.load(Ordering::Relaxed);
    let mut rest = out;
    let mut answered = 0usize;
    let mut own_error = false;
    while !rest.is_empty() {
        assert!(!own_error, "bytes after the connection's last answer: {out:?}");
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("not a whole response ({other:?}) in {out:?}"),
        };
        let code = resp.code.unwrap_or(0);
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let body_len = match header("content-length") {
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("bad content-length in {out:?}")),
            None => {
                assert!(
                    (100..200).contains(&code) || code == 204 || code == 304,
                    "{code} without content-length in {out:?}"
                );
                0
            }
        };
        assert!(rest.len() >= head_len + body_len, "truncated response in {out:?}");
        if (100..200).contains(&code) {
            // 100 Continue, before the final answer.
        } else if let Some(seq) = header(SEEN) {
            assert_eq!(seq, answered.to_string().as_bytes(), "answers out of order: {out:?}");
            answered += 1;
        } else {
            assert!((400..600).contains(&code), "unexpected answer {code} in {out:?}");
            assert!(header("x-request-id").is_some(), "error answer without a request id: {out:?}");
            own_error = true;
        }
        rest = &rest[head_len + body_len..];
    }
    assert_eq!(answered, calls, "requests served and answers differ: {out:?}");

    if let Some(both) = *seen.first_cl_te.lock().unwrap() {
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
