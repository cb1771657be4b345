//! Operational logs (tracing, RUST_LOG): a line logged while a request is
//! served names that request's id.

mod support;

use std::time::{Duration, Instant};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_lines_carry_the_request_id() {
    let dead = format!("127.0.0.1:{}", free_port());
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "{l}\n[[route]]\nname = \"dead\"\nupstream = \"gone\"\n\n[upstream.gone]\nservers = [\"{dead}\"]\n"
    ));
    let r = client()
        .get(format!("http://{addr}/x"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-request-id"], "trace-me-123");

    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = p.stderr();
        if let Some(l) = log.lines().find(|l| l.contains("upstream request failed")) {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no failure logged: {log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(line.contains("request_id"), "{line}");
    assert!(line.contains("trace-me-123"), "{line}");
}
