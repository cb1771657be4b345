//! Process lifecycle: build the first snapshot, bind, serve, handle
//! signals, drain, exit.
//!
//! Guarantees: nothing is bound unless the whole config built; a bind
//! failure is reported at the listener's `bind` line and nothing keeps
//! running; SIGTERM/SIGINT stop every listener from accepting, let
//! connections finish what they are doing for up to
//! `server.shutdown_timeout`, then return.

use crate::admin::AdminState;
use crate::config::{ConfigError, LoadedConfig};
use crate::listener::ConnTracker;
use crate::observe::access_log::AccessLog;
use crate::proxy::Shared;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Runs portico until a stop signal; returns after draining.
pub async fn run(lc: LoadedConfig) -> Result<(), ConfigError> {
    let lc = Arc::new(lc);
    let snapshot = Snapshot::build(lc.clone(), 1, None)?;
    let server_cfg = &lc.config.server;
    let access_log = AccessLog::open(&server_cfg.access_log, server_cfg.access_log_format)
        .map_err(|e| {
            lc.source.error_at(
                0,
                format!("cannot open access log {}: {e}", server_cfg.access_log),
            )
        })?;

    // Bind everything before serving anything, so a bad bind starts nothing.
    let mut bound = Vec::new();
    for (settings, cfg) in snapshot.listeners.iter().zip(&lc.config.listeners) {
        let l = crate::listener::bind(settings.bind, settings.backlog)
            .map_err(|e| lc.error_at(&cfg.bind, format!("cannot bind {}: {e}", settings.bind)))?;
        bound.push((l, settings.clone()));
    }
    let admin_addr: std::net::SocketAddr = lc
        .config
        .admin
        .bind
        .get_ref()
        .parse()
        .map_err(|_| lc.error_at(&lc.config.admin.bind, "bad admin.bind"))?;
    let admin_listener = crate::listener::bind(admin_addr, 1024).map_err(|e| {
        lc.error_at(
            &lc.config.admin.bind,
            format!("cannot bind admin {admin_addr}: {e}"),
        )
    })?;

    let shared = Arc::new(Shared {
        metrics: snapshot.metrics.clone(),
        snapshot: ArcSwap::from_pointee(snapshot),
        access_log,
    });
    let tracker = Arc::new(ConnTracker::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_state = Arc::new(AdminState::new(shared.clone()));

    let mut accept_tasks = Vec::new();
    for (l, settings) in bound {
        tracing::info!(listener = %settings.name, bind = %settings.bind, tls = settings.tls.is_some(), "listening");
        accept_tasks.push(tokio::spawn(crate::listener::accept_loop(
            l,
            settings,
            shared.clone(),
            tracker.clone(),
            stop_rx.clone(),
        )));
    }
    tracing::info!(bind = %admin_addr, "admin listening");
    let admin_task = tokio::spawn(crate::admin::serve(
        admin_listener,
        admin_state.clone(),
        stop_rx.clone(),
    ));
    admin_state.ready.store(true, Ordering::Release);
    sd_notify("READY=1");

    let mut term = signal(SignalKind::terminate())
        .map_err(|e| lc.source.error_at(0, format!("signal setup: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| lc.source.error_at(0, format!("signal setup: {e}")))?;
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| lc.source.error_at(0, format!("signal setup: {e}")))?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::warn!("SIGHUP received: configuration reload is not available in this build; restart to apply changes");
            }
        }
    }

    tracing::info!(open_connections = tracker.open(), "shutting down: draining");
    sd_notify("STOPPING=1");
    admin_state.ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    let timeout = shared
        .snapshot
        .load()
        .config
        .config
        .server
        .shutdown_timeout
        .0;
    if tokio::time::timeout(timeout, tracker.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            open_connections = tracker.open(),
            "shutdown timeout reached; closing remaining connections"
        );
    }
    admin_task.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Sends a state line to systemd when run as a notify service.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
