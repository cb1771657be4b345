//! JWKS documents (`jwks_file`, and what a `jwks_url` serves), in the
//! strict mode of a file and the lenient mode of a URL.
//!
//! Properties, beyond "never panics":
//! - strict is lenient minus the malformed keys: when strict accepts a
//!   document, lenient accepts it with the same keys and skips; when
//!   lenient refuses one (not a JWKS at all), strict refuses it too;
//! - an accepted document is valid UTF-8 JSON throughout (numbers in
//!   range, members it ignores included) and an object with a `keys` array;
//! - no more keys (kept + skipped) come out than the document's `keys`
//!   array holds;
//! - an RSA key with an empty or all-zero modulus is refused, not a panic
//!   (an overflow in the key size check once); this and the rest run with
//!   overflow checks on;
//! - every key kept fits at least one JWS algorithm, and a key that names
//!   its `alg` fits that one only; verifying garbage with any key and any
//!   algorithm is false, never a panic.
#![no_main]

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use portico::auth::keys::parse_jwks;

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
    let lenient = parse_jwks(data, false);
    let strict_res = parse_jwks(data, true);
    match (&strict_res, &lenient) {
        (Ok(s), Ok(l)) => {
            assert_eq!(
                s.keys.len(),
                l.keys.len(),
                "strict and lenient keep different keys"
            );
            assert_eq!(s.skipped.len(), l.skipped.len());
        }
        (Ok(_), Err(e)) => panic!("strict accepts what lenient refuses: {e}"),
        (Err(_), _) => {}
    }
    let Ok(parsed) = lenient else {
        return;
    };
    // Valid JSON throughout, members parse_jwks ignores included.
    let doc = match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(v) => v,
        Err(e) => panic!("an accepted JWKS is not JSON: {e}"),
    };
    let listed = doc
        .as_object()
        .and_then(|o| o.get("keys"))
        .and_then(|k| k.as_array())
        .map(Vec::len)
        .expect("an accepted JWKS is an object with a keys array");
    assert!(parsed.keys.len() + parsed.skipped.len() <= listed);
    for key in &parsed.keys {
        let fitting: Vec<_> = ALGS.iter().filter(|a| key.fits(**a)).collect();
        assert!(!fitting.is_empty(), "{key:?} fits no algorithm");
        if let Some(alg) = key.alg {
            assert_eq!(fitting, [&alg], "{key:?} fits beyond its own alg");
        }
        assert!(
            !fitting
                .iter()
                .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)),
            "a JWKS key fits an HMAC algorithm: {key:?}"
        );
        for alg in ALGS {
            assert!(!key.verify(alg, b"e30.e30", "AAAA"), "garbage verified");
        }
    }
});
