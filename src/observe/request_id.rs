//! Request ids: keep a well-formed incoming one, else make one.

use http::HeaderValue;

/// Whether an incoming id may be kept: `[A-Za-z0-9._-]{1,128}`.
pub fn is_well_formed(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A fresh id: 128 random bits as 32 lower-case hex digits.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let r = fastrand::u128(..);
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((r >> (i * 4)) & 0xf) as usize];
    }
    // Every byte is an ASCII hex digit, which is always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_ids() {
        assert!(is_well_formed(b"abc-123_X.y"));
        assert!(!is_well_formed(b""));
        assert!(!is_well_formed(b"a b"));
        assert!(!is_well_formed(&[b'a'; 129]));
        assert!(is_well_formed(&[b'a'; 128]));
    }

    #[test]
    fn generated_ids_are_well_formed_and_differ() {
        let a = generate();
        let b = generate();
        assert!(is_well_formed(a.as_bytes()));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
