//! Verification keys: PEM public keys, JWKS documents, the HMAC secret.
//!
//! Guarantees:
//! - a key knows its own type ([`KeyKind`]), and [`VerifyingKey::fits`] is
//!   the one place that decides which JWS algorithm may use which key: HS*
//!   only an HMAC secret, RS*/PS* only RSA, ES256 only P-256, ES384 only
//!   P-384, EdDSA only Ed25519. A JWK that names its own `alg` fits that
//!   algorithm only. [`VerifyingKey::verify`] refuses any other pairing, so
//!   an RSA public key can never be used as an HMAC secret (the classic
//!   HS/RS confusion), whatever the token's header says;
//! - PEM armour is decoded by rustls-pki-types, SubjectPublicKeyInfo and
//!   PKCS#1 DER by the RustCrypto `spki` and `pkcs1` crates, JWKs are read
//!   by jsonwebtoken's `jwk` types; the key material is then checked here,
//!   so a bad file is a precise error: a private key, a certificate, an RSA
//!   modulus outside 2048..=8192 bits (an empty one included), an EC point
//!   of the wrong size are all refused at load time rather than failing
//!   every token later;
//! - JWKS keys meant for encryption (`"use": "enc"`), and key types or
//!   curves no JWS algorithm here can use, are skipped, never errors, so an
//!   IdP that publishes such keys beside its signing keys still works;
//! - symmetric (`"kty": "oct"`) JWKs are skipped too: HMAC secrets come only
//!   from `secret_file`.
//!
//! Signature arithmetic is jsonwebtoken's (`crypto::verify`, on ring).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use pkcs1::der::Decode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use serde::Deserialize;
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};
use std::collections::HashMap;

/// What a key is, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Hmac, HS256 | HS384 | HS512)
                | (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::EcP256, ES256)
                | (KeyKind::EcP384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

/// One key that can verify signatures.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kind: KeyKind,
    /// The JWK's `kid`; PEM keys and the secret have none.
    pub kid: Option<Box<str>>,
    /// The JWK's `alg`, when it names one: the key is for that algorithm only.
    pub alg: Option<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kind", &self.kind)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

impl VerifyingKey {
    /// The HMAC key of a shared secret.
    pub fn hmac(secret: &[u8]) -> VerifyingKey {
        VerifyingKey {
            kind: KeyKind::Hmac,
            kid: None,
            alg: None,
            key: DecodingKey::from_secret(secret),
        }
    }

    /// Whether a token signed with `alg` may be checked with this key.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// Checks `signature` (base64url, as in the token) over `message` (the
    /// token's "header.payload"). False for a key that does not fit `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        // jsonwebtoken's crypto::verify trusts its caller to pair key and
        // algorithm (it would use RSA DER bytes as an HMAC secret): never
        // call it for a pairing `fits` refuses.
        self.fits(alg)
            && jsonwebtoken::crypto::verify(signature, message, &self.key, alg).unwrap_or(false)
    }
}

/// A set of keys, indexed by kid.
#[derive(Debug, Default, Clone)]
pub struct KeySet {
    pub keys: Vec<VerifyingKey>,
    by_kid: HashMap<Box<str>, usize>,
}

impl KeySet {
    pub fn new(keys: Vec<VerifyingKey>) -> KeySet {
        let mut by_kid = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(kid) = &k.kid {
                // The first key of a kid wins, as in most JWKS consumers.
                by_kid.entry(kid.clone()).or_insert(i);
            }
        }
        KeySet { keys, by_kid }
    }

    pub fn by_kid(&self, kid: &str) -> Option<&VerifyingKey> {
        self.by_kid.get(kid).map(|&i| &self.keys[i])
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Reads every public key of a PEM file ("PUBLIC KEY" or "RSA PUBLIC KEY"
/// blocks). At least one must be there.
pub fn from_pem(text: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not a PEM file (not text)".to_string())?;
    // rustls-pki-types decodes the armour but silently skips labels it does
    // not know (such as "RSA PUBLIC KEY" or "ENCRYPTED PRIVATE KEY"), so the
    // labels are listed first: anything but a public key is a precise error
    // instead of "no key found".
    let labels = pem_labels(text);
    if labels.is_empty() {
        return Err("no PEM block found (expected -----BEGIN PUBLIC KEY-----)".into());
    }
    for label in &labels {
        match *label {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
            l if l.contains("PRIVATE KEY") => {
                return Err(format!(
                    "holds a {l}: give the public key (openssl pkey -pubout)"
                ))
            }
            "CERTIFICATE" => {
                return Err(
                    "holds a certificate: give its public key (openssl x509 -pubkey -noout)".into(),
                )
            }
            l => return Err(format!("unexpected PEM block \"{l}\"")),
        }
    }
    // A PKCS#1 block is decoded as if it were SPKI (the armour is the same);
    // `labels` still says which DER is which.
    let armour: std::borrow::Cow<'_, str> = if labels.contains(&"RSA PUBLIC KEY") {
        text.replace(
            "-----BEGIN RSA PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----",
        )
        .replace("-----END RSA PUBLIC KEY-----", "-----END PUBLIC KEY-----")
        .into()
    } else {
        text.into()
    };
    let ders = SubjectPublicKeyInfoDer::pem_slice_iter(armour.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if ders.len() != labels.len() {
        return Err("bad PEM: a block is not closed by its END line".into());
    }
    labels
        .iter()
        .zip(&ders)
        .map(|(label, der)| match *label {
            "RSA PUBLIC KEY" => rsa_from_pkcs1(der.as_ref()),
            _ => from_spki(der.as_ref()),
        })
        .collect()
}

/// The labels of the PEM blocks of `text`, in order, by the same rule as
/// rustls-pki-types uses to find a BEGIN line.
fn pem_labels(text: &str) -> Vec<&str> {
    text.split(['\n', '\r'])
        .filter_map(|line| {
            line.strip_prefix("-----BEGIN ")?
                .trim_end_matches(' ')
                .strip_suffix("-----")
        })
        .collect()
}

const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// A SubjectPublicKeyInfo (RFC 5280) holding an RSA, P-256, P-384 or
/// Ed25519 key.
fn from_spki(der: &[u8]) -> Result<VerifyingKey, String> {
    let spki = SubjectPublicKeyInfoRef::try_from(der)
        .map_err(|e| format!("not a valid public key ({e})"))?;
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or("not a valid public key (key bits not whole bytes)")?;
    let oid = spki.algorithm.oid;
    if oid == OID_RSA {
        rsa_from_pkcs1(key)
    } else if oid == OID_EC {
        let curve = spki
            .algorithm
            .parameters_oid()
            .map_err(|_| "EC key without a named curve".to_string())?;
        let kind = if curve == OID_P256 {
            KeyKind::EcP256
        } else if curve == OID_P384 {
            KeyKind::EcP384
        } else {
            return Err("EC key on a curve other than P-256 or P-384".into());
        };
        ec_point(kind, key)
    } else if oid == OID_ED25519 {
        ed25519(key)
    } else {
        Err("unsupported key type (RSA, EC P-256/P-384 and Ed25519 are)".into())
    }
}

/// A PKCS#1 RSAPublicKey: SEQUENCE { n INTEGER, e INTEGER }.
fn rsa_from_pkcs1(der: &[u8]) -> Result<VerifyingKey, String> {
    let k = pkcs1::RsaPublicKey::from_der(der)
        .map_err(|e| format!("not a valid RSA public key ({e})"))?;
    rsa(k.modulus.as_bytes(), k.public_exponent.as_bytes())
}

/// An RSA key from big-endian modulus and exponent (leading zeros allowed).
fn rsa(n: &[u8], e: &[u8]) -> Result<VerifyingKey, String> {
    let n = strip_zeros(n);
    let e = strip_zeros(e);
    // An empty (or all-zero) modulus is 0 bits, refused below.
    let bits = n
        .first()
        .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
    if !(2048..=8192).contains(&bits) {
        return Err(format!(
            "RSA key of {bits} bits: 2048 to 8192 bits are supported"
        ));
    }
    if e.is_empty() || e.len() > 4 || e.last().is_some_and(|b| b & 1 == 0) {
        return Err("RSA key with an unusable public exponent".into());
    }
    Ok(VerifyingKey {
        kind: KeyKind::Rsa,
        kid: None,
        alg: None,
        key: DecodingKey::from_rsa_raw_components(n, e),
    })
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

/// An uncompressed EC point (0x04 || X || Y).
fn ec_point(kind: KeyKind, point: &[u8]) -> Result<VerifyingKey, String> {
    let coord = if kind == KeyKind::EcP256 { 32 } else { 48 };
    if point.len() != 1 + 2 * coord || point[0] != 0x04 {
        return Err("EC public key is not an uncompressed point of its curve".into());
    }
    Ok(VerifyingKey {
        kind,
        kid: None,
        alg: None,
        key: DecodingKey::from_ec_der(point),
    })
}

fn ed25519(key: &[u8]) -> Result<VerifyingKey, String> {
    if key.len() != 32 {
        return Err("Ed25519 public key must be 32 bytes".into());
    }
    Ok(VerifyingKey {
        kind: KeyKind::Ed25519,
        kid: None,
        alg: None,
        key: DecodingKey::from_ed_der(key),
    })
}

/// A JWKS document, each key left as JSON: jsonwebtoken's `JwkSet` would
/// refuse the whole set for one key it cannot read, where one bad or
/// foreign key must only be skipped.
#[derive(Deserialize)]
struct JwkSetDoc {
    keys: Vec<serde_json::Value>,
}

/// What a JWKS document yielded.
#[derive(Debug)]
pub struct ParsedJwks {
    pub keys: Vec<VerifyingKey>,
    /// Keys left out as not for signatures here, with why (for the log).
    pub skipped: Vec<String>,
    /// Broken keys left out (only when not strict), with why (for the log).
    pub malformed: Vec<String>,
}

/// Parses a JWKS document. `strict`: a key that is malformed (as opposed to
/// merely not for signatures here) is an error rather than skipped; used
/// for jwks_file, where the operator can fix it, not for a jwks_url.
pub fn parse_jwks(doc: &[u8], strict: bool) -> Result<ParsedJwks, String> {
    const NOT_JWKS: &str = "not a JWKS document ({\"keys\": [...]})";
    // A JWK Set is a JSON object (RFC 7517 5); serde would also read the
    // struct from an array. And it is valid JSON throughout, members
    // ignored here included, which serde alone does not check.
    if doc.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(format!("{NOT_JWKS}: not a JSON object"));
    }
    if !super::token::is_json(doc) {
        return Err(format!("{NOT_JWKS}: not valid UTF-8 JSON"));
    }
    let set: JwkSetDoc = serde_json::from_slice(doc).map_err(|e| format!("{NOT_JWKS}: {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    let mut malformed = Vec::new();
    for (i, v) in set.keys.into_iter().enumerate() {
        match parse_jwk(&v) {
            Ok(k) => keys.push(k),
            Err(JwkError::Unusable(why)) => skipped.push(format!("key {i}: {why}")),
            Err(JwkError::Malformed(why)) => {
                if strict {
                    return Err(format!("key {i}: {why}"));
                }
                malformed.push(format!("key {i}: {why}"));
            }
        }
    }
    Ok(ParsedJwks {
        keys,
        skipped,
        malformed,
    })
}

enum JwkError {
    /// Fine as a JWK, but not a JWS verification key this proxy uses.
    Unusable(String),
    /// Broken.
    Malformed(String),
}

/// One JWK, read by jsonwebtoken's `Jwk` type. Key types, curves and
/// algorithms that type cannot represent are sorted out first, from the
/// raw JSON, so they are skipped as unusable rather than reported as
/// malformed.
fn parse_jwk(v: &serde_json::Value) -> Result<VerifyingKey, JwkError> {
    let (kty, alg) = jwk_kind(v)?;
    let jwk = Jwk::deserialize(v).map_err(|e| {
        JwkError::Malformed(format!(
            "bad {kty} JWK ({}): {e}",
            match kty {
                "RSA" => "needs string members n and e",
                "EC" => "needs string members x and y",
                _ => "needs a string member x",
            }
        ))
    })?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err(JwkError::Unusable("not a signature key (\"use\")".into())),
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err(JwkError::Unusable(
                "key_ops does not include \"verify\"".into(),
            ));
        }
    }
    let mut key = jwk_key(&jwk.algorithm)?;
    if let Some(a) = alg {
        if !key.kind.fits(a) {
            return Err(JwkError::Malformed(format!(
                "alg {a:?} does not fit a {:?} key",
                key.kind
            )));
        }
    }
    key.alg = alg;
    key.kid = jwk.common.key_id.map(String::into_boxed_str);
    Ok(key)
}

fn curve_unusable(c: &str) -> JwkError {
    JwkError::Unusable(format!("curve \"{c}\" is not supported"))
}

/// The key type (`kty`) and algorithm (`alg`) of a raw JWK, when both are
/// ones portico verifies with.
fn jwk_kind(v: &serde_json::Value) -> Result<(&str, Option<Algorithm>), JwkError> {
    let text = |name: &str| -> Result<Option<&str>, JwkError> {
        match v.get(name) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(JwkError::Malformed(format!("\"{name}\" is not a string"))),
        }
    };
    if !v.is_object() {
        return Err(JwkError::Malformed("a key is not a JSON object".into()));
    }
    let kty = text("kty")?.ok_or_else(|| JwkError::Malformed("missing \"kty\"".into()))?;
    match (kty, text("crv")?) {
        ("RSA", _) | ("EC", Some("P-256" | "P-384")) | ("OKP", Some("Ed25519")) => {}
        ("EC" | "OKP", None) => {
            return Err(JwkError::Malformed(format!("{kty} key without \"crv\"")))
        }
        ("EC" | "OKP", Some(c)) => return Err(curve_unusable(c)),
        ("oct", _) => {
            return Err(JwkError::Unusable(
                "symmetric key (HMAC secrets come only from secret_file)".into(),
            ))
        }
        (k, _) => {
            return Err(JwkError::Unusable(format!(
                "key type \"{k}\" is not supported"
            )))
        }
    }
    let alg = match text("alg")? {
        None => None,
        Some(a) => match a.parse::<Algorithm>() {
            Ok(a) => Some(a),
            Err(_) => return Err(JwkError::Unusable(format!("alg \"{a}\" is not supported"))),
        },
    };
    Ok((kty, alg))
}

/// The verifying key of a JWK's parameters.
fn jwk_key(params: &AlgorithmParameters) -> Result<VerifyingKey, JwkError> {
    let b64 = |s: &str, name: &str| -> Result<Vec<u8>, JwkError> {
        URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| JwkError::Malformed(format!("\"{name}\" is not base64url")))
    };
    // The key is built from the bytes checked here rather than by
    // `DecodingKey::from_jwk`, which takes any size and would only fail (or
    // not) when a token is checked.
    match params {
        AlgorithmParameters::RSA(p) => {
            rsa(&b64(&p.n, "n")?, &b64(&p.e, "e")?).map_err(JwkError::Malformed)
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let kind = match p.curve {
                EllipticCurve::P256 => KeyKind::EcP256,
                EllipticCurve::P384 => KeyKind::EcP384,
                ref c => return Err(curve_unusable(&format!("{c:?}"))),
            };
            let (x, y) = (b64(&p.x, "x")?, b64(&p.y, "y")?);
            let coord = if kind == KeyKind::EcP256 { 32 } else { 48 };
            if x.len() != coord || y.len() != coord {
                return Err(JwkError::Malformed(
                    "EC coordinates of the wrong size".into(),
                ));
            }
            let mut point = Vec::with_capacity(1 + 2 * coord);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ec_point(kind, &point).map_err(JwkError::Malformed)
        }
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => ed25519(&b64(&p.x, "x")?).map_err(JwkError::Malformed),
            ref c => Err(curve_unusable(&format!("{c:?}"))),
        },
        AlgorithmParameters::OctetKey(_) => Err(JwkError::Unusable(
            "symmetric key (HMAC secrets come only from secret_file)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_is_strict() {
        let h = VerifyingKey::hmac(b"0123456789abcdef0123456789abcdef");
        assert!(h.fits(Algorithm::HS256));
        assert!(!h.fits(Algorithm::RS256));
        assert!(KeyKind::Rsa.fits(Algorithm::PS384));
        assert!(!KeyKind::Rsa.fits(Algorithm::HS256));
        assert!(!KeyKind::EcP256.fits(Algorithm::ES384));
        assert!(!KeyKind::Ed25519.fits(Algorithm::ES256));
    }

    #[test]
    fn private_keys_and_garbage_are_refused() {
        let e = from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap_err();
        assert!(e.contains("PRIVATE KEY"), "{e}");
        assert!(from_pem(b"hello").is_err());
        assert!(from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
    }

    #[test]
    fn jwks_must_be_an_object_of_valid_json() {
        for strict in [true, false] {
            assert!(parse_jwks(br#" {"keys": []}"#, strict).is_ok());
            // An array, even one shaped like the struct's fields.
            for doc in [&b" [ []]"[..], b"[[{\"kty\":\"oct\"}]]", b"[]"] {
                let e = parse_jwks(doc, strict).unwrap_err();
                assert!(e.contains("not a JSON object"), "{e}");
            }
            // Not UTF-8, or a number out of range, in a member nothing reads.
            for doc in [
                &b"{\"use\": \"\x88ct\", \"keys\": []}"[..],
                b"{\"n\": 1e400, \"keys\": []}",
                b"{\"keys\": [{\"kty\": \"EC\", \"x\": 1763e2980038}]}",
            ] {
                let e = parse_jwks(doc, strict).unwrap_err();
                assert!(e.contains("not valid UTF-8 JSON"), "{e}");
            }
        }
    }

    #[test]
    fn jwks_skips_what_it_cannot_use() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0"},
            {"kty":"EC","crv":"P-521","x":"AA","y":"AA"},
            {"kty":"RSA","use":"enc","n":"AA","e":"AQAB"},
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}"#;
        let p = parse_jwks(doc, true).unwrap();
        assert_eq!(p.keys.len(), 1);
        assert_eq!(p.keys[0].kid.as_deref(), Some("ed"));
        assert_eq!(p.skipped.len(), 3);
        let bad = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#;
        assert!(parse_jwks(bad, true).is_err());
        assert_eq!(parse_jwks(bad, false).unwrap().keys.len(), 0);
    }

    /// One DER element (short or long form length).
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend([0x81, n as u8]);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// PKCS#1 RSAPublicKey of a 2048-bit modulus (not a real key: only its
    /// size is checked at load) and e = 65537.
    fn pkcs1(n: &[u8]) -> Vec<u8> {
        let mut seq = tlv(0x02, n);
        seq.extend(tlv(0x02, &[0x01, 0x00, 0x01]));
        tlv(0x30, &seq)
    }

    fn modulus_2048() -> Vec<u8> {
        let mut n = vec![0x00, 0xC3];
        n.extend([0x5A; 255]);
        n
    }

    fn spki(alg_id: &[u8], key: &[u8]) -> Vec<u8> {
        let mut bits = vec![0x00];
        bits.extend_from_slice(key);
        let mut seq = tlv(0x30, alg_id);
        seq.extend(tlv(0x03, &bits));
        tlv(0x30, &seq)
    }

    fn rsa_alg_id() -> Vec<u8> {
        let mut a = tlv(
            0x06,
            &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01],
        );
        a.extend([0x05, 0x00]);
        a
    }

    #[test]
    fn pem_public_keys_of_each_form() {
        let ed = spki(&tlv(0x06, &[0x2B, 0x65, 0x70]), &[7; 32]);
        let text = format!(
            "{}{}{}",
            pem("PUBLIC KEY", &ed),
            pem("RSA PUBLIC KEY", &pkcs1(&modulus_2048())),
            pem("PUBLIC KEY", &spki(&rsa_alg_id(), &pkcs1(&modulus_2048()))),
        );
        let keys = from_pem(text.as_bytes()).unwrap();
        let kinds: Vec<KeyKind> = keys.iter().map(|k| k.kind).collect();
        assert_eq!(kinds, [KeyKind::Ed25519, KeyKind::Rsa, KeyKind::Rsa]);
    }

    #[test]
    fn empty_or_small_rsa_modulus_is_an_error_not_a_panic() {
        // A zero-length INTEGER is not DER; a modulus of zero bytes after
        // its sign byte is 0 bits.
        for n in [&[][..], &[0x00][..], &[0x00, 0x00][..], &[0x01][..]] {
            let e = from_pem(pem("RSA PUBLIC KEY", &pkcs1(n)).as_bytes()).unwrap_err();
            assert!(e.contains("RSA"), "{e}");
            let e = from_pem(pem("PUBLIC KEY", &spki(&rsa_alg_id(), &pkcs1(n))).as_bytes())
                .unwrap_err();
            assert!(e.contains("RSA"), "{e}");
        }
        let doc = br#"{"keys":[{"kty":"RSA","kid":"z","n":"","e":"AQAB"},
                              {"kty":"RSA","kid":"y","n":"AA","e":"AQAB"}]}"#;
        let e = parse_jwks(doc, true).unwrap_err();
        assert!(e.contains("0 bits"), "{e}");
        let p = parse_jwks(doc, false).unwrap();
        assert!(p.keys.is_empty());
        assert_eq!(p.malformed.len(), 2);
    }

    #[test]
    fn unknown_pem_blocks_are_named() {
        let e = from_pem(pem("ENCRYPTED PRIVATE KEY", &[1, 2, 3]).as_bytes()).unwrap_err();
        assert!(e.contains("ENCRYPTED PRIVATE KEY"), "{e}");
        let e = from_pem(pem("CERTIFICATE", &[1, 2, 3]).as_bytes()).unwrap_err();
        assert!(e.contains("certificate"), "{e}");
        let e = from_pem(pem("X509 CRL", &[1, 2, 3]).as_bytes()).unwrap_err();
        assert!(e.contains("X509 CRL"), "{e}");
        let unclosed = "-----BEGIN PUBLIC KEY-----\nAAAA\n";
        assert!(from_pem(unclosed.as_bytes()).is_err());
        let trailing = [spki(&tlv(0x06, &[0x2B, 0x65, 0x70]), &[7; 32]), vec![0]].concat();
        assert!(from_pem(pem("PUBLIC KEY", &trailing).as_bytes()).is_err());
    }

    #[test]
    fn jwk_alg_use_and_ops_decide() {
        let ed = r#""kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo""#;
        let doc = format!(
            r#"{{"keys":[
            {{{ed},"kid":"a","alg":"EdDSA","use":"sig","key_ops":["verify"]}},
            {{{ed},"kid":"b","alg":"RSA-OAEP"}},
            {{{ed},"kid":"c","key_ops":["sign"]}},
            {{"kty":"XYZ"}},
            {{"kty":"EC","crv":"secp256k1","x":"AA","y":"AA"}}
            ]}}"#
        );
        let p = parse_jwks(doc.as_bytes(), true).unwrap();
        assert_eq!(p.keys.len(), 1);
        assert_eq!(p.keys[0].alg, Some(Algorithm::EdDSA));
        assert_eq!(p.skipped.len(), 4, "{:?}", p.skipped);
        // An alg that does not fit the key, a missing member, a key that is
        // not an object: malformed.
        for bad in [
            format!(r#"{{"keys":[{{{ed},"alg":"ES256"}}]}}"#),
            r#"{"keys":[{"kty":"RSA","e":"AQAB"}]}"#.to_string(),
            r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA"}]}"#.to_string(),
            r#"{"keys":[7]}"#.to_string(),
        ] {
            assert!(parse_jwks(bad.as_bytes(), true).is_err(), "{bad}");
            assert!(parse_jwks(bad.as_bytes(), false).unwrap().keys.is_empty());
        }
    }
}
