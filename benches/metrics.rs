//! What recording metrics costs a request, and what a scrape costs.
//!
//! `cargo bench --bench metrics`; numbers go to benches/RESULTS.md
//! ("Metrics"). Groups:
//! - `record/*`: the per-request work of the pipeline (route counter +
//!   histogram, one upstream outcome, the connection gauge check), single
//!   thread, and the same from two threads on one route (shared cache line);
//! - `record/label_lookup`: for comparison, the same counter found per
//!   request by label values in a locked hash map, as label-keyed clients do;
//! - `span/*`: the per-request `request` tracing span, with logging off and
//!   with a fmt subscriber at level info (as `portico` runs by default);
//! - `render`: one /metrics scrape of a config with 100 routes;
//! - `vs_client/*`: the hand-written registry against prometheus-client,
//!   both used as portico would: handles fetched once (per snapshot), then
//!   a request's increments (a status counter and a duration histogram) on
//!   the held handles; and one render of 100 routes x 3 codes (300 counter
//!   series, 100 histograms).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portico::observe::metrics::{
    ConnGauge, ConnProtocol, ListenerMetrics, Metrics, RouteMetrics, UpstreamOutcome,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    let route = RouteMetrics::default();
    let registry = Metrics::new();
    let server = registry.server("app", "127.0.0.1:1");
    let gauge = ConnGauge::new(Arc::new(ListenerMetrics::default()));
    gauge.set_protocol(ConnProtocol::Http1);
    let d = Duration::from_micros(1234);

    g.bench_function("route", |b| {
        b.iter(|| route.record(black_box(200), black_box(d)))
    });
    g.bench_function("upstream_outcome", |b| {
        b.iter(|| server.record(black_box(UpstreamOutcome::Ok)))
    });
    g.bench_function("per_request_total", |b| {
        b.iter(|| {
            gauge.set_protocol(black_box(ConnProtocol::Http1));
            server.record(black_box(UpstreamOutcome::Ok));
            route.record(black_box(200), black_box(d));
        })
    });

    // Two threads recording into the same route at once: the cost of the
    // cache line moving between cores (the worst case: one hot route).
    let shared = Arc::new(RouteMetrics::default());
    g.bench_function("route_two_threads_same_route", |b| {
        b.iter_custom(|iters| {
            let other = {
                let m = shared.clone();
                std::thread::spawn(move || {
                    for _ in 0..iters {
                        m.record(black_box(200), black_box(d));
                    }
                })
            };
            let start = Instant::now();
            for _ in 0..iters {
                shared.record(black_box(200), black_box(d));
            }
            let t = start.elapsed();
            let _ = other.join();
            t
        })
    });

    // What a label-keyed registry does per increment: build the key, hash
    // it, take a lock, find the series.
    let map: Mutex<HashMap<(String, u16), u64>> = Mutex::new(HashMap::new());
    let route_name = String::from("api-v1");
    g.bench_function("label_lookup", |b| {
        b.iter(|| {
            let mut m = map.lock().unwrap();
            *m.entry((black_box(&route_name).clone(), black_box(200)))
                .or_insert(0) += 1;
        })
    });
    g.finish();
}

fn span(c: &mut Criterion) {
    let mut g = c.benchmark_group("span");
    let id = http::HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    // What the pipeline does per request: make the span, enter and leave it
    // (Instrument does so around each poll; one poll here), drop it.
    let run = |b: &mut criterion::Bencher| {
        b.iter(|| {
            let span = tracing::error_span!(
                "request",
                request_id = %id.to_str().unwrap_or("-")
            );
            let entered = span.enter();
            black_box(&entered);
        })
    };
    g.bench_function("logging_off", &run);
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        g.bench_function("fmt_subscriber_info", &run);
    });
    g.finish();
}

fn render(c: &mut Criterion) {
    let mut cfg = String::from("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n");
    cfg.push_str("[upstream.app]\nservers = [");
    for i in 0..10 {
        cfg.push_str(&format!("\"127.0.0.1:{}\",", 2000 + i));
    }
    cfg.push_str("]\n");
    for i in 0..100 {
        cfg.push_str(&format!(
            "[[route]]\nname = \"r{i}\"\nmatch.path_prefix = \"/r{i}/\"\nupstream = \"app\"\n"
        ));
    }
    let lc = portico::config::parse(std::path::Path::new("/bench.toml"), cfg).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let snap = portico::snapshot::Snapshot::build(
        Arc::new(lc),
        1,
        None,
        portico::snapshot::BuildMode::Check,
    )
    .expect("snapshot");
    let metrics: &Metrics = &snap.metrics;
    for r in snap.runtime.routes.iter() {
        for code in [200, 404, 502] {
            r.metrics.record(code, Duration::from_millis(3));
        }
    }
    c.bench_function("render_100_routes_10_servers", |b| {
        b.iter(|| black_box(metrics.render(&snap.in_force())).len())
    });
}

/// prometheus-client with the same series as `render`'s routes: one
/// counter family by (route, code), one histogram family by route, the
/// same bucket bounds.
type PcHandles = (
    prometheus_client::metrics::counter::Counter,
    prometheus_client::metrics::histogram::Histogram,
);

/// A prometheus-client registry with 100 routes x 3 codes and a histogram
/// per route, and each route's (200 counter, histogram) handles.
fn client_registry() -> (prometheus_client::registry::Registry, Vec<PcHandles>) {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::Histogram as PcHistogram;
    use prometheus_client::registry::Registry;

    type Labels = Vec<(&'static str, String)>;
    let bounds: Vec<f64> = portico::observe::metrics::DURATION_BUCKETS
        .iter()
        .map(|b| b.parse().unwrap_or(0.0))
        .collect();
    let requests = Family::<Labels, Counter>::default();
    let durations = Family::<Labels, PcHistogram, _>::new_with_constructor(move || {
        PcHistogram::new(bounds.clone())
    });
    let mut registry = <Registry>::default();
    registry.register("portico_requests", "Requests", requests.clone());
    registry.register(
        "portico_request_duration_seconds",
        "Durations",
        durations.clone(),
    );
    // Handles fetched once, as a snapshot build would.
    let mut held = Vec::new();
    for i in 0..100 {
        let route = format!("r{i}");
        for code in ["200", "404", "502"] {
            let l = vec![("route", route.clone()), ("code", code.to_string())];
            requests.get_or_create(&l).inc();
        }
        let ok = requests
            .get_or_create(&vec![("route", route.clone()), ("code", "200".to_string())])
            .clone();
        let hist = durations.get_or_create(&vec![("route", route)]).clone();
        hist.observe(0.003);
        held.push((ok, hist));
    }
    (registry, held)
}

/// The hand-written registry against prometheus-client (see the module
/// docs).
fn vs_client(c: &mut Criterion) {
    let (registry, held) = client_registry();
    let ours = Metrics::new();
    let our_held: Vec<_> = (0..100)
        .map(|i| {
            let r = ours.route(&format!("r{i}"));
            for code in [200, 404, 502] {
                r.record(code, Duration::from_millis(3));
            }
            r
        })
        .collect();
    let d = Duration::from_micros(1234);
    let mut g = c.benchmark_group("vs_client");
    g.bench_function("request_hand_written", |b| {
        let r = &our_held[7];
        b.iter(|| r.record(black_box(200), black_box(d)))
    });
    g.bench_function("request_prometheus_client", |b| {
        let (ok, hist) = &held[7];
        b.iter(|| {
            ok.inc();
            hist.observe(black_box(d).as_secs_f64());
        })
    });
    let in_force = portico::observe::metrics::InForce {
        generation: 1,
        listeners: Vec::new(),
        servers: Vec::new(),
        jwt_policies: Vec::new(),
        revocation_store_errors: (0, 0),
    };
    g.bench_function("render_hand_written", |b| {
        b.iter(|| black_box(ours.render(&in_force)).len())
    });
    // The /proc reads that the hand-written render includes (process_*
    // metrics, which prometheus-client's registry above does not have).
    g.bench_function("render_process_part", |b| {
        b.iter(|| black_box(portico::observe::process::read()))
    });
    g.bench_function("render_prometheus_client", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(16 * 1024);
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
            black_box(out).len()
        })
    });
    g.finish();
}

criterion_group!(benches, record, span, render, vs_client);
criterion_main!(benches);
