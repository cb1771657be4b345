//! PEM public keys (`public_key_file`): "PUBLIC KEY" (SPKI) and
//! "RSA PUBLIC KEY" (PKCS#1) blocks.
//!
//! Properties, beyond "never panics":
//! - a file that loads yields at least one key;
//! - every key fits at least one JWS algorithm and never an HMAC one (an
//!   RSA or EC public key must never serve as an HMAC secret);
//! - verifying garbage with any key and any algorithm is false;
//! - an RSA key with a zero modulus is refused, not a panic (an overflow in
//!   the key size check once; builds have overflow checks on).
#![no_main]

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use portico::auth::keys::from_pem;

const ALGS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = from_pem(data) else {
        return;
    };
    assert!(!keys.is_empty(), "a PEM file loaded with no key");
    for key in &keys {
        assert!(
            ALGS.iter().any(|a| key.fits(*a)),
            "{key:?} fits no algorithm"
        );
        for hs in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            assert!(!key.fits(hs), "a PEM public key fits {hs:?}");
        }
        for alg in ALGS {
            assert!(!key.verify(alg, b"e30.e30", "AAAA"), "garbage verified");
        }
    }
});
