//! What the fleet tests share: the HS256 secret of their policy, tokens
//! minted with it, and the requests and polls they make of an instance.

use super::jwt::{mint_with, now};
use super::{client, Portico};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

/// The policy's HS256 secret (written to the instance's `secret` file).
pub const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub fn token(sub: &str, jti: &str) -> String {
    let n = now();
    mint_with(
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
        None,
        &json!({"sub": sub, "jti": jti, "iat": n - 100, "exp": n + 600}),
    )
}

pub async fn status(addr: SocketAddr, t: &str) -> u16 {
    client()
        .get(format!("http://{addr}/"))
        .header("authorization", format!("Bearer {t}"))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

pub async fn revoke_jti(p: &Portico, jti: &str) -> u16 {
    let body = format!(r#"{{"jti": "{jti}", "exp": {}}}"#, now() + 600);
    client()
        .post(format!("http://{}/revoke", p.admin))
        .body(body)
        .send()
        .await
        .expect("revoke")
        .status()
        .as_u16()
}

/// Polls until `addr` answers `want` for `t` (a store coming back, a
/// failover being followed); panics after 20 s.
pub async fn until_status(addr: SocketAddr, t: &str, want: u16, what: &str, p: &Portico) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = 0;
    while std::time::Instant::now() < deadline {
        last = status(addr, t).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: still {last}, wanted {want}\n{}", p.stderr());
}

/// The sum of the samples of `family` whose labels contain `label`.
pub async fn counter(p: &Portico, family: &str, label: &str) -> f64 {
    let text = client()
        .get(format!("http://{}/metrics", p.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
