//! The connection behind the shared revocation store: one Redis server, a
//! Redis Cluster, or the master that Sentinels name; plain or TLS.
//!
//! Guarantees:
//! - nothing connects until the first command (connecting needs the
//!   runtime); a failed connect is tried again by the next command, so a
//!   store that comes back is used from the first request after it did (no
//!   sticky failure);
//! - a read of several keys ([`RedisConn::mget`]) is one round trip on
//!   every kind: one `MGET` on a server; on a Cluster one `GET` per key, all
//!   sent at once, each routed by its own slot (a cross-slot `MGET` would be
//!   split by the client anyway, and its split form does not survive a
//!   failover in redis-rs 1.8: "Mismatch in the number of multi-slot
//!   results");
//! - after a failure the next command finds the store afresh: one server —
//!   the connection manager reconnects; Cluster — the client follows
//!   MOVED/ASK and reloads its slot map after a node failure; Sentinel —
//!   the master is asked of the sentinels again (and its role checked);
//! - Sentinel: the master is reached with the user, password and database
//!   of the first URL. The same user and password in every URL may be the
//!   sentinels' (`requirepass`) or the master's alone (sentinels without a
//!   password refuse them): the sentinels are asked with them first, and
//!   after an authentication error the other way; the way that worked
//!   last is tried first at the next lookup. Without the same credentials
//!   in every URL the sentinels are asked without any;
//! - rediss:// servers are verified against `redis_ca` when set, else
//!   against the system's trust roots; hostnames are always checked.
//!
//! Callers bound every command with their own timeout.

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionInfo, ErrorKind, FromRedisValue, IntoConnectionInfo,
    RedisError, RedisResult, TlsCertificates, TlsMode,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Longest a connect, or a wait for one answer, takes inside the client
/// (the revocation check's own bound is the same).
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the store is: the `[revocation]` settings a connection is made
/// from (and compared by, so a reload keeps an unchanged one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    /// One URL (single server), seed nodes (Cluster) or sentinels.
    pub urls: Vec<String>,
    /// Sentinel: the monitored master's name.
    pub master: String,
    /// PEM CA bundle for rediss://; None: the system's trust roots.
    pub ca: Option<Vec<u8>>,
}

/// The three shapes of a Redis store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Single,
    Cluster,
    Sentinel,
}

/// A lazily made connection to the store, shared by every request.
pub enum RedisConn {
    Single {
        client: redis::Client,
        conn: OnceLock<ConnectionManager>,
    },
    Cluster {
        /// Boxed: it is most of the enum's size otherwise.
        client: Box<ClusterClient>,
        conn: tokio::sync::OnceCell<ClusterConnection>,
    },
    Sentinel(SentinelConn),
}

impl RedisConn {
    /// Checks `t` and sets up its client; nothing connects yet.
    pub fn new(t: &Target) -> Result<RedisConn, String> {
        let tls = t.urls.iter().any(|u| u.starts_with("rediss://"));
        if tls {
            crate::tls::install_default_provider();
        }
        let certs = t.ca.as_ref().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        });
        let first = t.urls.first().ok_or("no Redis URL")?;
        Ok(match t.kind {
            Kind::Single => {
                let client = match certs {
                    Some(c) => redis::Client::build_with_tls(first.as_str(), c),
                    None => redis::Client::open(first.as_str()),
                }
                .map_err(|e| format!("bad redis_url: {e}"))?;
                RedisConn::Single {
                    client,
                    conn: OnceLock::new(),
                }
            }
            Kind::Cluster => {
                let mut b = ClusterClientBuilder::new(t.urls.iter().map(String::as_str))
                    .connection_timeout(CHECK_TIMEOUT)
                    .response_timeout(CHECK_TIMEOUT)
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(200);
                if let Some(c) = certs {
                    b = b.certs(c);
                }
                let client = b.build().map_err(|e| format!("bad redis_urls: {e}"))?;
                RedisConn::Cluster {
                    client: Box::new(client),
                    conn: tokio::sync::OnceCell::new(),
                }
            }
            Kind::Sentinel => RedisConn::Sentinel(SentinelConn::new(t, tls, certs)?),
        })
    }

    /// The string values of `keys`, in order (None: no such key).
    pub async fn mget(&self, keys: &[String]) -> RedisResult<Vec<Option<String>>> {
        if let RedisConn::Cluster { client, conn } = self {
            let c = cluster(client, conn).await?;
            let gets = keys.iter().map(|k| {
                let mut c = c.clone();
                let mut get = redis::cmd("GET");
                get.arg(k);
                async move { get.query_async::<Option<String>>(&mut c).await }
            });
            return futures_util::future::try_join_all(gets).await;
        }
        let mut c = redis::cmd("MGET");
        c.arg(keys);
        self.query(&c).await
    }

    /// Sends one command and reads its answer.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            RedisConn::Single { client, conn } => {
                let mut c = single(client, conn)?;
                cmd.query_async(&mut c).await
            }
            RedisConn::Cluster { client, conn } => {
                let mut c = cluster(client, conn).await?;
                cmd.query_async(&mut c).await
            }
            RedisConn::Sentinel(s) => s.query(cmd).await,
        }
    }
}

/// The cluster connection, made on first use (a failed attempt leaves
/// the cell empty for the next command).
async fn cluster(
    client: &ClusterClient,
    conn: &tokio::sync::OnceCell<ClusterConnection>,
) -> RedisResult<ClusterConnection> {
    Ok(conn
        .get_or_try_init(|| client.get_async_connection())
        .await?
        .clone())
}

/// The one server's connection manager, made on first use.
fn single(
    client: &redis::Client,
    conn: &OnceLock<ConnectionManager>,
) -> RedisResult<ConnectionManager> {
    if let Some(c) = conn.get() {
        return Ok(c.clone());
    }
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CHECK_TIMEOUT))
        .set_response_timeout(Some(CHECK_TIMEOUT))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(500));
    let made = ConnectionManager::new_lazy_with_config(client.clone(), cfg)?;
    // Two first requests may race here; one connection wins, the other is
    // dropped before it connected.
    Ok(conn.get_or_init(|| made).clone())
}

/// The master that the sentinels name, and one multiplexed connection to
/// it, dropped on any failure so that the next command asks again.
pub struct SentinelConn {
    /// Clients that ask the sentinels, one per way: with the credentials
    /// every URL carries (when they all carry the same), and without any;
    /// the one that worked last is first. One lookup at a time: concurrent requests
    /// that find no master wait for the lookup under way.
    clients: tokio::sync::Mutex<Vec<SentinelClient>>,
    /// The connection in use, tagged so a failure drops only its own.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    made: AtomicU64,
    config: AsyncConnectionConfig,
}

impl SentinelConn {
    fn new(t: &Target, tls: bool, certs: Option<TlsCertificates>) -> Result<SentinelConn, String> {
        let mut infos = Vec::with_capacity(t.urls.len());
        for u in &t.urls {
            let info = u
                .as_str()
                .into_connection_info()
                .map_err(|e| format!("bad sentinel URL: {e}"))?;
            infos.push(info);
        }
        let first = infos.first().ok_or("no sentinel URL")?.redis_settings();
        let mut clients = vec![sentinel_client(t, &infos, None, tls, certs.as_ref())?];
        // Credentials in every URL may be the sentinels' (`requirepass`) or
        // only the master's (many clients put the data password in every
        // sentinel URI, and a sentinel without one refuses `AUTH`): both
        // ways are kept, the other tried after an authentication error. A
        // password in the first URL only is the master's alone.
        if let (user, Some(password)) = (first.username(), first.password()) {
            if infos
                .iter()
                .all(|i| credentials(i) == (user, Some(password)))
            {
                let login = Some((user, password));
                clients.insert(0, sentinel_client(t, &infos, login, tls, certs.as_ref())?);
            }
        }
        Ok(SentinelConn {
            clients: tokio::sync::Mutex::new(clients),
            current: Mutex::new(None),
            made: AtomicU64::new(0),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CHECK_TIMEOUT))
                .set_response_timeout(Some(CHECK_TIMEOUT)),
        })
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let mut clients = self.clients.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let conn = ask_sentinels(&mut clients, &self.config).await?;
        let tag = self.made.fetch_add(1, Ordering::Relaxed);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((tag, conn.clone()));
        Ok((tag, conn))
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let (tag, mut conn) = self.connection().await?;
        // Dropped unanswered (an error, or the caller's timeout): the
        // master may have moved, so the next command asks the sentinels.
        let mut guard = Forget {
            conn: self,
            tag,
            armed: true,
        };
        let r = cmd.query_async(&mut conn).await;
        guard.armed = r.is_err();
        r
    }
}

/// A client that asks the sentinels of `infos` for `t.master`, giving them
/// `login` (user, password) when set, and reaches the master with the user,
/// password and database of the first URL.
fn sentinel_client(
    t: &Target,
    infos: &[ConnectionInfo],
    login: Option<(Option<&str>, &str)>,
    tls: bool,
    certs: Option<&TlsCertificates>,
) -> Result<SentinelClient, String> {
    let first = infos.first().ok_or("no sentinel URL")?.redis_settings();
    let addrs = infos.iter().map(|i| i.addr().clone());
    let mut b = SentinelClientBuilder::new(addrs, &t.master, SentinelServerType::Master)
        .map_err(|e| format!("bad sentinel setup: {e}"))?
        .set_client_to_redis_db(first.db());
    if let Some(u) = first.username() {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = first.password() {
        b = b.set_client_to_redis_password(p);
    }
    if let Some((user, password)) = login {
        if let Some(u) = user {
            b = b.set_client_to_sentinel_username(u);
        }
        b = b.set_client_to_sentinel_password(password);
    }
    if tls {
        b = b
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
    }
    if let Some(c) = certs {
        b = b
            .set_client_to_redis_certificates(c.clone())
            .set_client_to_sentinel_certificates(c.clone());
    }
    b.build().map_err(|e| format!("bad sentinel setup: {e}"))
}

/// The master's connection through the first of `clients` that is not
/// refused for its credentials; that one moves first, so later lookups
/// (after a failover) start with what worked, and a refusal of it later
/// (a sentinel that gained or lost a password) tries the other again.
/// Any other failure (no sentinel answers, the master is down) is the
/// store's and is returned as it is.
async fn ask_sentinels(
    clients: &mut [SentinelClient],
    config: &AsyncConnectionConfig,
) -> RedisResult<MultiplexedConnection> {
    let mut refused = None;
    for i in 0..clients.len() {
        match clients[i].get_async_connection_with_config(config).await {
            Ok(conn) => {
                clients.swap(0, i);
                return Ok(conn);
            }
            Err(e) if is_auth_error(&e) => {
                refused.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(refused.unwrap_or_else(|| (ErrorKind::InvalidClientConfig, "no sentinel client").into()))
}

/// A server refusing the credentials given (AUTH failed: a wrong password,
/// or a password given to a server that has none), or wanting some.
fn is_auth_error(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed || e.code() == Some("NOAUTH")
}

/// The user and password a URL carries.
fn credentials(i: &ConnectionInfo) -> (Option<&str>, Option<&str>) {
    let r = i.redis_settings();
    (r.username(), r.password())
}

/// Drops the sentinel connection `tag` unless disarmed.
struct Forget<'a> {
    conn: &'a SentinelConn,
    tag: u64,
    armed: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut cur = self.conn.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|(t, _)| *t == self.tag) {
            *cur = None;
        }
    }
}
