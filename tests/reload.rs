//! Hot reload: build-then-swap under load, listener reconciliation,
//! certificate rotation, bad configs, file watching, systemd integration.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

fn two_pools(
    l: &str,
    route_to: &str,
    a: &[&Backend],
    b: &[&Backend],
    extra_routes: &str,
) -> String {
    format!(
        "[server]\naccess_log = \"off\"\n{l}\n{extra_routes}\n[[route]]\nname = \"main\"\nupstream = \"{route_to}\"\n{}{}",
        upstream_toml("pool_a", a, ""),
        upstream_toml("pool_b", b, "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_drop_nothing() {
    let (a1, a2) = (Backend::start("a1").await, Backend::start("a2").await);
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let (addr, l) = listener_toml("web", "");
    // Config k (k = reloads done) routes to pool_a when k is even, pool_b when odd;
    // the two also differ in their other routes.
    let config = |k: usize| {
        if k.is_multiple_of(2) {
            two_pools(&l, "pool_a", &[&a1, &a2], &[&b1, &b2], "")
        } else {
            two_pools(
                &l,
                "pool_b",
                &[&a1, &a2],
                &[&b1, &b2],
                "[[route]]\nname = \"extra\"\nmatch.path_prefix = \"/extra\"\nrespond = { status = 200 }\n",
            )
        }
    };
    let p = Portico::start(&config(0));

    // Reload windows: (sent, returned) per reload, in order; `returned` is
    // None while the reload is in progress.
    type Windows = Arc<Mutex<Vec<(Instant, Option<Instant>)>>>;
    let windows: Windows = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for w in 0..6 {
        let c = if w % 2 == 0 { client() } else { h2c_client() };
        let (stop, failures, ok, windows) =
            (stop.clone(), failures.clone(), ok.clone(), windows.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let start = Instant::now();
                let r = c.get(format!("http://{addr}/w{w}/{i}")).send().await;
                let end = Instant::now();
                match r {
                    Ok(r) if r.status() == 200 => {
                        let backend = r.headers()["x-backend"].to_str().unwrap().to_string();
                        if let Err(e) = r.bytes().await {
                            failures.lock().unwrap().push(format!("body: {e}"));
                            continue;
                        }
                        // Which configs could have been in force during [start, end]?
                        let ws = windows.lock().unwrap().clone();
                        let k0 = ws
                            .iter()
                            .filter(|(_, returned)| returned.is_some_and(|r| r < start))
                            .count();
                        let k1 = ws.iter().filter(|(sent, _)| *sent <= end).count();
                        let pool_ok = (k0..=k1)
                            .any(|k| backend.starts_with(if k % 2 == 0 { 'a' } else { 'b' }));
                        if !pool_ok {
                            failures.lock().unwrap().push(format!(
                                "{backend} answered while configs {k0}..={k1} were in force"
                            ));
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("request: {e}")),
                }
            }
        }));
    }

    for k in 1..=50 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        p.write_config(&config(k));
        windows.lock().unwrap().push((Instant::now(), None));
        let (status, body) = p.reload().await;
        windows.lock().unwrap()[k - 1].1 = Some(Instant::now());
        assert_eq!(status, 200, "reload {k}: {body}");
        assert_eq!(body, format!("{{\"generation\":{}}}", k + 1));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failures, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 300,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    // After 50 reloads config 50 (pool_a) is in force.
    for _ in 0..10 {
        let r = client()
            .get(format!("http://{addr}/final"))
            .send()
            .await
            .unwrap();
        assert!(r.headers()["x-backend"].to_str().unwrap().starts_with('a'));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_upstream_keeps_its_connections() {
    let keep = Backend::start("keep").await;
    let other = Backend::start("other").await;
    let (addr, l) = listener_toml("web", "");
    let config = |route_name: &str, other_extra: &str| {
        format!(
            "{l}\n[[route]]\nname = \"{route_name}\"\nupstream = \"keep\"\n{}{}",
            upstream_toml("keep", &[&keep], ""),
            upstream_toml("other", &[&other], other_extra)
        )
    };
    let p = Portico::start(&config("first", ""));
    let c = client();
    for _ in 0..5 {
        c.get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let before = keep.accepts.load(Ordering::SeqCst);
    assert_eq!(before, 1);
    p.write_config(&config("renamed", "connect_timeout = \"1s\""));
    assert_eq!(p.reload().await.0, 200);
    for _ in 0..5 {
        let r = c.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(r.headers()["x-backend"], "keep");
        r.bytes().await.unwrap();
    }
    assert_eq!(
        keep.accepts.load(Ordering::SeqCst),
        before,
        "an unchanged pool opened new connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_leave_the_old_one_serving() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    Pki::generate(dir.path());
    std::fs::write(
        dir.path().join("certs/garbage.key"),
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let (addr, l) = listener_toml("web", "");
    let good = format!(
        "{l}\n[[route]]\nname = \"r\"\nupstream = \"a\"\n{}",
        upstream_toml("a", &[&a], "")
    );
    let p = Portico::start_in(dir, &good);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_listener = |cert: &str, key: &str| {
        format!(
            "{good}\n[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:{}\"\ntls.cert = \"{cert}\"\ntls.key = \"{key}\"\n",
            free_port()
        )
    };
    let cases = [
        ("syntax", good.replace("name = \"r\"", "name = \"r")),
        (
            "unknown field",
            good.replace("name = \"r\"", "name = \"r\"\nupstreem = \"a\""),
        ),
        (
            "missing cert",
            tls_listener("certs/missing.crt", "certs/server.key"),
        ),
        (
            "bad key",
            tls_listener("certs/server.crt", "certs/garbage.key"),
        ),
        (
            "port taken",
            format!(
                "{good}\n[[listener]]\nname = \"second\"\nbind = \"{}\"\n",
                taken.local_addr().unwrap()
            ),
        ),
    ];
    for (what, text) in cases {
        p.write_config(&text);
        let (status, body) = p.reload().await;
        assert_eq!(status, 400, "{what}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let err = v["error"].as_str().unwrap();
        assert!(err.contains("proxy.toml:"), "{what}: {err}");
        let r = client()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}: old config stopped serving");
    }
    p.write_config(&good);
    let (status, body) = p.reload().await;
    assert_eq!(
        (status, body.as_str()),
        (200, "{\"generation\":2}"),
        "failed reloads must not raise the generation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed() {
    let a = Backend::start("a").await;
    let (first, l1) = listener_toml("first", "");
    let (second, l2) = listener_toml("second", "");
    let rest = format!(
        "[[route]]\nname = \"r\"\nupstream = \"a\"\n{}",
        upstream_toml("a", &[&a], "")
    );
    let p = Portico::start(&format!("{l1}\n{rest}"));
    assert!(std::net::TcpStream::connect(second).is_err());
    // A keepalive connection on the listener that will be removed.
    let mut old = std::net::TcpStream::connect(first).unwrap();
    p.write_config(&format!("{l2}\n{rest}"));
    assert_eq!(p.reload().await.0, 200);
    let r = client()
        .get(format!("http://{second}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The removed listener's open connection may finish a request...
    use std::io::{Read, Write};
    old.write_all(b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = old.read_to_string(&mut out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 200"), "{out}");
    // ...but it accepts no new connection.
    let mut refused = false;
    for _ in 0..50 {
        if std::net::TcpStream::connect(first).is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "removed listener still accepts");
}

async fn tls_get(
    addr: SocketAddr,
    pki: &Pki,
    stream: Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
) -> std::io::Result<(
    String,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = match stream {
        Some(s) => s,
        None => {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let cfg = pki.client_config(&[b"http/1.1"], &[&rustls::version::TLS13]);
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(
                    rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                    tcp,
                )
                .await?
        }
    };
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_for_new_handshakes_only() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let old_pki = Pki::generate(dir.path());
    let new_dir = tempfile::tempdir().unwrap();
    let new_pki = Pki::generate(new_dir.path());
    let (addr, l) = listener_toml(
        "tls",
        "tls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n",
    );
    let config = format!(
        "{l}\n[[route]]\nname = \"r\"\nupstream = \"a\"\n{}",
        upstream_toml("a", &[&a], "")
    );
    let p = Portico::start_in(dir, &config);

    let (answer, open) = tls_get(addr, &old_pki, None).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let old_cert =
        rustls_pki_types::CertificateDer::pem_slice_iter(old_pki.read("server.crt").as_bytes())
            .next()
            .unwrap()
            .unwrap();
    let certs = p.dir.path().join("certs");
    std::fs::copy(new_pki.dir.join("server.crt"), certs.join("server.crt")).unwrap();
    std::fs::copy(new_pki.dir.join("server.key"), certs.join("server.key")).unwrap();
    assert_eq!(p.reload().await.0, 200);

    // New handshakes present the new certificate...
    assert!(
        tls_get(addr, &old_pki, None).await.is_err(),
        "old certificate still served to a new handshake"
    );
    let (answer, _) = tls_get(addr, &new_pki, None).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // ...while the connection opened before keeps its session and keeps working.
    let (answer, open) = tls_get(addr, &old_pki, Some(open)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let peer = open.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(peer, old_cert);
}

use rustls_pki_types::pem::PemObject;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_picks_up_a_save_by_rename() {
    let (addr, l) = listener_toml("web", "");
    let config = |body: &str| {
        format!("[server]\nwatch_config = true\n{l}\n[[route]]\nname = \"r\"\nrespond = {{ status = 200, body = \"{body}\" }}\n")
    };
    let p = Portico::start(&config("before"));
    let c = client();
    assert_eq!(
        c.get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "before"
    );
    // Save the way many editors do: write a temporary file, rename it over.
    let text = std::fs::read_to_string(&p.config_path)
        .unwrap()
        .replace("before", "after");
    let tmp = p.dir.path().join(".proxy.toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &p.config_path).unwrap();
    let mut seen = String::new();
    for _ in 0..100 {
        seen = c
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if seen == "after" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_responses_flow_across_ten_reloads() {
    let a = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "");
    let config = |n: usize| {
        format!(
            "{l}\n[[route]]\nname = \"r{n}\"\ntimeout = \"30s\"\nupstream = \"a\"\n{}",
            upstream_toml("a", &[&a], "")
        )
    };
    let p = Portico::start(&config(0));
    let h1 = tokio::spawn(async move {
        client()
            .get(format!("http://{addr}/drip/40/50"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let h2 = tokio::spawn(async move {
        h2c_client()
            .get(format!("http://{addr}/drip/40/50"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    for n in 1..=10 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        p.write_config(&config(n));
        assert_eq!(p.reload().await.0, 200);
    }
    assert_eq!(h1.await.unwrap(), "tick\n".repeat(40));
    assert_eq!(h2.await.unwrap(), "tick\n".repeat(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notify_and_socket_activation() {
    use std::os::fd::AsRawFd;
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The socket portico must adopt: already listening, so a fresh bind
    // of the same address would fail.
    let passed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = passed.local_addr().unwrap();
    let fd = passed.as_raw_fd();
    // A datagram socket at the same address, passed after it (a unit
    // with ListenDatagram=): it must not take the TCP socket's place.
    let udp = std::net::UdpSocket::bind(addr).unwrap();
    let udp_fd = udp.as_raw_fd();
    let config = format!(
        "[[listener]]\nname = \"web\"\nbind = \"{addr}\"\n[[route]]\nname = \"r\"\nupstream = \"a\"\n{}",
        upstream_toml("a", &[&a], "")
    );
    let p = Portico::start_activated(
        dir,
        &config,
        vec![fd, udp_fd],
        vec![("NOTIFY_SOCKET".into(), notify_path.clone().into())],
    );
    let recv = || {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("notify message");
        // One "KEY=VALUE\n" line per state.
        String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
    };
    assert_eq!(recv(), "READY=1");
    let r = client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(p.stderr().contains("adopting socket"), "{}", p.stderr());

    p.signal("HUP");
    let reloading = recv();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(recv(), "READY=1");
    p.signal("TERM");
    assert_eq!(recv(), "STOPPING=1");
    drop((passed, udp));
}
