//! JWT verification cost per algorithm: cold (header, signature, claims:
//! what a new token pays) and cached (hash, cache hit, claim headers: what
//! a reused token pays). Prints cold verifications per second for ES256,
//! RS256 and EdDSA (one core) at the end.
//!
//! Run: `cargo bench --bench jwt`. Keys are the tests' [`TestKey`]s (RSA
//! from the `openssl` CLI).

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{black_box, criterion_group, Criterion};
use futures_util::FutureExt;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use std::time::{Duration, Instant};
use support::jwt::{mint_with, now, TestKey};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Fixture {
    _dir: tempfile::TempDir,
    set: portico::auth::AuthSet,
    tokens: Vec<(Algorithm, String)>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (rsa, ec256, ec384, ed) = (
        TestKey::rsa(),
        TestKey::ec256(),
        TestKey::ec384(),
        TestKey::ed25519(),
    );
    for (file, k) in [
        ("rsa.pub", &rsa),
        ("ec256.pub", &ec256),
        ("ec384.pub", &ec384),
        ("ed.pub", &ed),
    ] {
        std::fs::write(d.join(file), &k.public_pem).unwrap();
    }
    std::fs::write(d.join("secret"), SECRET).unwrap();
    let text = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:1"

[auth.hs]
type = "jwt"
algorithms = ["HS256"]
secret_file = "secret"
forward_claims = { sub = "x-user-id" }

[auth.pk]
type = "jwt"
algorithms = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
keys = ["rsa.pub", "ec256.pub", "ec384.pub", "ed.pub"]
forward_claims = { sub = "x-user-id" }
"#;
    let lc = portico::config::parse(&d.join("proxy.toml"), text.to_string()).unwrap();
    let set = portico::auth::AuthSet::build(&lc, None).unwrap();
    let n = now();
    let claims = json!({"sub": "user-1234", "iss": "https://idp.example", "aud": "api",
        "iat": n, "exp": n + 3600, "jti": "0f9c2a7e-3d3b-4c1e-9a55-7d1f0c1b2a3d",
        "scope": "read write"});
    let tokens = [
        (Algorithm::HS256, EncodingKey::from_secret(SECRET)),
        (Algorithm::RS256, rsa.encoding()),
        (Algorithm::PS256, rsa.encoding()),
        (Algorithm::ES256, ec256.encoding()),
        (Algorithm::ES384, ec384.encoding()),
        (Algorithm::EdDSA, ed.encoding()),
    ]
    .into_iter()
    .map(|(alg, key)| (alg, mint_with(&key, alg, None, &claims)))
    .collect();
    Fixture {
        _dir: dir,
        set,
        tokens,
    }
}

fn policy_for(f: &Fixture, alg: Algorithm) -> std::sync::Arc<portico::auth::JwtPolicy> {
    f.set
        .policy(if alg == Algorithm::HS256 { "hs" } else { "pk" })
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let mut cold = c.benchmark_group("jwt_cold");
    for (alg, token) in &f.tokens {
        let p = policy_for(&f, *alg);
        let n = now();
        assert!(p.verify_uncached(token, n).is_ok(), "{alg:?}");
        cold.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| p.verify_uncached(black_box(token), n).is_ok())
        });
    }
    cold.finish();
    let mut cached = c.benchmark_group("jwt_cached");
    for (alg, token) in &f.tokens {
        let p = policy_for(&f, *alg);
        let value = http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.clone());
        assert!(p.authenticate(&mut h).now_or_never().unwrap().is_ok());
        cached.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| {
                // A request's headers: the token, and a forged claim header.
                let mut h = http::HeaderMap::with_capacity(4);
                h.insert(http::header::AUTHORIZATION, value.clone());
                h.insert("x-user-id", http::HeaderValue::from_static("forged"));
                p.authenticate(&mut h).now_or_never().unwrap().is_ok()
            })
        });
    }
    cached.finish();
}

/// Cold verifications per second on one core, measured directly.
fn report_rates() {
    let f = fixture();
    println!("\ncold verifications per second (one core):");
    for (alg, token) in &f.tokens {
        if !matches!(alg, Algorithm::ES256 | Algorithm::RS256 | Algorithm::EdDSA) {
            continue;
        }
        let p = policy_for(&f, *alg);
        let n = now();
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            for _ in 0..100 {
                black_box(p.verify_uncached(black_box(token), n).is_ok());
            }
            count += 100;
        }
        let rate = count as f64 / start.elapsed().as_secs_f64();
        println!("  {alg:?}: {rate:.0}/s");
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report_rates();
}
