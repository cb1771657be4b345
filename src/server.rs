//! Process lifecycle: start, signals, config watching, drain, exit.
//!
//! Guarantees: nothing is bound unless the whole config built; a bind
//! failure is reported at the listener's `bind` line and nothing keeps
//! running; SIGHUP (and POST /reload, and a file change with watch_config)
//! reloads through [`Supervisor::reload`]; SIGTERM/SIGINT stop every
//! listener from accepting, let connections finish what they are doing for
//! up to `server.shutdown_timeout`, then return. Under systemd
//! (NOTIFY_SOCKET) READY=1, RELOADING=1 and STOPPING=1 are sent.

use crate::admin::AdminState;
use crate::config::{ConfigError, LoadedConfig};
use crate::supervisor::Supervisor;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// How long exit waits for the access log to write the lines still queued.
const ACCESS_LOG_FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// Runs portico until a stop signal; returns after draining and writing out
/// the access log. `inherited` are the sockets passed by systemd
/// ([`crate::sys::inherited_sockets`]).
pub async fn run(
    lc: LoadedConfig,
    inherited: HashMap<SocketAddr, std::net::TcpListener>,
) -> Result<(), ConfigError> {
    let config_path = lc.source.path.clone();
    let signal_error = |e: std::io::Error| {
        ConfigError::plain(&config_path, format!("cannot install signal handlers: {e}"))
    };
    let signals = Signals {
        term: signal(SignalKind::terminate()).map_err(signal_error)?,
        int: signal(SignalKind::interrupt()).map_err(signal_error)?,
        hup: signal(SignalKind::hangup()).map_err(signal_error)?,
    };

    let (sup, bound) = Supervisor::new(lc, config_path.clone(), inherited)?;
    let (admin_addr, admin_listener) = bind_admin(&sup)?;

    sup.start(bound);
    let (admin_stop_tx, admin_stop) = watch::channel(false);
    let admin_state = Arc::new(AdminState::new(sup.clone()));
    tracing::info!(bind = %admin_addr, "admin listening");
    let admin_task = tokio::spawn(crate::admin::serve(
        admin_listener,
        admin_state.clone(),
        admin_stop,
    ));
    admin_state.ready.store(true, Ordering::Release);
    crate::sys::notify("READY=1");

    serve_until_stopped(&sup, &config_path, signals).await;

    tracing::info!(
        open_connections = sup.tracker.open(),
        "shutting down: draining"
    );
    crate::sys::notify("STOPPING=1");
    admin_state.ready.store(false, Ordering::Release);
    drain(&sup).await;
    let _ = admin_stop_tx.send(true);
    admin_task.abort();
    let access_log = sup.shared.runtime.load().access_log.clone();
    if !access_log.flush(ACCESS_LOG_FLUSH_LIMIT).await {
        tracing::warn!("access log: lines still queued at exit may be lost");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The signals portico acts on.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

/// Binds admin.bind of the config in force.
fn bind_admin(sup: &Supervisor) -> Result<(SocketAddr, TcpListener), ConfigError> {
    let snap = sup.snapshot.load_full();
    let admin_cfg = &snap.config.config.admin;
    let admin_addr: std::net::SocketAddr = admin_cfg
        .bind
        .get_ref()
        .parse()
        .map_err(|_| snap.config.error_at(&admin_cfg.bind, "bad admin.bind"))?;
    let admin_listener = crate::listener::bind(admin_addr, 1024).map_err(|e| {
        snap.config.error_at(
            &admin_cfg.bind,
            format!("cannot bind admin {admin_addr}: {e}"),
        )
    })?;
    Ok((admin_addr, admin_listener))
}

/// Reloads on SIGHUP and (with watch_config) when the config file changes,
/// until SIGTERM or SIGINT.
async fn serve_until_stopped(sup: &Arc<Supervisor>, config_path: &Path, mut signals: Signals) {
    let (changed_tx, mut changed) = mpsc::channel::<()>(1);
    // Always watched, so a reload can turn watch_config on or off; the flag
    // is read when the file changes.
    let _watcher = watch_file(config_path, changed_tx.clone());
    loop {
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = sup.reload().await;
            }
            Some(()) = changed.recv() => {
                // Editors write in several steps (or save by rename): wait
                // for the file to settle, then take every event as one.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while changed.try_recv().is_ok() {}
                if sup.snapshot.load().config.config.server.watch_config {
                    tracing::info!("config file changed: reloading");
                    let _ = sup.reload().await;
                }
            }
        }
    }
}

/// Stops every listener and waits up to server.shutdown_timeout for the
/// open connections to finish.
async fn drain(sup: &Supervisor) {
    sup.stop_all();
    let timeout = sup.snapshot.load().config.config.server.shutdown_timeout.0;
    if tokio::time::timeout(timeout, sup.tracker.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            open_connections = sup.tracker.open(),
            "shutdown timeout reached; closing remaining connections"
        );
    }
}

/// Watches the config file's folder (so a save by rename is seen) and sends
/// a tick for every event that touches the file.
fn watch_file(path: &std::path::Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let path: PathBuf = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = path.parent()?.to_path_buf();
    let name = path.file_name()?.to_os_string();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if ev.kind.is_access() {
                return;
            }
            if ev
                .paths
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str()))
            {
                let _ = tx.try_send(());
            }
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the config file; watch_config is off");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::error!(error = %e, dir = %dir.display(), "cannot watch the config folder; watch_config is off");
        return None;
    }
    tracing::info!(file = %path.display(), "watching the config file");
    Some(watcher)
}
