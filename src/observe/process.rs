//! The standard process_* metrics, read from /proc at scrape time.
//!
//! Guarantees: a scrape reads a few small /proc files and lists
//! /proc/self/fd; nothing runs between scrapes. A value whose file cannot
//! be read (not Linux, /proc not mounted) is `None` (the metric is left
//! out), never made up.

/// Clock ticks per second of /proc's CPU times: USER_HZ, which Linux fixes
/// at 100 for userspace on every architecture it exports /proc for.
const TICKS_PER_SECOND: f64 = 100.0;

/// What a scrape shows of the process; `None` where /proc could not say.
pub struct Stats {
    /// User and system CPU time.
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    /// Unix time.
    pub start_time_seconds: Option<f64>,
}

/// Reads the process's stats now.
pub fn read() -> Stats {
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
    let cpu_seconds = match (tick(11), tick(12)) {
        (Some(u), Some(s)) => Some((u + s) as f64 / TICKS_PER_SECOND),
        _ => None,
    };
    // The directory handle itself is one of the entries listed.
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count().saturating_sub(1) as u64);
    let start_time_seconds = match (tick(19), boot_time()) {
        (Some(start), Some(boot)) => Some(boot as f64 + start as f64 / TICKS_PER_SECOND),
        _ => None,
    };
    Stats {
        cpu_seconds,
        resident_bytes: resident_bytes(),
        open_fds,
        start_time_seconds,
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
    fn reads_all_four_on_linux() {
        let s = super::read();
        assert!(s.cpu_seconds.is_some());
        assert!(s.resident_bytes.is_some_and(|b| b > 0));
        assert!(s.open_fds.is_some_and(|n| n >= 3));
        assert!(s.start_time_seconds.is_some_and(|t| t > 1e9));
    }
}
