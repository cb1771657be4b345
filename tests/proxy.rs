//! Forwarding over real sockets: routing, round-robin, keepalive pools,
//! headers, the proxy's own errors, HTTP/2, shutdown.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;

fn basic_config(listener: &str, upstreams: &str, routes: &str) -> String {
    format!("[server]\naccess_log = \"stdout\"\n\n{listener}\n{routes}\n{upstreams}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_and_ignores_cookies() {
    let bs = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&basic_config(
        &l,
        &upstream_toml("app", &[&bs[0], &bs[1], &bs[2]], ""),
        "[[route]]\nname = \"all\"\nupstream = \"app\"\n",
    ));
    let c = client();
    let mut names = Vec::new();
    for i in 0..300 {
        let r = c
            .get(format!("http://{addr}/item/{i}"))
            .header("cookie", "session=sticky-please")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        names.push(r.headers()["x-backend"].to_str().unwrap().to_string());
    }
    let t = tally(names);
    for b in ["a", "b", "c"] {
        let n = t.get(b).copied().unwrap_or(0);
        assert!((95..=105).contains(&n), "backend {b} got {n} of 300: {t:?}");
    }
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_one_to_two_give_one_to_two() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (addr, l) = listener_toml("web", "");
    let up = format!(
        "[upstream.app]\nservers = [\"{}\", {{ addr = \"{}\", weight = 2 }}]\n",
        a.addr, b.addr
    );
    let _p = Portico::start(&basic_config(
        &l,
        &up,
        "[[route]]\nname = \"all\"\nupstream = \"app\"\n",
    ));
    let c = client();
    for _ in 0..300 {
        let r = c.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(a.request_count(), 100);
    assert_eq!(b.request_count(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_connections_are_reused() {
    let bs = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start(&basic_config(
        &l,
        &upstream_toml("app", &[&bs[0], &bs[1], &bs[2]], "max_idle_per_server = 32"),
        "[[route]]\nname = \"all\"\nupstream = \"app\"\n",
    ));
    let c = client();
    let total = 600;
    // Ten concurrent clients, so the pool holds several connections per server.
    let mut tasks = Vec::new();
    for w in 0..10 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..total / 10 {
                let r = c
                    .get(format!("http://{addr}/w{w}/{i}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepts: usize = bs.iter().map(|b| b.accepts.load(Ordering::SeqCst)).sum();
    let requests: usize = bs.iter().map(|b| b.request_count()).sum();
    assert_eq!(requests, total);
    assert!(
        accepts * 20 < total,
        "{accepts} upstream connections for {total} requests"
    );
}

/// With the default pool (no fixed cap), a burst keeps the connections it
/// needed: the next bursts of the same size open none. A fixed cap of 32
/// closed 48 of 80 after every burst and opened them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_pool_keeps_what_a_burst_needed() {
    const BURST: usize = 80;
    let b = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start(&basic_config(
        &l,
        &upstream_toml("app", &[&b], ""),
        "[[route]]\nname = \"all\"\nupstream = \"app\"\n",
    ));
    let c = client();
    let burst = |round: usize| {
        let c = c.clone();
        async move {
            // /slow holds each answer, so the whole burst is in flight at once.
            let calls = (0..BURST).map(|i| {
                let c = c.clone();
                async move {
                    let r = c
                        .get(format!("http://{addr}/slow/100?r{round}-{i}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                }
            });
            futures_util::future::join_all(calls).await;
        }
    };
    burst(0).await;
    let opened = b.accepts.load(Ordering::SeqCst);
    assert!(
        opened >= BURST / 2,
        "only {opened} connections for the burst"
    );
    for round in 1..5 {
        burst(round).await;
    }
    let total = b.accepts.load(Ordering::SeqCst);
    // A few may race a connection on its way back to the pool.
    assert!(
        total <= opened + BURST / 8,
        "{total} upstream connections over 5 bursts of {BURST} ({opened} for the first)"
    );
    assert_eq!(b.request_count(), 5 * BURST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_close_after_idle_timeout() {
    let b = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start(&basic_config(
        &l,
        &upstream_toml("app", &[&b], "idle_timeout = \"300ms\""),
        "[[route]]\nname = \"all\"\nupstream = \"app\"\n",
    ));
    let c = client();
    for _ in 0..5 {
        let r = c.get(format!("http://{addr}/")).send().await.unwrap();
        r.bytes().await.unwrap();
    }
    assert_eq!(
        b.open.load(Ordering::SeqCst),
        1,
        "one pooled connection expected while warm"
    );
    let mut closed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if b.open.load(Ordering::SeqCst) == 0 {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "idle upstream connection still open long after idle_timeout"
    );
    // And the pool still works afterwards, on a new connection.
    let r = c.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(b.accepts.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_request_ids() {
    let b = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start(&basic_config(
        &l,
        &upstream_toml("app", &[&b], ""),
        "[[route]]\nname = \"all\"\nupstream = \"app\"\n",
    ));
    let c = client();
    let r = c
        .get(format!("http://{addr}/h?q=1"))
        .header("host", "Api.Example.com:8080")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "gopher")
        .header("x-forwarded-host", "evil.example")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9v")
        .header("te", "trailers")
        .header("x-request-id", "client-id.1_2-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-id.1_2-3");
    let seen = b.last_seen();
    assert_eq!(seen.uri, "/h?q=1");
    assert_eq!(seen.headers["host"], "Api.Example.com:8080");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "Api.Example.com:8080");
    assert_eq!(seen.headers["x-request-id"], "client-id.1_2-3");
    assert_eq!(seen.headers["te"], "trailers");
    for gone in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(!seen.headers.contains_key(gone), "{gone} was forwarded");
    }
    // Connection may be set by the proxy's own client, but must not carry the client's tokens.
    if let Some(conn) = seen.headers.get("connection") {
        assert!(!conn.to_str().unwrap().contains("x-hop"));
    }

    // A malformed id is replaced with a generated one, sent upstream and echoed.
    let r = c
        .get(format!("http://{addr}/"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(id.len(), 32);
    assert_eq!(b.last_seen().headers["x-request-id"], id.as_str());

    // Without an id, one is generated; ids differ between requests.
    let r1 = c.get(format!("http://{addr}/")).send().await.unwrap();
    let r2 = c.get(format!("http://{addr}/")).send().await.unwrap();
    assert_ne!(r1.headers()["x-request-id"], r2.headers()["x-request-id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_request_ids_are_always_replaced() {
    let b = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start(&format!(
        "[server]\ntrust_request_id = false\nrequest_id_header = \"x-trace\"\n{l}\n[[route]]\nname = \"all\"\nupstream = \"app\"\n{}",
        upstream_toml("app", &[&b], "")
    ));
    let r = client()
        .get(format!("http://{addr}/"))
        .header("x-trace", "mine")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-trace"].to_str().unwrap().to_string();
    assert_ne!(id, "mine");
    assert_eq!(b.last_seen().headers["x-trace"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_precedence_strip_prefix_respond_and_404() {
    let api = Backend::start("api").await;
    let web = Backend::start("web").await;
    let wild = Backend::start("wild").await;
    let (addr, l) = listener_toml("web", "");
    let routes = r#"
[[route]]
name = "root"
upstream = "web"

[[route]]
name = "api"
match.path_prefix = "/api/"
strip_prefix = true
upstream = "api"

[[route]]
name = "wild"
match.host = "*.example.com"
upstream = "wild"

[[route]]
name = "exact"
match.host = "status.example.com"
match.path_prefix = "/"
respond = { status = 203, body = "exact host\n", content_type = "text/x-test" }

[[route]]
name = "posts-only"
match.host = "only.test"
match.methods = ["POST"]
upstream = "api"
"#;
    let ups = format!(
        "{}{}{}",
        upstream_toml("api", &[&api], ""),
        upstream_toml("web", &[&web], ""),
        upstream_toml("wild", &[&wild], "")
    );
    let _p = Portico::start(&basic_config(&l, &ups, routes));
    let c = client();
    let get = |host: &'static str, path: &'static str| {
        let c = c.clone();
        async move {
            let r = c
                .get(format!("http://{addr}{path}"))
                .header("host", host)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let backend = r
                .headers()
                .get("x-backend")
                .map(|v| v.to_str().unwrap().to_string());
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            (status, backend, ct, r.text().await.unwrap())
        }
    };
    let (s, b, _, _) = get("plain.test", "/api/users?x=1").await;
    assert_eq!((s, b.as_deref()), (200, Some("api")));
    assert_eq!(api.last_seen().uri, "/users?x=1");
    let (_, b, _, _) = get("plain.test", "/apiv2").await;
    assert_eq!(b.as_deref(), Some("web"));
    let (_, b, _, _) = get("www.example.com", "/api/users").await;
    assert_eq!(
        b.as_deref(),
        Some("wild"),
        "a host match beats a longer path prefix"
    );
    let (s, b, ct, body) = get("STATUS.example.com:443", "/anything").await;
    assert_eq!(
        (s, b, ct.as_deref(), body.as_str()),
        (203, None, Some("text/x-test"), "exact host\n")
    );
    // Method filter: GET on only.test falls through to the catch-all root.
    let (_, b, _, _) = get("only.test", "/").await;
    assert_eq!(b.as_deref(), Some("web"));
    let r = c
        .post(format!("http://{addr}/"))
        .header("host", "only.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-backend"], "api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_of_the_whole_path_forwards_root() {
    let api = Backend::start("api").await;
    let (addr, l) = listener_toml("web", "");
    let routes = "[[route]]\nname = \"svc\"\nmatch.path_prefix = \"/svc\"\nstrip_prefix = true\nupstream = \"api\"\n";
    let _p = Portico::start(&basic_config(
        &l,
        &upstream_toml("api", &[&api], ""),
        routes,
    ));
    let c = client();
    c.get(format!("http://{addr}/svc")).send().await.unwrap();
    assert_eq!(api.last_seen().uri, "/");
    c.get(format!("http://{addr}/svc?a=b"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.last_seen().uri, "/?a=b");
    c.get(format!("http://{addr}/svc/x/y"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.last_seen().uri, "/x/y");
    let r = c.get(format!("http://{addr}/other")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-request-id"));
    assert!(r.text().await.unwrap().starts_with("404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gateway_gateway_timeout_and_grpc_status() {
    let slow = Backend::start("slow").await;
    let dead_port = free_port();
    let (addr, l) = listener_toml("web", "");
    let routes = r#"
[[route]]
name = "dead"
match.path_prefix = "/dead"
upstream = "dead"

[[route]]
name = "slow"
match.path_prefix = "/"
timeout = "300ms"
upstream = "slow"
"#;
    let ups = format!(
        "[upstream.dead]\nservers = [\"127.0.0.1:{dead_port}\"]\n{}",
        upstream_toml("slow", &[&slow], "")
    );
    let _p = Portico::start(&basic_config(&l, &ups, routes));
    let c = client();
    let r = c.get(format!("http://{addr}/dead")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers().contains_key("x-request-id"));
    let r = c
        .get(format!("http://{addr}/slow/2000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let r = c
        .get(format!("http://{addr}/slow/10"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a fast answer within the timeout passes");

    // gRPC callers get HTTP 200 with grpc-status 14 (UNAVAILABLE).
    let r = h2c_client()
        .post(format!("http://{addr}/dead/pkg.Svc/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["grpc-status"], "14");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_go_to_another_server() {
    let live = Backend::start("live").await;
    let dead_port = free_port();
    let (addr, l) = listener_toml("web", "");
    let ups = format!(
        "[upstream.app]\nservers = [\"127.0.0.1:{dead_port}\", \"{}\"]\n",
        live.addr
    );
    let _p = Portico::start(&basic_config(
        &l,
        &ups,
        "[[route]]\nname = \"all\"\nupstream = \"app\"\n",
    ));
    let c = client();
    for _ in 0..10 {
        let r = c
            .post(format!("http://{addr}/x"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "a refused connect sent nothing, so any method may go elsewhere"
        );
    }
    assert_eq!(live.request_count(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_close_only_their_connection() {
    let b = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start(&basic_config(
        &l,
        &upstream_toml("app", &[&b], ""),
        "[[route]]\nname = \"all\"\nupstream = \"app\"\n",
    ));
    // A healthy keepalive connection opened before the bad ones.
    let mut good = std::net::TcpStream::connect(addr).unwrap();
    let bad: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Nul: a\0b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    ];
    let mut ids = std::collections::HashSet::new();
    for req in bad {
        let raw = raw_exchange(addr, req, Duration::from_secs(5)).expect("answer");
        assert_eq!(
            parse_status(&raw),
            Some(400),
            "for {:?} got {raw:?}",
            String::from_utf8_lossy(req)
        );
        // The pipeline's answers carry one request id; hyper's parser's may
        // carry none (their log lines have one).
        let id_lines: Vec<&str> = raw
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-request-id:"))
            .collect();
        assert!(id_lines.len() <= 1, "for {req:?} got {raw:?}");
        if let Some(id) = id_lines.first() {
            assert!(ids.insert(id.to_string()), "request ids are not unique");
        }
    }
    assert_eq!(
        b.request_count(),
        0,
        "nothing of a malformed request may reach the upstream"
    );
    use std::io::{Read, Write};
    good.write_all(b"GET /still-fine HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    good.read_to_string(&mut out).unwrap();
    assert_eq!(parse_status(&out), Some(200), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_gets_408_and_oversized_head_431() {
    let b = Backend::start("a").await;
    let (addr, l) = listener_toml(
        "web",
        "header_read_timeout = \"300ms\"\nmax_header_bytes = 4096\n",
    );
    let _p = Portico::start(&basic_config(
        &l,
        &upstream_toml("app", &[&b], ""),
        "[[route]]\nname = \"all\"\nupstream = \"app\"\n",
    ));
    let raw = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(parse_status(&raw), Some(408), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("x-request-id: "), "{raw}");

    // Just over the limit: 431 from the pipeline's exact count.
    let big = "v".repeat(4100);
    let raw = raw_exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(parse_status(&raw), Some(431), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("x-request-id: "), "{raw}");
    // Far over the limit: 431 from the parser's buffer cap.
    let huge = "v".repeat(64 * 1024);
    let raw = raw_exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(parse_status(&raw), Some(431), "{raw}");
    // HTTP/2: an over-limit header list is refused (431, or the stream reset).
    let r = h2c_client()
        .get(format!("http://{addr}/"))
        .header("x-big", big.as_str())
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    assert_eq!(b.request_count(), 0);
    // A request within limits still works.
    let r = client()
        .get(format!("http://{addr}/"))
        .header("x-ok", "v".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_and_http2_upstreams() {
    let b = Backend::start("h2").await;
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start(&basic_config(
        &l,
        &upstream_toml("app", &[&b], "protocol = \"http2\""),
        "[[route]]\nname = \"all\"\nupstream = \"app\"\n",
    ));
    let c = h2c_client();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let r = c.get(format!("http://{addr}/s/{i}")).send().await.unwrap();
            assert_eq!(r.version(), http::Version::HTTP_2);
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().starts_with("h2 GET"));
    }
    let seen = b.last_seen();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(
        b.accepts.load(Ordering::SeqCst),
        1,
        "one multiplexed upstream connection"
    );
    // An HTTP/1.1 client through an h2 upstream: Host becomes :authority.
    let r = client()
        .get(format!("http://{addr}/one"))
        .header("host", "h.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        b.last_seen().uri.contains("h.test"),
        "{:?}",
        b.last_seen().uri
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_is_the_routing_host() {
    let a = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "");
    let routes = "[[route]]\nname = \"h\"\nmatch.host = \"abs.test\"\nupstream = \"a\"\n";
    let _p = Portico::start(&basic_config(&l, &upstream_toml("a", &[&a], ""), routes));
    let raw = raw_exchange(
        addr,
        b"GET http://abs.test/p?q HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(parse_status(&raw), Some(200), "{raw}");
    let seen = a.last_seen();
    assert_eq!(seen.uri, "/p?q");
    assert_eq!(seen.headers["host"], "abs.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_json_has_one_line_per_request() {
    let a = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&basic_config(
        &l,
        &upstream_toml("a", &[&a], ""),
        "[[route]]\nname = \"r1\"\nupstream = \"a\"\n",
    ));
    let c = client();
    let r = c
        .post(format!("http://{addr}/logged?x=1"))
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.bytes().await.unwrap();
    let mut line = None;
    for _ in 0..100 {
        if let Some(l) = p.stdout().lines().find(|l| l.contains(&id)) {
            line = Some(l.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = line.expect("access log line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/logged?x=1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "r1");
    assert_eq!(v["listener"], "web");
    assert_eq!(v["upstream"], a.addr.to_string());
    assert_eq!(v["bytes_in"], 1000);
    assert_eq!(v["bytes_out"], body.len());
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let a = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "");
    let mut p = Portico::start(&basic_config(
        &l,
        &upstream_toml("a", &[&a], ""),
        "[[route]]\nname = \"r\"\nupstream = \"a\"\n",
    ));
    let c = client();
    let inflight = tokio::spawn({
        let c = c.clone();
        async move {
            c.get(format!("http://{addr}/slow/800"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = p.terminate(Duration::from_secs(10));
        (s, p)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {:?}", status.0);
    assert_eq!(inflight.await.unwrap(), "a slow");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_closes_idle_connections() {
    let a = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "idle_timeout = \"300ms\"");
    let _p = Portico::start(&basic_config(
        &l,
        &upstream_toml("a", &[&a], ""),
        "[[route]]\nname = \"r\"\nupstream = \"a\"\n",
    ));
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "idle connection should be closed by the proxy");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_idle_timeout_counts_requests_not_pings() {
    let a = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "idle_timeout = \"500ms\"");
    let _p = Portico::start(&basic_config(
        &l,
        &upstream_toml("a", &[&a], ""),
        "[[route]]\nname = \"r\"\nupstream = \"a\"\n",
    ));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = conn.ping_pong().expect("ping_pong");
    let driver = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::get(format!("http://{addr}/x"))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);

    // From now on only PINGs, every 100 ms: the connection has no request,
    // so it is idle, and portico ends it (GOAWAY, then close).
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while !driver.is_finished() {
            let _ =
                tokio::time::timeout(Duration::from_millis(300), pings.ping(h2::Ping::opaque()))
                    .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "PINGs kept an idle HTTP/2 connection open");
    assert!(started.elapsed() >= Duration::from_millis(400));
}
