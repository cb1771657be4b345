//! Operating portico through the real binary: the public admin bind,
//! shutdown as load balancers need it, the signals, following a Kubernetes
//! ConfigMap and certificate files on disk, JSON logs and the log level,
//! and the systemd watchdog.

mod support;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// A respond-only config on a fresh listener: its address and the TOML.
fn respond_config(server: &str, body: &str) -> (SocketAddr, String) {
    let (addr, l) = listener_toml("web", "");
    (addr, respond_config_at(&l, server, body))
}

fn respond_config_at(listener: &str, server: &str, body: &str) -> String {
    format!(
        "[server]\naccess_log = \"off\"\n{server}\n{listener}\n[[route]]\nname = \"r\"\nrespond = {{ status = 200, body = \"{body}\" }}\n"
    )
}

/// Polls `f` every 20 ms until it gives `Some`, for at most `limit`.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the process to exit (at most `limit`): its status.
fn wait_exit(p: &mut Portico, limit: Duration) -> Option<std::process::ExitStatus> {
    wait_for(limit, || p.child.try_wait().ok().flatten())
}

/// The generation the admin's GET /config reports.
fn generation(admin: SocketAddr) -> Option<u64> {
    let (status, body) = http_get_raw(admin, "/config")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    v["generation"].as_u64()
}

fn raw_request(addr: SocketAddr, method: &str, path: &str) -> Option<u16> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    parse_status(&raw_exchange(addr, req.as_bytes(), Duration::from_secs(2))?)
}

#[test]
fn the_public_bind_serves_health_ready_and_metrics_only() {
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (_, rest) = respond_config("", "hi");
    let p = Portico::start(&format!(
        "[admin]\nbind = \"{{admin}}\"\npublic_bind = \"{public}\"\n\n{rest}"
    ));
    assert_eq!(http_get_raw(public, "/health").map(|r| r.0), Some(200));
    assert_eq!(http_get_raw(public, "/ready").map(|r| r.0), Some(200));
    let (status, body) = http_get_raw(public, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("portico_config_generation"), "{body}");

    // Nothing that changes state or shows the config, token or not.
    assert_eq!(raw_request(public, "POST", "/reload"), Some(404));
    assert_eq!(raw_request(public, "POST", "/revoke"), Some(404));
    assert_eq!(raw_request(public, "GET", "/config"), Some(404));
    assert_eq!(raw_request(public, "POST", "/health"), Some(405));
    assert_eq!(generation(p.admin), Some(1), "no reload happened");
    // The private bind still has everything.
    assert_eq!(raw_request(p.admin, "POST", "/reload"), Some(200));
    assert_eq!(generation(p.admin), Some(2));
}

#[test]
fn check_accepts_a_public_bind_and_points_at_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let check = |text: String| {
        std::fs::write(&path, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap()
    };
    let (_, rest) = respond_config("", "hi");
    let good = check(format!(
        "[admin]\npublic_bind = \"0.0.0.0:9902\"\nready_requires_healthy_pools = true\n{rest}"
    ));
    assert!(good.status.success(), "{good:?}");
    let bad = check(format!("[admin]\npublic_bind = \"nowhere\"\n{rest}"));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("proxy.toml:2:15:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_joins_pool_health_only_when_configured() {
    // A health-checked pool whose one server is down.
    let dead = format!("127.0.0.1:{}", free_port());
    let (_, l) = listener_toml("web", "");
    let config = |admin_extra: &str| {
        format!(
            "[admin]\nbind = \"{{admin}}\"\n{admin_extra}\n[server]\naccess_log = \"off\"\n{l}\n[[route]]\nname = \"r\"\nupstream = \"app\"\n[upstream.app]\nservers = [\"{dead}\"]\nhealth = {{ path = \"/h\", interval = \"100ms\", timeout = \"200ms\", healthy_threshold = 1, unhealthy_threshold = 1 }}\n"
        )
    };
    let p = Portico::start(&config(""));
    let down = |m: &prom::Prom| {
        m.value(
            "portico_upstream_healthy",
            &[("upstream", "app"), ("server", &dead)],
        ) == Some(0.0)
    };
    assert!(down(&prom::scrape_until(p.admin, down).await));
    assert_eq!(http_get_raw(p.admin, "/ready").map(|r| r.0), Some(200));

    p.write_config(&config("ready_requires_healthy_pools = true"));
    assert_eq!(p.reload().await.0, 200);
    let ready = wait_for(Duration::from_secs(5), || {
        http_get_raw(p.admin, "/ready").filter(|r| r.0 == 503)
    });
    assert!(ready.is_some(), "/ready ignored an unhealthy pool");
}

#[test]
fn sigterm_turns_ready_503_while_new_connections_are_still_served() {
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (addr, rest) = respond_config("shutdown_delay = \"2s\"", "still here");
    let mut p = Portico::start(&format!(
        "[admin]\nbind = \"{{admin}}\"\npublic_bind = \"{public}\"\n\n{rest}"
    ));
    assert_eq!(http_get_raw(public, "/ready").map(|r| r.0), Some(200));
    p.signal("TERM");
    let not_ready = wait_for(Duration::from_secs(5), || {
        http_get_raw(public, "/ready").filter(|r| r.0 == 503)
    });
    assert!(not_ready.is_some(), "/ready did not turn 503");
    assert_eq!(http_get_raw(p.admin, "/ready").map(|r| r.0), Some(503));
    // A connection opened now, during shutdown_delay, is still served.
    assert_eq!(
        http_get_raw(addr, "/"),
        Some((200, "still here".to_string()))
    );
    assert_eq!(http_get_raw(public, "/health").map(|r| r.0), Some(200));
    let status = wait_exit(&mut p, Duration::from_secs(20)).expect("exit after the delay");
    assert!(status.success(), "{status}");
    let log = p.stderr();
    let (delay, drain) = (
        log.find("still serving until the drain").expect(&log),
        log.find("shutting down: draining").expect(&log),
    );
    assert!(delay < drain, "{log}");
}

/// A backend that accepts connections and never answers: its address and
/// how many requests reached it.
fn silent_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let r = reached.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            if std::io::Read::read(&mut s, &mut buf).unwrap_or(0) > 0 {
                r.fetch_add(1, Ordering::SeqCst);
            }
            held.push(s);
        }
    });
    (addr, reached)
}

/// Starts a portico whose route goes to a silent backend, with a request in
/// flight to it, so that a drain would wait for a minute.
fn portico_with_a_request_in_flight(server: &str) -> (Portico, std::net::TcpStream) {
    let (backend, reached) = silent_backend();
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "[server]\naccess_log = \"off\"\nshutdown_timeout = \"60s\"\n{server}\n{l}\n[[route]]\nname = \"r\"\nupstream = \"app\"\ntimeout = \"60s\"\n[upstream.app]\nservers = [\"{backend}\"]\n"
    ));
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut c, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let in_flight = wait_for(Duration::from_secs(10), || {
        (reached.load(Ordering::SeqCst) >= 1).then_some(())
    });
    assert!(in_flight.is_some(), "the request never got in flight");
    (p, c)
}

#[test]
fn a_second_sigterm_ends_a_long_drain_at_once() {
    let (mut p, _client) = portico_with_a_request_in_flight("");
    p.signal("TERM");
    let draining = wait_for(Duration::from_secs(5), || {
        p.stderr().contains("shutting down: draining").then_some(())
    });
    assert!(draining.is_some(), "{}", p.stderr());
    assert!(p.child.try_wait().unwrap().is_none(), "the drain waits");
    p.signal("TERM");
    // Far less than the 60 s the drain would otherwise take.
    let status = wait_exit(&mut p, Duration::from_secs(15)).expect("exit at once");
    assert!(status.success(), "{status}");
    assert!(p.stderr().contains("second stop signal"), "{}", p.stderr());
}

#[test]
fn a_second_signal_during_shutdown_delay_ends_it_at_once() {
    let (mut p, _client) = portico_with_a_request_in_flight("shutdown_delay = \"60s\"");
    p.signal("INT");
    let delaying = wait_for(Duration::from_secs(5), || {
        http_get_raw(p.admin, "/ready").filter(|r| r.0 == 503)
    });
    assert!(delaying.is_some());
    p.signal("QUIT");
    let status = wait_exit(&mut p, Duration::from_secs(15)).expect("exit at once");
    assert!(status.success(), "{status}");
}

#[test]
fn sigusr1_reopens_the_access_log_after_a_rename() {
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "[server]\naccess_log = \"access.log\"\n{l}\n[[route]]\nname = \"r\"\nrespond = {{ status = 200 }}\n"
    ));
    let log = p.dir.path().join("access.log");
    let rotated = p.dir.path().join("access.log.1");
    let lines = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(http_get_raw(addr, "/before").map(|r| r.0), Some(200));
    assert!(wait_for(Duration::from_secs(5), || lines(&log)
        .contains("/before")
        .then_some(()))
    .is_some());

    std::fs::rename(&log, &rotated).unwrap();
    p.signal("USR1");
    // The signal is handled soon, not at once: keep asking until a line
    // shows up at the configured path again.
    let mut n = 0;
    let reopened = wait_for(Duration::from_secs(10), || {
        n += 1;
        http_get_raw(addr, &format!("/after-{n}"));
        lines(&log).contains("/after-").then_some(())
    });
    assert!(
        reopened.is_some(),
        "no new file at the path: {}",
        p.stderr()
    );
    let new = lines(&log);
    assert!(!new.contains("/before"), "{new}");
    assert!(lines(&rotated).contains("/before"));
    assert!(p.stderr().contains("SIGUSR1"), "{}", p.stderr());
}

#[test]
fn sigusr2_and_sigpipe_do_not_kill_it() {
    let (addr, rest) = respond_config("", "alive");
    let mut p = Portico::start(&rest);
    p.signal("USR2");
    p.signal("PIPE");
    // A later request proves the signals were delivered and survived:
    // signals to one process are handled in order with its other work
    // long before a fresh connection is accepted and answered.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(http_get_raw(addr, "/"), Some((200, "alive".to_string())));
    assert!(p.child.try_wait().unwrap().is_none(), "{}", p.stderr());
    let status = p.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}");
}

/// Lays out a Kubernetes ConfigMap volume in `dir`: `..<stamp>/proxy.toml`,
/// `..data -> ..<stamp>`, `proxy.toml -> ..data/proxy.toml`; an update
/// (`stamp` again) writes a new timestamped folder, renames a new `..data`
/// over the old one and removes the old folder, as the kubelet does.
fn configmap_update(dir: &Path, stamp: &str, text: Option<&str>) {
    let data = dir.join(format!("..{stamp}"));
    std::fs::create_dir(&data).unwrap();
    if let Some(text) = text {
        std::fs::write(data.join("proxy.toml"), text).unwrap();
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(format!("..{stamp}"), dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if !dir.join("proxy.toml").exists() {
        std::os::unix::fs::symlink("..data/proxy.toml", dir.join("proxy.toml")).unwrap();
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

#[test]
fn a_configmap_symlink_swap_reloads_every_time() {
    let dir = tempfile::tempdir().unwrap();
    // The first version is written through the symlinks by the harness.
    configmap_update(dir.path(), "2026_11_29_01", None);
    let (addr, l) = listener_toml("web", "");
    let config = |body: &str| respond_config_at(&l, "watch_config = true", body);
    let p = Portico::start_in(dir, &config("one"));
    assert_eq!(http_get_raw(addr, "/"), Some((200, "one".to_string())));
    let text = |body: &str| format!("[admin]\nbind = \"{}\"\n\n{}", p.admin, config(body));

    for (stamp, body, generation_after) in
        [("2026_11_29_02", "two", 2), ("2026_11_29_03", "three", 3)]
    {
        configmap_update(p.dir.path(), stamp, Some(&text(body)));
        let served = wait_for(Duration::from_secs(10), || {
            http_get_raw(addr, "/").filter(|r| r.1 == body)
        });
        assert!(
            served.is_some(),
            "update to {body} not followed: {}",
            p.stderr()
        );
        assert_eq!(generation(p.admin), Some(generation_after));
    }
}

#[test]
fn a_rewritten_certificate_reloads_with_watch_config() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (_, l) = listener_toml(
        "web",
        "tls = { cert = \"certs/server.crt\", key = \"certs/server.key\" }",
    );
    let p = Portico::start_in(dir, &respond_config_at(&l, "watch_config = true", "hi"));
    assert_eq!(generation(p.admin), Some(1));
    // A renewal: a new key and certificate, written in place.
    let renewed = tempfile::tempdir().unwrap();
    let next = Pki::generate(renewed.path());
    std::fs::write(pki.dir.join("server.key"), next.read("server.key")).unwrap();
    std::fs::write(pki.dir.join("server.crt"), next.read("server.crt")).unwrap();
    let reloaded = wait_for(Duration::from_secs(10), || {
        generation(p.admin).filter(|g| *g >= 2)
    });
    assert_eq!(reloaded, Some(2), "{}", p.stderr());
    assert!(p.stderr().contains("file the config names changed"));
}

#[test]
fn log_format_json_writes_json_lines_on_stderr() {
    let (_, rest) = respond_config("log_format = \"json\"", "hi");
    let p = Portico::start(&rest);
    let log = p.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    let mut saw_admin = false;
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
        saw_admin |= v["fields"]["message"] == "admin listening";
    }
    assert!(saw_admin, "{log}");
}

#[test]
fn log_level_in_the_config_applies_unless_rust_log_is_set() {
    let (_, rest) = respond_config("log_level = \"warn\"", "hi");
    let quiet = Portico::start_custom(tempfile::tempdir().unwrap(), &rest, |cmd| {
        cmd.env_remove("RUST_LOG");
    });
    assert!(
        !quiet.stderr().contains("admin listening"),
        "{}",
        quiet.stderr()
    );
    let (_, rest) = respond_config("log_level = \"warn\"", "hi");
    let loud = Portico::start_custom(tempfile::tempdir().unwrap(), &rest, |cmd| {
        cmd.env("RUST_LOG", "info");
    });
    assert!(
        loud.stderr().contains("admin listening"),
        "{}",
        loud.stderr()
    );
}

#[test]
fn the_watchdog_is_fed_under_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&socket).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (_, rest) = respond_config("", "hi");
    let _p = Portico::start_custom(dir, &rest, |cmd| {
        cmd.env("NOTIFY_SOCKET", &socket)
            .env("WATCHDOG_USEC", "200000");
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while seen.len() < 50 {
        let n = notify.recv(&mut buf).expect("a notify message");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg == "WATCHDOG=1\n" && seen.iter().any(|m| m == "READY=1\n");
        seen.push(msg);
        if done {
            break;
        }
    }
    assert!(seen.iter().any(|m| m == "READY=1\n"), "{seen:?}");
    assert!(
        seen.iter().filter(|m| *m == "WATCHDOG=1\n").count() >= 1,
        "{seen:?}"
    );
}
