//! Upstream resilience: dead servers, retries, health checks, upstream
//! TLS, gRPC and WebSocket pass-through.

mod support;

use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn config(l: &str, upstream: &str, route_extra: &str) -> String {
    format!("[server]\naccess_log = \"off\"\n{l}\n[[route]]\nname = \"r\"\nupstream = \"app\"\n{route_extra}\n{upstream}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_causes_no_client_errors() {
    let bs = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start(&config(
        &l,
        &upstream_toml("app", &[&bs[0], &bs[1], &bs[2]], ""),
        "",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for w in 0..4 {
        let (stop, errors, ok) = (stop.clone(), errors.clone(), ok.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match c
                    .get(format!("http://{addr}/slow/5?w={w}&i={i}"))
                    .send()
                    .await
                {
                    Ok(r) => {
                        let status = r.status();
                        if status == 200 && r.bytes().await.is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            eprintln!("status {status}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        eprintln!("error {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    bs[1].kill();
    // Requests the backend was already handling when it died still count.
    bs[1].wait_dead().await;
    let killed_at = bs[1].request_count();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "client-visible errors after a backend died"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert_eq!(
        bs[1].request_count(),
        killed_at,
        "the dead backend got requests"
    );
    assert!(bs[0].request_count() > 0 && bs[2].request_count() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_requests_are_sent_once_and_idempotent_ones_retried() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start(&config(
        &l,
        &upstream_toml("app", &[&a, &b], "passive_eject = \"0s\""),
        "retries = 1",
    ));
    let c = client();
    // Both servers break the connection after reading the request.
    let r = c
        .post(format!("http://{addr}/reset"))
        .body("once")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        a.count_path("/reset") + b.count_path("/reset"),
        1,
        "a POST without Idempotency-Key was sent twice"
    );

    let (a0, b0) = (a.count_path("/reset"), b.count_path("/reset"));
    let r = c
        .post(format!("http://{addr}/reset"))
        .header("idempotency-key", "k-1")
        .body("twice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        (a.count_path("/reset") - a0, b.count_path("/reset") - b0),
        (1, 1),
        "sent once to each server: the retry must go to the other one"
    );

    // Only a resets: an idempotent request always ends on b, with its body intact.
    for i in 0..6 {
        let r = c
            .put(format!("http://{addr}/reset-on/a"))
            .body(format!("payload-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "PUT {i}");
        assert_eq!(r.headers()["x-backend"], "b");
    }
    assert_eq!(b.count_path("/reset-on/a"), 6);
    // 502 from the upstream is retried too, for retry-safe requests.
    let before = a.count_path("/status/502") + b.count_path("/status/502");
    let r = c
        .get(format!("http://{addr}/status/502"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        a.count_path("/status/502") + b.count_path("/status/502") - before,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_reaches_the_next_server_with_the_same_head_and_body() {
    // Every attempt sends the one head the forward phase built (sending
    // borrows it), over HTTP/1.1 and HTTP/2 upstreams alike.
    for protocol in ["http1", "http2"] {
        let (a, b) = (Backend::start("a").await, Backend::start("b").await);
        let (addr, l) = listener_toml("web", "");
        let _p = Portico::start(&config(
            &l,
            &upstream_toml(
                "app",
                &[&a, &b],
                &format!("passive_eject = \"0s\"\nprotocol = \"{protocol}\""),
            ),
            "retries = 1",
        ));
        let c = client();
        for i in 0..4 {
            let r = c
                .put(format!("http://{addr}/reset-on/a?n={i}"))
                .header("x-custom", format!("v{i}"))
                .header("cookie", "a=1")
                .body(format!("payload-{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{protocol} PUT {i}");
            assert_eq!(r.headers()["x-backend"], "b", "{protocol} PUT {i}");
        }
        let seen_a: Vec<Seen> = a.seen.lock().unwrap().clone();
        let seen_b: Vec<Seen> = b.seen.lock().unwrap().clone();
        // Each request that went to a first was retried on b.
        assert_eq!(seen_b.len(), 4, "{protocol}");
        assert!(!seen_a.is_empty(), "{protocol}: a got no request to reset");
        for first in &seen_a {
            let again = seen_b
                .iter()
                .find(|s| s.uri == first.uri)
                .unwrap_or_else(|| panic!("{protocol}: {} never retried", first.uri));
            assert_eq!(again.method, "PUT");
            assert_eq!(again.version, first.version, "{protocol}");
            assert_eq!(again.headers, first.headers, "{protocol} {}", first.uri);
            assert!(first.headers.contains_key("x-request-id"));
            assert!(first.headers.contains_key("x-custom"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_servers_out_and_back_and_503_when_all_fail() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (addr, l) = listener_toml("web", "");
    let health = "health = { path = \"/health\", interval = \"100ms\", timeout = \"500ms\", healthy_threshold = 2, unhealthy_threshold = 2 }";
    // /ready joins pool health only when asked to.
    let admin = "[admin]\nbind = \"{admin}\"\nready_requires_healthy_pools = true\n";
    let p = Portico::start(&format!(
        "{admin}{}",
        config(&l, &upstream_toml("app", &[&a, &b], health), "")
    ));
    let c = client();
    let backends_of = |n: usize| {
        let c = c.clone();
        async move {
            let mut v = Vec::new();
            for _ in 0..n {
                let r = c.get(format!("http://{addr}/")).send().await.unwrap();
                v.push((
                    r.status().as_u16(),
                    r.headers()
                        .get("x-backend")
                        .map(|h| h.to_str().unwrap().to_string()),
                ));
            }
            v
        }
    };
    type Answers = [(u16, Option<String>)];
    let wait_until = |pred: Box<dyn Fn(&Answers) -> bool + Send>| async move {
        for _ in 0..60 {
            if pred(&backends_of(6).await) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(wait_until(Box::new(|v| v.iter().any(|x| x.1.as_deref() == Some("a")))).await);

    a.health.store(500, Ordering::SeqCst);
    assert!(
        wait_until(Box::new(|v| v
            .iter()
            .all(|x| x.0 == 200 && x.1.as_deref() == Some("b"))))
        .await,
        "an unhealthy server kept getting traffic"
    );
    // Out of rotation means no traffic at all.
    let a_before = a.request_count();
    backends_of(10).await;
    assert_eq!(a.request_count(), a_before);

    a.health.store(200, Ordering::SeqCst);
    assert!(
        wait_until(Box::new(|v| v.iter().any(|x| x.1.as_deref() == Some("a")))).await,
        "a recovered server did not return to rotation"
    );

    a.health.store(503, Ordering::SeqCst);
    b.health.store(503, Ordering::SeqCst);
    assert!(
        wait_until(Box::new(|v| v.iter().all(|x| x.0 == 503))).await,
        "no 503 with every server unhealthy"
    );
    assert_eq!(http_get_raw(p.admin, "/ready").map(|r| r.0), Some(503));
    b.health.store(200, Ordering::SeqCst);
    assert!(wait_until(Box::new(|v| v.iter().all(|x| x.0 == 200))).await);
    assert_eq!(http_get_raw(p.admin, "/ready").map(|r| r.0), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_https_with_a_private_ca_and_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let plain_tls = Backend::start_tls("tls", pki.server_config(false)).await;
    let mtls = Backend::start_tls("mtls", pki.server_config(true)).await;
    let (addr, l) = listener_toml("web", "");
    let text = format!(
        "[server]\naccess_log = \"off\"\n{l}\n\
         [[route]]\nname = \"tls\"\nmatch.path_prefix = \"/tls\"\nupstream = \"tls\"\n\
         [[route]]\nname = \"tls-h2\"\nmatch.path_prefix = \"/h2\"\nupstream = \"tls_h2\"\n\
         [[route]]\nname = \"public-roots\"\nmatch.path_prefix = \"/public\"\nupstream = \"public\"\n\
         [[route]]\nname = \"mtls\"\nmatch.path_prefix = \"/mtls\"\nupstream = \"mtls\"\n\
         [[route]]\nname = \"mtls-nocert\"\nmatch.path_prefix = \"/nocert\"\nupstream = \"nocert\"\n\
         [upstream.tls]\nservers = [\"{t}\"]\ntls = {{ ca = \"certs/ca.crt\" }}\n\
         [upstream.tls_h2]\nservers = [\"{t}\"]\nprotocol = \"http2\"\ntls = {{ ca = \"certs/ca.crt\", server_name = \"localhost\" }}\n\
         [upstream.public]\nservers = [\"{t}\"]\ntls = {{}}\n\
         [upstream.mtls]\nservers = [\"{m}\"]\ntls = {{ ca = \"certs/ca.crt\", client_cert = \"certs/client.crt\", client_key = \"certs/client.key\" }}\n\
         [upstream.nocert]\nservers = [\"{m}\"]\ntls = {{ ca = \"certs/ca.crt\" }}\n",
        t = plain_tls.addr,
        m = mtls.addr
    );
    let _p = Portico::start_in(dir, &text);
    let c = client();
    let r = c.get(format!("http://{addr}/tls/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backend"], "tls");
    assert_eq!(plain_tls.last_seen().version, http::Version::HTTP_11);
    let r = c.get(format!("http://{addr}/h2/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        plain_tls.last_seen().version,
        http::Version::HTTP_2,
        "ALPN h2 with protocol = http2"
    );
    let r = c
        .get(format!("http://{addr}/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "a private CA must not verify against the public roots"
    );
    let r = c.get(format!("http://{addr}/mtls/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backend"], "mtls");
    let r = c
        .get(format!("http://{addr}/nocert/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "an upstream that requires a client certificate refuses one without"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_server_streaming_pass_through() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let mut grpc = GrpcHealth::start().await;
    let grpc_addr = grpc.addr;
    let (addr, l) = listener_toml("grpc", "");
    let _p = Portico::start(&format!(
        "[server]\naccess_log = \"off\"\n{l}\n[[route]]\nname = \"grpc\"\nupstream = \"grpc\"\n[upstream.grpc]\nservers = [\"{grpc_addr}\"]\nprotocol = \"http2\"\n"
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let resp = client
        .check(HealthCheckRequest {
            service: "portico.Test".into(),
        })
        .await
        .unwrap();
    assert_eq!(resp.into_inner().status, ServingStatus::Serving as i32);

    let mut stream = client
        .watch(HealthCheckRequest {
            service: "portico.Test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    grpc.reporter
        .set_service_status("portico.Test", tonic_health::ServingStatus::NotServing)
        .await;
    assert_eq!(
        stream.next().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    // An unknown service: the server's own gRPC error passes through in trailers.
    let err = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    drop(stream);

    grpc.stop().await;
    let err = client
        .check(HealthCheckRequest {
            service: "portico.Test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_passes_through() {
    use tokio_tungstenite::tungstenite::Message;
    let ws_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = ws_listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = ws_listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_close() {
                        break;
                    }
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (addr, l) = listener_toml(
        "web",
        "idle_timeout = \"2s\"\nheader_read_timeout = \"1s\"\n",
    );
    let _p = Portico::start(&format!(
        "[server]\naccess_log = \"off\"\n{l}\n[[route]]\nname = \"ws\"\nupstream = \"ws\"\n[upstream.ws]\nservers = [\"{ws_addr}\"]\n"
    ));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/chat"), tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    // Quiet for longer than header_read_timeout: a tunnel is not a request head.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    // And after the listener's idle_timeout without traffic the tunnel closes.
    let closed = tokio::time::timeout(Duration::from_secs(6), ws.next()).await;
    assert!(
        matches!(
            closed,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_))))
        ),
        "{closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_tries_ejected_servers_when_all_are_ejected() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let a_addr = a.addr;
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start(&config(
        &l,
        &upstream_toml("app", &[&a, &b], "passive_eject = \"60s\""),
        "",
    ));
    let c = client();
    assert_eq!(
        c.get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Both die: refused connects eject both for a minute.
    a.kill();
    b.kill();
    // kill() only signals: an open pooled connection may still answer
    // until its task has ended.
    a.wait_dead().await;
    b.wait_dead().await;
    drop((a, b));
    for _ in 0..3 {
        assert_eq!(
            c.get(format!("http://{addr}/"))
                .send()
                .await
                .unwrap()
                .status(),
            502
        );
    }
    // One comes back at once. Every server is ejected, so all are tried
    // (panic mode) instead of failing for the rest of the minute.
    let a2 = Backend::start_on("a2", a_addr).await;
    let r = c.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "panic mode should have tried the ejected servers"
    );
    assert_eq!(r.headers()["x-backend"], "a2");
    assert!(a2.request_count() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_a_reload_that_rebuilds_the_pool() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (addr, l) = listener_toml("web", "");
    let health = "health = { interval = \"100ms\", timeout = \"500ms\", healthy_threshold = 50, unhealthy_threshold = 1 }";
    let text = |extra: &str| {
        config(
            &l,
            &upstream_toml("app", &[&a, &b], &format!("{health}\n{extra}")),
            "",
        )
    };
    let p = Portico::start(&text(""));
    a.health.store(500, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    a.health.store(200, Ordering::SeqCst);
    // a is out, and needs 50 good checks (5 s) to return. A reload that
    // changes the pool's definition must not reset that to "healthy".
    p.write_config(&text("connect_timeout = \"3s\""));
    assert_eq!(p.reload().await.0, 200);
    let c = client();
    for _ in 0..10 {
        let r = c.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(
            r.headers()["x-backend"],
            "b",
            "the reload forgot that a is unhealthy"
        );
    }
}
