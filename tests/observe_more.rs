//! More of what operators see: the TLS version on the access line of a
//! head hyper's parser refused, W3C trace context of a later version and
//! `tracestate`, and lines dropped by an access log whose reader stalls.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::prom::scrape;
use support::raw::RawBackend;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Polls `ok` until it holds (at most 15 s).
async fn wait_for(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The JSON lines of `read()` once `ok` holds for them.
async fn lines_when(
    read: impl Fn() -> String,
    ok: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let parse = || -> Vec<serde_json::Value> {
        read()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    wait_for("the access log lines", || ok(&parse())).await;
    parse()
}

/// On one TLS connection of each version: a good request, then a head
/// hyper's parser refuses (a header line without a colon). Both access
/// lines name the connection's TLS version; the parser's line used to say
/// `tls: ""`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_the_parser_refuses_over_tls_is_logged_with_the_tls_version() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let log = dir.path().join("access.log");
    let (addr, l) = listener_toml(
        "secure",
        "tls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n\
         tls.min_version = \"1.2\"\n",
    );
    let _p = Portico::start_in(
        dir,
        &format!(
            "[server]\naccess_log = \"{}\"\n{l}\n\
             [[route]]\nname = \"ok\"\nrespond = {{ status = 200, body = \"fine\" }}\n",
            log.display()
        ),
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    for (version, name) in [
        (&rustls::version::TLS13, "TLSv1.3"),
        (&rustls::version::TLS12, "TLSv1.2"),
    ] {
        let cfg = pki.client_config(&[b"http/1.1"], &[version]);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(server, tcp).await.unwrap();
        let id = format!("good-{name}");
        let bytes = format!(
            "GET /good HTTP/1.1\r\nHost: localhost\r\nx-request-id: {id}\r\n\r\n\
             GET /bad HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n"
        );
        tls.write_all(bytes.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        // portico closes after the 400 (without close_notify, maybe).
        let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut got)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(text.contains("\r\n\r\nfineHTTP/1.1 400 "), "{text}");

        let lines = lines_when(read, |ls| {
            ls.iter().any(|l| l["request_id"] == id.as_str())
                && ls.iter().filter(|l| l["status"] == 400).count() == 1
        })
        .await;
        let good = lines.iter().find(|l| l["request_id"] == id.as_str());
        assert_eq!(good.unwrap()["tls"], name, "{lines:?}");
        let refused: Vec<_> = lines.iter().filter(|l| l["status"] == 400).collect();
        assert_eq!(refused[0]["method"], "-", "hyper's answer: {lines:?}");
        assert_eq!(refused[0]["tls"], name, "{lines:?}");
        // The next round's 400 is then the only one.
        std::fs::write(&log, "").unwrap();
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// What the upstream got for a request with `extra` header lines, and the
/// access line's trace id.
async fn traced(
    addr: SocketAddr,
    up: &RawBackend,
    p: &Portico,
    id: &str,
    extra: &str,
) -> (Vec<String>, Vec<String>, String) {
    let req = format!("GET /t HTTP/1.1\r\nHost: localhost\r\nx-request-id: {id}\r\n{extra}\r\n");
    let (status, _, _) = support::raw::exchange(addr, req.as_bytes()).await;
    assert_eq!(status, 200);
    let head = up.last();
    assert!(head.contains(id), "{head}");
    let parent = support::raw::header_values(&head, "traceparent");
    let state = support::raw::header_values(&head, "tracestate");
    let lines = lines_when(|| p.stdout(), |ls| ls.iter().any(|l| l["request_id"] == id)).await;
    let line = lines.iter().find(|l| l["request_id"] == id).unwrap();
    (
        parent,
        state,
        line["trace_id"].as_str().unwrap().to_string(),
    )
}

/// A `traceparent` of a later version (01 with a field version 00 does not
/// have) reaches the upstream byte for byte and its trace id is logged;
/// version ff does not. A `tracestate` goes upstream only beside a valid
/// `traceparent`: alone, or beside an invalid one, it is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_of_a_later_version_passes_and_tracestate_needs_a_valid_parent() {
    let up = RawBackend::start("raw").await;
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "[server]\naccess_log = \"stdout\"\n{l}\n[[route]]\nname = \"all\"\nupstream = \"a\"\n\
         [upstream.a]\nservers = [\"{}\"]\n",
        up.addr
    ));
    let later = format!("01-{TRACE_ID}-00f067aa0ba902b7-09-a-field-of-version-01");
    let state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

    let extra = format!("traceparent: {later}\r\ntracestate: {state}\r\n");
    let got = traced(addr, &up, &p, "tc-later", &extra).await;
    assert_eq!(
        got,
        (
            vec![later.clone()],
            vec![state.to_string()],
            TRACE_ID.into()
        )
    );

    let ff = format!("ff-{TRACE_ID}-00f067aa0ba902b7-01");
    let no_trace = (vec![], vec![], String::new());
    for (i, extra) in [
        // tracestate alone.
        format!("tracestate: {state}\r\n"),
        // Beside version ff, which is invalid.
        format!("traceparent: {ff}\r\ntracestate: {state}\r\n"),
        // Beside a version-00 header longer than 55 characters.
        format!("traceparent: 00-{TRACE_ID}-00f067aa0ba902b7-01-x\r\ntracestate: {state}\r\n"),
        // Beside a later version whose 55 characters go on without '-'.
        format!("traceparent: 01-{TRACE_ID}-00f067aa0ba902b7-09x\r\ntracestate: {state}\r\n"),
    ]
    .iter()
    .enumerate()
    {
        let got = traced(addr, &up, &p, &format!("tc-bad-{i}"), extra).await;
        assert_eq!(got, no_trace, "{extra:?}");
    }
}

/// An access log on a FIFO that nobody reads: the writer blocks once the
/// pipe and its buffer are full, the queue fills, and every later line is
/// dropped and counted. Then, read to its end, the log holds exactly the
/// lines not counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_access_log_drops_and_counts_what_it_cannot_queue() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // The read end, opened before portico opens the write end (opening a
    // FIFO waits for the other side); read only when told to.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let path = fifo.clone();
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::open(path).unwrap();
        wait.recv().unwrap();
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        all.iter().filter(|&&b| b == b'\n').count()
    });
    let (addr, l) = listener_toml("web", "");
    let mut p = Portico::start_in(
        dir,
        &format!(
            "[server]\naccess_log = \"{}\"\n{l}\n\
             [[route]]\nname = \"r\"\nrespond = {{ status = 200 }}\n",
            fifo.display()
        ),
    );

    // More lines than the queue, the pipe (64 KiB) and the writer's buffer
    // (64 KiB) hold together, lines being far longer than 16 bytes.
    let n = portico::observe::access_log::QUEUE_LIMIT + 8192;
    let one = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let last = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let mut requests = one.repeat(n - 1);
    requests.push_str(last);
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // The write half stays open (dropping it would send a FIN, and hyper
    // gives up on what it has not parsed yet when the client half-closes).
    let writer = tokio::spawn(async move { wr.write_all(requests.as_bytes()).await.map(|_| wr) });
    let mut answers = Vec::new();
    // Pipelined on one connection, each request is finished (and its line
    // queued or dropped) before the next one's answer; the close comes
    // after the last one's.
    tokio::time::timeout(Duration::from_secs(120), rd.read_to_end(&mut answers))
        .await
        .expect("all answers")
        .unwrap();
    drop(writer.await.unwrap().unwrap());
    let ok = answers
        .windows(13)
        .filter(|w| w == b"HTTP/1.1 200 ")
        .count();
    let tail = String::from_utf8_lossy(&answers[answers.len().saturating_sub(600)..]);
    let all = answers.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
    assert_eq!(ok, n, "{all} answers; the last: {tail}");

    let m = scrape(p.admin).await;
    let served = m.value_or_zero("portico_requests_total", &[("route", "r"), ("code", "200")]);
    assert_eq!(served, n as f64);
    let dropped = m.value_or_zero("portico_access_log_dropped_total", &[]) as usize;
    assert!(dropped > 0, "nothing dropped");

    // Read now: the writer writes what it queued; at exit the write end
    // closes and the reader sees the end.
    go.send(()).unwrap();
    assert!(p.terminate(Duration::from_secs(60)).success());
    let written = reader.join().unwrap();
    assert_eq!(written + dropped, n, "{written} written, {dropped} dropped");
}
