//! Real Redis topologies on loopback ports: plain or TLS servers, a Redis
//! Cluster (made by `redis-cli --cluster create`), and a master with a
//! replica watched by three sentinels (`redis-server --sentinel`), plain or
//! TLS only (`port 0`: no plain TCP anywhere) and with or without
//! passwords.
//!
//! Every process is killed when its owner is dropped. Waits poll the real
//! state (PING, CLUSTER INFO, SENTINEL get-master-addr-by-name) with a
//! generous bound, never a fixed sleep.

use super::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it is true; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// `redis-cli -p PORT ARGS...` (plain TCP), its output trimmed.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli is needed (scripts/test.sh installs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// How redis-cli reaches a TLS-only node: the CA to verify it against, and
/// the password it requires.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    pub ca: Option<PathBuf>,
    pub password: Option<String>,
}

/// `redis-cli` to `port` through TLS when `reach` has a CA, with its
/// password; the output trimmed.
pub fn cli_with(port: u16, reach: &Reach, args: &[&str]) -> String {
    let mut c = Command::new("redis-cli");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(ca) = &reach.ca {
        c.arg("--tls").arg("--cacert").arg(ca);
    }
    if let Some(p) = &reach.password {
        c.args(["-a", p, "--no-auth-warning"]);
    }
    let out = c
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli is needed (scripts/test.sh installs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One redis-server (or sentinel) process.
pub struct Node {
    /// The port clients use (TLS for a TLS node).
    pub port: u16,
    /// The plain port, for redis-cli (0 for a TLS-only node).
    pub plain: u16,
    pub dir: PathBuf,
    /// How redis-cli reaches a TLS-only node.
    pub reach: Reach,
    child: Option<Child>,
}

/// The TLS settings of a TLS-only server or sentinel (`port 0`), with the
/// files of a [`super::Pki`] in `certs`: replication, and a sentinel's
/// links to the servers and to the other sentinels, are TLS too.
fn tls_only_settings(port: u16, certs: &Path) -> Vec<(String, String)> {
    let f = |n: &str| certs.join(n).display().to_string();
    [
        ("port", "0".to_string()),
        ("tls-port", port.to_string()),
        ("tls-cert-file", f("server.crt")),
        ("tls-key-file", f("server.key")),
        ("tls-ca-cert-file", f("ca.crt")),
        ("tls-replication", "yes".to_string()),
        ("tls-auth-clients", "no".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

impl Node {
    /// A server on 127.0.0.1:`port` in `dir`, with `extra` arguments, once
    /// it answers PING on `ping_port` (the plain port).
    pub fn start(dir: &Path, port: u16, ping_port: u16, extra: &[String]) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let mut args: Vec<String> = [
            "--port",
            &ping_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(dir.display().to_string());
        args.extend(extra.iter().cloned());
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed (scripts/test.sh installs it)");
        let n = Node {
            port,
            plain: ping_port,
            dir: dir.to_path_buf(),
            reach: Reach::default(),
            child: Some(child),
        };
        wait_until(Duration::from_secs(10), "redis-server PING", || {
            cli(ping_port, &["PING"]) == "PONG"
        });
        n
    }

    /// A server on 127.0.0.1:`port` that speaks only TLS (certificates in
    /// `certs`), requiring `password` (as a replica too) when given.
    pub fn start_tls_only(
        dir: &Path,
        port: u16,
        certs: &Path,
        password: Option<&str>,
        extra: &[String],
    ) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let mut args: Vec<String> = Vec::new();
        for (k, v) in tls_only_settings(port, certs) {
            args.extend([format!("--{k}"), v]);
        }
        for (k, v) in [("bind", "127.0.0.1"), ("save", ""), ("appendonly", "no")] {
            args.extend([format!("--{k}"), v.to_string()]);
        }
        args.extend(["--dir".to_string(), dir.display().to_string()]);
        if let Some(p) = password {
            args.extend([
                "--requirepass".into(),
                p.into(),
                "--masterauth".into(),
                p.into(),
            ]);
        }
        args.extend(extra.iter().cloned());
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed (scripts/test.sh installs it)");
        let n = Node {
            port,
            plain: 0,
            dir: dir.to_path_buf(),
            reach: Reach {
                ca: Some(certs.join("ca.crt")),
                password: password.map(str::to_string),
            },
            child: Some(child),
        };
        wait_until(Duration::from_secs(10), "TLS redis-server PING", || {
            n.cli(&["PING"]) == "PONG"
        });
        n
    }

    /// A sentinel on a free port watching `master` as `name`.
    pub fn sentinel(dir: &Path, name: &str, master: u16) -> Node {
        Self::sentinel_with(dir, name, master, &Reach::default(), None)
    }

    /// A sentinel watching `master` as `name`: TLS only when `reach` has a
    /// CA (the [`super::Pki`] files beside it), requiring the password of
    /// `reach` from its clients (and giving it to the other sentinels, as
    /// `requirepass` does); `auth_pass` is the servers' password.
    pub fn sentinel_with(
        dir: &Path,
        name: &str,
        master: u16,
        reach: &Reach,
        auth_pass: Option<&str>,
    ) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        let mut text = match &reach.ca {
            None => format!("port {port}\n"),
            Some(ca) => tls_only_settings(port, ca.parent().unwrap())
                .iter()
                .map(|(k, v)| format!("{k} {v}\n"))
                .collect(),
        };
        text.push_str(&format!(
            "bind 127.0.0.1\ndir {}\n\
             sentinel monitor {name} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {name} 400\n\
             sentinel failover-timeout {name} 1000\n\
             sentinel parallel-syncs {name} 1\n",
            dir.display()
        ));
        if let Some(p) = &reach.password {
            text.push_str(&format!("requirepass {p}\n"));
        }
        if let Some(p) = auth_pass {
            text.push_str(&format!("sentinel auth-pass {name} {p}\n"));
        }
        std::fs::write(&conf, text).unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed (scripts/test.sh installs it)");
        let n = Node {
            port,
            plain: if reach.ca.is_some() { 0 } else { port },
            dir: dir.to_path_buf(),
            reach: reach.clone(),
            child: Some(child),
        };
        wait_until(Duration::from_secs(10), "sentinel PING", || {
            n.cli(&["PING"]) == "PONG"
        });
        n
    }

    /// redis-cli to this node: its plain port, else TLS to its port.
    pub fn cli(&self, args: &[&str]) -> String {
        if self.plain != 0 {
            return cli_with(self.plain, &Reach::default(), args);
        }
        cli_with(self.port, &self.reach, args)
    }

    pub fn url(&self) -> String {
        let scheme = if self.port == self.plain {
            "redis"
        } else {
            "rediss"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `masters` masters with one replica each.
pub struct Cluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(masters: usize) -> Cluster {
        Self::start_with(masters, 1, None)
    }

    /// `replicas` per master; `tls`: the folder of a [`super::Pki`]'s
    /// files, to serve TLS (bus and replication too) on a second port of
    /// each node, reported to TLS clients by CLUSTER SLOTS.
    pub fn start_with(masters: usize, replicas: usize, tls: Option<&Path>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..masters * (1 + replicas) {
            let plain = free_port();
            let mut extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "600",
                // A replica takes over however long it was cut off.
                "--cluster-replica-validity-factor",
                "0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            // The bus port from the tests' own range too: the default,
            // port + 10000, may be a port another test or an outgoing
            // connection already holds.
            extra.extend(["--cluster-port".into(), free_port().to_string()]);
            let port = match tls {
                None => plain,
                Some(certs) => {
                    let t = free_port();
                    let f = |n: &str| certs.join(n).display().to_string();
                    extra.extend([
                        "--tls-port".into(),
                        t.to_string(),
                        "--tls-cluster".into(),
                        "yes".into(),
                        "--tls-replication".into(),
                        "yes".into(),
                        "--tls-cert-file".into(),
                        f("server.crt"),
                        "--tls-key-file".into(),
                        f("server.key"),
                        "--tls-ca-cert-file".into(),
                        f("ca.crt"),
                        // The bus and replication are mutual TLS; the
                        // server certificate is for servers only.
                        "--tls-client-cert-file".into(),
                        f("client.crt"),
                        "--tls-client-key-file".into(),
                        f("client.key"),
                        "--tls-auth-clients".into(),
                        "optional".into(),
                    ]);
                    t
                }
            };
            let mut n = Node::start(&dir.path().join(format!("n{i}")), port, plain, &extra);
            n.plain = plain;
            nodes.push(n);
        }
        // Through the ports clients use; redis-cli introduces the nodes to
        // each other with the bus port each reports (--cluster-port).
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        // Bounded: a cluster whose nodes cannot meet would wait forever.
        let mut create = Command::new("timeout");
        create.args(["30", "redis-cli"]);
        if let Some(certs) = tls {
            create
                .arg("--tls")
                .arg("--cacert")
                .arg(certs.join("ca.crt"));
        }
        let out = create
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Cluster { nodes, _dir: dir };
        c.wait_ok();
        c
    }

    /// Until every live node says cluster_state:ok and agrees on the masters.
    pub fn wait_ok(&self) {
        wait_until(Duration::from_secs(20), "cluster_state:ok", || {
            self.live()
                .all(|n| cli(n.plain, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// The seed URLs (every node).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Index of the node that serves `key` as master now.
    pub fn master_of(&self, key: &str) -> usize {
        let any = self.live().next().unwrap().plain;
        let slot: u16 = cli(any, &["CLUSTER", "KEYSLOT", key]).parse().unwrap();
        let port = master_port_of(&cli(any, &["CLUSTER", "NODES"]), slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"));
        self.nodes.iter().position(|n| n.plain == port).unwrap()
    }

    /// Until every master's writes reached its replica.
    pub fn sync_replicas(&self) {
        for n in self.live() {
            if cli(n.plain, &["ROLE"]).starts_with("master") {
                assert_eq!(cli(n.plain, &["WAIT", "1", "5000"]), "1", "replica sync");
            }
        }
    }
}

/// The port of the healthy master that `CLUSTER NODES` gives `slot` to.
fn master_port_of(nodes: &str, slot: u16) -> Option<u16> {
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let serves = f[8..].iter().any(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
        });
        if serves {
            let addr = f[1].split('@').next()?;
            return addr.rsplit(':').next()?.parse().ok();
        }
    }
    None
}

/// A master, one replica and three sentinels watching them as "portico".
pub struct Sentinels {
    pub master: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

pub const MASTER_NAME: &str = "portico";

impl Sentinels {
    /// `replica_priority` 0 keeps the replica from ever being promoted
    /// until [`Sentinels::allow_promotion`].
    pub fn start(replica_priority: u32) -> Sentinels {
        Self::start_with(replica_priority, &Reach::default(), &Reach::default())
    }

    /// As [`Sentinels::start`]; with a CA in `servers` every server and
    /// sentinel speaks only TLS (the [`super::Pki`] files beside the CA);
    /// the servers require the password of `servers`, the sentinels that
    /// of `sentinels` (whose CA is ignored).
    pub fn start_with(replica_priority: u32, servers: &Reach, sentinels: &Reach) -> Sentinels {
        let reach = servers;
        let dir = tempfile::tempdir().unwrap();
        let server = |sub: &str, port: u16, extra: &[String]| match &reach.ca {
            None => Node::start(&dir.path().join(sub), port, port, extra),
            Some(ca) => Node::start_tls_only(
                &dir.path().join(sub),
                port,
                ca.parent().unwrap(),
                reach.password.as_deref(),
                extra,
            ),
        };
        let mp = free_port();
        let master = server("m", mp, &[]);
        let rp = free_port();
        let replica = server(
            "r",
            rp,
            &[
                "--replicaof".to_string(),
                "127.0.0.1".to_string(),
                mp.to_string(),
                "--replica-priority".to_string(),
                replica_priority.to_string(),
            ],
        );
        wait_until(Duration::from_secs(10), "replica link up", || {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        let sentinels = (0..3)
            .map(|i| {
                let r = Reach {
                    ca: servers.ca.clone(),
                    password: sentinels.password.clone(),
                };
                let d = dir.path().join(format!("s{i}"));
                Node::sentinel_with(&d, MASTER_NAME, mp, &r, servers.password.as_deref())
            })
            .collect::<Vec<_>>();
        let s = Sentinels {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        // Every sentinel knows the replica and the other sentinels.
        wait_until(Duration::from_secs(15), "sentinels see each other", || {
            s.sentinels.iter().all(|n| {
                let m = n.cli(&["SENTINEL", "MASTER", MASTER_NAME]);
                field(&m, "num-other-sentinels") == Some("2")
                    && field(&m, "num-slaves") == Some("1")
            })
        });
        s
    }

    /// The sentinels' URLs (rediss:// for TLS ones), with the password.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|n| {
                let scheme = if n.plain == 0 { "rediss" } else { "redis" };
                let auth = match &n.reach.password {
                    Some(p) => format!(":{p}@"),
                    None => String::new(),
                };
                format!("{scheme}://{auth}127.0.0.1:{}", n.port)
            })
            .collect()
    }

    /// The master's port as every sentinel names it (None: they differ).
    pub fn master_port(&self) -> Option<u16> {
        let mut seen = None;
        for n in &self.sentinels {
            let a = n.cli(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME]);
            let p = a.lines().nth(1)?.trim().parse::<u16>().ok()?;
            if seen.is_some_and(|s| s != p) {
                return None;
            }
            seen = Some(p);
        }
        seen
    }

    /// Lets the replica be promoted.
    pub fn allow_promotion(&self) {
        assert_eq!(
            self.replica
                .cli(&["CONFIG", "SET", "replica-priority", "100"]),
            "OK"
        );
    }
}

/// The value after `name` in redis-cli's one-per-line field list.
fn field<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = out.lines().map(str::trim);
    while let Some(l) = lines.next() {
        if l == name {
            return lines.next();
        }
    }
    None
}
