//! HTTP/3 vs HTTP/2 load, side by side on one portico (worker_threads = 1)
//! and one route: requests/s and latency percentiles.
//!
//! Run: `cargo bench --bench h3load` (release build of portico and of this
//! client). Environment: `H3LOAD_SECS` (per run, default 5),
//! `H3LOAD_CONNS` (connections, default 2), `H3LOAD_STREAMS` (concurrent
//! requests per connection, default 16), `H3LOAD_ROUNDS` (default 2),
//! `H3LOAD_ONLY` (`h2` or `h3`: load that protocol only, to profile it),
//! `PORTICO_BENCH_BIN` (another build of portico to measure, e.g.
//! `target/dist/portico` from scripts/build-pgo.sh).
//!
//! Both protocols use a raw client (h2 over tokio-rustls, h3 over quinn),
//! TLS 1.3 with the same certificate, the same route to the same backend
//! and the same concurrency. Everything is on 127.0.0.1. The client runs on
//! one thread of the same 2-core machine, so besides requests/s it reports
//! portico's own CPU time per request (from /proc), which the client's cost
//! does not skew.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::http3::H3Client;
use support::{Backend, Pki, Portico};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    requests: u64,
    errors: u64,
    secs: f64,
    latencies_us: Vec<u64>,
    /// CPU seconds portico used during the run (user + system).
    cpu_secs: f64,
    /// CPU seconds this process (client and backend, one thread) used.
    client_cpu_secs: f64,
}

/// CPU seconds (user + system) used so far by process `pid`.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) in ")".
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

fn merge(parts: Vec<(u64, Vec<u64>)>, secs: f64) -> Run {
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for (e, l) in parts {
        errors += e;
        latencies_us.extend(l);
    }
    latencies_us.sort_unstable();
    Run {
        requests: latencies_us.len() as u64,
        errors,
        secs,
        latencies_us,
        cpu_secs: 0.0,
        client_cpu_secs: 0.0,
    }
}

async fn h3_run(pki: &Pki, addr: SocketAddr, conns: u64, streams: u64, secs: u64) -> Run {
    let client = H3Client::new(pki, false);
    let mut workers = Vec::new();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    for _ in 0..conns {
        let c = client.connect(addr).await.expect("h3 connect");
        for _ in 0..streams {
            let mut c = c.clone();
            workers.push(tokio::spawn(async move {
                let (mut errors, mut lat) = (0u64, Vec::new());
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match c.get("/bench").await {
                        Ok(r) if r.status == 200 => lat.push(t0.elapsed().as_micros() as u64),
                        _ => errors += 1,
                    }
                }
                (errors, lat)
            }));
        }
    }
    let mut parts = Vec::new();
    for w in workers {
        parts.push(w.await.expect("worker"));
    }
    merge(parts, start.elapsed().as_secs_f64())
}

async fn h2_run(pki: &Pki, addr: SocketAddr, conns: u64, streams: u64, secs: u64) -> Run {
    let tls = Arc::new(pki.client_config(&[b"h2"], &[&rustls::version::TLS13]));
    let mut workers = Vec::new();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    for _ in 0..conns {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let io = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .expect("tls");
        let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
        tokio::spawn(conn);
        for _ in 0..streams {
            let mut send = send.clone();
            workers.push(tokio::spawn(async move {
                let (mut errors, mut lat) = (0u64, Vec::new());
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let ok = async {
                        let req = http::Request::get("https://localhost/bench").body(())?;
                        send = send.clone().ready().await?;
                        let (resp, _) = send.send_request(req, true)?;
                        let resp = resp.await?;
                        let ok = resp.status() == 200;
                        let mut body = resp.into_body();
                        while let Some(chunk) = body.data().await {
                            let chunk = chunk?;
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(ok)
                    }
                    .await;
                    match ok {
                        Ok(true) => lat.push(t0.elapsed().as_micros() as u64),
                        _ => errors += 1,
                    }
                }
                (errors, lat)
            }));
        }
    }
    let mut parts = Vec::new();
    for w in workers {
        parts.push(w.await.expect("worker"));
    }
    merge(parts, start.elapsed().as_secs_f64())
}

/// Runs a load, adding the CPU time portico (`pid`) and this process used.
async fn measured(pid: u32, load: impl std::future::Future<Output = Run>) -> Run {
    let (portico0, me0) = (cpu_secs(pid), cpu_secs(std::process::id()));
    let mut r = load.await;
    r.cpu_secs = cpu_secs(pid) - portico0;
    r.client_cpu_secs = cpu_secs(std::process::id()) - me0;
    r
}

fn report(name: &str, r: &Run) {
    println!(
        "{name}: {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  portico CPU {:>5.1} us/req ({:>3.0}% busy), client {:>3.0}% busy  ({} ok, {} errors, {:.1} s)",
        r.rps(),
        r.pct(0.50),
        r.pct(0.99),
        r.cpu_secs * 1e6 / r.requests.max(1) as f64,
        r.cpu_secs * 100.0 / r.secs,
        r.client_cpu_secs * 100.0 / r.secs,
        r.requests,
        r.errors,
        r.secs
    );
}

fn main() {
    // `cargo test --benches` runs bench targets with no arguments, and
    // `cargo bench` with `--bench`: only the latter measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("h3load: run with `cargo bench --bench h3load`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let secs = env_or("H3LOAD_SECS", 5);
        let conns = env_or("H3LOAD_CONNS", 2);
        let streams = env_or("H3LOAD_STREAMS", 16);
        let rounds = env_or("H3LOAD_ROUNDS", 2);
        let only = std::env::var("H3LOAD_ONLY").unwrap_or_default();
        let (do_h2, do_h3) = (only != "h3", only != "h2");
        let backend = Backend::start("bench").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::generate(dir.path());
        let (addr, l) = support::listener_toml("web", "");
        let cfg = format!(
            "[server]\nworker_threads = 1\naccess_log = \"off\"\n{l}protocols = [\"http1\", \"http2\", \"http3\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n[[route]]\nname = \"bench\"\nupstream = \"app\"\n{}",
            support::upstream_toml("app", &[&backend], "")
        );
        let mut p = Portico::start_in(dir, &cfg);
        let pid = p.pid();
        println!(
            "portico worker_threads = 1 (pid {pid}); {conns} connections x {streams} concurrent requests; {secs} s per run; GET /bench (small body)"
        );
        // Warm up both paths (connections to the backend, caches).
        let _ = h2_run(&pki, addr, 1, 4, 1).await;
        let _ = h3_run(&pki, addr, 1, 4, 1).await;
        let mut h2_runs = Vec::new();
        let mut h3_runs = Vec::new();
        // Alternate, so drift on a shared machine hits both alike.
        for round in 1..=rounds {
            if do_h2 {
                let r = measured(pid, h2_run(&pki, addr, conns, streams, secs)).await;
                report(&format!("round {round} h2"), &r);
                h2_runs.push(r);
            }
            if do_h3 {
                let r = measured(pid, h3_run(&pki, addr, conns, streams, secs)).await;
                report(&format!("round {round} h3"), &r);
                h3_runs.push(r);
            }
        }
        // Stopped cleanly rather than killed: an instrumented build
        // (scripts/build-pgo.sh trains on this load) writes its profile
        // only when it exits. 45 s: longer than portico's default
        // shutdown_timeout (30 s).
        p.terminate(Duration::from_secs(45));
        if !(do_h2 && do_h3) {
            return;
        }
        let total = |runs: &[Run]| runs.iter().map(Run::rps).sum::<f64>() / runs.len() as f64;
        let (h2, h3) = (total(&h2_runs), total(&h3_runs));
        println!("mean h2 {h2:.0} req/s, h3 {h3:.0} req/s: h3/h2 = {:.2}", h3 / h2);
        // The machine's speed drifts between rounds; the ratio of the two
        // runs of one round is steadier than the ratio of the means.
        let mut ratios: Vec<f64> = h2_runs
            .iter()
            .zip(&h3_runs)
            .map(|(a, b)| b.rps() / a.rps())
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "h3/h2 per round: {}; median {:.2}",
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" "),
            ratios[ratios.len() / 2]
        );
        let per_req = |runs: &[Run]| {
            let cpu: f64 = runs.iter().map(|r| r.cpu_secs).sum();
            let n: u64 = runs.iter().map(|r| r.requests).sum();
            cpu * 1e6 / n.max(1) as f64
        };
        let (c2, c3) = (per_req(&h2_runs), per_req(&h3_runs));
        println!("portico CPU per request: h2 {c2:.1} us, h3 {c3:.1} us: h3/h2 = {:.2}", c3 / c2);
    });
}
