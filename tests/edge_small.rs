//! Edge rules at the margins: retries over large pools, the retry budget, a
//! connect timeout, config values too large to compute with, and the
//! access log at exit.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw HTTP/1.1 server that answers every request on every connection
/// with 502, and counts the requests it got.
async fn always_502() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Bodiless requests only: a head ends the request.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        c.fetch_add(1, Ordering::SeqCst);
                        let answer = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\n\r\nbad";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_beyond_eight_servers_never_repeat_a_server() {
    let mut backends = Vec::new();
    for i in 0..10 {
        backends.push(Backend::start(&format!("b{i}")).await);
    }
    let refs: Vec<&Backend> = backends.iter().collect();
    let (addr, l) = listener_toml("web", "");
    // Two pools over the same servers, so each has a retry budget of its own.
    let p = Portico::start(&format!(
        "{l}\n[[route]]\nname = \"nine\"\nmatch.path_prefix = \"/nine/\"\nstrip_prefix = true\nupstream = \"nine\"\nretries = 9\n\
         [[route]]\nname = \"twelve\"\nmatch.path_prefix = \"/twelve/\"\nstrip_prefix = true\nupstream = \"twelve\"\nretries = 12\n{}{}",
        upstream_toml("nine", &refs, ""),
        upstream_toml("twelve", &refs, ""),
    ));

    // retries = 9: ten attempts, one on each server; the last server's own
    // 502 is the answer.
    let r = client()
        .get(format!("http://{addr}/nine/status/502"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let counts: Vec<usize> = backends.iter().map(Backend::request_count).collect();
    assert_eq!(counts, vec![1; 10], "{}", p.stderr());

    // retries = 12 over ten servers: still ten attempts, one each.
    let r = client()
        .get(format!("http://{addr}/twelve/status/502"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let counts: Vec<usize> = backends.iter().map(Backend::request_count).collect();
    assert_eq!(counts, vec![2; 10], "{}", p.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_against_a_half_broken_pool_is_all_retried() {
    let good = Backend::start("good").await;
    let (bad, bad_count) = always_502().await;
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "{l}\n[[route]]\nname = \"r\"\nupstream = \"u\"\n[upstream.u]\nservers = [\"{bad}\", \"{}\"]\n",
        good.addr
    ));
    let c = client();
    // One after another: the cursor moves on by the retry's pick as well, so
    // every request meets the broken server first and is retried.
    for i in 0..20 {
        let r = c
            .get(format!("http://{addr}/one/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}: {}", p.stderr());
    }
    // And all at once.
    let answers = futures_util::future::join_all((0..20).map(|i| {
        let c = c.clone();
        async move {
            c.get(format!("http://{addr}/burst/{i}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    }))
    .await;
    assert_eq!(answers, vec![200; 20], "{}", p.stderr());
    assert_eq!(good.request_count(), 40);
    assert!(bad_count.load(Ordering::SeqCst) >= 20);
}

/// A loopback listener that never completes another connection: backlog 0
/// and its accept queue filled by connections nobody accepts, so the kernel
/// drops further SYNs and a connect times out. Returns the listener and the
/// queued connections (both must stay open), or None if this kernel answers
/// a full queue otherwise.
fn blackhole() -> Option<(socket2::Socket, Vec<std::net::TcpStream>)> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&any.into()).unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(c) => queued.push(c),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Some((s, queued)),
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_is_a_502() {
    let (hole, _queued) = blackhole().expect("a full accept queue on loopback drops SYNs");
    let hole_addr = hole.local_addr().unwrap().as_socket().unwrap();
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "{l}\n[[route]]\nname = \"r\"\nupstream = \"u\"\ntimeout = \"30s\"\nretries = 0\n\
         [upstream.u]\nservers = [\"{hole_addr}\"]\nconnect_timeout = \"300ms\"\n"
    ));
    let r = client()
        .get(format!("http://{addr}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502, "{}", p.stderr());
    assert!(p.stderr().contains("connect timed out"), "{}", p.stderr());
}

fn check(dir: &Path, text: &str) -> Output {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "--config", path.to_str().unwrap()])
        .current_dir(dir)
        .env_remove("PORTICO_CONFIG")
        .output()
        .unwrap()
}

const BASE: &str = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:18080\"\n";

/// Configs whose numbers are too large to compute with, each with the
/// position and the words of the error.
fn oversized() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let upstream = |extra: &str| {
        format!(
            "{BASE}[[route]]\nname = \"r\"\nupstream = \"u\"\n[upstream.u]\nservers = [\"127.0.0.1:9\"]\n{extra}\n"
        )
    };
    vec![
        (
            "listener idle_timeout",
            format!("{BASE}idle_timeout = \"100000000000000000s\"\n"),
            ":4:16: ",
            "too long",
        ),
        (
            "listener header_read_timeout",
            format!("{BASE}header_read_timeout = \"400d\"\n"),
            ":4:23: ",
            "too long",
        ),
        (
            "shutdown_timeout",
            format!("[server]\nshutdown_timeout = \"584542046090y\"\n{BASE}"),
            ":2:20: ",
            "duration",
        ),
        (
            "route timeout",
            format!(
                "{BASE}[[route]]\nname = \"r\"\nrespond = {{ status = 200 }}\ntimeout = \"100000000000000000s\"\n"
            ),
            ":7:11: ",
            "too long",
        ),
        (
            "connect_timeout",
            upstream("connect_timeout = \"100000000000000000s\""),
            ":9:19: ",
            "too long",
        ),
        (
            "passive_eject",
            upstream("passive_eject = \"100000000000000000s\""),
            ":9:17: ",
            "too long",
        ),
        (
            "upstream idle_timeout",
            upstream("idle_timeout = \"100000000000000000s\""),
            ":9:16: ",
            "too long",
        ),
        (
            "health interval",
            upstream("health = { interval = \"100000000000000000s\" }"),
            ":9:23: ",
            "too long",
        ),
        (
            "health interval of zero",
            upstream("health = { interval = \"0s\" }"),
            ":8:11: ",
            "health.interval must be more than 0",
        ),
        (
            "max_connections",
            format!("{BASE}max_connections = 9223372036854775807\n"),
            ":2:8: ",
            "max_connections must be 1 to",
        ),
        (
            "max_header_bytes",
            format!("{BASE}max_header_bytes = 9223372036854775807\n"),
            ":2:8: ",
            "max_header_bytes must be at most",
        ),
        (
            "backlog",
            format!("{BASE}backlog = 4294967295\n"),
            ":2:8: ",
            "backlog must be at most",
        ),
    ]
}

#[test]
fn numbers_too_large_to_compute_with_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let path = path.to_str().unwrap();
    for (what, text, at, words) in oversized() {
        let o = check(dir.path(), &text);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.starts_with(&format!("{path}{at}")),
            "{what}: want {path}{at}, got {err}"
        );
        assert!(err.contains(words), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}

#[test]
fn a_run_with_an_oversized_number_exits_1_with_the_error() {
    for text in [
        format!("{BASE}max_connections = 9223372036854775807\n"),
        format!(
            "{BASE}[[route]]\nname = \"r\"\nrespond = {{ status = 200 }}\ntimeout = \"100000000000000000s\"\n"
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, &text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(["--config", path.to_str().unwrap()])
            .env_remove("PORTICO_CONFIG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A run that starts serving would never end: stop it and fail.
        let mut waited = 0;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if waited == 3000 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("portico started with {text}");
            }
            std::thread::sleep(Duration::from_millis(10));
            waited += 1;
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.starts_with(&format!("{}:", path.display())),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_an_oversized_number_keeps_the_old_config() {
    let (addr, l) = listener_toml("web", "");
    let good =
        format!("{l}\n[[route]]\nname = \"r\"\nrespond = {{ status = 200, body = \"old\" }}\n");
    let p = Portico::start(&good);
    for bad in [
        good.replace(
            "[[route]]",
            "max_connections = 9223372036854775807\n[[route]]",
        ),
        format!("{good}timeout = \"100000000000000000s\"\n"),
    ] {
        p.write_config(&bad);
        let (status, body) = p.reload().await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("proxy.toml:"), "{body}");
        let r = client()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "old");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_queued_at_exit_are_written() {
    // The log is a pipe read slowly, so lines are still queued when the
    // process is told to stop.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.log");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::open(&fifo).unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let (addr, l) = listener_toml("web", "");
    let mut p = Portico::start_in(
        dir,
        &format!(
            "[server]\naccess_log = \"{}\"\n{l}\n[[route]]\nname = \"r\"\nrespond = {{ status = 200, body = \"ok\" }}\n",
            fifo.display()
        ),
    );
    const N: usize = 1000;
    let c = client();
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (c, done) = (c.clone(), done.clone());
            tokio::spawn(async move {
                for i in (t..N).step_by(8) {
                    let r = c
                        .get(format!("http://{addr}/line/{i}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), N);
    drop(c);
    let status = p.terminate(Duration::from_secs(60));
    assert!(status.success(), "{}", p.stderr());
    let log = reader.join().unwrap();
    let mut seen: Vec<usize> = log
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["path"].as_str()?.strip_prefix("/line/")?.parse().ok()
        })
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        N,
        "{} lines in the log; {}",
        log.lines().count(),
        p.stderr()
    );
}
