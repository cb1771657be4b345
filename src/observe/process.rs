//! The standard process_* metrics, read from /proc at scrape time.
//!
//! Guarantees: a scrape reads a few small /proc files and lists
//! /proc/self/fd; nothing runs between scrapes. A metric whose file cannot
//! be read (not Linux, /proc not mounted) is left out, never made up.

use super::metrics::{family, sample};
use std::fmt::Write as _;

/// Clock ticks per second of /proc's CPU times: USER_HZ, which Linux fixes
/// at 100 for userspace on every architecture it exports /proc for.
const TICKS_PER_SECOND: f64 = 100.0;

/// Appends process_cpu_seconds_total, process_resident_memory_bytes,
/// process_open_fds and process_start_time_seconds.
pub fn render(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime is field 14 of the line, so index 11 here; stime 12;
    // starttime (field 22) 19.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());

    if let (Some(u), Some(s)) = (tick(11), tick(12)) {
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
        );
        let secs = (u + s) as f64 / TICKS_PER_SECOND;
        let _ = writeln!(out, "process_cpu_seconds_total {secs}");
    }
    if let Some(rss) = resident_bytes() {
        family(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        sample(out, "process_resident_memory_bytes", &[], rss);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries listed.
        let n = dir.count().saturating_sub(1) as u64;
        family(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        sample(out, "process_open_fds", &[], n);
    }
    if let (Some(start), Some(boot)) = (tick(19), boot_time()) {
        family(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
        );
        let secs = boot as f64 + start as f64 / TICKS_PER_SECOND;
        let _ = writeln!(out, "process_start_time_seconds {secs}");
    }
}

/// VmRSS of /proc/self/status, in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The `btime` of /proc/stat: when the system booted (Unix seconds).
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_all_four_on_linux() {
        let mut out = String::new();
        super::render(&mut out);
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(out.contains(name), "{name} missing in {out}");
        }
    }
}
