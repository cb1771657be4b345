//! GET /metrics over real sockets, parsed by a Prometheus text-format parser,
//! checked against the traffic each test sent.

mod support;

use support::prom::{scrape, scrape_until, Prom};
use support::*;

const REQUESTS: &str = "portico_requests_total";
const DURATION: &str = "portico_request_duration_seconds";
const UPSTREAM: &str = "portico_upstream_requests_total";
const HEALTHY: &str = "portico_upstream_healthy";
const CONNS: &str = "portico_connections_active";

async fn get_n(c: &reqwest::Client, url: &str, n: usize, status: u16) {
    for _ in 0..n {
        let r = c.get(url).send().await.unwrap();
        assert_eq!(r.status(), status, "{url}");
        r.bytes().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_durations_and_upstream_outcomes_match_the_traffic() {
    let a = Backend::start("a").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let (addr, l) = listener_toml("web", "");
    let cfg = format!(
        r#"{l}
[[route]]
name = "api"
match.path_prefix = "/api/"
upstream = "app"
strip_prefix = true

[[route]]
name = "dead"
match.path_prefix = "/dead/"
upstream = "gone"

[[route]]
name = "fixed"
match.path_prefix = "/fixed"
respond = {{ status = 201, body = "made\n" }}

{}
[upstream.gone]
servers = ["{dead}"]
"#,
        upstream_toml("app", &[&a], "")
    );
    let p = Portico::start(&cfg);
    let c = client();
    let base = format!("http://{addr}");

    // Before any traffic: the families are there, the generation is 1.
    let m = scrape(p.admin).await;
    assert_eq!(
        m.value("portico_config_generation", &[]),
        Some(1.0),
        "{}",
        m.text
    );
    for (result, v) in [("ok", 0.0), ("error", 0.0)] {
        assert_eq!(
            m.value("portico_config_reloads_total", &[("result", result)]),
            Some(v)
        );
    }
    for f in [REQUESTS, DURATION, UPSTREAM, HEALTHY, CONNS] {
        assert!(m.has_family(f), "no HELP for {f}: {}", m.text);
    }
    // No JWT policy exists, so nothing of that family is exported.
    assert!(
        !m.text.contains("portico_jwt_validations_total"),
        "{}",
        m.text
    );

    get_n(&c, &format!("{base}/api/x"), 5, 200).await;
    get_n(&c, &format!("{base}/api/status/503"), 2, 503).await;
    get_n(&c, &format!("{base}/dead/x"), 3, 502).await;
    get_n(&c, &format!("{base}/fixed"), 4, 201).await;
    get_n(&c, &format!("{base}/nowhere/x?q=secret"), 2, 404).await;

    let m = scrape_until(p.admin, |m| {
        m.value_or_zero(REQUESTS, &[("route", ""), ("code", "404")]) >= 2.0
            && m.value_or_zero(REQUESTS, &[("route", "fixed"), ("code", "201")]) >= 4.0
    })
    .await;
    let req = |route: &str, code: &str| m.value(REQUESTS, &[("route", route), ("code", code)]);
    assert_eq!(req("api", "200"), Some(5.0), "{}", m.text);
    assert_eq!(req("api", "503"), Some(2.0), "{}", m.text);
    assert_eq!(req("dead", "502"), Some(3.0), "{}", m.text);
    assert_eq!(req("fixed", "201"), Some(4.0), "{}", m.text);
    assert_eq!(req("", "404"), Some(2.0), "{}", m.text);
    // Nothing else was counted, and no label value came from a path.
    let total: f64 = m
        .scrape
        .samples
        .iter()
        .filter(|s| s.metric == REQUESTS)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(total, 16.0, "{}", m.text);
    assert!(!m.text.contains("nowhere") && !m.text.contains("secret"));

    // One histogram per route; its count is the route's requests.
    for (route, n) in [("api", 7.0), ("dead", 3.0), ("fixed", 4.0), ("", 2.0)] {
        let b = m
            .buckets(DURATION, &[("route", route)])
            .unwrap_or_else(|| panic!("no histogram for {route:?}: {}", m.text));
        assert_eq!(b.len(), 15, "0.5ms..10s and +Inf");
        assert_eq!(b[0].less_than, 0.0005);
        assert_eq!(b[13].less_than, 10.0);
        assert!(b[14].less_than.is_infinite());
        assert!(b.windows(2).all(|w| w[0].count <= w[1].count), "cumulative");
        assert_eq!(b[14].count, n, "route {route:?}");
        assert_eq!(
            m.value(&format!("{DURATION}_count"), &[("route", route)]),
            Some(n)
        );
        let sum = m
            .value(&format!("{DURATION}_sum"), &[("route", route)])
            .unwrap();
        assert!(sum > 0.0 && sum < 10.0 * n, "sum {sum}");
    }

    // Upstream attempts by outcome: a 503 answer is http_5xx; the dead port
    // is connect_error every time.
    let a_addr = a.addr.to_string();
    let up = |upstream: &str, server: &str, outcome: &str| {
        m.value(
            UPSTREAM,
            &[
                ("upstream", upstream),
                ("server", server),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(up("app", &a_addr, "ok"), Some(5.0), "{}", m.text);
    assert_eq!(up("app", &a_addr, "http_5xx"), Some(2.0));
    for o in ["connect_error", "timeout", "reset"] {
        assert_eq!(up("app", &a_addr, o), Some(0.0), "{o}");
    }
    assert_eq!(up("gone", &dead, "connect_error"), Some(3.0), "{}", m.text);
    assert_eq!(up("gone", &dead, "ok"), Some(0.0));

    // Health checks are not configured: every server counts as healthy.
    assert_eq!(
        m.value(HEALTHY, &[("upstream", "app"), ("server", &a_addr)]),
        Some(1.0)
    );
    assert_eq!(
        m.value(HEALTHY, &[("upstream", "gone"), ("server", &dead)]),
        Some(1.0)
    );
    assert_eq!(
        a.request_count(),
        7,
        "the backend saw exactly what was counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_is_counted_as_timeout() {
    let a = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "");
    let cfg = format!(
        "{l}\n[[route]]\nname = \"slow\"\nupstream = \"app\"\ntimeout = \"200ms\"\n\n{}",
        upstream_toml("app", &[&a], "")
    );
    let p = Portico::start(&cfg);
    get_n(&client(), &format!("http://{addr}/slow/2000"), 1, 504).await;
    let server = a.addr.to_string();
    let labels = [
        ("upstream", "app"),
        ("server", server.as_str()),
        ("outcome", "timeout"),
    ];
    let m = scrape_until(p.admin, |m| m.value_or_zero(UPSTREAM, &labels) >= 1.0).await;
    assert_eq!(m.value(UPSTREAM, &labels), Some(1.0), "{}", m.text);
    assert_eq!(
        m.value(REQUESTS, &[("route", "slow"), ("code", "504")]),
        Some(1.0)
    );
}

fn conns(m: &Prom, listener: &str, protocol: &str) -> f64 {
    m.value_or_zero(CONNS, &[("listener", listener), ("protocol", protocol)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_active_follows_open_connections() {
    let (both, l1) = listener_toml("both", "");
    // A long head timeout: the idle connection below sends nothing and must
    // stay open however slow the machine is.
    let (h1, l2) = listener_toml(
        "h1only",
        "protocols = [\"http1\"]\nheader_read_timeout = \"120s\"",
    );
    let cfg = format!(
        "{l1}\n{l2}\n[[route]]\nname = \"ok\"\nrespond = {{ status = 200, body = \"ok\" }}\n"
    );
    let p = Portico::start(&cfg);

    let m = scrape(p.admin).await;
    assert_eq!(
        m.value(CONNS, &[("listener", "both"), ("protocol", "http1")]),
        Some(0.0)
    );
    assert_eq!(
        m.value(CONNS, &[("listener", "both"), ("protocol", "http2")]),
        Some(0.0)
    );
    assert_eq!(
        m.value(CONNS, &[("listener", "h1only"), ("protocol", "http1")]),
        Some(0.0)
    );
    assert_eq!(
        m.value(CONNS, &[("listener", "h1only"), ("protocol", "http2")]),
        None,
        "a protocol the listener does not serve is not exported"
    );

    // On a one-protocol listener a connection counts from accept, before
    // any request.
    let idle = tokio::net::TcpStream::connect(h1).await.unwrap();
    let m = scrape_until(p.admin, |m| conns(m, "h1only", "http1") == 1.0).await;
    assert_eq!(conns(&m, "h1only", "http1"), 1.0, "{}", m.text);

    // Keepalive connections held by an HTTP/1.1 and an h2c client.
    let c1 = client();
    get_n(&c1, &format!("http://{both}/"), 3, 200).await;
    let c2 = h2c_client();
    get_n(&c2, &format!("http://{both}/"), 3, 200).await;
    // reqwest may open a second HTTP/1.1 connection when the first has not
    // gone back to its pool yet (a slow machine): at least one each.
    let m = scrape_until(p.admin, |m| {
        conns(m, "both", "http1") >= 1.0 && conns(m, "both", "http2") == 1.0
    })
    .await;
    assert!(conns(&m, "both", "http1") >= 1.0, "{}", m.text);
    assert_eq!(conns(&m, "both", "http2"), 1.0, "{}", m.text);

    // Closing them brings the gauges back to zero.
    drop((c1, c2, idle));
    let m = scrape_until(p.admin, |m| {
        conns(m, "both", "http1") == 0.0
            && conns(m, "both", "http2") == 0.0
            && conns(m, "h1only", "http1") == 0.0
    })
    .await;
    assert_eq!(conns(&m, "both", "http1"), 0.0, "{}", m.text);
    assert_eq!(conns(&m, "both", "http2"), 0.0, "{}", m.text);
    assert_eq!(conns(&m, "h1only", "http1"), 0.0, "{}", m.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_head_and_refuse_other_methods() {
    let (_addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "{l}\n[[route]]\nname = \"ok\"\nrespond = {{ status = 200 }}\n"
    ));
    let c = client();
    let r = c
        .head(format!("http://{}/metrics", p.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .delete(format!("http://{}/metrics", p.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        405,
        "no admin token is configured: 405, not 401"
    );
    assert_eq!(r.headers()["allow"], "GET, HEAD");
}
