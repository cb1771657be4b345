//! JWT at the edge, over real sockets: every algorithm and key source,
//! forgeries and bad tokens (never forwarded), RFC 6750 answers, claim
//! headers, scopes, JWKS rotation and outage, revocation in memory and
//! shared through a real redis-server.

mod support;

use serde_json::json;
use std::time::Duration;
use support::jwt::*;
use support::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = client().get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.send().await.expect("request")
}

async fn status(addr: std::net::SocketAddr, path: &str, token: &str) -> u16 {
    get(addr, path, Some(token)).await.status().as_u16()
}

fn challenge(r: &reqwest::Response) -> String {
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_and_key_source_is_accepted() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ec256, ec384, ed) = (
        TestKey::rsa(),
        TestKey::ec256(),
        TestKey::ec384(),
        TestKey::ed25519(),
    );
    write(dir.path(), "rsa.pub", &rsa.public_pem);
    write(dir.path(), "ec256.pub", &ec256.public_pem);
    write(dir.path(), "ec384.pub", &ec384.public_pem);
    write(dir.path(), "ed.pub", &ed.public_pem);
    write(dir.path(), "secret", format!("{SECRET}\n"));
    write(
        dir.path(),
        "jwks.json",
        jwks(&[("r1", &rsa), ("e1", &ec256), ("e2", &ec384), ("d1", &ed)]),
    );
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        r#"{l}
[auth.hs]
type = "jwt"
algorithms = ["HS256", "HS384", "HS512"]
secret_file = "secret"

[auth.pem]
type = "jwt"
algorithms = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
keys = ["rsa.pub", "ec256.pub", "ec384.pub", "ed.pub"]

[auth.file]
type = "jwt"
algorithms = ["RS256", "PS512", "ES256", "ES384", "EdDSA"]
jwks_file = "jwks.json"

[[route]]
name = "hs"
match.path_prefix = "/hs/"
upstream = "api"
auth = "hs"

[[route]]
name = "pem"
match.path_prefix = "/pem/"
upstream = "api"
auth = "pem"

[[route]]
name = "file"
match.path_prefix = "/file/"
upstream = "api"
auth = "file"

{}"#,
        upstream_toml("api", &[&b], "")
    );
    let _p = Portico::start_in(dir, &config);
    let secret = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let mut accepted = 0;
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let t = mint_with(&secret, alg, None, &claims("hs"));
        assert_eq!(status(addr, "/hs/x", &t).await, 200, "{alg:?}");
        accepted += 1;
    }
    let pem_cases: Vec<(Algorithm, &TestKey, &str)> = vec![
        (Algorithm::RS256, &rsa, "r1"),
        (Algorithm::RS384, &rsa, "r1"),
        (Algorithm::RS512, &rsa, "r1"),
        (Algorithm::PS256, &rsa, "r1"),
        (Algorithm::PS384, &rsa, "r1"),
        (Algorithm::PS512, &rsa, "r1"),
        (Algorithm::ES256, &ec256, "e1"),
        (Algorithm::ES384, &ec384, "e2"),
        (Algorithm::EdDSA, &ed, "d1"),
    ];
    for (alg, key, kid) in &pem_cases {
        // PEM keys carry no kid: tokens with or without one are tried.
        let t = key.mint(*alg, None, &claims("pem"));
        assert_eq!(status(addr, "/pem/x", &t).await, 200, "pem {alg:?}");
        let t = key.mint(*alg, Some("whatever"), &claims("pem"));
        assert_eq!(
            status(addr, "/pem/x", &t).await,
            200,
            "pem {alg:?} with kid"
        );
        accepted += 2;
        if matches!(
            alg,
            Algorithm::RS256
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            let t = key.mint(*alg, Some(kid), &claims("file"));
            assert_eq!(status(addr, "/file/x", &t).await, 200, "jwks_file {alg:?}");
            // Without a kid, the JWKS keys that fit are tried.
            let t = key.mint(*alg, None, &claims("file"));
            assert_eq!(
                status(addr, "/file/x", &t).await,
                200,
                "jwks_file {alg:?} no kid"
            );
            accepted += 2;
        }
    }
    // A kid picks its key: the EC token under the RSA kid is refused.
    let t = ec256.mint(Algorithm::ES256, Some("r1"), &claims("file"));
    assert_eq!(status(addr, "/file/x", &t).await, 401);
    // Listed by the other policy but not this one.
    let t = rsa.mint(Algorithm::RS384, Some("r1"), &claims("file"));
    assert_eq!(status(addr, "/file/x", &t).await, 401);
    assert_eq!(b.request_count(), accepted);
    // The token is forwarded by default.
    assert!(b.last_seen().headers.get("authorization").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_and_never_forwarded() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::rsa();
    let ec = TestKey::ec256();
    let attacker = TestKey::ec256();
    write(dir.path(), "rsa.pub", &rsa.public_pem);
    write(dir.path(), "ec.pub", &ec.public_pem);
    write(dir.path(), "secret", SECRET);
    let (addr, l) = listener_toml("web", "max_header_bytes = 2048");
    let config = format!(
        r#"{l}
[auth.strict]
type = "jwt"
algorithms = ["RS256", "ES256"]
keys = ["rsa.pub", "ec.pub"]
issuer = ["https://idp.test"]
audience = ["api"]
leeway = "30s"
required_claims = ["exp", "sub"]
forward_claims = {{ sub = "x-user-id" }}

[auth.mixed]
type = "jwt"
algorithms = ["HS256", "RS256"]
keys = ["rsa.pub"]
secret_file = "secret"

[[route]]
name = "strict"
match.path_prefix = "/s/"
upstream = "api"
auth = "strict"

[[route]]
name = "mixed"
match.path_prefix = "/m/"
upstream = "api"
auth = "mixed"

{}"#,
        upstream_toml("api", &[&b], "")
    );
    let _p = Portico::start_in(dir, &config);
    let n = now();
    let good =
        json!({"iss": "https://idp.test", "aud": "api", "sub": "alice", "iat": n, "exp": n + 600});
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };

    // Control: a good token passes, with the sub forwarded.
    let t = ec.mint(Algorithm::ES256, None, &good);
    assert_eq!(status(addr, "/s/ok", &t).await, 200);
    assert_eq!(b.request_count(), 1);
    assert_eq!(b.last_seen().headers["x-user-id"], "alice");

    let rsa_pem_secret = jsonwebtoken::EncodingKey::from_secret(rsa.public_pem.as_bytes());
    let mut tampered = ec
        .mint(Algorithm::ES256, None, &good)
        .split('.')
        .map(str::to_string)
        .collect::<Vec<_>>();
    tampered[1] = b64(with("sub", json!("admin")).to_string().as_bytes());
    let header_b64 = b64(br#"{"alg":"ES256"}"#);
    let cases: Vec<(&str, String)> = vec![
        ("alg none", raw_token(&json!({"alg": "none"}), &good, None)),
        (
            "alg None with a signature",
            raw_token(&json!({"alg": "None"}), &good, Some(b"x")),
        ),
        (
            "HS256 signed with the RSA public key",
            mint_with(&rsa_pem_secret, Algorithm::HS256, None, &good),
        ),
        (
            "bad signature",
            attacker.mint(Algorithm::ES256, None, &good),
        ),
        ("tampered payload", tampered.join(".")),
        ("embedded jwk, jku, x5u headers", {
            // Signed by the attacker, naming the attacker's key in the header.
            let mut h = jsonwebtoken::Header::new(Algorithm::ES256);
            h.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap());
            h.jku = Some("https://127.0.0.1:1/jwks.json".into());
            h.x5u = Some("https://127.0.0.1:1/cert.pem".into());
            jsonwebtoken::encode(&h, &good, &attacker.encoding()).unwrap()
        }),
        (
            "expired beyond leeway",
            ec.mint(Algorithm::ES256, None, &with("exp", json!(n - 60))),
        ),
        (
            "nbf in the future",
            ec.mint(Algorithm::ES256, None, &with("nbf", json!(n + 120))),
        ),
        (
            "iat in the future",
            ec.mint(Algorithm::ES256, None, &with("iat", json!(n + 120))),
        ),
        (
            "wrong iss",
            ec.mint(
                Algorithm::ES256,
                None,
                &with("iss", json!("https://evil.test")),
            ),
        ),
        (
            "wrong aud",
            ec.mint(
                Algorithm::ES256,
                None,
                &with("aud", json!(["web", "other"])),
            ),
        ),
        (
            "missing required claim",
            ec.mint(Algorithm::ES256, None, &without("sub")),
        ),
        (
            "missing exp",
            ec.mint(Algorithm::ES256, None, &without("exp")),
        ),
        (
            "unlisted alg",
            TestKey::ec384().mint(Algorithm::ES384, None, &good),
        ),
        (
            "malformed base64",
            "eyJhbGciOiJFUzI1NiJ9.!!!!.c2ln".to_string(),
        ),
        (
            "malformed JSON",
            format!("{header_b64}.{}.c2ln", b64(b"not json")),
        ),
        ("two segments", format!("{header_b64}.{}", b64(b"{}"))),
        (
            "unknown crit",
            raw_token(
                &json!({"alg": "HS256", "crit": ["exp-ext"], "exp-ext": 1}),
                &good,
                Some(SECRET.as_bytes()),
            ),
        ),
    ];
    for (what, t) in &cases {
        let r = get(addr, "/s/x", Some(t)).await;
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(
            challenge(&r),
            r#"Bearer realm="portico", error="invalid_token""#,
            "{what}"
        );
    }
    // The HS/RS confusion where HS256 is allowed: the RSA public key is
    // never an HMAC secret.
    let t = mint_with(&rsa_pem_secret, Algorithm::HS256, None, &good);
    assert_eq!(status(addr, "/m/x", &t).await, 401);
    let t = raw_token(
        &json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
        &good,
        Some(SECRET.as_bytes()),
    );
    assert_eq!(status(addr, "/m/x", &t).await, 401);
    assert_eq!(b.request_count(), 1, "a refused token reached the backend");

    // Expired within the leeway: accepted.
    let t = ec.mint(Algorithm::ES256, None, &with("exp", json!(n - 10)));
    assert_eq!(status(addr, "/s/x", &t).await, 200);
    // HS256 with the real secret and RS256 on the mixed policy: accepted.
    let t = raw_token(&json!({"alg": "HS256"}), &good, Some(SECRET.as_bytes()));
    assert_eq!(status(addr, "/m/x", &t).await, 200);
    assert_eq!(
        status(addr, "/m/x", &rsa.mint(Algorithm::RS256, None, &good)).await,
        200
    );
    assert_eq!(b.request_count(), 4);

    // No token, or another scheme: 401 without an error code.
    let r = get(addr, "/s/x", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(challenge(&r), r#"Bearer realm="portico""#);
    let r = client()
        .get(format!("http://{addr}/s/x"))
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(challenge(&r), r#"Bearer realm="portico""#);
    // The scheme is case-insensitive.
    let good_token = ec.mint(Algorithm::ES256, None, &good);
    let r = client()
        .get(format!("http://{addr}/s/x"))
        .header("authorization", format!("bEARER {good_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(b.request_count(), 5);

    // Two Authorization headers: 400.
    let raw = raw_exchange(
        addr,
        format!("GET /s/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {good_token}\r\nAuthorization: Bearer {good_token}\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(parse_status(&raw), Some(400), "{raw}");

    // A token over max_header_bytes: 431.
    let big = ec.mint(
        Algorithm::ES256,
        None,
        &with("pad", json!("x".repeat(3000))),
    );
    let r = get(addr, "/s/x", Some(&big)).await;
    assert_eq!(r.status(), 431);
    assert_eq!(
        b.request_count(),
        5,
        "a refused request reached the backend"
    );

    // A forged claim header is replaced by the token's claim, and removed
    // when the token has no such claim.
    let r = client()
        .get(format!("http://{addr}/s/x"))
        .header("authorization", format!("Bearer {good_token}"))
        .header("x-user-id", "root")
        .header("X-User-Id", "root2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = b.last_seen();
    let ids: Vec<_> = seen.headers.get_all("x-user-id").iter().collect();
    assert_eq!(ids, vec!["alice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_claim_headers_token_stripping_and_grpc_answers() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let ed = TestKey::ed25519();
    write(dir.path(), "ed.pub", &ed.public_pem);
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        r#"{l}
[auth.writers]
type = "jwt"
algorithms = ["EdDSA"]
keys = ["ed.pub"]
required_scopes = ["write"]
forward_claims = {{ sub = "x-user-id", tenant = "x-tenant", scope = "x-scope" }}
forward_token = false

[[route]]
name = "w"
upstream = "api"
auth = "writers"

{}"#,
        upstream_toml("api", &[&b], "")
    );
    let _p = Portico::start_in(dir, &config);
    let mut c = claims("bob");
    c["scope"] = json!("read");
    let read_only = ed.mint(Algorithm::EdDSA, None, &c);
    let r = get(addr, "/x", Some(&read_only)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        challenge(&r),
        r#"Bearer realm="portico", error="insufficient_scope""#
    );
    assert_eq!(b.request_count(), 0);

    let mut c = claims("bob");
    c["scp"] = json!(["read", "write"]);
    let writer = ed.mint(Algorithm::EdDSA, None, &c);
    let r = client()
        .get(format!("http://{addr}/x"))
        .header("authorization", format!("Bearer {writer}"))
        .header("x-tenant", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = b.last_seen();
    assert_eq!(seen.headers["x-user-id"], "bob");
    assert!(
        seen.headers.get("x-tenant").is_none(),
        "forged claim header kept"
    );
    assert!(seen.headers.get("x-scope").is_none());
    assert!(
        seen.headers.get("authorization").is_none(),
        "token forwarded"
    );

    // gRPC: 16 for 401, 7 for 403, as HTTP 200 with grpc-status.
    let h2 = h2c_client();
    let r = h2
        .post(format!("http://{addr}/pkg.Svc/Call"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["grpc-status"], "16");
    let r = h2
        .post(format!("http://{addr}/pkg.Svc/Call"))
        .header("content-type", "application/grpc")
        .header("authorization", format!("Bearer {read_only}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["grpc-status"], "7");
    assert_eq!(b.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_is_fetched_rotated_and_kept_through_outages() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (k1, k2, k3) = (TestKey::ec256(), TestKey::rsa(), TestKey::ed25519());
    let server = JwksServer::start(&pki, jwks(&[("k1", &k1)])).await;
    let dead = free_port();
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        r#"{l}
[auth.idp]
type = "jwt"
algorithms = ["ES256", "RS256", "EdDSA"]
jwks_url = "https://127.0.0.1:{port}/jwks.json"
jwks_ca = "certs/ca.crt"
jwks_refresh = "1h"

[auth.flaky]
type = "jwt"
algorithms = ["ES256"]
jwks_url = "https://127.0.0.1:{port}/flaky.json"
jwks_ca = "certs/ca.crt"
jwks_refresh = "1s"

[auth.down]
type = "jwt"
algorithms = ["ES256"]
jwks_url = "https://127.0.0.1:{dead}/jwks.json"
jwks_ca = "certs/ca.crt"

[auth.untrusted]
type = "jwt"
algorithms = ["ES256"]
jwks_url = "https://127.0.0.1:{port}/jwks.json"

[[route]]
name = "idp"
match.path_prefix = "/idp/"
upstream = "api"
auth = "idp"

[[route]]
name = "flaky"
match.path_prefix = "/flaky/"
upstream = "api"
auth = "flaky"

[[route]]
name = "down"
match.path_prefix = "/down/"
upstream = "api"
auth = "down"

[[route]]
name = "untrusted"
match.path_prefix = "/untrusted/"
upstream = "api"
auth = "untrusted"

{}"#,
        upstream_toml("api", &[&b], ""),
        port = server.addr.port(),
    );
    let hits_before_check = server.hits.load(std::sync::atomic::Ordering::SeqCst);
    // `portico check` reads everything but fetches nothing.
    let cfg_path = dir.path().join("check.toml");
    std::fs::write(
        &cfg_path,
        format!("[admin]\nbind = \"127.0.0.1:{}\"\n{config}", free_port()),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits_before_check
    );

    let p = Portico::start_in(dir, &config);
    let hits = || server.hits.load(std::sync::atomic::Ordering::SeqCst);
    let t1 = k1.mint(Algorithm::ES256, Some("k1"), &claims("u1"));
    assert_eq!(status(addr, "/idp/a", &t1).await, 200, "{}", p.stderr());
    let after_start = hits();
    assert!(after_start >= 1);

    // Rotation: the IdP now publishes k2 only. A token with the new kid
    // makes portico fetch again, once.
    server.set(jwks(&[("k2", &k2)]));
    let t2 = k2.mint(Algorithm::RS256, Some("k2"), &claims("u2"));
    assert_eq!(status(addr, "/idp/a", &t2).await, 200);
    assert_eq!(hits(), after_start + 1);
    // k1 is gone from the set in force: its token no longer passes, even
    // though it was cached.
    assert_eq!(status(addr, "/idp/a", &t1).await, 401);
    // Another unknown kid within the minute: no new fetch.
    server.set(jwks(&[("k2", &k2), ("k3", &k3)]));
    let t3 = k3.mint(Algorithm::EdDSA, Some("k3"), &claims("u3"));
    assert_eq!(status(addr, "/idp/a", &t3).await, 401);
    assert_eq!(hits(), after_start + 1);

    // The flaky endpoint answered once, then fails every second: the
    // first key set stays in force.
    let tf = k1.mint(Algorithm::ES256, Some("k1"), &claims("f"));
    // /flaky.json served the document current at its first fetch (k1).
    let flaky = || server.flaky_hits.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while flaky() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(flaky() >= 3, "flaky JWKS was not refreshed");
    assert_eq!(status(addr, "/flaky/a", &tf).await, 200);

    // Never had a key: 503, not 401.
    let r = get(addr, "/down/a", Some(&tf)).await;
    assert_eq!(r.status(), 503);
    // A JWKS behind a certificate the policy does not trust: never fetched.
    assert_eq!(status(addr, "/untrusted/a", &tf).await, 503);
    assert_eq!(b.request_count(), 3);
    drop(p);
}

async fn admin_post(admin: std::net::SocketAddr, body: &str, token: Option<&str>) -> u16 {
    let mut r = client()
        .post(format!("http://{admin}/revoke"))
        .body(body.to_string());
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_in_memory_by_jti_and_subject() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let ec = TestKey::ec256();
    write(dir.path(), "ec.pub", &ec.public_pem);
    write(dir.path(), "admin.token", "s3cret\n");
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        r#"[admin]
bind = "{{admin}}"
token_file = "admin.token"

{l}
[auth.users]
type = "jwt"
algorithms = ["ES256"]
keys = ["ec.pub"]
revocation = true

[[route]]
name = "r"
upstream = "api"
auth = "users"

{}"#,
        upstream_toml("api", &[&b], "")
    );
    let p = Portico::start_in(dir, &config);
    let n = now();
    let t = ec.mint(
        Algorithm::ES256,
        None,
        &json!({"sub": "carol", "jti": "j-1", "iat": n - 100, "exp": n + 600}),
    );
    assert_eq!(status(addr, "/", &t).await, 200);
    assert_eq!(status(addr, "/", &t).await, 200); // now cached

    let body = format!(r#"{{"jti": "j-1", "exp": {}}}"#, n + 600);
    assert_eq!(admin_post(p.admin, &body, None).await, 401);
    assert_eq!(admin_post(p.admin, &body, Some("wrong")).await, 401);
    assert_eq!(status(addr, "/", &t).await, 200);
    assert_eq!(admin_post(p.admin, &body, Some("s3cret")).await, 204);
    let r = get(addr, "/", Some(&t)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        challenge(&r),
        r#"Bearer realm="portico", error="invalid_token""#
    );

    // Log out everywhere: every token of carol issued before the cut-off.
    let old = ec.mint(
        Algorithm::ES256,
        None,
        &json!({"sub": "carol", "iat": n - 50, "exp": n + 600}),
    );
    let other = ec.mint(
        Algorithm::ES256,
        None,
        &json!({"sub": "dave", "iat": n - 50, "exp": n + 600}),
    );
    assert_eq!(status(addr, "/", &old).await, 200);
    let body = format!(r#"{{"sub": "carol", "before": {}}}"#, n - 10);
    assert_eq!(admin_post(p.admin, &body, Some("s3cret")).await, 204);
    assert_eq!(status(addr, "/", &old).await, 401);
    assert_eq!(status(addr, "/", &other).await, 200);
    let fresh = ec.mint(
        Algorithm::ES256,
        None,
        &json!({"sub": "carol", "iat": n, "exp": n + 600}),
    );
    assert_eq!(status(addr, "/", &fresh).await, 200);

    for bad in [
        "",
        "{}",
        r#"{"jti": "x"}"#,
        r#"{"sub": "x", "before": "soon"}"#,
        "[1]",
    ] {
        assert_eq!(admin_post(p.admin, bad, Some("s3cret")).await, 400, "{bad}");
    }
    assert_eq!(b.request_count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_revocation_is_shared_and_store_errors_follow_policy() {
    let b = Backend::start("api").await;
    let mut redis = Redis::start();
    let secret = SECRET;
    let start = |on_error: &str| {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "secret", secret);
        let (addr, l) = listener_toml("web", "");
        let config = format!(
            r#"{l}
[revocation]
store = "redis"
redis_url = "{url}"
key_prefix = "test:revoked:"
on_store_error = "{on_error}"

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
            upstream_toml("api", &[&b], ""),
            url = redis.url(),
        );
        (addr, Portico::start_in(dir, &config))
    };
    let (a_addr, a) = start("deny");
    let (b_addr, b_proc) = start("allow");
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let n = now();
    let t = mint_with(
        &key,
        Algorithm::HS256,
        None,
        &json!({"sub": "erin", "jti": "shared-1", "iat": n - 100, "exp": n + 600}),
    );
    assert_eq!(status(a_addr, "/", &t).await, 200, "{}", a.stderr());
    assert_eq!(status(b_addr, "/", &t).await, 200, "{}", b_proc.stderr());

    // Revoked through A, refused by B from the next request on.
    let body = format!(r#"{{"jti": "shared-1", "exp": {}}}"#, n + 600);
    assert_eq!(admin_post(a.admin, &body, None).await, 204);
    assert_eq!(status(b_addr, "/", &t).await, 401);
    assert_eq!(status(a_addr, "/", &t).await, 401);

    // A subject cut-off through B holds on A.
    let u = mint_with(
        &key,
        Algorithm::HS256,
        None,
        &json!({"sub": "frank", "iat": n - 100, "exp": n + 600}),
    );
    assert_eq!(status(a_addr, "/", &u).await, 200);
    let body = format!(r#"{{"sub": "frank", "before": {}}}"#, n - 50);
    assert_eq!(admin_post(b_proc.admin, &body, None).await, 204);
    assert_eq!(status(a_addr, "/", &u).await, 401);

    // Redis down: A (deny) answers 503, B (allow) lets the token through.
    let v = mint_with(
        &key,
        Algorithm::HS256,
        None,
        &json!({"sub": "gina", "jti": "v", "iat": n, "exp": n + 600}),
    );
    assert_eq!(status(a_addr, "/", &v).await, 200);
    let port = redis.port;
    redis.stop();
    assert_eq!(status(a_addr, "/", &v).await, 503);
    assert_eq!(status(b_addr, "/", &v).await, 200);
    // Every request's check fails while the store is down; the log gets
    // one line for them (then one per 10 s), not one per request.
    for _ in 0..30 {
        assert_eq!(status(a_addr, "/", &v).await, 503);
    }
    let lines = a
        .stderr()
        .lines()
        .filter(|l| l.contains("revocation store: redis check"))
        .count();
    assert_eq!(lines, 1, "{}", a.stderr());
    assert_eq!(
        admin_post(a.admin, r#"{"jti": "x", "exp": 9999999999}"#, None).await,
        503
    );

    // Redis back: the same connection recovers by itself.
    let _redis = Redis::start_on(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut code = 0;
    while std::time::Instant::now() < deadline {
        code = status(a_addr, "/", &v).await;
        if code == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        code,
        200,
        "portico did not reconnect to redis: {}",
        a.stderr()
    );
}

/// The counters the /metrics exporter reads, one per result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validations_are_counted_by_result() {
    let dir = tempfile::tempdir().unwrap();
    let ec = TestKey::ec256();
    write(dir.path(), "ec.pub", &ec.public_pem);
    let text = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:1"

[auth.users]
type = "jwt"
algorithms = ["ES256"]
keys = ["ec.pub"]
required_scopes = ["admin"]
revocation = true
"#;
    let lc = portico::config::parse(&dir.path().join("proxy.toml"), text.to_string()).unwrap();
    let set = portico::auth::AuthSet::build(&lc, None).unwrap();
    let policy = set.policy("users").unwrap();
    let n = now();
    let mut h = http::HeaderMap::new();
    let mut run = |token: Option<String>| {
        h.clear();
        if let Some(t) = token {
            h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let fut = policy.authenticate(&mut h);
        futures_util::FutureExt::now_or_never(fut).expect("no await needed")
    };
    let ok = ec.mint(
        Algorithm::ES256,
        None,
        &json!({"sub": "a", "jti": "c1", "exp": n + 60, "scope": "admin"}),
    );
    assert!(run(Some(ok.clone())).is_ok());
    assert!(run(Some(ok.clone())).is_ok());
    assert!(run(None).is_err());
    assert!(run(Some("x.y.z".into())).is_err());
    assert!(run(Some(ec.mint(
        Algorithm::ES256,
        None,
        &json!({"exp": n - 100})
    )))
    .is_err());
    assert!(run(Some(ec.mint(
        Algorithm::ES256,
        None,
        &json!({"exp": n + 100})
    )))
    .is_err());
    set.revoke(format!(r#"{{"jti": "c1", "exp": {}}}"#, n + 60).as_bytes())
        .await
        .unwrap();
    assert!(run(Some(ok)).is_err());
    let counts = policy.counts();
    assert_eq!(
        counts,
        [
            ("ok", 2),
            ("missing", 1),
            ("invalid", 1),
            ("expired", 1),
            ("revoked", 1),
            ("forbidden", 1),
            ("unavailable", 0)
        ]
    );
    assert!(policy.cache_usage().0 >= 1);
}

#[test]
fn config_errors_point_at_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let ec = TestKey::ec256();
    write(dir.path(), "ec.pub", &ec.public_pem);
    write(dir.path(), "empty", "");
    write(dir.path(), "short", "tooshort");
    write(
        dir.path(),
        "garbage.pub",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    );
    write(
        dir.path(),
        "bad.json",
        r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#,
    );
    let base = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n";
    let check = |extra: &str| -> String {
        let text = format!("{base}{extra}");
        let path = dir.path().join("proxy.toml");
        match portico::config::parse(&path, text) {
            Err(e) => e.to_string(),
            Ok(lc) => {
                let lc = std::sync::Arc::new(lc);
                match portico::auth::AuthSet::build(&lc, None) {
                    Err(e) => e.to_string(),
                    Ok(_) => "ok".to_string(),
                }
            }
        }
    };
    let cases = [
        ("[[route]]\nname = \"r\"\nrespond = { status = 200 }\nauth = \"nope\"\n", ":7:8:", "unknown auth policy"),
        ("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"HS256\"]\nsecret_file = \"empty\"\n", ":7:15:", "empty"),
        ("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"HS256\"]\nsecret_file = \"short\"\n", ":7:15:", "at least 32"),
        ("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"HS256\"]\nkeys = [\"ec.pub\"]\n", ":6:15:", "secret_file"),
        ("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\nkeys = [\"garbage.pub\"]\n", ":7:9:", "garbage.pub"),
        ("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\nkeys = [\"missing.pub\"]\n", ":7:9:", "cannot read"),
        ("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\njwks_file = \"bad.json\"\n", ":7:13:", "bad.json"),
        ("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"none\"]\nkeys = [\"ec.pub\"]\n", ":6:", "none"),
        ("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"ES384\"]\nkeys = [\"ec.pub\"]\n", ":6:15:", "no configured key"),
        ("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\nkeys = [\"ec.pub\"]\nleway = \"1s\"\n", ":8:1:", "leway"),
        ("[auth.a]\ntype = \"oauth\"\nalgorithms = [\"ES256\"]\n", ":5:8:", "oauth"),
        ("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\njwks_url = \"ftp://x/\"\n", ":7:12:", "jwks_url"),
        ("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\nkeys = [\"ec.pub\"]\nforward_claims = { sub = \"host\" }\n", ":8:", "host"),
        ("[revocation]\nstore = \"redis\"\nredis_url = \"http://x\"\n", ":6:13:", "redis_url"),
        ("[revocation]\nstore = \"memcached\"\n", ":5:9:", "memcached"),
        ("[revocation]\nttl = 5\n", ":5:1:", "ttl"),
    ];
    for (extra, at, msg) in cases {
        let e = check(extra);
        assert!(
            e.contains(at) && e.contains(msg),
            "{extra:?} gave {e:?}, wanted {at} {msg}"
        );
    }
    assert_eq!(
        check("[auth.a]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\nkeys = [\"ec.pub\"]\n[[route]]\nname = \"r\"\nrespond = { status = 200 }\nauth = \"a\"\n"),
        "ok"
    );
}

/// The token cache is looked up before the token's bytes are checked to
/// be text: a token that differs from a cached one by a byte that is not
/// UTF-8 must miss and be refused, never ride on the cached entry. From
/// the attacker's side: the exact bytes on the wire, and what the upstream
/// received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_with_a_non_text_byte_is_refused() {
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let ec = TestKey::ec256();
    write(dir.path(), "ec.pub", &ec.public_pem);
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        "{l}\n[auth.users]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\nkeys = [\"ec.pub\"]\n\n\
         [[route]]\nname = \"api\"\nmatch.path_prefix = \"/\"\nupstream = \"api\"\nauth = \"users\"\n\n{}",
        upstream_toml("api", &[&b], "")
    );
    let _p = Portico::start_in(dir, &config);
    let n = now();
    let t = ec.mint(
        Algorithm::ES256,
        None,
        &json!({"sub": "alice", "exp": n + 600}),
    );
    // Cached now.
    assert_eq!(status(addr, "/ok", &t).await, 200);
    assert_eq!(b.request_count(), 1);
    for (name, token) in [
        ("a byte appended", [t.as_bytes(), b"\xff"].concat()),
        (
            "a byte inside",
            [&t.as_bytes()[..10], b"\xc3", &t.as_bytes()[10..]].concat(),
        ),
    ] {
        let mut req = b"GET /forged HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer ".to_vec();
        req.extend_from_slice(&token);
        req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let (status, head, _) = support::raw::exchange(addr, &req).await;
        assert_eq!(status, 401, "{name}: {head}");
    }
    assert_eq!(
        b.request_count(),
        1,
        "a forged request reached the upstream"
    );
    // The cached token still passes.
    assert_eq!(status(addr, "/ok", &t).await, 200);
    assert_eq!(b.request_count(), 2);
}
