//! The access log's `error` field: why portico made an answer itself.

mod support;

use std::io::{Read, Write};
use std::time::Duration;
use support::*;

/// Sends `bytes` on a fresh connection and returns the status line's code.
fn raw_status(addr: std::net::SocketAddr, bytes: &[u8]) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_says_why_portico_answered_itself() {
    let b = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (addr, l) = listener_toml("web", "");
    // Nothing listens on `dead`.
    let dead = format!("127.0.0.1:{}", free_port());
    let _p = Portico::start_in(
        dir,
        &format!(
            "[server]\naccess_log = \"{}\"\n{l}\n\
             [[route]]\nname = \"app\"\nupstream = \"a\"\nmatch.path_prefix = \"/app/\"\n\
             [[route]]\nname = \"gone\"\nupstream = \"dead\"\nmatch.path_prefix = \"/dead/\"\n\
             {}\n[upstream.dead]\nservers = [\"{dead}\"]\n",
            log.display(),
            upstream_toml("a", &[&b], "")
        ),
    );

    let c = client();
    let status = |path: &str| {
        let c = c.clone();
        let url = format!("http://{addr}{path}");
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/app/ok").await, 200);
    assert_eq!(status("/nowhere").await, 404);
    assert_eq!(status("/dead/x").await, 502);
    // Raw bytes: a client library would resolve the dots itself.
    assert_eq!(
        raw_status(
            addr,
            b"GET /app/../../etc HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ),
        400
    );
    // A header line without a colon: hyper's parser answers.
    assert_eq!(
        raw_status(
            addr,
            b"GET /app/parse HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n"
        ),
        400
    );

    // The writer flushes when its queue runs dry; wait for all five lines.
    let mut lines: Vec<serde_json::Value> = Vec::new();
    for _ in 0..500 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 5, "{lines:?}");
    let find = |path: &str, status: u64| {
        lines
            .iter()
            .find(|l| l["path"] == path && l["status"] == status)
            .unwrap_or_else(|| panic!("no line for {path} {status}: {lines:?}"))
    };
    assert_eq!(find("/app/ok", 200)["error"], "", "a proxied answer");
    assert_eq!(find("/nowhere", 404)["error"], "no route");
    assert_eq!(find("/dead/x", 502)["error"], "upstream failed");
    assert_eq!(
        find("/app/../../etc", 400)["error"],
        "path climbs above the root"
    );
    // hyper's parser answer: nothing of the head is known, not even the path.
    let parser = find("", 400);
    assert_eq!(parser["method"], "-");
    assert_eq!(parser["error"], "invalid HTTP header parsed");
}
