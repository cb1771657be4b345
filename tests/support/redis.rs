//! Real Redis topologies on loopback ports: plain or TLS servers, a Redis
//! Cluster (made by `redis-cli --cluster create`), and a master with a
//! replica watched by three sentinels (`redis-server --sentinel`).
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

/// One redis-server (or sentinel) process.
pub struct Node {
    /// The port clients use (TLS for a TLS node).
    pub port: u16,
    /// The plain port, for redis-cli.
    pub plain: u16,
    pub dir: PathBuf,
    child: Option<Child>,
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
            child: Some(child),
        };
        wait_until(Duration::from_secs(10), "redis-server PING", || {
            cli(ping_port, &["PING"]) == "PONG"
        });
        n
    }

    /// A sentinel on a free port watching `master` as `name`.
    pub fn sentinel(dir: &Path, name: &str, master: u16) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {name} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {name} 400\n\
                 sentinel failover-timeout {name} 1000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed (scripts/test.sh installs it)");
        let n = Node {
            port,
            plain: port,
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        wait_until(Duration::from_secs(10), "sentinel PING", || {
            cli(port, &["PING"]) == "PONG"
        });
        n
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
        let dir = tempfile::tempdir().unwrap();
        let mp = free_port();
        let master = Node::start(&dir.path().join("m"), mp, mp, &[]);
        let rp = free_port();
        let replica = Node::start(
            &dir.path().join("r"),
            rp,
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
            cli(rp, &["INFO", "replication"]).contains("master_link_status:up")
        });
        let sentinels = (0..3)
            .map(|i| Node::sentinel(&dir.path().join(format!("s{i}")), MASTER_NAME, mp))
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
                let m = cli(n.port, &["SENTINEL", "MASTER", MASTER_NAME]);
                field(&m, "num-other-sentinels") == Some("2")
                    && field(&m, "num-slaves") == Some("1")
            })
        });
        s
    }

    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The master's port as every sentinel names it (None: they differ).
    pub fn master_port(&self) -> Option<u16> {
        let mut seen = None;
        for n in &self.sentinels {
            let a = cli(
                n.port,
                &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
            );
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
            cli(
                self.replica.port,
                &["CONFIG", "SET", "replica-priority", "100"]
            ),
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
