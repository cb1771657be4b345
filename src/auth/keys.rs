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
//! - PEM and JWK material is parsed here (a small DER reader), not by
//!   jsonwebtoken's PEM helpers, so a bad file is a precise error: a private
//!   key, a certificate, an RSA modulus under 2048 bits, an EC point of the
//!   wrong size are all refused at load time rather than failing every
//!   token later;
//! - JWKS keys meant for encryption (`"use": "enc"`), and key types or
//!   curves no JWS algorithm here can use, are skipped, never errors, so an
//!   IdP that publishes such keys beside its signing keys still works;
//! - symmetric (`"kty": "oct"`) JWKs are skipped too: HMAC secrets come only
//!   from `secret_file`.
//!
//! Signature arithmetic is jsonwebtoken's (`crypto::verify`, on ring).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
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
    let blocks = pem_blocks(text)?;
    if blocks.is_empty() {
        return Err("no PEM block found (expected -----BEGIN PUBLIC KEY-----)".into());
    }
    let mut keys = Vec::new();
    for (label, der) in blocks {
        let key = match label.as_str() {
            "PUBLIC KEY" => from_spki(&der)?,
            "RSA PUBLIC KEY" => rsa_from_pkcs1(&der)?,
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
        };
        keys.push(key);
    }
    Ok(keys)
}

/// Splits PEM text into (label, DER) blocks.
fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        let mut closed = false;
        for l in lines.by_ref() {
            if l == end {
                closed = true;
                break;
            }
            if l.contains(':') {
                continue; // RFC 1421 headers (Proc-Type...), not base64
            }
            b64.push_str(l);
        }
        if !closed {
            return Err(format!("PEM block \"{label}\" has no END line"));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| format!("PEM block \"{label}\" is not valid base64: {e}"))?;
        out.push((label.to_string(), der));
    }
    Ok(out)
}

const OID_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2B, 0x65, 0x70];

/// A SubjectPublicKeyInfo (RFC 5280) holding an RSA, P-256, P-384 or
/// Ed25519 key.
fn from_spki(der: &[u8]) -> Result<VerifyingKey, String> {
    let bad = |what: &str| format!("not a valid public key ({what})");
    let (spki, rest) = der_take(der, 0x30).ok_or_else(|| bad("no SEQUENCE"))?;
    if !rest.is_empty() {
        return Err(bad("trailing data"));
    }
    let (alg_id, rest) = der_take(spki, 0x30).ok_or_else(|| bad("no algorithm"))?;
    let (bits, rest) = der_take(rest, 0x03).ok_or_else(|| bad("no key bits"))?;
    if !rest.is_empty() {
        return Err(bad("trailing data"));
    }
    let key = match bits.split_first() {
        Some((0, k)) => k,
        _ => return Err(bad("bad BIT STRING")),
    };
    let (oid, params) = der_take(alg_id, 0x06).ok_or_else(|| bad("no algorithm OID"))?;
    if oid == OID_RSA {
        rsa_from_pkcs1(key)
    } else if oid == OID_EC {
        let (curve, _) =
            der_take(params, 0x06).ok_or_else(|| bad("EC key without a named curve"))?;
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
    let bad = || "not a valid RSA public key".to_string();
    let (seq, rest) = der_take(der, 0x30).ok_or_else(bad)?;
    if !rest.is_empty() {
        return Err(bad());
    }
    let (n, rest) = der_take(seq, 0x02).ok_or_else(bad)?;
    let (e, rest) = der_take(rest, 0x02).ok_or_else(bad)?;
    if !rest.is_empty() {
        return Err(bad());
    }
    rsa(n, e)
}

/// An RSA key from big-endian modulus and exponent (leading zeros allowed).
fn rsa(n: &[u8], e: &[u8]) -> Result<VerifyingKey, String> {
    let n = strip_zeros(n);
    let e = strip_zeros(e);
    let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
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

/// Takes one DER element of tag `tag` from the front of `input`: its
/// contents and what follows it.
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&l, rest) = rest.split_first()?;
    let (len, rest) = if l < 0x80 {
        (l as usize, rest)
    } else {
        let n = (l & 0x7F) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// One JWK, as much of it as a signature check needs.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Deserialize)]
struct JwkSetDoc {
    keys: Vec<serde_json::Value>,
}

/// What a JWKS document yielded.
pub struct ParsedJwks {
    pub keys: Vec<VerifyingKey>,
    /// Keys left out, with why (for the log).
    pub skipped: Vec<String>,
}

/// Parses a JWKS document. `strict`: a key that is malformed (as opposed to
/// merely not for signatures here) is an error rather than skipped; used
/// for jwks_file, where the operator can fix it, not for a jwks_url.
pub fn parse_jwks(doc: &[u8], strict: bool) -> Result<ParsedJwks, String> {
    let set: JwkSetDoc = serde_json::from_slice(doc)
        .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, v) in set.keys.into_iter().enumerate() {
        match parse_jwk(v) {
            Ok(Some(k)) => keys.push(k),
            Ok(None) => {}
            Err(JwkError::Unusable(why)) => skipped.push(format!("key {i}: {why}")),
            Err(JwkError::Malformed(why)) => {
                if strict {
                    return Err(format!("key {i}: {why}"));
                }
                skipped.push(format!("key {i}: {why}"));
            }
        }
    }
    Ok(ParsedJwks { keys, skipped })
}

enum JwkError {
    /// Fine as a JWK, but not a JWS verification key this proxy uses.
    Unusable(String),
    /// Broken.
    Malformed(String),
}

fn parse_jwk(v: serde_json::Value) -> Result<Option<VerifyingKey>, JwkError> {
    let jwk: Jwk =
        serde_json::from_value(v).map_err(|e| JwkError::Malformed(format!("bad JWK: {e}")))?;
    if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
        return Err(JwkError::Unusable("not a signature key (\"use\")".into()));
    }
    if let Some(ops) = &jwk.key_ops {
        if !ops.iter().any(|o| o == "verify") {
            return Err(JwkError::Unusable(
                "key_ops does not include \"verify\"".into(),
            ));
        }
    }
    let alg = match jwk.alg.as_deref() {
        None => None,
        Some(a) => match a.parse::<Algorithm>() {
            Ok(a) => Some(a),
            Err(_) => return Err(JwkError::Unusable(format!("alg \"{a}\" is not supported"))),
        },
    };
    let b64 = |field: &Option<String>, name: &str| -> Result<Vec<u8>, JwkError> {
        let s = field
            .as_deref()
            .ok_or_else(|| JwkError::Malformed(format!("missing \"{name}\"")))?;
        URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| JwkError::Malformed(format!("\"{name}\" is not base64url")))
    };
    let mut key = match jwk.kty.as_str() {
        "RSA" => rsa(&b64(&jwk.n, "n")?, &b64(&jwk.e, "e")?).map_err(JwkError::Malformed)?,
        "EC" => {
            let kind = match jwk.crv.as_deref() {
                Some("P-256") => KeyKind::EcP256,
                Some("P-384") => KeyKind::EcP384,
                Some(c) => {
                    return Err(JwkError::Unusable(format!(
                        "curve \"{c}\" is not supported"
                    )))
                }
                None => return Err(JwkError::Malformed("EC key without \"crv\"".into())),
            };
            let (x, y) = (b64(&jwk.x, "x")?, b64(&jwk.y, "y")?);
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let coord = if kind == KeyKind::EcP256 { 32 } else { 48 };
            if x.len() != coord || y.len() != coord {
                return Err(JwkError::Malformed(
                    "EC coordinates of the wrong size".into(),
                ));
            }
            ec_point(kind, &point).map_err(JwkError::Malformed)?
        }
        "OKP" => match jwk.crv.as_deref() {
            Some("Ed25519") => ed25519(&b64(&jwk.x, "x")?).map_err(JwkError::Malformed)?,
            Some(c) => {
                return Err(JwkError::Unusable(format!(
                    "curve \"{c}\" is not supported"
                )))
            }
            None => return Err(JwkError::Malformed("OKP key without \"crv\"".into())),
        },
        "oct" => {
            return Err(JwkError::Unusable(
                "symmetric key (HMAC secrets come only from secret_file)".into(),
            ))
        }
        k => {
            return Err(JwkError::Unusable(format!(
                "key type \"{k}\" is not supported"
            )))
        }
    };
    if let Some(a) = alg {
        if !key.kind.fits(a) {
            return Err(JwkError::Malformed(format!(
                "alg {a:?} does not fit a {:?} key",
                key.kind
            )));
        }
    }
    key.alg = alg;
    key.kid = jwk.kid.map(String::into_boxed_str);
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        assert_eq!(
            der_take(&[0x30, 0x01, 0xAA, 0xBB], 0x30),
            Some((&[0xAA][..], &[0xBB][..]))
        );
        assert_eq!(
            der_take(&[0x30, 0x81, 0x01, 0xAA], 0x30),
            Some((&[0xAA][..], &[][..]))
        );
        assert_eq!(der_take(&[0x30, 0x05, 0xAA], 0x30), None);
        assert_eq!(der_take(&[0x31, 0x01, 0xAA], 0x30), None);
    }

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
}
