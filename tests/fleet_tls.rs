//! The `redis-sentinel` revocation store over TLS only: a master, a replica
//! and three sentinels that serve no plain TCP at all (`port 0`), verified
//! against `redis_ca`; a failover is followed without a restart, a wrong CA
//! fails closed, and sentinels that require a password are given the one
//! the URLs carry, while sentinels that require none are asked without it
//! (also when they gain one later).

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::fleet::*;
use support::jwt::write;
use support::redis::{cli, cli_with, wait_until, Node, Reach, Sentinels, MASTER_NAME};
use support::*;

const STORE_ERRORS: &str = "portico_revocation_store_errors_total";

/// One portico with a revocation-checked route in front of `b`, its
/// `[revocation]` a Sentinel store on `urls` with `ca` (a file of `pki`)
/// as `redis_ca`, failing closed.
fn instance(b: &Backend, urls: &[String], pki: &Pki, ca: &str) -> (SocketAddr, Portico) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "secret", SECRET);
    std::fs::copy(pki.dir.join(ca), dir.path().join("ca.pem")).unwrap();
    let q: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        r#"{l}
[revocation]
key_prefix = "fleet:"
store = "redis-sentinel"
redis_urls = [{}]
sentinel_master = "{MASTER_NAME}"
redis_ca = "ca.pem"
on_store_error = "deny"

[auth.users]
type = "jwt"
algorithms = ["HS256"]
secret_file = "secret"
revocation = true

[[route]]
name = "r"
upstream = "api"
auth = "users"

{}"#,
        q.join(", "),
        upstream_toml("api", &[b], "")
    );
    (addr, Portico::start_in(dir, &config))
}

/// The TLS-only Sentinel setup with the CA of `pki`; the servers require
/// `server_pw`, the sentinels `sentinel_pw`.
async fn sentinels(pki: &Pki, server_pw: Option<&str>, sentinel_pw: Option<&str>) -> Sentinels {
    let servers = Reach {
        ca: Some(pki.dir.join("ca.crt")),
        password: server_pw.map(str::to_string),
    };
    let watchers = Reach {
        ca: None,
        password: sentinel_pw.map(str::to_string),
    };
    tokio::task::spawn_blocking(move || Sentinels::start_with(100, &servers, &watchers))
        .await
        .unwrap()
}

/// No node of `s` answers plain TCP: each has `port 0` and serves TLS only.
fn assert_tls_only(s: &Sentinels) {
    for n in [&s.master, &s.replica] {
        assert_eq!(n.cli(&["CONFIG", "GET", "port"]), "port\n0");
    }
    for n in [&s.master, &s.replica].into_iter().chain(&s.sentinels) {
        assert_eq!(n.cli(&["PING"]), "PONG");
        assert_ne!(cli(n.port, &["PING"]), "PONG", "plain TCP on {}", n.port);
    }
    for n in &s.sentinels {
        let conf = std::fs::read_to_string(n.dir.join("sentinel.conf")).unwrap();
        assert!(conf.lines().any(|l| l == "port 0"), "{conf}");
    }
}

fn get(n: &Node, key: &str) -> String {
    n.cli(&["GET", key])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sentinel_store_follows_a_failover_and_a_wrong_ca_fails_closed() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let mut s = sentinels(&pki, None, None).await;
    assert_tls_only(&s);
    let urls = s.urls();
    assert!(urls.iter().all(|u| u.starts_with("rediss://")), "{urls:?}");
    let good = instance(&b, &urls, &pki, "ca.crt");
    // A CA that signed none of the servers' certificates.
    let bad = instance(&b, &urls, &pki, "other.crt");

    let first = token("lou", "st-1");
    let second = token("mia", "st-2");
    let clean = token("ned", "st-clean");
    assert_eq!(status(good.0, &first).await, 200, "{}", good.1.stderr());
    assert_eq!(status(good.0, &second).await, 200);
    assert_eq!(revoke_jti(&good.1, "st-1").await, 204);
    assert_eq!(get(&s.master, "fleet:jti:st-1"), "1");
    assert_eq!(status(good.0, &first).await, 401);
    assert_eq!(status(good.0, &clean).await, 200);

    // Not verified: the store is down for this instance, and counted so.
    let denied = counter(&bad.1, STORE_ERRORS, "decision=\"deny\"").await;
    assert_eq!(status(bad.0, &clean).await, 503, "{}", bad.1.stderr());
    assert_eq!(status(bad.0, &first).await, 503);
    assert_eq!(
        counter(&bad.1, STORE_ERRORS, "decision=\"deny\"").await,
        denied + 2.0
    );
    assert_eq!(revoke_jti(&bad.1, "st-bad").await, 503);
    assert_eq!(get(&s.master, "fleet:jti:st-bad"), "");

    // The master dies after its replica has the revocation; the sentinels
    // promote the replica, and portico follows over TLS without a restart.
    assert_eq!(s.master.cli(&["WAIT", "1", "5000"]), "1");
    let replica = s.replica.port;
    s.master.kill();
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(30), "sentinel failover", || {
            s.master_port() == Some(replica)
        })
    });
    until_status(good.0, &clean, 200, "after failover", &good.1).await;
    assert_eq!(status(good.0, &first).await, 401);
    assert_eq!(status(good.0, &second).await, 200);

    // Revoked on the new master itself, with the key portico reads.
    assert_eq!(
        s.replica.cli(&["SET", "fleet:jti:st-2", "1", "EX", "600"]),
        "OK"
    );
    assert_eq!(status(good.0, &second).await, 401);
    assert_eq!(status(good.0, &first).await, 401);
    assert_eq!(status(good.0, &clean).await, 200);
    // And portico's own revocations now land there.
    assert_eq!(revoke_jti(&good.1, "st-3").await, 204);
    assert_eq!(get(&s.replica, "fleet:jti:st-3"), "1");
    assert_eq!(status(good.0, &token("oli", "st-3")).await, 401);

    // The wrong CA is still refused after the failover.
    assert_eq!(status(bad.0, &clean).await, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_that_require_a_password_get_the_one_every_url_carries() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let pw = "s3ntinel-pw";
    let s = sentinels(&pki, Some(pw), Some(pw)).await;
    // Neither the sentinels nor the servers answer without it.
    let no_pw = Reach {
        ca: Some(pki.dir.join("ca.crt")),
        password: None,
    };
    for n in s.sentinels.iter().chain([&s.master]) {
        assert!(cli_with(n.port, &no_pw, &["PING"]).contains("NOAUTH"));
    }
    let urls = s.urls();
    assert!(
        urls.iter().all(|u| u.contains(&format!(":{pw}@"))),
        "{urls:?}"
    );
    let p = instance(&b, &urls, &pki, "ca.crt");
    let t = token("pam", "sp-1");
    assert_eq!(status(p.0, &t).await, 200, "{}", p.1.stderr());
    assert_eq!(revoke_jti(&p.1, "sp-1").await, 204);
    assert_eq!(get(&s.master, "fleet:jti:sp-1"), "1");
    assert_eq!(status(p.0, &t).await, 401);
    assert_eq!(status(p.0, &token("quin", "sp-2")).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_first_url_only_is_the_masters_alone() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let pw = "master-pw";
    // The servers require a password; the sentinels require none, and
    // refuse an AUTH with one.
    let s = sentinels(&pki, Some(pw), None).await;
    let no_pw = Reach {
        ca: Some(pki.dir.join("ca.crt")),
        password: None,
    };
    for n in &s.sentinels {
        assert!(cli_with(n.port, &no_pw, &["AUTH", pw]).starts_with("ERR"));
    }
    let mut urls = s.urls();
    urls[0] = urls[0].replacen("rediss://", &format!("rediss://:{pw}@"), 1);
    let p = instance(&b, &urls, &pki, "ca.crt");
    let t = token("rae", "sm-1");
    assert_eq!(status(p.0, &t).await, 200, "{}", p.1.stderr());
    assert_eq!(revoke_jti(&p.1, "sm-1").await, 204);
    assert_eq!(get(&s.master, "fleet:jti:sm-1"), "1");
    assert_eq!(status(p.0, &t).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_masters_password_in_every_url_works_with_sentinels_that_require_none() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let pw = "data-pw";
    // The servers require a password; the sentinels require none, and
    // refuse an AUTH with one. Every URL carries the servers' password, as
    // many clients' sentinel URIs do (`redis-sentinel://password@host`).
    let s = sentinels(&pki, Some(pw), None).await;
    let no_pw = Reach {
        ca: Some(pki.dir.join("ca.crt")),
        password: None,
    };
    for n in &s.sentinels {
        assert!(cli_with(n.port, &no_pw, &["AUTH", pw]).starts_with("ERR"));
    }
    assert!(cli_with(s.master.port, &no_pw, &["PING"]).contains("NOAUTH"));
    let urls: Vec<String> = s
        .urls()
        .iter()
        .map(|u| u.replacen("rediss://", &format!("rediss://:{pw}@"), 1))
        .collect();
    let p = instance(&b, &urls, &pki, "ca.crt");
    let t = token("sal", "sn-1");
    assert_eq!(status(p.0, &t).await, 200, "{}", p.1.stderr());
    assert_eq!(revoke_jti(&p.1, "sn-1").await, 204);
    assert_eq!(get(&s.master, "fleet:jti:sn-1"), "1");
    assert_eq!(status(p.0, &t).await, 401);
    assert_eq!(status(p.0, &token("tam", "sn-2")).await, 200);
    // Every lookup was answered: none failed closed.
    assert_eq!(counter(&p.1, STORE_ERRORS, "decision=").await, 0.0);
}

/// The ids of the clients of `n` (reached with `reach`) whose last command
/// was `cmd`.
fn clients_of(n: &Node, reach: &Reach, cmd: &str) -> Vec<String> {
    cli_with(n.port, reach, &["CLIENT", "LIST"])
        .lines()
        .filter(|l| l.contains(&format!(" cmd={cmd} ")))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_that_gain_a_password_are_asked_with_it_at_the_next_lookup() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let pw = "shared-pw";
    let s = sentinels(&pki, Some(pw), None).await;
    let urls: Vec<String> = s
        .urls()
        .iter()
        .map(|u| u.replacen("rediss://", &format!("rediss://:{pw}@"), 1))
        .collect();
    let p = instance(&b, &urls, &pki, "ca.crt");
    let t = token("uma", "sg-1");
    // Found without credentials: the sentinels have none.
    assert_eq!(status(p.0, &t).await, 200, "{}", p.1.stderr());
    let before = clients_of(&s.master, &s.master.reach, "mget");
    assert_eq!(before.len(), 1, "portico's connection to the master");

    // The sentinels now require the password the URLs carry, and drop
    // portico's connections, made without it (the check's connection is
    // the master's, the lookups' the sentinels'): the next lookup asks
    // the sentinels afresh, is refused without the password (NOAUTH) and
    // answered with it.
    let with_pw = Reach {
        ca: Some(pki.dir.join("ca.crt")),
        password: Some(pw.to_string()),
    };
    for n in &s.sentinels {
        assert_eq!(
            n.cli(&["ACL", "SETUSER", "default", &format!(">{pw}")]),
            "OK"
        );
        assert!(n.cli(&["PING"]).contains("NOAUTH"));
        for id in clients_of(n, &with_pw, "sentinel|masters") {
            assert_eq!(
                cli_with(n.port, &with_pw, &["CLIENT", "KILL", "ID", &id]),
                "1"
            );
        }
    }
    assert_eq!(s.master.cli(&["CLIENT", "KILL", "ID", &before[0]]), "1");
    until_status(p.0, &t, 200, "after the sentinels gained a password", &p.1).await;
    let after = clients_of(&s.master, &s.master.reach, "mget");
    assert_eq!(after.len(), 1, "portico's new connection to the master");
    assert_ne!(after, before);
    assert_eq!(revoke_jti(&p.1, "sg-1").await, 204);
    assert_eq!(get(&s.master, "fleet:jti:sg-1"), "1");
    assert_eq!(status(p.0, &t).await, 401);
}
