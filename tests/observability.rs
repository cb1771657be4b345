//! What operators see: every metric family after traffic of each kind,
//! access log lines with every field (JSON, combined, to a file), W3C trace
//! context, and the dashboard and alert rules naming only metrics portico
//! exports.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::prom::{scrape, scrape_until, Prom};
use support::raw::RawBackend;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Polls `ok` until it holds (at most 15 s).
async fn wait_for(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The line of `text` (read again until it appears) that contains `id`.
async fn line_with(read: impl Fn() -> String, id: &str) -> String {
    wait_for(id, || read().contains(id)).await;
    read().lines().find(|l| l.contains(id)).unwrap().to_string()
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn v(m: &Prom, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.value(name, labels)
        .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{}", m.text))
}

/// Traffic of every kind against one portico, then one scrape with exact
/// values: ok, a 5xx from the upstream, a retry after a refused connect
/// (and the ejection it causes), body bytes both ways, a bad TLS
/// handshake, a cancelled request (499), a reload that works and one that
/// fails; and the build and process metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_traffic_of_each_kind_has_exact_values() {
    let a = Backend::start("a").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml("web", "");
    let (tls_addr, tls_l) = listener_toml(
        "secure",
        "tls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n",
    );
    let cfg = format!(
        r#"[server]
access_log = "off"
{l}
{tls_l}
[[route]]
name = "api"
match.path_prefix = "/api/"
upstream = "app"
strip_prefix = true

[[route]]
name = "pair"
match.path_prefix = "/pair/"
upstream = "pair"
strip_prefix = true
retries = 1

{}
[upstream.pair]
servers = ["{dead}", "{}"]
"#,
        upstream_toml("app", &[&a], ""),
        a.addr
    );
    let p = Portico::start_in(dir, &cfg);
    let c = client();
    let base = format!("http://{addr}");

    for path in ["/api/x", "/api/y"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let r = c
        .get(format!("{base}/api/status/500"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    r.bytes().await.unwrap();
    // Body bytes: 1000 in (echoed), 1000 out.
    let r = c
        .post(format!("{base}/api/echo"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 1000);
    // Round robin over [dead, a]: exactly one of two requests tries the
    // dead server first, is refused (which ejects it) and is retried on a.
    for _ in 0..2 {
        let r = c.get(format!("{base}/pair/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }

    // Not a TLS ClientHello, on the TLS listener.
    let mut s = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    // A real TLS request works and is not counted as an error.
    let r = pki
        .reqwest_client(false)
        .get(format!("https://localhost:{}/api/tls", tls_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A request the client gives up on while the upstream is slow.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /api/slow/60000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    wait_for("the slow request upstream", || {
        a.count_path("/slow/60000") == 1
    })
    .await;
    drop(s);

    // A reload that works, then one that fails (the file is not TOML).
    let (status, _) = p.reload().await;
    assert_eq!(status, 200);
    std::fs::write(&p.config_path, "this is [not toml").unwrap();
    let (status, _) = p.reload().await;
    assert_ne!(status, 200);

    let m = scrape_until(p.admin, |m| {
        m.value_or_zero(
            "portico_requests_total",
            &[("route", "api"), ("code", "499")],
        ) >= 1.0
    })
    .await;
    let api = [("route", "api")];
    for (code, n) in [("200", 4.0), ("500", 1.0), ("499", 1.0)] {
        let labels = [("route", "api"), ("code", code)];
        assert_eq!(v(&m, "portico_requests_total", &labels), n, "{code}");
    }
    assert_eq!(
        v(
            &m,
            "portico_requests_total",
            &[("route", "pair"), ("code", "200")]
        ),
        2.0
    );
    assert_eq!(v(&m, "portico_request_bytes_total", &api), 1000.0);
    // The backend's bodies: the echo's 1000 bytes, "a GET /x", "a GET /y",
    // "a GET /tls", "a status" (the 500); the cancelled request got none.
    let bodies = ["a GET /x", "a GET /y", "a GET /tls", "a status"];
    let body_bytes: usize = 1000 + bodies.iter().map(|b| b.len()).sum::<usize>();
    assert_eq!(
        v(&m, "portico_response_bytes_total", &api),
        body_bytes as f64,
        "{}",
        m.text
    );
    assert_eq!(v(&m, "portico_request_bytes_total", &[("route", "")]), 0.0);

    let app = [("upstream", "app")];
    let heads = m
        .buckets("portico_upstream_request_duration_seconds", &app)
        .unwrap_or_else(|| panic!("{}", m.text));
    // ok x2, 500, echo, tls: the cancelled one never got a head.
    assert_eq!(heads.last().unwrap().count, 5.0, "{}", m.text);
    let pair = [("upstream", "pair")];
    assert_eq!(v(&m, "portico_upstream_retries_total", &pair), 1.0);
    assert_eq!(v(&m, "portico_upstream_retries_total", &app), 0.0);
    let dead_server = [("upstream", "pair"), ("server", dead.as_str())];
    assert_eq!(v(&m, "portico_upstream_ejections_total", &dead_server), 1.0);
    let a_server = a.addr.to_string();
    let a_in_pair = [("upstream", "pair"), ("server", a_server.as_str())];
    assert_eq!(v(&m, "portico_upstream_ejections_total", &a_in_pair), 0.0);
    let refused = [
        ("upstream", "pair"),
        ("server", dead.as_str()),
        ("outcome", "connect_error"),
    ];
    assert_eq!(v(&m, "portico_upstream_requests_total", &refused), 1.0);
    let a_5xx = [
        ("upstream", "app"),
        ("server", a_server.as_str()),
        ("outcome", "http_5xx"),
    ];
    assert_eq!(v(&m, "portico_upstream_requests_total", &a_5xx), 1.0);

    let tls_errors = "portico_tls_handshake_errors_total";
    assert_eq!(v(&m, tls_errors, &[("listener", "secure")]), 1.0);
    assert_eq!(v(&m, tls_errors, &[("listener", "web")]), 0.0);

    let reloads = "portico_config_reloads_total";
    assert_eq!(v(&m, reloads, &[("result", "ok")]), 1.0);
    assert_eq!(v(&m, reloads, &[("result", "error")]), 1.0);
    assert_eq!(v(&m, "portico_config_generation", &[]), 2.0);
    assert_eq!(v(&m, "portico_config_last_reload_successful", &[]), 0.0);
    let loaded = v(&m, "portico_config_last_reload_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(loaded > 1.7e9 && loaded <= now + 1.0, "{loaded}");
    assert_eq!(v(&m, "portico_access_log_dropped_total", &[]), 0.0);

    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(v(&m, "portico_build_info", &version), 1.0);
    // Present; a young process may have used less than one clock tick.
    assert!(v(&m, "process_cpu_seconds_total", &[]) >= 0.0);
    let rss = v(&m, "process_resident_memory_bytes", &[]);
    assert!(rss > 1e6, "{rss}");
    assert!(v(&m, "process_open_fds", &[]) >= 3.0);
    let started = v(&m, "process_start_time_seconds", &[]);
    assert!(started > 1.7e9 && started <= now + 1.0, "{started}");

    // A reload that works again: the gauge says so, counters went on.
    p.write_config(&cfg);
    assert_eq!(p.reload().await.0, 200);
    let m = scrape(p.admin).await;
    assert_eq!(v(&m, "portico_config_last_reload_successful", &[]), 1.0);
    assert_eq!(v(&m, "portico_config_generation", &[]), 3.0);
    assert_eq!(v(&m, "portico_upstream_retries_total", &pair), 1.0);
    assert_eq!(v(&m, "portico_request_bytes_total", &api), 1000.0);
}

/// A JSON access log line has every field SPEC lists, with the values of
/// the request: host, agent, referer, the upstream's status and time, the
/// attempts (a retry makes two), tls "" on plain HTTP, the trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_access_line_has_every_field() {
    let a = Backend::start("a").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "[server]\naccess_log = \"stdout\"\n{l}\n\
         [[route]]\nname = \"pair\"\nmatch.path_prefix = \"/status/\"\nupstream = \"pair\"\nretries = 1\n\
         [upstream.pair]\nservers = [\"{dead}\", \"{}\"]\n",
        a.addr
    ));
    let c = client();
    let mut lines = Vec::new();
    for id in ["json-line-1", "json-line-2"] {
        let r = c
            .get(format!("http://{addr}/status/201"))
            .header("x-request-id", id)
            .header("user-agent", "probe/1.0")
            .header("referer", "https://example.test/from")
            .header("traceparent", TRACEPARENT)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.bytes().await.unwrap();
        lines.push(json(&line_with(|| p.stdout(), id).await));
    }
    // Round robin: one of the two went to the dead server first.
    let attempts: BTreeSet<u64> = lines
        .iter()
        .map(|l| l["attempts"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, BTreeSet::from([1, 2]), "{lines:?}");
    for line in &lines {
        let keys: BTreeSet<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let want = BTreeSet::from([
            "time",
            "request_id",
            "listener",
            "protocol",
            "client",
            "method",
            "host",
            "path",
            "status",
            "duration_ms",
            "bytes_in",
            "bytes_out",
            "route",
            "upstream",
            "upstream_status",
            "upstream_duration_ms",
            "attempts",
            "user_agent",
            "referer",
            "tls",
            "error",
            "trace_id",
        ]);
        assert_eq!(keys, want, "{line}");
        assert_eq!(line["listener"], "web");
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["host"], addr.to_string());
        assert_eq!(line["path"], "/status/201");
        assert_eq!(line["status"], 201);
        assert_eq!(line["route"], "pair");
        assert_eq!(line["upstream"], a.addr.to_string());
        assert_eq!(line["upstream_status"], 201);
        assert!(line["upstream_duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(
            line["duration_ms"].as_f64().unwrap() >= line["upstream_duration_ms"].as_f64().unwrap()
        );
        assert_eq!(line["user_agent"], "probe/1.0");
        assert_eq!(line["referer"], "https://example.test/from");
        assert_eq!(line["tls"], "");
        assert_eq!(line["error"], "");
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    // portico's own answer (no route): no upstream, the reason given.
    let r = c
        .get(format!("http://{addr}/x"))
        .header("host", "nowhere")
        .header("x-request-id", "json-line-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let line = json(&line_with(|| p.stdout(), "json-line-3").await);
    assert_eq!(line["status"], 404);
    assert_eq!(line["host"], "nowhere");
    assert_eq!(line["route"], "", "{line}");
    assert_eq!(line["upstream"], "", "{line}");
    assert_eq!(line["upstream_status"], serde_json::Value::Null, "{line}");
    assert_eq!(
        line["upstream_duration_ms"],
        serde_json::Value::Null,
        "{line}"
    );
    assert_eq!(line["attempts"], 0, "{line}");
    assert_ne!(line["error"], "", "{line}");
    assert_eq!(line["trace_id"], "", "{line}");
    assert_eq!(line["user_agent"], "", "{line}");
    assert_eq!(line["referer"], "", "{line}");
}

/// The combined format, written to a file: NGINX's fields in their order.
/// And a JSON file log over TLS says which TLS version the connection has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_and_tls_lines_go_to_their_files() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start_in(
        dir,
        &format!(
            "[server]\naccess_log = \"{}\"\naccess_log_format = \"combined\"\n{l}\n\
             [[route]]\nname = \"all\"\nupstream = \"a\"\n{}",
            log.display(),
            upstream_toml("a", &[&a], "")
        ),
    );
    let r = client()
        .get(format!("http://{addr}/combined?q=1"))
        .header("user-agent", "probe \"quoted\"/1.0")
        .header("referer", "https://example.test/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body_len = r.bytes().await.unwrap().len();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let line = line_with(read, "/combined?q=1").await;
    let (left, right) = line.split_once(" - - [").unwrap();
    assert_eq!(left, "127.0.0.1");
    let (time, rest) = right.split_once("] ").unwrap();
    assert!(time.ends_with(" +0000"), "{line}");
    assert_eq!(
        rest,
        format!(
            "\"GET /combined?q=1 HTTP/1.1\" 200 {body_len} \"https://example.test/\" \"probe \\\"quoted\\\"/1.0\""
        )
    );

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let log = dir.path().join("tls.log");
    let (tls_addr, l) = listener_toml(
        "secure",
        "tls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n",
    );
    let _q = Portico::start_in(
        dir,
        &format!(
            "[server]\naccess_log = \"{}\"\n{l}\n[[route]]\nname = \"all\"\nupstream = \"a\"\n{}",
            log.display(),
            upstream_toml("a", &[&a], "")
        ),
    );
    for (http2, id) in [(false, "tls-h1"), (true, "tls-h2")] {
        let r = pki
            .reqwest_client(http2)
            .get(format!("https://localhost:{}/t", tls_addr.port()))
            .header("x-request-id", id)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        let line = json(&line_with(read, id).await);
        assert_eq!(line["tls"], "TLSv1.3", "{line}");
        assert_eq!(
            line["host"],
            format!("localhost:{}", tls_addr.port()),
            "{line}"
        );
    }
}

async fn raw_get(addr: SocketAddr, extra: &str) -> u16 {
    let req = format!("GET /t HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n");
    let (status, _, _) = support::raw::exchange(addr, req.as_bytes()).await;
    status
}

/// A valid traceparent reaches the upstream byte for byte; an invalid one
/// (or two of them) does not reach it at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_forwarded_when_valid_and_removed_when_not() {
    let up = RawBackend::start("raw").await;
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "[server]\naccess_log = \"stdout\"\n{l}\n[[route]]\nname = \"all\"\nupstream = \"a\"\n\
         [upstream.a]\nservers = [\"{}\"]\n",
        up.addr
    ));
    let valid = format!("traceparent: {TRACEPARENT}\r\nx-request-id: tp-valid\r\n");
    assert_eq!(raw_get(addr, &valid).await, 200);
    let head = up.last();
    let got = support::raw::header_values(&head, "traceparent");
    assert_eq!(got, vec![TRACEPARENT.to_string()], "{head}");
    let line = json(&line_with(|| p.stdout(), "tp-valid").await);
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    let bad = [
        // All-zero trace id.
        "traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n".to_string(),
        // All-zero parent id.
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01\r\n".to_string(),
        // Uppercase hex.
        "traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01\r\n".to_string(),
        // Version ff is invalid.
        "traceparent: ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n".to_string(),
        // A higher version whose 55 characters go on without a '-'.
        "traceparent: 01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x\r\n".to_string(),
        "traceparent: nonsense\r\n".to_string(),
        // Two of them, each valid.
        format!("traceparent: {TRACEPARENT}\r\ntraceparent: {TRACEPARENT}\r\n"),
    ];
    for (i, h) in bad.iter().enumerate() {
        let id = format!("tp-bad-{i}");
        assert_eq!(
            raw_get(addr, &format!("{h}x-request-id: {id}\r\n")).await,
            200
        );
        let head = up.last();
        assert!(head.contains(&id), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("traceparent"),
            "{h:?} reached the upstream: {head}"
        );
        let line = json(&line_with(|| p.stdout(), &id).await);
        assert_eq!(line["trace_id"], "", "{line}");
    }
}

/// Every metric name in the Grafana dashboard and the alert rules
/// (`portico_*` and the standard `process_*`) is a family a running
/// portico exports (histograms by their base name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_exported_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut used = BTreeSet::new();
    for file in [
        "deploy/grafana/portico.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let found = metric_names(&text);
        assert!(!found.is_empty(), "{file} names no portico metric");
        used.extend(found);
    }
    for needed in [
        "portico_requests_total",
        "portico_upstream_request_duration_seconds",
        "portico_upstream_ejections_total",
        "portico_config_last_reload_successful",
        "portico_jwt_validations_total",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(needed), "nothing watches {needed}");
    }

    // A JWT policy, so that its family is exported too.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secret"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    let (_, l) = listener_toml("web", "");
    let p = Portico::start_in(
        dir,
        &format!(
            "{l}\n[[route]]\nname = \"r\"\nauth = \"users\"\nrespond = {{ status = 200 }}\n\
             [auth.users]\ntype = \"jwt\"\nalgorithms = [\"HS256\"]\nsecret_file = \"secret\"\n"
        ),
    );
    let m = scrape(p.admin).await;
    for name in &used {
        assert!(
            m.has_family(name),
            "{name} is used by the dashboard or alerts but not exported:\n{}",
            m.text
        );
    }
}

/// The metric names in `text` (`portico_*` and `process_*`, each starting
/// a word), without a histogram's `_bucket`/`_sum`/`_count` suffix.
fn metric_names(text: &str) -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices('p') {
        let tail = &text[at..];
        let starts_word = !text[..at].ends_with(word);
        if !starts_word || !(tail.starts_with("portico_") || tail.starts_with("process_")) {
            continue;
        }
        let end = tail.find(|c: char| !word(c)).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(base.to_string());
    }
    out
}
