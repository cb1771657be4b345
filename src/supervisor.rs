//! The supervisor: owns the listeners and performs reloads.
//!
//! A reload is build-then-swap: parse, validate, load certs and keys, build
//! pools (reusing unchanged ones), bind the listeners that are new — and only
//! when all of that succeeded, store the new snapshot and its runtime (see
//! `Supervisor::swap` for the order) and retire the listeners that are
//! gone. On any error nothing running changes:
//! sockets bound for the attempt are closed and the old snapshot keeps
//! serving. Reloads are serialized.
//!
//! Listeners are keyed by (name, bind). One whose key is unchanged keeps its
//! socket and its connections; its settings (limits, timeouts, protocols,
//! certificates) apply to connections accepted after the swap, and a lower
//! max_connections holds even while more connections than that are open
//! (new ones wait until enough have closed). A listener renamed at the
//! same bind takes over the running sockets of the one it replaces, which
//! is the same as keeping them. A removed listener stops accepting, and
//! its connections finish their requests in flight and close. The build
//! runs on a thread of its own at nice 10 (never on a worker thread):
//! requests come first, yet a reload still finishes in well under a second
//! when portico's own load saturates every core. Client connections are
//! never cut by a reload: every request, on any connection, reads the
//! runtime in force when it starts. Listeners never read the snapshot: the
//! supervisor pushes each side (TCP, QUIC) its settings.
//!
//! A listener has up to two sides: TCP (when it serves http1 or http2) and
//! QUIC on UDP at the same address (when it serves http3). A reload that
//! keeps a listener reconciles its sides the same way: a side it gains is
//! bound before the swap, a side it loses stops and drains after it, and a
//! QUIC side it keeps stays bound and only gets the new server config
//! (certificates, limits) for new handshakes.

use crate::config::{self, ConfigError};
use crate::listener::quic::QuicListener;
use crate::listener::{ConnTracker, ListenerSettings, TcpSide};
use crate::proxy::Shared;
use crate::snapshot::{BuildMode, Snapshot};
use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
    tcp: Option<TcpSide>,
    quic: Option<QuicListener>,
}

impl RunningListener {
    fn stop(&mut self) {
        if let Some(t) = self.tcp.take() {
            t.stop();
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

/// A side handed over at a rename: (the listener that takes it, the one
/// leaving that gives its TCP side, the one that gives its QUIC side).
type Handover = (ListenerKey, Option<ListenerKey>, Option<ListenerKey>);

/// What a reload binds before the swap.
#[derive(Default)]
struct BindPlan {
    /// Sockets bound for new listeners and new sides of kept ones.
    fresh: BoundListeners,
    /// Running sides that change hands after the swap.
    handovers: Vec<Handover>,
}

/// The running sides of listeners that leave the config, at the bind of a
/// new one that wants such a side (a rename): handed over after the swap
/// rather than bound twice, which the OS would refuse.
struct Donors {
    /// Every running listener, with whether it has a TCP and a QUIC side.
    running: HashMap<ListenerKey, (bool, bool)>,
    /// The listeners of the new config.
    staying: HashSet<ListenerKey>,
    /// Sides already promised to a listener (key, TCP or not).
    claimed: HashSet<(ListenerKey, bool)>,
}

impl Donors {
    /// A listener leaving the config with a TCP (`tcp`) or QUIC side at
    /// `bind` not yet promised, now promised.
    fn take(&mut self, bind: SocketAddr, tcp: bool) -> Option<ListenerKey> {
        let found = self
            .running
            .iter()
            .filter(|(k, _)| k.1 == bind && !self.staying.contains(*k))
            .find(|(k, (has_tcp, has_quic))| {
                (if tcp { *has_tcp } else { *has_quic })
                    && !self.claimed.contains(&((*k).clone(), tcp))
            })
            .map(|(k, _)| k.clone());
        if let Some(k) = &found {
            self.claimed.insert((k.clone(), tcp));
        }
        found
    }
}

/// Owns what a reload changes: the snapshot in force and the listeners.
pub struct Supervisor {
    /// What requests read (the runtime in force) and the metrics registry.
    pub shared: Arc<Shared>,
    /// The snapshot in force: its runtime is the one in `shared`.
    pub snapshot: ArcSwap<Snapshot>,
    pub config_path: PathBuf,
    pub tracker: Arc<ConnTracker>,
    listeners: Mutex<HashMap<ListenerKey, RunningListener>>,
    /// Sockets handed over by systemd (LISTEN_FDS), by local address, not
    /// yet adopted by a listener.
    inherited: Mutex<crate::sys::Inherited>,
    reload_lock: tokio::sync::Mutex<()>,
    stopping: watch::Sender<bool>,
}

impl Supervisor {
    /// Builds the first snapshot (generation 1) and binds every listener,
    /// adopting `inherited` sockets (from [`crate::sys::inherited_sockets`]) where their
    /// address matches. Nothing is served until [`Supervisor::start`].
    pub fn new(
        lc: config::LoadedConfig,
        config_path: PathBuf,
        inherited: crate::sys::Inherited,
    ) -> Result<(Arc<Supervisor>, BoundListeners), ConfigError> {
        let lc = Arc::new(lc);
        let snapshot = Snapshot::build(lc.clone(), 1, None, BuildMode::Run)?;
        let sup = Arc::new(Supervisor {
            shared: Arc::new(Shared {
                metrics: snapshot.metrics.clone(),
                runtime: ArcSwap::new(snapshot.runtime.clone()),
            }),
            snapshot: ArcSwap::from_pointee(snapshot),
            config_path,
            tracker: Arc::new(ConnTracker::default()),
            listeners: Mutex::new(HashMap::new()),
            inherited: Mutex::new(inherited),
            reload_lock: tokio::sync::Mutex::new(()),
            stopping: watch::channel(false).0,
        });
        let snap = sup.snapshot.load_full();
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
        let snap = self.snapshot.load();
        snap.auth.start();
        snap.take_over(None);
        drop(snap);
        for (sockets, settings) in bound {
            self.spawn_listener(sockets, settings);
        }
    }

    /// The generation of the config in force.
    pub fn generation(&self) -> u64 {
        self.snapshot.load().generation
    }

    /// The running listeners. A panic elsewhere while the table was held
    /// leaves it poisoned but whole (every change to it is one map
    /// operation), so it is used as it is: refusing it would stop listeners
    /// from starting, or their accept loops would see their senders dropped
    /// and end without a word.
    fn running(&self) -> MutexGuard<'_, HashMap<ListenerKey, RunningListener>> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn bind(&self, s: &ListenerSettings) -> std::io::Result<TcpListener> {
        let inherited = self
            .inherited
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tcp
            .remove(&s.bind);
        match inherited {
            Some(l) => {
                tracing::info!(listener = %s.name, bind = %s.bind, "adopting socket passed by the service manager");
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            }
            None => crate::listener::bind(s.bind, s.backlog),
        }
    }

    /// The UDP socket of the QUIC side of `s`: the one the service manager
    /// passed for its address, else a new one.
    fn bind_udp(&self, s: &ListenerSettings) -> std::io::Result<std::net::UdpSocket> {
        let inherited = self
            .inherited
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .udp
            .remove(&s.bind);
        match inherited {
            Some(u) => {
                tracing::info!(listener = %s.name, bind = %s.bind, "adopting UDP socket passed by the service manager");
                u.set_nonblocking(true)?;
                Ok(u)
            }
            None => crate::listener::quic::bind_udp(s.bind)
                .map_err(|e| std::io::Error::new(e.kind(), format!("UDP (http3): {e}"))),
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
            true => Some(self.bind_udp(s)?),
            false => None,
        };
        Ok(BoundSockets { tcp, udp })
    }

    /// Starts serving the bound sides of a listener, adding them to its
    /// running entry.
    fn spawn_listener(self: &Arc<Self>, sockets: BoundSockets, settings: Arc<ListenerSettings>) {
        let stopping = *self.stopping.borrow();
        let tcp = sockets.tcp.map(|l| {
            tracing::info!(listener = %settings.name, bind = %settings.bind, tls = settings.tls.is_some(), "listening (TCP)");
            TcpSide::start(
                l,
                settings.clone(),
                self.shared.clone(),
                self.tracker.clone(),
                stopping,
            )
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
        let mut m = self.running();
        let entry = m.entry((settings.name.clone(), settings.bind)).or_default();
        if tcp.is_some() {
            entry.tcp = tcp;
        }
        if quic.is_some() {
            entry.quic = quic;
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
        crate::sys::notify(&[
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::MonotonicUsec(i128::from(crate::sys::monotonic_usec())),
        ]);
        let started = std::time::Instant::now();
        let result = self.reload_on_build_thread().await;
        crate::sys::notify(&[sd_notify::NotifyState::Ready]);
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

    /// Runs [`Supervisor::try_reload`] on a thread of its own.
    ///
    /// Reading files and building the snapshot is blocking work, done on a
    /// thread of its own at a lower priority: requests are served first,
    /// and a worker never waits on a reload (with few workers, a build on
    /// the same core as a worker would otherwise stall every connection of
    /// that worker for its duration).
    async fn reload_on_build_thread(self: &Arc<Self>) -> Result<u64, ConfigError> {
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
        match spawned {
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
        }
    }

    /// Build, bind, swap, then move the listeners to the new settings.
    fn try_reload(self: &Arc<Self>) -> Result<u64, ConfigError> {
        let lc = Arc::new(config::load(&self.config_path)?);
        let current = self.snapshot.load_full();
        let next = Snapshot::build(
            lc.clone(),
            current.generation + 1,
            Some(&current),
            BuildMode::Run,
        )?;
        let plan = self.bind_new_sides(&next)?;

        let next = Arc::new(next);
        self.swap(&next, &current);
        self.hand_over(plan.handovers);
        for (sockets, settings) in plan.fresh {
            self.spawn_listener(sockets, settings);
        }
        self.push_settings(&next);
        Ok(next.generation)
    }

    /// Binds what `next` adds (listeners, and sides of kept ones) before
    /// anything changes; on failure the sockets bound so far are dropped
    /// (closed) with the plan.
    fn bind_new_sides(&self, next: &Snapshot) -> Result<BindPlan, ConfigError> {
        let mut donors = Donors {
            running: self
                .running()
                .iter()
                .map(|(k, r)| (k.clone(), (r.tcp.is_some(), r.quic.is_some())))
                .collect(),
            staying: next
                .listeners
                .iter()
                .map(|s| (s.name.clone(), s.bind))
                .collect(),
            claimed: HashSet::new(),
        };
        let mut plan = BindPlan::default();
        for (settings, cfg) in next.listeners.iter().zip(&next.config.config.listeners) {
            let key = (settings.name.clone(), settings.bind);
            let (has_tcp, has_quic) = donors.running.get(&key).copied().unwrap_or_default();
            let tcp_from = (!has_tcp && wants_tcp(settings))
                .then(|| donors.take(settings.bind, true))
                .flatten();
            let quic_from = (!has_quic && settings.http3)
                .then(|| donors.take(settings.bind, false))
                .flatten();
            let missing = (
                !has_tcp && tcp_from.is_none(),
                !has_quic && quic_from.is_none(),
            );
            let sockets = self.bind_sides(settings, missing).map_err(|e| {
                next.config
                    .error_at(&cfg.bind, format!("cannot bind {}: {e}", settings.bind))
            })?;
            if sockets.tcp.is_some() || sockets.udp.is_some() {
                plan.fresh.push((sockets, settings.clone()));
            }
            if tcp_from.is_some() || quic_from.is_some() {
                plan.handovers.push((key, tcp_from, quic_from));
            }
        }
        Ok(plan)
    }

    /// Puts `next` in force in place of `previous`.
    ///
    /// The runtime is stored before the snapshot: whoever sees generation N
    /// in the snapshot (admin's /config and /metrics, the reload's answer)
    /// does so after runtime N is in force, so a request that starts after
    /// that never runs on an older runtime than the one the admin shows.
    /// (For an instant a request may run on runtime N while the admin still
    /// shows N-1: harmless, the admin only ever lags.)
    fn swap(&self, next: &Arc<Snapshot>, previous: &Snapshot) {
        next.auth.start();
        self.shared.runtime.store(next.runtime.clone());
        self.snapshot.store(next.clone());
        next.take_over(Some(previous));
    }

    /// Moves running sides to the listeners that take them over (renames).
    fn hand_over(&self, handovers: Vec<Handover>) {
        let mut m = self.running();
        for (to, tcp_from, quic_from) in handovers {
            let tcp = tcp_from.and_then(|k| m.get_mut(&k)?.tcp.take());
            let quic = quic_from.and_then(|k| m.get_mut(&k)?.quic.take());
            tracing::info!(listener = %to.0, bind = %to.1, "listener renamed: it keeps the running socket");
            let entry = m.entry(to).or_default();
            if tcp.is_some() {
                entry.tcp = tcp;
            }
            if quic.is_some() {
                entry.quic = quic;
            }
        }
    }

    /// Pushes each running side its settings in `next`; stops (to drain)
    /// the listeners, and the sides of kept ones, that `next` no longer has.
    fn push_settings(&self, next: &Snapshot) {
        self.running().retain(|key, running| {
            let Some(s) = next
                .listeners
                .iter()
                .find(|s| (&s.name, s.bind) == (&key.0, key.1))
            else {
                tracing::info!(listener = %key.0, bind = %key.1, "listener removed: draining");
                running.stop();
                return false;
            };
            match (&running.tcp, wants_tcp(s)) {
                (Some(t), true) => t.update(s),
                (Some(_), false) => {
                    tracing::info!(listener = %key.0, bind = %key.1, "TCP side removed: draining");
                    if let Some(t) = running.tcp.take() {
                        t.stop();
                    }
                }
                (None, _) => {}
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

    /// Stops every listener from accepting and asks every connection to
    /// finish gracefully.
    pub fn stop_all(&self) {
        let _ = self.stopping.send(true);
        for l in self.running().values_mut() {
            l.stop();
        }
    }
}

/// The nice value of the reload thread.
const RELOAD_NICE: i32 = 10;

/// Lowers the calling thread to nice [`RELOAD_NICE`] (or leaves it where
/// it is if already lower). At nice 10 a thread gets about a tenth of a
/// core that busy workers (nice 0) also want: requests come first, and a
/// build of a few tens of milliseconds still ends within a second when
/// portico's own load saturates every core. SCHED_IDLE would give it a
/// few thousandths, so a reload could take a minute on a busy host.
/// Best effort: a refusal leaves the normal priority.
fn background_priority() {
    if let Err(e) = crate::sys::lower_thread_priority(RELOAD_NICE) {
        tracing::debug!(error = %e, "cannot lower the reload thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn free_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn config(listeners: &[(&str, SocketAddr)]) -> String {
        let mut text = String::from("[server]\naccess_log = \"off\"\n");
        for (name, addr) in listeners {
            text.push_str(&format!(
                "[[listener]]\nname = \"{name}\"\nbind = \"{addr}\"\n"
            ));
        }
        text.push_str("[[route]]\nname = \"r\"\nrespond = { status = 200, body = \"hi\" }\n");
        text
    }

    /// A GET on a fresh connection: the status line, or what went wrong.
    async fn get(addr: SocketAddr) -> String {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut out = String::new();
            s.read_to_string(&mut out).map_err(|e| e.to_string())?;
            Ok::<_, String>(out.lines().next().unwrap_or_default().to_string())
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| e)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poisoned_listener_table_still_starts_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        let (a, b) = (free_addr(), free_addr());
        std::fs::write(&path, config(&[("a", a)])).unwrap();
        let (sup, bound) = Supervisor::new(
            config::load(&path).unwrap(),
            path.clone(),
            Default::default(),
        )
        .unwrap();
        let s = sup.clone();
        let _ = std::thread::spawn(move || {
            let _held = s.listeners.lock();
            panic!("poisoning the listener table on purpose");
        })
        .join();
        assert!(sup.listeners.is_poisoned());

        sup.start(bound);
        assert_eq!(get(a).await, "HTTP/1.1 200 OK");
        std::fs::write(&path, config(&[("a", a), ("b", b)])).unwrap();
        assert_eq!(sup.reload().await.map_err(|e| e.to_string()), Ok(2));
        assert_eq!(get(b).await, "HTTP/1.1 200 OK");
        assert_eq!(get(a).await, "HTTP/1.1 200 OK");
        sup.stop_all();
    }

    #[test]
    fn the_reload_thread_runs_at_nice_10() {
        let nice = std::thread::spawn(|| {
            background_priority();
            crate::sys::thread_nice()
        })
        .join()
        .unwrap();
        let own = crate::sys::thread_nice().unwrap();
        assert_eq!(nice, Some(own.max(RELOAD_NICE)));
    }
}
