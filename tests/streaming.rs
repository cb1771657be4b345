//! Bodies stream through: 1 GiB each way with bounded proxy memory.

mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use support::*;

const GIB: u64 = 1 << 30;
const RSS_BUDGET_KIB: u64 = 64 * 1024;

/// Samples the proxy's RSS until stopped; returns the peak.
fn sample_rss(
    pid: u32,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kib) = s
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
}

async fn setup() -> (Backend, Portico, std::net::SocketAddr) {
    let b = Backend::start("big").await;
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "[server]\naccess_log = \"off\"\nworker_threads = 2\n{l}\n[[route]]\nname = \"all\"\ntimeout = \"120s\"\nupstream = \"app\"\n{}",
        upstream_toml("app", &[&b], "")
    ));
    (b, p, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_streams_with_bounded_memory() {
    let (_b, p, addr) = setup().await;
    // Warm up so the baseline includes the runtime's steady state.
    client()
        .get(format!("http://{addr}/download/1048576"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let baseline = p.rss_kib();
    let (stop, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = sample_rss(p.pid(), stop.clone(), peak.clone());

    let r = client()
        .get(format!("http://{addr}/download/{GIB}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(GIB));
    let mut stream = r.bytes_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len() as u64;
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(total, GIB);
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    assert!(
        growth < RSS_BUDGET_KIB,
        "proxy RSS grew by {growth} KiB during a 1 GiB download"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_with_bounded_memory() {
    let (b, p, addr) = setup().await;
    client()
        .post(format!("http://{addr}/upload"))
        .body(vec![1u8; 1 << 20])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let baseline = p.rss_kib();
    let (stop, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = sample_rss(p.pid(), stop.clone(), peak.clone());

    let chunk = Bytes::from(
        (0..256 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let n_chunks = GIB / chunk.len() as u64;
    let mut expect = sha2::Sha256::new();
    for _ in 0..n_chunks {
        expect.update(&chunk);
    }
    let expect = hex(&expect.finalize());
    let c2 = chunk.clone();
    let body =
        futures_util::stream::iter(0..n_chunks).map(move |_| Ok::<_, std::io::Error>(c2.clone()));
    // Chunked (no content-length), so nothing upstream could size a buffer from it.
    let r = client()
        .post(format!("http://{addr}/upload"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer = r.text().await.unwrap();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(answer, format!("{GIB} {expect}"));
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    assert!(
        growth < RSS_BUDGET_KIB,
        "proxy RSS grew by {growth} KiB during a 1 GiB upload"
    );
    assert!(b.request_count() >= 2);
}
