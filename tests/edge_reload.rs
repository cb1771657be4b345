//! Reload edges: health checks across generations, listener renames at the
//! same address, lowering max_connections, counters across reloads.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::prom::{scrape, scrape_until};
use support::*;

/// GET `path` through portico (a fresh connection each time): the status.
async fn status_of(addr: SocketAddr, path: &str) -> u16 {
    client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Polls until `ok` holds, at most 10 s.
async fn eventually(mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ok()
}

fn health(path: &str) -> String {
    format!(
        "health = {{ path = \"{path}\", interval = \"100ms\", timeout = \"1s\", healthy_threshold = 1, unhealthy_threshold = 1 }}"
    )
}

fn one_pool(l: &str, b: &Backend, pool_extra: &str, more: &str) -> String {
    format!(
        "[server]\naccess_log = \"off\"\n{l}\n[[route]]\nname = \"r\"\nupstream = \"u\"\n{}{more}",
        upstream_toml("u", &[b], pool_extra)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_health_table_puts_servers_back_in_rotation() {
    let b = Backend::start("b").await;
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&one_pool(&l, &b, &health("/health"), ""));
    b.health.store(500, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(addr, "/x").await != 503 {
        assert!(
            Instant::now() < deadline,
            "the failing server never left rotation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    p.write_config(&one_pool(&l, &b, "", ""));
    let (status, body) = p.reload().await;
    assert_eq!((status, body.as_str()), (200, "{\"generation\":2}"));
    for i in 0..5 {
        assert_eq!(status_of(addr, &format!("/after/{i}")).await, 200);
    }
    assert_eq!(http_get_raw(p.admin, "/ready").unwrap().0, 200);
    let m = scrape(p.admin).await;
    assert_eq!(
        m.value(
            "portico_upstream_healthy",
            &[("upstream", "u"), ("server", &b.addr.to_string())]
        ),
        Some(1.0),
        "{}",
        m.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reload_sends_no_probe() {
    let b = Backend::start("b").await;
    let (addr, l) = listener_toml("web", "");
    let dir = tempfile::tempdir().unwrap();
    // A policy with many keys makes the build run on for a while after
    // the pools exist, so a checker started at build time gets to probe.
    let key = support::jwt::TestKey::ec256().public_pem;
    std::fs::write(dir.path().join("many.pem"), key.repeat(20_000)).unwrap();
    let p = Portico::start_in(dir, &one_pool(&l, &b, &health("/hc-old"), ""));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    // Each fails after its pools were built: a listener whose address is
    // taken (bound after the whole build), or an auth key file that does
    // not exist (the policies are built after the pools).
    let policy = |file: &str| {
        format!("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\nkeys = [\"{file}\"]\n")
    };
    let failing = [
        format!(
            "{}[[listener]]\nname = \"taken\"\nbind = \"{taken_addr}\"\n",
            policy("many.pem")
        ),
        policy("missing.pem"),
    ];
    for round in 0..6 {
        let extra = &failing[round % failing.len()];
        p.write_config(&one_pool(&l, &b, &health("/hc-rejected"), extra));
        let (status, body) = p.reload().await;
        assert_eq!(status, 400, "{body}");
    }
    let before = b.count_path("/hc-old");
    assert!(
        eventually(|| b.count_path("/hc-old") >= before + 3).await,
        "the config in force stopped checking"
    );
    assert_eq!(
        b.count_path("/hc-rejected"),
        0,
        "a rejected config probed its servers"
    );
    assert_eq!(status_of(addr, "/").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_checker_stops_at_the_swap() {
    let b = Backend::start("b").await;
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&one_pool(&l, &b, &health("/hc-a"), ""));
    assert!(eventually(|| b.count_path("/hc-a") > 0).await);
    // A slow request keeps generation 1's snapshot (and its pool) alive.
    let slow = tokio::spawn(async move { status_of(addr, "/slow/4000").await });
    assert!(eventually(|| b.count_path("/slow/4000") == 1).await);

    p.write_config(&one_pool(&l, &b, &health("/hc-b"), ""));
    assert_eq!(p.reload().await.0, 200);
    // A probe already on the wire at the swap may still arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = b.count_path("/hc-a");
    let new = b.count_path("/hc-b");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !slow.is_finished(),
        "the old snapshot was not held throughout"
    );
    assert_eq!(
        b.count_path("/hc-a"),
        old,
        "the superseded generation went on probing"
    );
    assert!(
        b.count_path("/hc-b") > new,
        "the new generation does not probe"
    );
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_go_on_across_reloads() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let secret = b"0123456789abcdef0123456789abcdef";
    std::fs::write(dir.path().join("secret.txt"), secret).unwrap();
    let (addr, l) = listener_toml("web", "");
    let config = |more: &str, pool_extra: &str| {
        format!(
            "[server]\naccess_log = \"off\"\n{l}\n[auth.users]\ntype = \"jwt\"\nalgorithms = [\"HS256\"]\nsecret_file = \"secret.txt\"\n\n[[route]]\nname = \"r\"\nupstream = \"u\"\nauth = \"users\"\n{more}\n{}",
            upstream_toml("u", &[&b], pool_extra)
        )
    };
    let p = Portico::start_in(dir, &config("", ""));
    let token = support::jwt::raw_token(
        &serde_json::json!({"alg": "HS256", "typ": "JWT"}),
        &support::jwt::claims("alice"),
        Some(secret),
    );
    let send = |with_token: bool| {
        let token = token.clone();
        async move {
            let mut r = client().get(format!("http://{addr}/x"));
            if with_token {
                r = r.bearer_auth(token);
            }
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            r.bytes().await.unwrap();
            status
        }
    };
    let server = b.addr.to_string();
    let counts = move |m: &support::prom::Prom| {
        [
            m.value_or_zero(
                "portico_jwt_validations_total",
                &[("policy", "users"), ("result", "ok")],
            ),
            m.value_or_zero(
                "portico_jwt_validations_total",
                &[("policy", "users"), ("result", "missing")],
            ),
            m.value_or_zero("portico_requests_total", &[("route", "r"), ("code", "200")]),
            m.value_or_zero("portico_requests_total", &[("route", "r"), ("code", "401")]),
            m.value_or_zero(
                "portico_upstream_requests_total",
                &[("upstream", "u"), ("server", &server), ("outcome", "ok")],
            ),
        ]
    };
    assert_eq!(send(true).await, 200);
    assert_eq!(send(true).await, 200);
    assert_eq!(send(false).await, 401);
    let m = scrape_until(p.admin, |m| counts(m) == [2.0, 1.0, 2.0, 1.0, 2.0]).await;
    assert_eq!(counts(&m), [2.0, 1.0, 2.0, 1.0, 2.0], "{}", m.text);

    // Unrelated changes: a new route, and a pool setting (the pool is
    // rebuilt; its servers keep their names).
    p.write_config(&config(
        "[[route]]\nname = \"other\"\nmatch.path_prefix = \"/other\"\nrespond = { status = 204 }\n",
        "connect_timeout = \"3s\"",
    ));
    assert_eq!(p.reload().await.0, 200);
    assert_eq!(send(true).await, 200);
    assert_eq!(send(false).await, 401);
    let m = scrape_until(p.admin, |m| counts(m) == [3.0, 2.0, 3.0, 2.0, 3.0]).await;
    assert_eq!(
        counts(&m),
        [3.0, 2.0, 3.0, 2.0, 3.0],
        "[jwt ok, jwt missing, 200s, 401s, upstream ok]\n{}",
        m.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_listener_at_the_same_bind_keeps_serving() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // The route only serves the listener of that name, so an answer from
    // it shows which listener took the connection.
    let config = |name: &str| {
        format!(
            "[server]\naccess_log = \"off\"\n[[listener]]\nname = \"{name}\"\nbind = \"{addr}\"\nprotocols = [\"http1\", \"http3\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n\n[[route]]\nname = \"r\"\nlisteners = [\"{name}\"]\nupstream = \"u\"\n{}",
            upstream_toml("u", &[&b], "")
        )
    };
    let p = Portico::start_in(dir, &config("web"));
    let https = |path: &'static str| {
        let c = pki.reqwest_client(false);
        async move {
            let r = c.get(format!("https://{addr}{path}")).send().await;
            r.expect("HTTPS request").status().as_u16()
        }
    };
    let h3 = support::http3::H3Client::new(&pki, false);
    assert_eq!(https("/one").await, 200);
    assert_eq!(
        h3.connect(addr)
            .await
            .unwrap()
            .get("/one")
            .await
            .unwrap()
            .status,
        200
    );

    for (generation, name) in [(2, "edge"), (3, "web")] {
        p.write_config(&config(name));
        let (status, body) = p.reload().await;
        assert_eq!(
            (status, body.as_str()),
            (200, format!("{{\"generation\":{generation}}}").as_str()),
            "renaming the listener to {name}"
        );
        for _ in 0..3 {
            assert_eq!(https("/after").await, 200, "HTTPS after renaming to {name}");
            let r = h3.connect(addr).await.unwrap().get("/after").await.unwrap();
            assert_eq!(r.status, 200, "HTTP/3 after renaming to {name}");
        }
    }
}

/// Opens a connection, sends one keepalive request and reads its answer
/// (the connection stays open).
fn open_served(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let answer = read_head(&mut s).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    s
}

/// Reads one response head and its Content-Length body; None on timeout.
fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(head)
}

/// Connects and sends a request; does not wait for the answer.
fn send_request(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /w HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s
}

/// Whether `s` gets an answer within `wait`.
fn answered_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    read_head(s).is_some()
}

async fn open_connections(admin: SocketAddr, n: f64) {
    let m = scrape_until(admin, |m| {
        m.value_or_zero(
            "portico_connections_active",
            &[("listener", "web"), ("protocol", "http1")],
        ) == n
    })
    .await;
    assert_eq!(
        m.value_or_zero(
            "portico_connections_active",
            &[("listener", "web"), ("protocol", "http1")]
        ),
        n,
        "{}",
        m.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_max_connections_holds_while_connections_are_open() {
    let b = Backend::start("b").await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = |max: usize| {
        format!(
            "[server]\naccess_log = \"off\"\n[[listener]]\nname = \"web\"\nbind = \"{addr}\"\nprotocols = [\"http1\"]\nmax_connections = {max}\n\n[[route]]\nname = \"r\"\nupstream = \"u\"\n{}",
            upstream_toml("u", &[&b], "")
        )
    };
    let p = Portico::start(&config(3));
    let never = Duration::from_millis(700);
    let blocking = |f: Box<dyn FnOnce() -> bool + Send>| tokio::task::spawn_blocking(f);

    // Two open, then the limit drops to 1: a third waits until both closed.
    let first = tokio::task::spawn_blocking(move || (open_served(addr), open_served(addr)))
        .await
        .unwrap();
    open_connections(p.admin, 2.0).await;
    p.write_config(&config(1));
    assert_eq!(p.reload().await.0, 200);
    let mut third = send_request(addr);
    let (mut third, early) = tokio::task::spawn_blocking(move || {
        let early = answered_within(&mut third, never);
        (third, early)
    })
    .await
    .unwrap();
    assert!(!early, "served beyond the lowered max_connections");
    drop(first.0);
    open_connections(p.admin, 1.0).await;
    let (mut third, early) = tokio::task::spawn_blocking(move || {
        let early = answered_within(&mut third, never);
        (third, early)
    })
    .await
    .unwrap();
    assert!(!early, "served with 2 open under max_connections = 1");
    drop(first.1);
    let (third, served) = tokio::task::spawn_blocking(move || {
        let served = answered_within(&mut third, Duration::from_secs(10));
        (third, served)
    })
    .await
    .unwrap();
    assert!(served, "not served once the others closed");

    // The limit stays 1: with `third` open, a fourth waits for it.
    open_connections(p.admin, 1.0).await;
    let mut fourth = send_request(addr);
    let ok = blocking(Box::new(move || {
        let early = answered_within(&mut fourth, never);
        drop(third);
        !early && answered_within(&mut fourth, Duration::from_secs(10))
    }))
    .await
    .unwrap();
    assert!(ok, "max_connections = 1 did not hold after the reload");
}
