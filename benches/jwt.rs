//! JWT verification cost per algorithm: cold (header, signature, claims:
//! what a new token pays) and cached (hash, cache hit, claim headers: what
//! a reused token pays). Prints cold verifications per second for ES256,
//! RS256 and EdDSA (one core) at the end.
//!
//! Run: `cargo bench --bench jwt`. RSA keys come from the `openssl` CLI.

use criterion::{black_box, criterion_group, Criterion};
use futures_util::FutureExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Fixture {
    _dir: tempfile::TempDir,
    set: portico::auth::AuthSet,
    tokens: Vec<(Algorithm, String)>,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}");
    out.stdout
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("rsa.pem");
    let key_s = key.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key_s,
    ]);
    let rsa_der = openssl(&["rsa", "-in", key_s, "-traditional", "-outform", "DER"]);
    std::fs::write(
        d.join("rsa.pub"),
        openssl(&["pkey", "-in", key_s, "-pubout"]),
    )
    .unwrap();
    let ec256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(d.join("ec256.pub"), ec256.public_key_pem()).unwrap();
    std::fs::write(d.join("ec384.pub"), ec384.public_key_pem()).unwrap();
    std::fs::write(d.join("ed.pub"), ed.public_key_pem()).unwrap();
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": "user-1234", "iss": "https://idp.example", "aud": "api",
        "iat": now, "exp": now + 3600, "jti": "0f9c2a7e-3d3b-4c1e-9a55-7d1f0c1b2a3d",
        "scope": "read write"});
    let sign =
        |alg, key: &EncodingKey| jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap();
    let tokens = vec![
        (
            Algorithm::HS256,
            sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET)),
        ),
        (
            Algorithm::RS256,
            sign(Algorithm::RS256, &EncodingKey::from_rsa_der(&rsa_der)),
        ),
        (
            Algorithm::PS256,
            sign(Algorithm::PS256, &EncodingKey::from_rsa_der(&rsa_der)),
        ),
        (
            Algorithm::ES256,
            sign(
                Algorithm::ES256,
                &EncodingKey::from_ec_der(&ec256.serialize_der()),
            ),
        ),
        (
            Algorithm::ES384,
            sign(
                Algorithm::ES384,
                &EncodingKey::from_ec_der(&ec384.serialize_der()),
            ),
        ),
        (
            Algorithm::EdDSA,
            sign(
                Algorithm::EdDSA,
                &EncodingKey::from_ed_der(&ed.serialize_der()),
            ),
        ),
    ];
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

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
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
