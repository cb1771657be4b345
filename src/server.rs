//! Process lifecycle: start, signals, config watching, drain, exit.
//!
//! Guarantees: nothing is bound unless the whole config built; a bind
//! failure is reported at the listener's `bind` line (or the admin's) and
//! nothing keeps running. Signals:
//! - SIGHUP reloads through [`Supervisor::reload`] (as do POST /reload and,
//!   with watch_config, a change on disk: see [`FileWatch`]);
//! - SIGTERM, SIGINT, SIGQUIT: /ready turns 503 at once; listeners keep
//!   accepting and serving for `server.shutdown_delay` (load balancers
//!   take the instance out meanwhile), then stop accepting; open
//!   connections finish what they are doing for up to
//!   `server.shutdown_timeout`; then `run` returns. A second one of these
//!   during the delay or the drain ends it at once;
//! - SIGUSR1 reopens the access log file (logrotate);
//! - SIGUSR2 and SIGPIPE are ignored.
//!
//! Under systemd (NOTIFY_SOCKET) READY=1, RELOADING=1 and STOPPING=1 are
//! sent, and WATCHDOG=1 at half of WATCHDOG_USEC from a task of the
//! runtime (so it stops when the runtime stops making progress).

use crate::admin::{AdminState, Exposure};
use crate::config::{Config, ConfigError, LoadedConfig};
use crate::supervisor::Supervisor;
use sd_notify::NotifyState;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How long exit waits for the access log to write the lines still queued.
const ACCESS_LOG_FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// The same, when a second stop signal asked to exit at once.
const ACCESS_LOG_FLUSH_LIMIT_FORCED: Duration = Duration::from_secs(1);

/// How long a change on disk must settle before it is acted on: editors
/// write in several steps, a ConfigMap or Secret update is several renames,
/// and a certificate and its key are rewritten one after the other.
const SETTLE: Duration = Duration::from_millis(300);

/// How often the watched set is checked against the config in force (a
/// reload by POST /reload may name other files) and the symlinks on disk.
const WATCH_REFRESH: Duration = Duration::from_secs(2);

/// Runs portico until a stop signal; returns after draining and writing out
/// the access log. `inherited` are the sockets passed by systemd
/// ([`crate::sys::inherited_sockets`]).
pub async fn run(lc: LoadedConfig, inherited: crate::sys::Inherited) -> Result<(), ConfigError> {
    crate::sys::ignore_stray_signals();
    let config_path = lc.source.path.clone();
    let mut signals = Signals::install().map_err(|e| {
        ConfigError::plain(&config_path, format!("cannot install signal handlers: {e}"))
    })?;

    let files = FileWatch::start(&lc);
    let (sup, bound) = Supervisor::new(lc, config_path.clone(), inherited)?;
    let admin_binds = bind_admin(&sup)?;

    sup.start(bound);
    let (admin_stop_tx, admin_stop) = watch::channel(false);
    let admin_state = Arc::new(AdminState::new(sup.clone()));
    let admin_tasks: Vec<JoinHandle<()>> = admin_binds
        .into_iter()
        .map(|(exposure, addr, listener)| {
            tracing::info!(bind = %addr, public = exposure == Exposure::Public, "admin listening");
            tokio::spawn(crate::admin::serve(
                listener,
                admin_state.clone(),
                exposure,
                admin_stop.clone(),
            ))
        })
        .collect();
    admin_state.ready.store(true, Ordering::Release);
    crate::sys::notify(&[NotifyState::Ready]);
    let watchdog = start_watchdog();

    let stop = serve_until_stopped(&sup, &config_path, &mut signals, files).await;
    let forced = shut_down(&sup, &admin_state, &mut signals.stop, stop).await;

    let _ = admin_stop_tx.send(true);
    for t in admin_tasks.iter().chain(watchdog.as_ref()) {
        t.abort();
    }
    let access_log = sup.shared.runtime.load().access_log.clone();
    let limit = match forced {
        true => ACCESS_LOG_FLUSH_LIMIT_FORCED,
        false => ACCESS_LOG_FLUSH_LIMIT,
    };
    if !access_log.flush(limit).await {
        tracing::warn!("access log: lines still queued at exit may be lost");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The signals portico acts on. Once installed, a handler stays for the
/// life of the process: a second SIGTERM is seen, never the default action.
struct Signals {
    stop: StopSignals,
    hup: Signal,
    usr1: Signal,
}

/// SIGTERM, SIGINT and SIGQUIT.
struct StopSignals {
    term: Signal,
    int: Signal,
    quit: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            stop: StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                quit: signal(SignalKind::quit())?,
            },
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

impl StopSignals {
    /// The next stop signal (SIGTERM, SIGINT or SIGQUIT), by name.
    async fn stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.quit.recv() => "SIGQUIT",
        }
    }
}

/// The admin binds: admin.bind, and admin.public_bind when set.
fn bind_admin(sup: &Supervisor) -> Result<Vec<(Exposure, SocketAddr, TcpListener)>, ConfigError> {
    let snap = sup.snapshot.load_full();
    let admin_cfg = &snap.config.config.admin;
    let mut out = Vec::new();
    for (exposure, at) in [
        (Exposure::Full, &admin_cfg.bind),
        (Exposure::Public, &admin_cfg.public_bind),
    ] {
        if at.get_ref().is_empty() {
            continue;
        }
        let addr: SocketAddr = at
            .get_ref()
            .parse()
            .map_err(|_| snap.config.error_at(at, "bad admin address"))?;
        let listener = crate::listener::bind(addr, 1024).map_err(|e| {
            snap.config
                .error_at(at, format!("cannot bind admin {addr}: {e}"))
        })?;
        out.push((exposure, addr, listener));
    }
    Ok(out)
}

/// With WATCHDOG_USEC set for this process: a task that sends WATCHDOG=1
/// at half the interval. It runs on the runtime, so a runtime that stops
/// making progress stops the pings and systemd restarts the service.
fn start_watchdog() -> Option<JoinHandle<()>> {
    let interval = crate::sys::watchdog_interval()?;
    let period = (interval / 2).max(Duration::from_millis(1));
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog on"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            crate::sys::notify(&[NotifyState::Watchdog]);
        }
    }))
}

/// Reloads on SIGHUP and (with watch_config) when a watched file changes,
/// reopens the access log on SIGUSR1, until a stop signal: its name.
async fn serve_until_stopped(
    sup: &Arc<Supervisor>,
    config_path: &Path,
    signals: &mut Signals,
    (mut files, mut changed): (FileWatch, mpsc::Receiver<Changed>),
) -> &'static str {
    let mut refresh = tokio::time::interval(WATCH_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = sup.snapshot.load_full();
    let mut seen_generation = started.generation;
    loop {
        tokio::select! {
            name = signals.stop.stop() => return name,
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = sup.reload().await;
            }
            _ = signals.usr1.recv() => {
                tracing::info!("SIGUSR1: reopening the access log");
                sup.shared.runtime.load().access_log.reopen();
            }
            Some(first) = changed.recv() => {
                tokio::time::sleep(SETTLE).await;
                let mut named = first == Changed::Named;
                while let Ok(c) = changed.try_recv() {
                    named |= c == Changed::Named;
                }
                reload_for_change(sup, config_path, named).await;
            }
            _ = refresh.tick() => {}
        }
        let now = sup.snapshot.load();
        files.refresh(&now.config);
        if now.generation != seen_generation {
            seen_generation = now.generation;
            warn_restart_only(&started.config.config, &now.config.config);
        }
    }
}

/// Logs the settings read only at start that the config in force changed
/// (they keep their start values until a restart).
fn warn_restart_only(started: &Config, now: &Config) {
    let (s, n) = (&started.server, &now.server);
    let (sa, na) = (&started.admin, &now.admin);
    let changed: Vec<&str> = [
        (
            "server.worker_threads",
            s.worker_threads != n.worker_threads,
        ),
        ("server.log_format", s.log_format != n.log_format),
        (
            "server.log_level",
            s.log_level.get_ref() != n.log_level.get_ref(),
        ),
        ("admin.bind", sa.bind.get_ref() != na.bind.get_ref()),
        (
            "admin.public_bind",
            sa.public_bind.get_ref() != na.public_bind.get_ref(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, differs)| differs.then_some(name))
    .collect();
    if !changed.is_empty() {
        tracing::warn!(settings = ?changed, "changed settings that take effect at restart only");
    }
}

/// With watch_config on: reloads after a file the config names changed,
/// or when the config file's text differs from the one in force (so that
/// touching it, or a symlink swap to the same content, costs no
/// generation).
async fn reload_for_change(sup: &Arc<Supervisor>, config_path: &Path, named: bool) {
    let snap = sup.snapshot.load_full();
    if !snap.config.config.server.watch_config {
        return;
    }
    let config_changed = tokio::fs::read_to_string(config_path)
        .await
        .map_or(true, |text| text != snap.config.source.text);
    drop(snap);
    if named {
        tracing::info!("a certificate, key or other file the config names changed: reloading");
    } else if config_changed {
        tracing::info!("config file changed: reloading");
    } else {
        return;
    }
    let _ = sup.reload().await;
}

/// From the first stop signal to the end: /ready 503, shutdown_delay of
/// serving as usual, then the drain. Returns whether a second stop signal
/// cut it short.
async fn shut_down(
    sup: &Supervisor,
    admin: &AdminState,
    signals: &mut StopSignals,
    first: &'static str,
) -> bool {
    admin.ready.store(false, Ordering::Release);
    crate::sys::notify(&[NotifyState::Stopping]);
    let server = &sup.snapshot.load().config.config.server;
    let (delay, timeout) = (server.shutdown_delay.0, server.shutdown_timeout.0);
    if !delay.is_zero() {
        tracing::info!(
            signal = first,
            delay_ms = delay.as_millis() as u64,
            "shutting down: /ready is 503, still serving until the drain"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            again = signals.stop() => {
                tracing::warn!(signal = again, "second stop signal: exiting now");
                sup.stop_all();
                return true;
            }
        }
    }
    tracing::info!(
        signal = first,
        open_connections = sup.tracker.open(),
        "shutting down: draining"
    );
    sup.stop_all();
    tokio::select! {
        drained = tokio::time::timeout(timeout, sup.tracker.drained()) => {
            if drained.is_err() {
                tracing::warn!(
                    open_connections = sup.tracker.open(),
                    "shutdown timeout reached; closing remaining connections"
                );
            }
            false
        }
        again = signals.stop() => {
            tracing::warn!(
                signal = again,
                open_connections = sup.tracker.open(),
                "second stop signal: closing remaining connections now"
            );
            true
        }
    }
}

/// Which kind of file changed on disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Changed {
    /// The config file.
    Config,
    /// A file the config names ([`crate::config::named_files`]).
    Named,
}

/// Watched folders, each with the names in it that matter.
type WatchSet = BTreeMap<PathBuf, Vec<(OsString, Changed)>>;

/// Follows the config file on disk (always, so that a reload can turn
/// watch_config on) and, with watch_config on, every file the config names
/// ([`crate::config::named_files`]: certificates, keys, CA bundles, JWT
/// key and JWKS files, the HMAC secret, the admin token).
///
/// The folders are watched, not the files, so that a save by rename is
/// seen; each file is followed both at the path as named and at the end of
/// its symlinks. A Kubernetes ConfigMap or Secret volume
/// (`proxy.toml -> ..data/proxy.toml`, `..data -> ..2026_...`) is updated
/// by renaming a new `..data` over the old one: an event on a `..` name in
/// a named file's folder counts as a change of that file. After every
/// event and every [`WATCH_REFRESH`] the set is computed again and the
/// watcher rebuilt if it differs, so every later swap is seen too.
struct FileWatch {
    tx: mpsc::Sender<Changed>,
    set: WatchSet,
    watcher: Option<notify::RecommendedWatcher>,
}

impl FileWatch {
    /// Starts following the files of `lc`, the config about to be served
    /// (before readiness, so that no change after it is missed); changes
    /// arrive on the receiver.
    fn start(lc: &LoadedConfig) -> (FileWatch, mpsc::Receiver<Changed>) {
        let (tx, rx) = mpsc::channel(16);
        let mut files = FileWatch {
            tx,
            set: WatchSet::new(),
            watcher: None,
        };
        files.refresh(lc);
        (files, rx)
    }

    /// Rebuilds the watcher if the files to follow (those of `lc`, the
    /// config in force), or where their symlinks lead, changed.
    fn refresh(&mut self, lc: &LoadedConfig) {
        let mut set = WatchSet::new();
        add_target(&mut set, &lc.source.path, Changed::Config);
        if lc.config.server.watch_config {
            for f in crate::config::named_files(lc) {
                add_target(&mut set, &f.path, Changed::Named);
            }
        }
        if set == self.set && self.watcher.is_some() {
            return;
        }
        self.watcher = start_watcher(&set, self.tx.clone());
        self.set = set;
    }
}

/// Adds `path` (as named and, if a symlink, where it leads) to `set`.
fn add_target(set: &mut WatchSet, path: &Path, kind: Changed) {
    let named = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let resolved = std::fs::canonicalize(&named).ok();
    for p in std::iter::once(named).chain(resolved) {
        if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
            let names = set.entry(dir.to_path_buf()).or_default();
            if !names.iter().any(|(n, k)| n == name && *k == kind) {
                names.push((name.to_os_string(), kind));
            }
        }
    }
}

/// A watcher over the folders of `set` that sends the kind of every
/// change (not a read, not a metadata change) to a named file or to a
/// `..` name beside one.
fn start_watcher(set: &WatchSet, tx: mpsc::Sender<Changed>) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let names = Arc::new(set.clone());
    let on_event = move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if matches!(
            ev.kind,
            EventKind::Access(_) | EventKind::Modify(notify::event::ModifyKind::Metadata(_))
        ) {
            return;
        }
        for p in &ev.paths {
            let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                continue;
            };
            let Some(targets) = names.get(dir) else {
                continue;
            };
            let swap = name.as_encoded_bytes().starts_with(b"..");
            for (target, kind) in targets {
                if swap || target == name {
                    let _ = tx.try_send(*kind);
                }
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(on_event) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch files; watch_config is off");
            return None;
        }
    };
    for dir in set.keys() {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch a folder");
        }
    }
    tracing::debug!(folders = set.len(), "watching files");
    Some(watcher)
}
