//! The supervisor: owns the listeners and performs reloads.
//!
//! A reload is build-then-swap: parse, validate, load certs and keys, build
//! pools (reusing unchanged ones), bind the listeners that are new — and only
//! when all of that succeeded, store the new snapshot in one atomic step and
//! retire the listeners that are gone. On any error nothing running changes:
//! sockets bound for the attempt are closed and the old snapshot keeps
//! serving. Reloads are serialized.
//!
//! Listeners are keyed by (name, bind). One whose key is unchanged keeps its
//! socket and its connections; its settings (limits, timeouts, protocols,
//! certificates) apply to connections accepted after the swap. A removed
//! listener stops accepting, and its connections finish their requests in
//! flight and close. The build runs on a low-priority thread of its own,
//! never on a worker thread. Client connections are never cut by a reload: every
//! request, on any connection, reads the snapshot in force when it starts.
//!
//! A listener has up to two sides: TCP (when it serves http1 or http2) and
//! QUIC on UDP at the same address (when it serves http3). A reload that
//! keeps a listener reconciles its sides the same way: a side it gains is
//! bound before the swap, a side it loses stops and drains after it, and a
//! QUIC side it keeps stays bound and only gets the new server config
//! (certificates, limits) for new handshakes.

use crate::config::{self, ConfigError};
use crate::listener::quic::QuicListener;
use crate::listener::ConnTracker;
use crate::proxy::Shared;
use crate::snapshot::{BuildMode, ListenerSettings, Snapshot};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::watch;

type ListenerKey = (Arc<str>, SocketAddr);

/// The sockets of one listener, bound and not yet serving.
pub struct BoundSockets {
    tcp: Option<TcpListener>,
    udp: Option<std::net::UdpSocket>,
}

/// Listening sockets bound at start, not yet serving.
pub type BoundListeners = Vec<(BoundSockets, Arc<ListenerSettings>)>;

/// The running sides of one listener.
#[derive(Default)]
struct RunningListener {
    /// Stops the TCP accept loop.
    tcp: Option<watch::Sender<bool>>,
    quic: Option<QuicListener>,
}

impl RunningListener {
    fn stop(&mut self) {
        if let Some(t) = self.tcp.take() {
            let _ = t.send(true);
        }
        if let Some(q) = self.quic.take() {
            q.stop();
        }
    }
}

/// Whether a listener has a TCP side (an http3-only one has none).
fn wants_tcp(s: &ListenerSettings) -> bool {
    s.http1 || s.http2
}

/// Owns what a reload changes: the snapshot in force and the listeners.
pub struct Supervisor {
    pub shared: Arc<Shared>,
    pub config_path: PathBuf,
    pub tracker: Arc<ConnTracker>,
    listeners: Mutex<HashMap<ListenerKey, RunningListener>>,
    /// Sockets handed over by systemd (LISTEN_FDS), by local address, not
    /// yet adopted by a listener.
    inherited: Mutex<HashMap<SocketAddr, std::net::TcpListener>>,
    reload_lock: tokio::sync::Mutex<()>,
    stopping: watch::Sender<bool>,
}

impl Supervisor {
    /// Builds the first snapshot (generation 1) and binds every listener.
    /// Nothing is served until [`Supervisor::start`].
    pub fn new(
        lc: config::LoadedConfig,
        config_path: PathBuf,
    ) -> Result<(Arc<Supervisor>, BoundListeners), ConfigError> {
        let lc = Arc::new(lc);
        let snapshot = Snapshot::build(lc.clone(), 1, None, BuildMode::Run)?;
        let sup = Arc::new(Supervisor {
            shared: Arc::new(Shared {
                metrics: snapshot.metrics.clone(),
                snapshot: arc_swap::ArcSwap::from_pointee(snapshot),
            }),
            config_path,
            tracker: Arc::new(ConnTracker::default()),
            listeners: Mutex::new(HashMap::new()),
            inherited: Mutex::new(inherited_sockets()),
            reload_lock: tokio::sync::Mutex::new(()),
            stopping: watch::channel(false).0,
        });
        let snap = sup.shared.snapshot.load_full();
        let mut bound = Vec::new();
        for (settings, cfg) in snap.listeners.iter().zip(&snap.config.config.listeners) {
            let sockets = sup.bind_sides(settings, (true, true)).map_err(|e| {
                snap.config
                    .error_at(&cfg.bind, format!("cannot bind {}: {e}", settings.bind))
            })?;
            bound.push((sockets, settings.clone()));
        }
        Ok((sup, bound))
    }

    /// Starts accept loops for listeners bound by [`Supervisor::new`], and
    /// the snapshot's background work (JWKS fetches, health checks).
    pub fn start(self: &Arc<Self>, bound: BoundListeners) {
        let snap = self.shared.snapshot.load();
        snap.auth.start();
        snap.take_over(None);
        drop(snap);
        for (sockets, settings) in bound {
            self.spawn_listener(sockets, settings);
        }
    }

    /// The generation of the config in force.
    pub fn generation(&self) -> u64 {
        self.shared.snapshot.load().generation
    }

    fn bind(&self, s: &ListenerSettings) -> std::io::Result<TcpListener> {
        let inherited = self
            .inherited
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&s.bind));
        match inherited {
            Some(l) => {
                tracing::info!(listener = %s.name, bind = %s.bind, "adopting socket passed by the service manager");
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            }
            None => crate::listener::bind(s.bind, s.backlog),
        }
    }

    /// Binds the sides of `s` that `missing` (TCP, UDP) says are not
    /// running yet. On error, whatever was bound here is closed.
    fn bind_sides(
        &self,
        s: &ListenerSettings,
        (tcp_missing, udp_missing): (bool, bool),
    ) -> std::io::Result<BoundSockets> {
        let tcp = match tcp_missing && wants_tcp(s) {
            true => Some(self.bind(s)?),
            false => None,
        };
        let udp = match udp_missing && s.http3 {
            true => Some(
                crate::listener::quic::bind_udp(s.bind)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("UDP (http3): {e}")))?,
            ),
            false => None,
        };
        Ok(BoundSockets { tcp, udp })
    }

    /// Starts serving the bound sides of a listener, adding them to its
    /// running entry.
    fn spawn_listener(self: &Arc<Self>, sockets: BoundSockets, settings: Arc<ListenerSettings>) {
        let stopping = *self.stopping.borrow();
        let tcp = sockets.tcp.map(|l| {
            let (stop_tx, stop_rx) = watch::channel(stopping);
            tracing::info!(listener = %settings.name, bind = %settings.bind, tls = settings.tls.is_some(), "listening (TCP)");
            tokio::spawn(crate::listener::accept_loop(
                l,
                settings.clone(),
                self.shared.clone(),
                self.tracker.clone(),
                stop_rx,
            ));
            stop_tx
        });
        let quic = sockets.udp.and_then(|u| {
            match QuicListener::start(
                u,
                settings.clone(),
                self.shared.clone(),
                self.tracker.clone(),
                stopping,
            ) {
                Ok(q) => {
                    tracing::info!(listener = %settings.name, bind = %settings.bind, "listening (QUIC, HTTP/3)");
                    Some(q)
                }
                Err(e) => {
                    tracing::error!(listener = %settings.name, bind = %settings.bind, error = %e, "cannot start the QUIC endpoint");
                    None
                }
            }
        });
        if let Ok(mut m) = self.listeners.lock() {
            let entry = m.entry((settings.name.clone(), settings.bind)).or_default();
            if tcp.is_some() {
                entry.tcp = tcp;
            }
            if quic.is_some() {
                entry.quic = quic;
            }
        }
    }

    /// Reloads the config file. Returns the new generation, or the error
    /// (the old config keeps serving). A reload, once started, runs to its
    /// end (swap, metrics, sd_notify) even if the caller goes away, so
    /// that two builds never overlap.
    pub async fn reload(self: &Arc<Self>) -> Result<u64, ConfigError> {
        let this = self.clone();
        match tokio::spawn(async move { this.reload_now().await }).await {
            Ok(r) => r,
            Err(e) => Err(ConfigError::plain(
                &self.config_path,
                format!("reload failed: {e}"),
            )),
        }
    }

    async fn reload_now(self: &Arc<Self>) -> Result<u64, ConfigError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        if *self.stopping.borrow() {
            return Err(ConfigError::plain(&self.config_path, "shutting down"));
        }
        crate::server::sd_notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        // Reading files and building the snapshot is blocking work, done on
        // a thread of its own at the lowest scheduling priority: requests are
        // served first, and a worker never waits on a reload (with few
        // workers, a build on the same core as a worker would otherwise
        // stall every connection of that worker for its duration).
        let started = std::time::Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let runtime = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new()
            .name("portico-reload".into())
            .spawn(move || {
                background_priority();
                // The build starts tasks (reapers, JWKS refreshers) and
                // registers sockets: it needs the runtime's context.
                let _in_runtime = runtime.enter();
                let _ = tx.send(this.try_reload());
            });
        let result = match spawned {
            Ok(_) => rx.await.unwrap_or_else(|_| {
                Err(ConfigError::plain(
                    &self.config_path,
                    "reload failed: the build thread ended without an answer",
                ))
            }),
            Err(e) => Err(ConfigError::plain(
                &self.config_path,
                format!("reload failed: cannot start the build thread: {e}"),
            )),
        };
        crate::server::sd_notify("READY=1");
        match &result {
            Ok(g) => {
                self.shared.metrics.record_reload(true);
                tracing::info!(
                    generation = g,
                    took_us = started.elapsed().as_micros() as u64,
                    "configuration reloaded"
                );
            }
            Err(e) => {
                self.shared.metrics.record_reload(false);
                tracing::error!(error = %e, "configuration reload failed; the previous configuration keeps serving");
            }
        }
        result
    }

    fn try_reload(self: &Arc<Self>) -> Result<u64, ConfigError> {
        let lc = Arc::new(config::load(&self.config_path)?);
        let current = self.shared.snapshot.load_full();
        let next = Snapshot::build(
            lc.clone(),
            current.generation + 1,
            Some(&current),
            BuildMode::Run,
        )?;

        // Bind what is new (listeners, and sides of kept ones) before
        // anything changes; on failure the sockets bound so far are dropped
        // (closed) with `fresh`.
        let running: HashMap<ListenerKey, (bool, bool)> = match self.listeners.lock() {
            Ok(m) => m
                .iter()
                .map(|(k, r)| (k.clone(), (r.tcp.is_some(), r.quic.is_some())))
                .collect(),
            Err(_) => HashMap::new(),
        };
        let mut fresh = Vec::new();
        for (settings, cfg) in next.listeners.iter().zip(&lc.config.listeners) {
            let key = (settings.name.clone(), settings.bind);
            let (has_tcp, has_quic) = running.get(&key).copied().unwrap_or_default();
            let sockets = self
                .bind_sides(settings, (!has_tcp, !has_quic))
                .map_err(|e| {
                    lc.error_at(&cfg.bind, format!("cannot bind {}: {e}", settings.bind))
                })?;
            if sockets.tcp.is_some() || sockets.udp.is_some() {
                fresh.push((sockets, settings.clone()));
            }
        }

        let generation = next.generation;
        next.auth.start();
        let next = Arc::new(next);
        self.shared.snapshot.store(next.clone());
        next.take_over(Some(&current));

        for (sockets, settings) in fresh {
            self.spawn_listener(sockets, settings);
        }
        if let Ok(mut m) = self.listeners.lock() {
            m.retain(|key, running| {
                let Some(s) = next.listeners.iter().find(|s| (&s.name, s.bind) == (&key.0, key.1))
                else {
                    tracing::info!(listener = %key.0, bind = %key.1, "listener removed: draining");
                    running.stop();
                    return false;
                };
                if !wants_tcp(s) {
                    if let Some(t) = running.tcp.take() {
                        tracing::info!(listener = %key.0, bind = %key.1, "TCP side removed: draining");
                        let _ = t.send(true);
                    }
                }
                match (&running.quic, s.http3) {
                    (Some(q), true) => q.update(s),
                    (Some(_), false) => {
                        tracing::info!(listener = %key.0, bind = %key.1, "http3 removed: draining the QUIC side");
                        if let Some(q) = running.quic.take() {
                            q.stop();
                        }
                    }
                    (None, _) => {}
                }
                true
            });
        }
        Ok(generation)
    }

    /// Stops every listener from accepting and asks every connection to
    /// finish gracefully.
    pub fn stop_all(&self) {
        let _ = self.stopping.send(true);
        if let Ok(mut m) = self.listeners.lock() {
            for l in m.values_mut() {
                l.stop();
            }
        }
    }
}

/// Puts the calling thread in SCHED_IDLE: it runs when no request work
/// wants the CPU (and is not starved: the scheduler still gives it a
/// small share). Best effort: a refusal leaves the normal priority.
fn background_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the reload thread's priority");
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd's RELOADING=1 wants it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Takes the listening sockets systemd passed (LISTEN_PID/LISTEN_FDS, from
/// fd 3 on), by local address. The variables are removed so that nothing
/// started later inherits them.
fn inherited_sockets() -> HashMap<SocketAddr, std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    let mut out = HashMap::new();
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if !pid_ok || n <= 0 {
        return out;
    }
    for fd in 3..3 + n.min(1024) {
        // SAFETY: systemd hands these descriptors to this process; each is
        // taken once, here, and owned by the TcpListener from now on.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        match l.local_addr() {
            Ok(addr) => {
                // Descriptors passed by the service manager are not CLOEXEC.
                unsafe {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
                out.insert(addr, l);
            }
            Err(e) => {
                tracing::warn!(fd, error = %e, "ignoring a passed descriptor that is not a TCP listening socket");
                std::mem::forget(l);
            }
        }
    }
    out
}
