//! Reading portico's /metrics with a real Prometheus text-format parser
//! (the `prometheus-parse` crate), and running `portico check`.

use prometheus_parse::{HistogramCount, Scrape, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// One parsed scrape, with its raw text for failure messages.
pub struct Prom {
    pub scrape: Scrape,
    pub text: String,
}

impl Prom {
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Value> {
        self.scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .map(|s| &s.value)
    }

    /// A counter, gauge or untyped sample with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.find(name, labels)? {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
            _ => None,
        }
    }

    /// As [`Prom::value`], 0 when the series is absent.
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// The cumulative buckets of a histogram series (labels without `le`).
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Option<Vec<HistogramCount>> {
        match self.find(name, labels)? {
            Value::Histogram(b) => {
                let mut b = b.clone();
                b.sort_by(|x, y| x.less_than.total_cmp(&y.less_than));
                Some(b)
            }
            _ => None,
        }
    }

    /// The declared type of a family (`# TYPE` line), as the parser saw it.
    pub fn has_family(&self, name: &str) -> bool {
        self.scrape.docs.contains_key(name)
    }

    /// Every sample name present.
    pub fn names(&self) -> Vec<&str> {
        self.scrape
            .samples
            .iter()
            .map(|s| s.metric.as_str())
            .collect()
    }
}

/// GET /metrics on the admin address, parsed.
pub async fn scrape(admin: SocketAddr) -> Prom {
    let resp = super::client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = resp.text().await.expect("metrics body");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    Prom { scrape, text }
}

/// Scrapes until `ok` holds (metrics are recorded when a response body
/// ends, which may be a moment after the client saw it), at most 10 s;
/// returns the last scrape either way.
pub async fn scrape_until(admin: SocketAddr, ok: impl Fn(&Prom) -> bool) -> Prom {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = scrape(admin).await;
        if ok(&p) || Instant::now() > deadline {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs `portico check` on `text` written to `dir/proxy.toml`.
pub fn check(dir: &Path, text: &str) -> (Output, String) {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env_remove("PORTICO_CONFIG")
        .output()
        .expect("run portico check");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// `PATH:LINE:COL: ` of the first occurrence of `needle` in `text` (1-based,
/// as config errors report).
pub fn position(path: &Path, text: &str, needle: &str) -> String {
    let at = text.find(needle).expect("needle in text");
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    format!("{}:{line}:{col}: ", path.display())
}
