//! JWT parsing before the signature check: splitting the compact form,
//! decoding and reading the JOSE header, and decoding the claims set (and
//! the claim checks that run on it once a signature is good).
//!
//! Properties, beyond "never panics":
//! - a token that splits has exactly three non-empty base64url segments,
//!   and `signing_input`, `payload`, `signature` are those of the token;
//! - its header is valid UTF-8 JSON throughout (numbers in range, members
//!   it ignores included) and an object with no `crit` member, whose `alg`
//!   is exactly the name of the algorithm returned (one of the JWS names
//!   jsonwebtoken knows; never "none"), and whose `kid` is the one returned;
//! - claims that decode are a JSON object; the claim checks give the same
//!   answer twice and never report an `exp` the set does not carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::auth::token::{self, ClaimRules};
use serde_json::Value;

const KNOWN: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

fn b64url_decode(s: &str) -> Vec<u8> {
    use base64_lite::decode;
    decode(s).expect("segment accepted as base64url does not decode")
}

/// A base64url (no padding) decoder independent of the one under test.
mod base64_lite {
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let val = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'-' => 62,
                b'_' => 63,
                _ => return None,
            } as u32)
        };
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0u32);
        for &c in s.as_bytes() {
            acc = (acc << 6) | val(c)?;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Some(out)
    }
}

fn is_b64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fuzz_target!(|data: &[u8]| {
    let Ok(tok) = std::str::from_utf8(data) else {
        return;
    };
    // Claims on their own: the payload segment as the check sees it.
    if let Ok(m) = token::claims(tok) {
        check_claims(&m);
    }
    let Ok(parts) = token::split(tok) else {
        return;
    };
    let segs: Vec<&str> = tok.split('.').collect();
    assert_eq!(segs.len(), 3, "a token that splits has three segments");
    assert!(segs.iter().all(|s| is_b64url(s)), "segments are base64url");
    assert_eq!(parts.payload, segs[1]);
    assert_eq!(parts.signature, segs[2]);
    assert_eq!(
        parts.signing_input,
        &tok[..segs[0].len() + 1 + segs[1].len()]
    );

    let header = b64url_decode(segs[0]);
    // The whole header, members split() ignores included: serde alone
    // would skip those unchecked.
    let header: Value = match serde_json::from_slice(&header) {
        Ok(v) => v,
        Err(e) => panic!("an accepted header is not JSON: {e}"),
    };
    let obj = header.as_object().expect("an accepted header is an object");
    assert!(!obj.contains_key("crit"), "crit accepted");
    let alg = obj
        .get("alg")
        .and_then(Value::as_str)
        .expect("alg is a string");
    assert!(KNOWN.contains(&alg), "alg {alg:?} accepted");
    assert_eq!(format!("{:?}", parts.alg), alg, "alg read as another");
    match obj.get("kid") {
        None | Some(Value::Null) => assert!(parts.kid.is_none()),
        Some(Value::String(k)) => assert_eq!(parts.kid.as_deref(), Some(k.as_str())),
        Some(other) => panic!("kid {other} accepted"),
    }
    if let Ok(m) = token::claims(parts.payload) {
        check_claims(&m);
    }
});

fn check_claims(m: &serde_json::Map<String, Value>) {
    let issuer = ["https://issuer.example".to_string()];
    let audience = ["api".to_string()];
    let required = ["sub".to_string()];
    let scopes = ["read".to_string()];
    for (leeway, now) in [
        (0, 0),
        (60, 1_700_000_000),
        (i64::MAX, i64::MAX),
        (60, i64::MIN),
    ] {
        let rules = ClaimRules {
            issuer: &issuer,
            audience: &audience,
            leeway,
            required_claims: &required,
            required_scopes: &scopes,
        };
        let a = token::check(m, &rules, now);
        let b = token::check(m, &rules, now);
        assert_eq!(a, b, "claim checks are not deterministic");
        if let Ok(c) = a {
            if c.exp.is_some() {
                assert!(m.contains_key("exp"));
            }
            assert!(m.get("sub").is_some_and(|v| !v.is_null()), "sub required");
        }
    }
}
