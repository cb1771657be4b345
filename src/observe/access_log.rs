//! The access log: one line per request, written off the request path.
//!
//! Requests hand a finished [`LogEntry`] to a channel; one writer thread
//! formats and writes the lines through a buffer that is flushed whenever the
//! channel runs dry, so a quiet proxy's lines appear at once and a busy one
//! does few write syscalls. If the writer falls behind by more than
//! [`QUEUE_LIMIT`] lines, new lines are dropped (and counted) rather than
//! letting memory grow or requests wait.
//!
//! [`AccessLog::reopen`] (SIGUSR1) makes the writer open its file path
//! again before its next line: once logrotate has renamed the
//! file, new lines go to a new file at the configured path.
//!
//! A target that fails (a write error, a reopen that cannot open the path)
//! is reported through `tracing`, like every operational log line, so it
//! comes out in `server.log_format`.
//!
//! At shutdown [`AccessLog::flush`] waits until every line queued so far is
//! written, also by the writers of logs that a reload replaced, so a process
//! that exits loses no line it had accepted.

use super::trace::TraceId;
use crate::config::AccessLogFormat;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// Lines that may wait for the writer before new ones are dropped.
pub const QUEUE_LIMIT: usize = 65_536;

/// What the writer thread is sent.
#[allow(clippy::large_enum_variant)] // boxing lines would allocate per request
enum Msg {
    Line(LogEntry),
    /// Answered once every line sent before it is written and flushed.
    Flush(tokio::sync::oneshot::Sender<()>),
    /// Wakes the writer to look at its reopen flag.
    Wake,
}

/// Writer threads of logs that were dropped (a reload changed the target):
/// each ends once its queue is written; [`AccessLog::flush`] joins them.
static RETIRED: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// Everything one access log line says.
pub struct LogEntry {
    pub time: SystemTime,
    pub request_id: String,
    pub listener: std::sync::Arc<str>,
    pub route: Option<std::sync::Arc<str>>,
    pub method: http::Method,
    pub path: String,
    pub version: http::Version,
    pub status: u16,
    pub upstream: Option<std::sync::Arc<str>>,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub client: SocketAddr,
    /// The host the client named (absolute-form target or :authority, else
    /// the Host header).
    pub host: Option<String>,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    /// The status of the upstream's answer, when one arrived.
    pub upstream_status: Option<u16>,
    /// Time from sending the answering attempt to its response head.
    pub upstream_duration: Option<Duration>,
    /// Attempts sent upstream (retries included); 0 when none was.
    pub attempts: u32,
    /// The connection's TLS version ("TLSv1.3"), "" on plain HTTP.
    pub tls: &'static str,
    /// From the request's valid `traceparent`.
    pub trace_id: Option<TraceId>,
    /// Why portico made the answer itself (a parse error, no route, an
    /// upstream timeout...); empty for an answer from the upstream.
    pub error: std::borrow::Cow<'static, str>,
}

/// Where access log lines go; `None` when the log is off.
pub struct AccessLog {
    sender: Option<SyncSender<Msg>>,
    writer: Option<JoinHandle<()>>,
    pub dropped: AtomicU64,
    queued: Arc<AtomicUsize>,
    /// Set by [`AccessLog::reopen`], cleared by the writer when it reopens.
    reopen: Arc<AtomicBool>,
}

/// Where the writer thread writes: stdout, or a file it can open again.
enum Target {
    Stdout,
    File(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stdout => f.write_str("stdout"),
            Target::File(path) => path.display().fmt(f),
        }
    }
}

impl Target {
    fn open(&self) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        })
    }
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn off() -> AccessLog {
        AccessLog {
            sender: None,
            writer: None,
            dropped: AtomicU64::new(0),
            queued: Arc::new(AtomicUsize::new(0)),
            reopen: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Opens the log named by `server.access_log` ("stdout", "off" or a path).
    /// The writer thread ends when the last handle is dropped, after writing
    /// what was queued.
    pub fn open(target: &str, format: AccessLogFormat) -> std::io::Result<AccessLog> {
        let target = match target {
            "off" => return Ok(AccessLog::off()),
            "stdout" => Target::Stdout,
            path => Target::File(PathBuf::from(path)),
        };
        let out = target.open()?;
        let (tx, rx) = sync_channel(QUEUE_LIMIT);
        let queued = Arc::new(AtomicUsize::new(0));
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            target,
            format,
            queued: queued.clone(),
            reopen: reopen.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(rx, out))?;
        Ok(AccessLog {
            sender: Some(tx),
            writer: Some(writer),
            dropped: AtomicU64::new(0),
            queued,
            reopen,
        })
    }

    /// Asks the writer to open its file again by path, before the next line
    /// it writes (lines queued before the call may land in either file);
    /// for stdout or an off log, nothing. Does not wait.
    pub fn reopen(&self) {
        if let Some(tx) = &self.sender {
            self.reopen.store(true, Ordering::Release);
            // A full queue wakes the writer anyway; the flag is seen then.
            let _ = tx.try_send(Msg::Wake);
        }
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues a line; false if it was dropped (the writer is behind).
    pub fn write(&self, e: LogEntry) -> bool {
        if let Some(tx) = &self.sender {
            if tx.try_send(Msg::Line(e)).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Waits until every line queued so far is written and flushed, by this
    /// log and by the logs it replaced, for at most `limit` (a log target
    /// that blocks, such as a pipe nobody reads, must not hold up exit for
    /// ever). Returns whether everything was written.
    pub async fn flush(&self, limit: Duration) -> bool {
        let retired = std::mem::take(&mut *RETIRED.lock().unwrap_or_else(|e| e.into_inner()));
        let sender = self.sender.clone();
        let (ack, done) = tokio::sync::oneshot::channel();
        // Joins and a send that may block (a full queue): on a thread of
        // their own, which exit does not wait for.
        let spawned = std::thread::Builder::new()
            .name("access-log-flush".into())
            .spawn(move || {
                for h in retired {
                    let _ = h.join();
                }
                match sender {
                    Some(tx) => {
                        let _ = tx.send(Msg::Flush(ack));
                    }
                    None => {
                        let _ = ack.send(());
                    }
                }
            });
        if spawned.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, done).await, Ok(Ok(())))
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        // The sender goes with `self`, so the writer ends after the lines
        // already queued; a later flush waits for them.
        if let Some(h) = self.writer.take() {
            RETIRED.lock().unwrap_or_else(|e| e.into_inner()).push(h);
        }
    }
}

/// Whether the target takes what is written: one error when it stops, one
/// warning when a flush gets through again, not a line per request.
#[derive(Default)]
struct Health {
    broken: bool,
    /// Lines refused since it broke (lost).
    lost: u64,
}

impl Health {
    fn wrote(&mut self, target: &Target, r: std::io::Result<()>) {
        if let Err(e) = r {
            self.lost += 1;
            self.failed(target, e);
        }
    }

    /// A line accepted into the buffer proves nothing; a flush does.
    fn flushed(&mut self, target: &Target, r: std::io::Result<()>) {
        match r {
            Ok(()) if self.broken => {
                tracing::warn!(path = %target, lost = self.lost, "access log writes work again");
                *self = Health::default();
            }
            Ok(()) => {}
            Err(e) => self.failed(target, e),
        }
    }

    fn failed(&mut self, target: &Target, e: std::io::Error) {
        if !self.broken {
            self.broken = true;
            tracing::error!(
                path = %target,
                error = %e,
                "access log write failed; lines are lost until writes work again"
            );
        }
    }
}

/// The writer thread's side of a log.
struct Writer {
    target: Target,
    format: AccessLogFormat,
    queued: Arc<AtomicUsize>,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    fn run(self, rx: Receiver<Msg>, out: Box<dyn Write + Send>) {
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
        let mut line = String::with_capacity(512);
        let mut health = Health::default();
        loop {
            let e = match rx.try_recv() {
                Ok(e) => e,
                Err(TryRecvError::Empty) => {
                    health.flushed(&self.target, w.flush());
                    match rx.recv() {
                        Ok(e) => e,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            if self.reopen.swap(false, Ordering::AcqRel) {
                self.reopen_into(&mut w);
            }
            let e = match e {
                Msg::Line(e) => e,
                Msg::Flush(ack) => {
                    health.flushed(&self.target, w.flush());
                    let _ = ack.send(());
                    continue;
                }
                Msg::Wake => continue,
            };
            self.queued.fetch_sub(1, Ordering::Relaxed);
            line.clear();
            match self.format {
                AccessLogFormat::Json => format_json(&e, &mut line),
                AccessLogFormat::Combined => format_combined(&e, &mut line),
            }
            line.push('\n');
            health.wrote(&self.target, w.write_all(line.as_bytes()));
        }
        let _ = w.flush();
    }

    /// Writes out what is buffered, then swaps in the target opened anew.
    /// If it cannot be opened, the old file stays in use.
    fn reopen_into(&self, w: &mut std::io::BufWriter<Box<dyn Write + Send>>) {
        if matches!(self.target, Target::Stdout) {
            return;
        }
        let _ = w.flush();
        match self.target.open() {
            Ok(out) => *w.get_mut() = out,
            Err(e) => tracing::warn!(
                path = %self.target,
                error = %e,
                "cannot reopen the access log; writing on to the file already open"
            ),
        }
    }
}

/// Milliseconds with microsecond precision.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

fn format_json(e: &LogEntry, out: &mut String) {
    let v = serde_json::json!({
        "time": humantime::format_rfc3339_millis(e.time).to_string(),
        "request_id": e.request_id,
        "listener": &*e.listener,
        "route": e.route.as_deref().unwrap_or(""),
        "method": e.method.as_str(),
        "path": e.path,
        "protocol": format!("{:?}", e.version),
        "status": e.status,
        "upstream": e.upstream.as_deref().unwrap_or(""),
        "duration_ms": millis(e.duration),
        "bytes_in": e.bytes_in,
        "bytes_out": e.bytes_out,
        "client": e.client.ip().to_string(),
        "host": e.host.as_deref().unwrap_or(""),
        "upstream_status": e.upstream_status,
        "upstream_duration_ms": e.upstream_duration.map(millis),
        "attempts": e.attempts,
        "user_agent": e.user_agent.as_deref().unwrap_or(""),
        "referer": e.referer.as_deref().unwrap_or(""),
        "tls": e.tls,
        "trace_id": e.trace_id.as_ref().map_or("", TraceId::as_str),
        "error": e.error,
    });
    out.push_str(&v.to_string());
}

/// NGINX's "combined" format, times in UTC.
fn format_combined(e: &LogEntry, out: &mut String) {
    use std::fmt::Write as _;
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let _ = write!(
        out,
        "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\"",
        e.client.ip(),
        clf_time(e.time),
        e.method,
        quote(&e.path),
        e.version,
        e.status,
        e.bytes_out,
        quote(e.referer.as_deref().unwrap_or("-")),
        quote(e.user_agent.as_deref().unwrap_or("-")),
    );
}

/// Common Log Format time, e.g. "10/Oct/2000:13:55:36 +0000".
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_target_counts_lost_lines_until_a_flush_gets_through() {
        let t = Target::File(PathBuf::from("/var/log/a.log"));
        let full = || Err(std::io::Error::other("no space"));
        let mut h = Health::default();
        h.wrote(&t, Ok(()));
        h.flushed(&t, Ok(()));
        assert!(!h.broken);
        h.flushed(&t, full());
        h.wrote(&t, full());
        h.wrote(&t, Ok(()));
        h.wrote(&t, full());
        assert!(h.broken);
        assert_eq!(h.lost, 2);
        h.flushed(&t, Ok(()));
        assert!(!h.broken);
        assert_eq!(h.lost, 0);
    }

    #[test]
    fn clf_time_formats_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(971_186_136);
        assert_eq!(clf_time(t), "10/Oct/2000:13:55:36 +0000");
    }
}
