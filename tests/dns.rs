//! Upstream servers named by DNS: every address is a member, answers are
//! followed, a failing resolver keeps the last answer. A test DNS server on
//! 127.0.0.1 (`server.resolvers`) answers; no real resolver is asked.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::dns::DnsServer;
use support::prom::{check, scrape_until};
use support::{client, free_port, listener_toml, Backend, Portico};

const NAME: &str = "svc.portico.test";

fn at(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

fn config(dns: &DnsServer, servers: &str, extra: &str) -> (SocketAddr, String) {
    let (addr, listener) = listener_toml("web", "");
    let text = format!(
        "[server]\nresolvers = [\"{}\"]\n\n{listener}\n[[route]]\nname = \"r\"\nupstream = \"u\"\n\n\
         [upstream.u]\nservers = [{servers}]\nresolve_interval = \"200ms\"\n{extra}\n",
        dns.addr
    );
    (addr, text)
}

async fn get(addr: SocketAddr) -> u16 {
    client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Sends requests until `done` holds (at most 10 s); panics otherwise.
async fn until(addr: SocketAddr, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        get(addr).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count(b: &Backend) -> usize {
    b.request_count()
}

#[tokio::test]
async fn every_address_gets_traffic_and_answers_are_followed() {
    let port = free_port();
    let b2 = Backend::start_on("b2", at("127.0.0.2", port)).await;
    let b3 = Backend::start_on("b3", at("127.0.0.3", port)).await;
    let b4 = Backend::start_on("b4", at("127.0.0.4", port)).await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &["127.0.0.2", "127.0.0.3"]);
    let (addr, text) = config(&dns, &format!("\"{NAME}:{port}\""), "");
    let p = Portico::start(&text);

    until(addr, "both addresses get requests", || {
        count(&b2) > 0 && count(&b3) > 0
    })
    .await;
    assert_eq!(count(&b4), 0);

    // A third address joins and the first leaves.
    dns.set(NAME, &["127.0.0.3", "127.0.0.4"]);
    until(addr, "the added address gets requests", || count(&b4) > 0).await;
    let before = (count(&b2), count(&b3), count(&b4));
    for _ in 0..20 {
        assert_eq!(get(addr).await, 200);
    }
    assert_eq!(count(&b2), before.0, "the dropped address got requests");
    assert_eq!(count(&b3) - before.1 + count(&b4) - before.2, 20);
    assert!(count(&b3) > before.1 && count(&b4) > before.2);
    // Its idle keepalive connections were closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b2.open.load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "connections to the dropped address stay open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The servers are counted per address.
    let m = scrape_until(p.admin, |m| {
        m.value(
            "portico_upstream_healthy",
            &[("upstream", "u"), ("server", &b4.addr.to_string())],
        )
        .is_some()
    })
    .await;
    assert_eq!(
        m.value(
            "portico_upstream_healthy",
            &[("upstream", "u"), ("server", &b2.addr.to_string())]
        ),
        None,
        "{}",
        m.text
    );
}

#[tokio::test]
async fn a_silent_resolver_keeps_the_last_answer_and_is_counted() {
    let port = free_port();
    let b2 = Backend::start_on("b2", at("127.0.0.2", port)).await;
    let b3 = Backend::start_on("b3", at("127.0.0.3", port)).await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &["127.0.0.2", "127.0.0.3"]);
    let (addr, text) = config(&dns, &format!("\"{NAME}:{port}\""), "");
    let p = Portico::start(&text);
    until(addr, "both addresses get requests", || {
        count(&b2) > 0 && count(&b3) > 0
    })
    .await;

    dns.go_silent();
    let m = scrape_until(p.admin, |m| {
        m.value_or_zero("portico_upstream_dns_failures_total", &[("upstream", "u")]) >= 2.0
    })
    .await;
    assert!(
        m.value_or_zero("portico_upstream_dns_failures_total", &[("upstream", "u")]) >= 2.0,
        "{}",
        m.text
    );
    let before = (count(&b2), count(&b3));
    for _ in 0..10 {
        assert_eq!(get(addr).await, 200);
    }
    assert_eq!(count(&b2) - before.0, 5);
    assert_eq!(count(&b3) - before.1, 5);

    // A reload that keeps the pool keeps its answer and its connections.
    let accepts = (
        b2.accepts.load(Ordering::SeqCst),
        b3.accepts.load(Ordering::SeqCst),
    );
    assert_eq!(p.reload().await.0, 200);
    let before = (count(&b2), count(&b3));
    for _ in 0..10 {
        assert_eq!(get(addr).await, 200);
    }
    assert_eq!((count(&b2) - before.0, count(&b3) - before.1), (5, 5));
    assert_eq!(
        (
            b2.accepts.load(Ordering::SeqCst),
            b3.accepts.load(Ordering::SeqCst)
        ),
        accepts
    );

    // A reload that changes the pool starts from the last answer too.
    p.write_config(&text.replace(
        "resolve_interval",
        "connect_timeout = \"3s\"\nresolve_interval",
    ));
    assert_eq!(p.reload().await.0, 200);
    let before = (count(&b2), count(&b3));
    for _ in 0..10 {
        assert_eq!(get(addr).await, 200);
    }
    assert_eq!(count(&b2) - before.0, 5);
    assert_eq!(count(&b3) - before.1, 5);
}

#[tokio::test]
async fn a_name_s_weight_is_split_among_its_addresses() {
    let port = free_port();
    let b2 = Backend::start_on("b2", at("127.0.0.2", port)).await;
    let b3 = Backend::start_on("b3", at("127.0.0.3", port)).await;
    let lit = Backend::start("literal").await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &["127.0.0.2", "127.0.0.3"]);
    // The name (weight 2, two addresses) against an IP of weight 2: each
    // address gets a quarter, the IP half.
    let servers = format!(
        "{{ addr = \"{NAME}:{port}\", weight = 2 }}, {{ addr = \"{}\", weight = 2 }}",
        lit.addr
    );
    let (addr, text) = config(&dns, &servers, "");
    let _p = Portico::start(&text);
    until(addr, "the name's addresses get requests", || {
        count(&b2) > 0 && count(&b3) > 0
    })
    .await;
    let before = (count(&b2), count(&b3), count(&lit));
    for _ in 0..40 {
        assert_eq!(get(addr).await, 200);
    }
    assert_eq!(count(&b2) - before.0, 10);
    assert_eq!(count(&b3) - before.1, 10);
    assert_eq!(count(&lit) - before.2, 20);
}

#[tokio::test]
async fn aaaa_answers_are_members_too() {
    let port = free_port();
    let Ok(listener) = std::net::TcpListener::bind(("::1", port)) else {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    };
    drop(listener);
    let b6 = Backend::start_on("b6", at("[::1]", port)).await;
    let b2 = Backend::start_on("b2", at("127.0.0.2", port)).await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &["::1", "127.0.0.2"]);
    let (addr, text) = config(&dns, &format!("\"{NAME}:{port}\""), "");
    let _p = Portico::start(&text);
    until(addr, "the AAAA and the A address get requests", || {
        count(&b6) > 0 && count(&b2) > 0
    })
    .await;
}

#[test]
fn check_resolves_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(DnsServer::start());
    let dir = tempfile::tempdir().unwrap();
    let (_, text) = config(&dns, "\"nowhere.invalid:80\"", "");
    let (out, stderr) = check(dir.path(), &text);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    assert_eq!(dns.queries(), 0);

    let (_, text) = config(&dns, "\"bad_name!:80\"", "");
    let (out, _) = check(dir.path(), &text);
    assert!(!out.status.success());
    let bad = text.replace(&dns.addr.to_string(), "not-an-ip");
    let (out, stderr) = check(dir.path(), &bad);
    assert!(!out.status.success());
    assert!(stderr.contains("server.resolvers"), "{stderr}");
}

#[tokio::test]
async fn a_dropped_address_finishes_its_requests_and_closes_idle_ones() {
    let port = free_port();
    let b2 = Backend::start_on("b2", at("127.0.0.2", port)).await;
    let b3 = Backend::start_on("b3", at("127.0.0.3", port)).await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &["127.0.0.2"]);
    let (addr, text) = config(&dns, &format!("\"{NAME}:{port}\""), "");
    let _p = Portico::start(&text);
    until(addr, "the address gets requests", || count(&b2) > 0).await;

    // One connection busy with a slow request, a second one idle.
    let seen = count(&b2);
    let slow = tokio::spawn(async move {
        let r = client()
            .get(format!("http://{addr}/slow/8000"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    while count(&b2) == seen {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(get(addr).await, 200);
    assert_eq!(b2.open.load(Ordering::SeqCst), 2);

    dns.set(NAME, &["127.0.0.3"]);
    until(addr, "the new address gets requests", || count(&b3) > 0).await;
    let served = count(&b2);
    // The idle connection closes while the slow request is still going.
    while b2.open.load(Ordering::SeqCst) > 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !slow.is_finished(),
        "the idle connection stayed open until the slow request ended"
    );
    assert_eq!(slow.await.unwrap(), (200, "b2 slow".to_string()));
    for _ in 0..5 {
        assert_eq!(get(addr).await, 200);
    }
    assert_eq!(count(&b2), served);
    // The connection of the finished request is not kept either.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b2.open.load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "a connection to the dropped address stays open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// /ready waits for the first answer here (a health-checked pool needs a
// healthy member), so the DNS server must run while `Portico::start` blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_apply_per_address() {
    let port = free_port();
    let b2 = Backend::start_on("b2", at("127.0.0.2", port)).await;
    let b3 = Backend::start_on("b3", at("127.0.0.3", port)).await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &["127.0.0.2", "127.0.0.3"]);
    let health = "health = { path = \"/health\", interval = \"100ms\", healthy_threshold = 1, unhealthy_threshold = 1 }";
    let (addr, text) = config(&dns, &format!("\"{NAME}:{port}\""), health);
    let p = Portico::start(&text);
    until(addr, "both addresses get requests", || {
        count(&b2) > 0 && count(&b3) > 0
    })
    .await;

    b2.health.store(503, Ordering::SeqCst);
    let b2_label = b2.addr.to_string();
    let m = scrape_until(p.admin, |m| {
        m.value(
            "portico_upstream_healthy",
            &[("upstream", "u"), ("server", &b2_label)],
        ) == Some(0.0)
    })
    .await;
    assert_eq!(
        m.value(
            "portico_upstream_healthy",
            &[("upstream", "u"), ("server", &b2_label)]
        ),
        Some(0.0),
        "{}",
        m.text
    );
    let b3_label = b3.addr.to_string();
    assert_eq!(
        m.value(
            "portico_upstream_healthy",
            &[("upstream", "u"), ("server", &b3_label)]
        ),
        Some(1.0)
    );
    // Requests go only to the healthy address (probes are not counted).
    let before = (b2.count_path("/"), b3.count_path("/"));
    for _ in 0..10 {
        assert_eq!(get(addr).await, 200);
    }
    assert_eq!(b2.count_path("/"), before.0);
    assert_eq!(b3.count_path("/") - before.1, 10);
}
