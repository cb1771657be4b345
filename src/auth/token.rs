//! Reading a compact JWS (RFC 7515) and checking its claims (RFC 7519).
//!
//! Guarantees:
//! - a token is exactly three non-empty base64url segments; the header is a
//!   JSON object whose `alg` is a string and whose `kid`, if present, is a
//!   string; duplicate header members are refused, and so is a header that
//!   is not valid UTF-8 JSON anywhere, ignored members included (RFC 7515
//!   5.2), so that no other JWT library reads it differently;
//! - a header with `crit` is refused: this proxy understands no JWS
//!   extension, and RFC 7515 4.1.11 says a recipient that does not must
//!   reject the token;
//! - `jwk`, `jku`, `x5u`, `x5c` (and any other header member) are never
//!   read: keys come only from the config (RFC 8725 3.10);
//! - claims are read only after the signature is checked; `exp`, `nbf`,
//!   `iat` must be numbers; `exp` is past when now ≥ exp + leeway, `nbf` is
//!   in the future when now + leeway < nbf, and an `iat` later than
//!   now + leeway makes the token invalid.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Why a token was refused (for the counters and the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Malformed, bad signature, unlisted alg, wrong iss/aud, missing
    /// claim, not yet valid: `invalid`.
    Invalid(&'static str),
    /// Past its `exp` (beyond the leeway): `expired`.
    Expired,
}

/// The parts of a compact JWS, borrowed from the token.
pub struct Parts<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// "header.payload": what the signature covers.
    pub signing_input: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

/// True whenever the member is there, whatever its value (even null).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// Whether `bytes` are one JSON text (RFC 8259): UTF-8 throughout, every
/// string and number well-formed and every number in range. A struct read
/// by serde skips the members it ignores without checking them, so this
/// pass comes first. It allocates nothing (escaped strings aside).
pub(crate) fn is_json(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok() && serde_json::from_slice::<AnyJson>(bytes).is_ok()
}

/// Any JSON value, visited in full and kept nowhere.
struct AnyJson;

impl<'de> Deserialize<'de> for AnyJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AnyJson, D::Error> {
        d.deserialize_any(AnyJsonVisitor)
    }
}

struct AnyJsonVisitor;

impl<'de> Visitor<'de> for AnyJsonVisitor {
    type Value = AnyJson;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }
    fn visit_i64<E>(self, _: i64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }
    fn visit_u64<E>(self, _: u64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }
    fn visit_f64<E>(self, _: f64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }
    fn visit_str<E>(self, _: &str) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }
    fn visit_unit<E>(self) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyJson, A::Error> {
        while seq.next_element::<AnyJson>()?.is_some() {}
        Ok(AnyJson)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyJson, A::Error> {
        while map.next_entry::<AnyJson, AnyJson>()?.is_some() {}
        Ok(AnyJson)
    }
}

fn is_b64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Splits a token and reads its header. The algorithm is not checked
/// against any policy here, only parsed ("none" and unknown names fail).
pub fn split(token: &str) -> Result<Parts<'_>, Rejection> {
    let malformed = Rejection::Invalid("malformed token");
    let (signing_input, signature) = token.rsplit_once('.').ok_or(malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(malformed)?;
    if !is_b64url(header) || !is_b64url(payload) || !is_b64url(signature) {
        return Err(malformed);
    }
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Rejection::Invalid("header is not base64url"))?;
    // serde would also read a JSON array into the struct: insist on an object.
    if header.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Rejection::Invalid("header is not a JSON object"));
    }
    if !is_json(&header) {
        return Err(Rejection::Invalid("header is not a valid JSON object"));
    }
    let header: JoseHeader = serde_json::from_slice(&header)
        .map_err(|_| Rejection::Invalid("header is not a valid JSON object"))?;
    if header.crit {
        return Err(Rejection::Invalid("header names critical extensions"));
    }
    // Algorithm::from_str knows the twelve JWS names, exactly spelled;
    // "none" (in any case) is not one of them.
    let alg = header
        .alg
        .parse::<Algorithm>()
        .map_err(|_| Rejection::Invalid("unsupported alg"))?;
    Ok(Parts {
        alg,
        kid: header.kid,
        signing_input,
        payload,
        signature,
    })
}

/// Decodes the claims set: a JSON object.
pub fn claims(payload: &str) -> Result<Map<String, Value>, Rejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Rejection::Invalid("payload is not base64url"))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Rejection::Invalid("payload is not a JSON object")),
    }
}

/// What the claim checks of a policy need.
pub struct ClaimRules<'a> {
    pub issuer: &'a [String],
    pub audience: &'a [String],
    pub leeway: i64,
    pub required_claims: &'a [String],
    pub required_scopes: &'a [String],
}

/// The claims a verified token keeps (for the cache and revocation).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checked {
    pub exp: Option<i64>,
    pub iat: Option<i64>,
    pub sub: Option<Box<str>>,
    pub jti: Option<Box<str>>,
    /// Every required scope is granted.
    pub scope_ok: bool,
}

fn numeric_date(m: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, Rejection> {
    match m.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            None => match n.as_f64() {
                Some(f) if f.is_finite() => Ok(Some(
                    f.floor().clamp(i64::MIN as f64, i64::MAX as f64) as i64,
                )),
                _ => Err(Rejection::Invalid("a time claim is not a number")),
            },
        },
        Some(_) => Err(Rejection::Invalid("a time claim is not a number")),
    }
}

fn string_claim(m: &Map<String, Value>, name: &str) -> Result<Option<Box<str>>, Rejection> {
    match m.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str().into())),
        Some(_) => Err(Rejection::Invalid("sub, jti or iss is not a string")),
    }
}

/// Checks the claims of a token whose signature is good, at time `now`
/// (seconds since the epoch).
pub fn check(m: &Map<String, Value>, rules: &ClaimRules, now: i64) -> Result<Checked, Rejection> {
    let exp = numeric_date(m, "exp")?;
    let nbf = numeric_date(m, "nbf")?;
    let iat = numeric_date(m, "iat")?;
    for c in rules.required_claims {
        if matches!(m.get(c), None | Some(Value::Null)) {
            return Err(Rejection::Invalid("a required claim is missing"));
        }
    }
    if let Some(exp) = exp {
        if now >= exp.saturating_add(rules.leeway) {
            return Err(Rejection::Expired);
        }
    }
    if let Some(nbf) = nbf {
        if now.saturating_add(rules.leeway) < nbf {
            return Err(Rejection::Invalid("token not yet valid (nbf)"));
        }
    }
    if let Some(iat) = iat {
        if iat > now.saturating_add(rules.leeway) {
            return Err(Rejection::Invalid("token issued in the future (iat)"));
        }
    }
    let iss = string_claim(m, "iss")?;
    if !rules.issuer.is_empty() && !iss.is_some_and(|i| rules.issuer.iter().any(|x| **x == *i)) {
        return Err(Rejection::Invalid("wrong issuer"));
    }
    if !rules.audience.is_empty() {
        let ok = match m.get("aud") {
            Some(Value::String(a)) => rules.audience.iter().any(|x| x == a),
            Some(Value::Array(v)) => v.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| rules.audience.iter().any(|x| x == a))
            }),
            _ => false,
        };
        if !ok {
            return Err(Rejection::Invalid("wrong audience"));
        }
    }
    let sub = string_claim(m, "sub")?;
    let jti = string_claim(m, "jti")?;
    let scope_ok = rules.required_scopes.iter().all(|s| has_scope(m, s));
    Ok(Checked {
        exp,
        iat,
        sub,
        jti,
        scope_ok,
    })
}

/// Whether `scope` (space-separated string) or `scp` (string or array of
/// strings) grants `wanted`.
fn has_scope(m: &Map<String, Value>, wanted: &str) -> bool {
    let in_str = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .is_some_and(|s| s.split_ascii_whitespace().any(|x| x == wanted))
    };
    in_str(m.get("scope"))
        || in_str(m.get("scp"))
        || m.get("scp")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(wanted)))
}

/// A claim's value as a header value: strings as they are, numbers and
/// booleans as JSON, arrays as their items joined by spaces, objects as
/// compact JSON. `None` when absent, null, or not a valid header value.
pub fn claim_header_value(v: Option<&Value>) -> Option<http::HeaderValue> {
    let text = match v? {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    http::HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn rules<'a>(
        iss: &'a [String],
        aud: &'a [String],
        req: &'a [String],
        scopes: &'a [String],
    ) -> ClaimRules<'a> {
        ClaimRules {
            issuer: iss,
            audience: aud,
            leeway: 30,
            required_claims: req,
            required_scopes: scopes,
        }
    }

    /// A token whose header is `header` (raw bytes), with a dummy payload
    /// and signature.
    fn with_raw_header(header: &[u8]) -> String {
        format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(header))
    }

    #[test]
    fn header_must_be_utf8_json_even_in_ignored_members() {
        assert!(split(&with_raw_header(br#"{"alg":"HS256","x":["ok"]}"#)).is_ok());
        // A string that is not UTF-8, in a member nothing reads.
        let bad = with_raw_header(b"{\"alg\":\"HS256\",\"x\":[\"expf&\xad\"]}");
        assert_eq!(
            split(&bad).err(),
            Some(Rejection::Invalid("header is not a valid JSON object"))
        );
        // A lone surrogate escape is not a character either.
        assert!(split(&with_raw_header(br#"{"alg":"HS256","x":"\ud800"}"#)).is_err());
    }

    #[test]
    fn header_numbers_must_be_in_range_even_in_ignored_members() {
        assert!(split(&with_raw_header(br#"{"alg":"HS256","nbf":1.5e300}"#)).is_ok());
        for n in ["1763e2980038", "1e400", "-1e309"] {
            let h = format!(r#"{{"alg":"HS256","nbf":{n}}}"#);
            assert!(split(&with_raw_header(h.as_bytes())).is_err(), "{n}");
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn split_reads_alg_and_kid() {
        let t = format!(
            "{}.{}.c2ln",
            b64(&json!({"alg":"ES256","kid":"k1"})),
            b64(&json!({}))
        );
        let p = split(&t).unwrap();
        assert_eq!(p.alg, Algorithm::ES256);
        assert_eq!(p.kid.as_deref(), Some("k1"));
        assert_eq!(p.signature, "c2ln");
    }

    #[test]
    fn none_crit_and_junk_are_refused() {
        let body = b64(&json!({"sub":"a"}));
        for h in [
            json!({"alg":"none"}),
            json!({"alg":"NONE"}),
            json!({"alg":"HS256","crit":["b64"],"b64":false}),
            json!({"alg":"HS256","crit":null}),
            json!({"alg":"hs256"}),
            json!({"alg":7}),
            json!({"alg":"HS256","kid":5}),
            json!(["HS256"]),
        ] {
            let t = format!("{}.{body}.c2ln", b64(&h));
            assert!(split(&t).is_err(), "{h}");
        }
        assert!(split("a.b").is_err());
        assert!(split("a.b.c.d").is_err());
        assert!(split(&format!("{}.{body}.", b64(&json!({"alg":"HS256"})))).is_err());
        assert!(split(&format!("{}.{body}.c2ln", "eyJhbGciOiJIUzI1NiJ9=")).is_err());
        let dup = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","alg":"none"}"#);
        assert!(split(&format!("{dup}.{body}.c2ln")).is_err());
    }

    #[test]
    fn time_claims_with_leeway() {
        let none: [String; 0] = [];
        let r = rules(&none, &none, &none, &none);
        let now = 1_000_000;
        assert!(check(&obj(json!({"exp": now - 29})), &r, now).is_ok());
        assert_eq!(
            check(&obj(json!({"exp": now - 30})), &r, now),
            Err(Rejection::Expired)
        );
        assert!(check(&obj(json!({"nbf": now + 30})), &r, now).is_ok());
        assert!(check(&obj(json!({"nbf": now + 31})), &r, now).is_err());
        assert!(check(&obj(json!({"iat": now + 30})), &r, now).is_ok());
        assert!(check(&obj(json!({"iat": now + 31})), &r, now).is_err());
        assert!(check(&obj(json!({"exp": "soon"})), &r, now).is_err());
        assert!(check(&obj(json!({"exp": (now + 10) as f64 + 0.5})), &r, now).is_ok());
    }

    #[test]
    fn issuer_audience_required_and_scopes() {
        let iss = ["https://idp".to_string()];
        let aud = ["api".to_string()];
        let req = ["exp".to_string(), "sub".to_string()];
        let scopes = ["read".to_string(), "write".to_string()];
        let r = rules(&iss, &aud, &req, &scopes);
        let ok = json!({"iss":"https://idp","aud":["x","api"],"exp":2000,"sub":"u","scope":"read write"});
        let c = check(&obj(ok.clone()), &r, 1000).unwrap();
        assert!(c.scope_ok);
        assert_eq!(c.sub.as_deref(), Some("u"));
        let mut m = obj(ok.clone());
        m.insert("iss".into(), json!("https://evil"));
        assert!(check(&m, &r, 1000).is_err());
        let mut m = obj(ok.clone());
        m.insert("aud".into(), json!("other"));
        assert!(check(&m, &r, 1000).is_err());
        let mut m = obj(ok.clone());
        m.remove("sub");
        assert!(check(&m, &r, 1000).is_err());
        let mut m = obj(ok.clone());
        m.insert("scope".into(), json!("read"));
        assert!(!check(&m, &r, 1000).unwrap().scope_ok);
        m.remove("scope");
        m.insert("scp".into(), json!(["write", "read"]));
        assert!(check(&m, &r, 1000).unwrap().scope_ok);
    }

    #[test]
    fn header_values_of_claims() {
        assert_eq!(claim_header_value(Some(&json!("u1"))).unwrap(), "u1");
        assert_eq!(claim_header_value(Some(&json!(["a", "b"]))).unwrap(), "a b");
        assert_eq!(claim_header_value(Some(&json!(5))).unwrap(), "5");
        assert!(claim_header_value(Some(&json!("a\nb"))).is_none());
        assert!(claim_header_value(None).is_none());
    }
}
