//! A fleet of portico instances sharing revocations through a real Redis
//! Cluster, a real Sentinel setup, and a TLS Redis: a revocation made on
//! one instance holds on the others from their next request, across a
//! master kill and the failover that follows.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::fleet::*;
use support::jwt::write;
use support::redis::{cli, wait_until, Cluster, Node, Sentinels, MASTER_NAME};
use support::*;

/// One portico with a revocation-checked route in front of `b`.
fn instance(b: &Backend, revocation: &str, dir: tempfile::TempDir) -> (SocketAddr, Portico) {
    write(dir.path(), "secret", SECRET);
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        r#"{l}
[revocation]
key_prefix = "fleet:"
{revocation}

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
        upstream_toml("api", &[b], "")
    );
    (addr, Portico::start_in(dir, &config))
}

fn toml_list(urls: &[String]) -> String {
    let q: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!("[{}]", q.join(", "))
}

const STORE_ERRORS: &str = "portico_revocation_store_errors_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_fleet_shares_revocations_across_a_master_failover() {
    let b = Backend::start("api").await;
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(3))
        .await
        .unwrap();
    // Seeds: the three first nodes only; the rest is learnt from them.
    let rev = format!(
        "store = \"redis-cluster\"\nredis_urls = {}\non_store_error = \"deny\"",
        toml_list(&cluster.urls()[..3])
    );
    let fleet: Vec<(SocketAddr, Portico)> = (0..3)
        .map(|_| instance(&b, &rev, tempfile::tempdir().unwrap()))
        .collect();

    // Enough jtis that every master holds some (keys are spread by slot).
    let jtis: Vec<String> = (0..12).map(|i| format!("c-{i}")).collect();
    let masters: std::collections::HashSet<usize> = jtis
        .iter()
        .map(|j| cluster.master_of(&format!("fleet:jti:{j}")))
        .collect();
    assert_eq!(masters.len(), 3, "the jtis do not cover every master");
    let tokens: Vec<String> = jtis.iter().map(|j| token("carol", j)).collect();
    let clean = token("dave", "c-clean");
    for (addr, p) in &fleet {
        assert_eq!(status(*addr, &tokens[0]).await, 200, "{}", p.stderr());
    }

    // Revoked through instance 0: refused by 1 and 2 at once.
    for j in &jtis {
        assert_eq!(revoke_jti(&fleet[0].1, j).await, 204);
    }
    for (addr, _) in &fleet[1..] {
        for t in &tokens {
            assert_eq!(status(*addr, t).await, 401);
        }
        assert_eq!(status(*addr, &clean).await, 200);
    }

    // Kill the master holding c-0; its replica takes over, and the
    // revocations it replicated still hold on every instance.
    tokio::task::block_in_place(|| cluster.sync_replicas());
    let victim = cluster.master_of("fleet:jti:c-0");
    cluster.nodes[victim].kill();
    let c = &cluster;
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), "a replica promoted", || {
            c.nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != victim)
                .any(|(_, n)| cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        })
    });
    for (addr, p) in &fleet {
        until_status(*addr, &tokens[0], 401, "revocation after failover", p).await;
        for t in &tokens {
            assert_eq!(status(*addr, t).await, 401);
        }
        assert_eq!(status(*addr, &clean).await, 200);
    }

    // New revocations after the failover, through another instance.
    let late = token("erin", "c-late");
    assert_eq!(status(fleet[0].0, &late).await, 200);
    assert_eq!(revoke_jti(&fleet[2].1, "c-late").await, 204);
    for (addr, _) in &fleet {
        assert_eq!(status(*addr, &late).await, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_fleet_follows_a_failover_and_store_errors_follow_policy() {
    let b = Backend::start("api").await;
    // The replica may not be promoted until the outage has been seen.
    let mut s = tokio::task::spawn_blocking(|| Sentinels::start(0))
        .await
        .unwrap();
    let urls = toml_list(&s.urls());
    let conf = |on_error: &str| {
        format!(
            "store = \"redis-sentinel\"\nredis_urls = {urls}\nsentinel_master = \"{MASTER_NAME}\"\non_store_error = \"{on_error}\""
        )
    };
    let deny0 = instance(&b, &conf("deny"), tempfile::tempdir().unwrap());
    let deny1 = instance(&b, &conf("deny"), tempfile::tempdir().unwrap());
    let allow = instance(&b, &conf("allow"), tempfile::tempdir().unwrap());
    let fleet = [&deny0, &deny1, &allow];

    let revoked = token("frank", "s-1");
    let clean = token("gina", "s-clean");
    for (addr, p) in fleet {
        assert_eq!(status(*addr, &revoked).await, 200, "{}", p.stderr());
    }
    assert_eq!(revoke_jti(&deny0.1, "s-1").await, 204);
    for (addr, _) in fleet {
        assert_eq!(status(*addr, &revoked).await, 401);
        assert_eq!(status(*addr, &clean).await, 200);
    }

    // The master dies; no replica may take over yet: no master anywhere.
    assert_eq!(cli(s.master.port, &["WAIT", "1", "5000"]), "1");
    let old_master = s.master.port;
    s.master.kill();
    let denied_before = counter(&deny1.1, STORE_ERRORS, "decision=\"deny\"").await;
    let unavailable_before = counter(
        &deny1.1,
        "portico_jwt_validations_total",
        "result=\"unavailable\"",
    )
    .await;
    assert_eq!(status(deny0.0, &clean).await, 503);
    assert_eq!(status(deny1.0, &clean).await, 503);
    assert_eq!(status(deny1.0, &revoked).await, 503);
    assert_eq!(status(allow.0, &clean).await, 200);
    assert_eq!(revoke_jti(&allow.1, "s-2").await, 503);
    assert_eq!(
        counter(&deny1.1, STORE_ERRORS, "decision=\"deny\"").await,
        denied_before + 2.0
    );
    assert_eq!(
        counter(
            &deny1.1,
            "portico_jwt_validations_total",
            "result=\"unavailable\""
        )
        .await,
        unavailable_before + 2.0
    );
    assert_eq!(
        counter(&allow.1, STORE_ERRORS, "decision=\"allow\"").await,
        1.0
    );
    assert_eq!(
        counter(&allow.1, STORE_ERRORS, "decision=\"deny\"").await,
        0.0
    );

    // The failover happens; every instance follows it, no restart.
    s.allow_promotion();
    let replica = s.replica.port;
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(30), "sentinel failover", || {
            s.master_port() == Some(replica)
        })
    });
    assert_ne!(replica, old_master);
    for (addr, p) in fleet {
        until_status(*addr, &clean, 200, "after failover", p).await;
        // Checked again, not remembered as failed or as passed.
        assert_eq!(status(*addr, &revoked).await, 401);
    }
    let late = token("hank", "s-3");
    assert_eq!(status(deny1.0, &late).await, 200);
    assert_eq!(revoke_jti(&allow.1, "s-3").await, 204);
    for (addr, _) in fleet {
        assert_eq!(status(*addr, &late).await, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_store_is_verified_against_redis_ca() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let plain = free_port();
    let tls_port = free_port();
    let c = |n: &str| pki.dir.join(n).display().to_string();
    let _redis = Node::start(
        &dir.path().join("redis"),
        tls_port,
        plain,
        &[
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            c("server.crt"),
            "--tls-key-file".into(),
            c("server.key"),
            "--tls-ca-cert-file".into(),
            c("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ],
    );
    let url = format!("rediss://127.0.0.1:{tls_port}/0");
    let good_dir = tempfile::tempdir().unwrap();
    std::fs::copy(pki.dir.join("ca.crt"), good_dir.path().join("ca.pem")).unwrap();
    let good = instance(
        &b,
        &format!("store = \"redis\"\nredis_url = \"{url}\"\nredis_ca = \"ca.pem\""),
        good_dir,
    );
    // A CA that did not sign the server's certificate.
    let bad_dir = tempfile::tempdir().unwrap();
    std::fs::copy(pki.dir.join("other.crt"), bad_dir.path().join("ca.pem")).unwrap();
    let bad = instance(
        &b,
        &format!("store = \"redis\"\nredis_url = \"{url}\"\nredis_ca = \"ca.pem\""),
        bad_dir,
    );

    let t = token("ivy", "t-1");
    assert_eq!(status(good.0, &t).await, 200, "{}", good.1.stderr());
    assert_eq!(revoke_jti(&good.1, "t-1").await, 204);
    assert_eq!(status(good.0, &t).await, 401);
    // The key is in the TLS server (read back over its plain port).
    assert_eq!(cli(plain, &["GET", "fleet:jti:t-1"]), "1");
    // Not verified: the store is down for this instance (deny: 503).
    assert_eq!(status(bad.0, &t).await, 503);
    assert_eq!(revoke_jti(&bad.1, "t-2").await, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_is_verified_against_redis_ca() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let certs = pki.dir.clone();
    let _cluster = tokio::task::spawn_blocking(move || Cluster::start_with(3, 0, Some(&certs)))
        .await
        .unwrap();
    let urls = _cluster.urls();
    assert!(urls.iter().all(|u| u.starts_with("rediss://")));
    let start = |ca: &str| {
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(pki.dir.join(ca), d.path().join("ca.pem")).unwrap();
        instance(
            &b,
            &format!(
                "store = \"redis-cluster\"\nredis_urls = {}\nredis_ca = \"ca.pem\"",
                toml_list(&urls[..1])
            ),
            d,
        )
    };
    let good = start("ca.crt");
    let bad = start("other.crt");
    let tokens: Vec<String> = (0..6).map(|i| token("kim", &format!("ct-{i}"))).collect();
    assert_eq!(status(good.0, &tokens[0]).await, 200, "{}", good.1.stderr());
    for i in 0..6 {
        assert_eq!(revoke_jti(&good.1, &format!("ct-{i}")).await, 204);
    }
    for t in &tokens {
        assert_eq!(status(good.0, t).await, 401);
    }
    assert_eq!(status(bad.0, &tokens[0]).await, 503);
}

#[test]
fn redis_store_settings_are_checked() {
    let check = |rev: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            format!(
                "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n\n[revocation]\n{rev}\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let cases = [
        ("store = \"redis-cluster\"", "redis_urls"),
        (
            "store = \"redis-sentinel\"\nredis_urls = [\"redis://127.0.0.1:1\"]",
            "sentinel_master",
        ),
        (
            "store = \"redis-cluster\"\nredis_urls = [\"http://x\"]",
            "redis_urls",
        ),
        (
            "store = \"redis-cluster\"\nredis_urls = [\"redis://a:1\", \"rediss://b:1\"]",
            "mixed",
        ),
        ("store = \"redis\"\nredis_ca = \"ca.pem\"", "redis_ca"),
        (
            "store = \"redis\"\nredis_url = \"rediss://127.0.0.1:1/0\"\nredis_ca = \"missing.pem\"",
            "missing.pem",
        ),
    ];
    for (rev, want) in cases {
        let out = check(rev);
        assert!(out.contains(want), "{rev:?} gave {out:?}, wanted {want}");
    }
    assert_eq!(
        check("store = \"redis-sentinel\"\nredis_urls = [\"redis://127.0.0.1:1\"]\nsentinel_master = \"m\"").trim(),
        "ok"
    );
}
