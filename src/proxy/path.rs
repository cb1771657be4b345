//! Request path normalisation: the one spelling of a path that routing,
//! authentication and the upstream all see.
//!
//! [`normalize`] guarantees, for a path it accepts:
//! - percent-encoded unreserved characters (ALPHA DIGIT `-` `.` `_` `~`) are
//!   decoded, so `%61` is `a` and `%2E` is a dot; every other
//!   percent-encoding is kept, with upper-case hex (`%c3` becomes `%C3`);
//! - dot segments are resolved (RFC 3986 5.2.4) after that decoding, and
//!   repeated slashes are merged; a trailing slash is kept;
//! - the case of the path is kept;
//! - the result starts with `/` and is a fixed point: normalising it again
//!   borrows it unchanged.
//!
//! It refuses (the request gets 400): a path that does not start with `/`,
//! an encoded `/` or `\` (`%2F`, `%5C`, any case), a NUL (raw or `%00`), a
//! malformed percent-encoding, dot segments that climb above the root, a
//! raw `\`: some upstreams (Windows servers, some frameworks) read `\` as
//! `/`, so a backslash could hide a dot segment or a prefix from the edge;
//! and an overlong UTF-8 encoding (`%C0%AE`, `%E0%80%AE`): a lax decoder
//! reads it as the ASCII character (a dot, a slash) that routing did not
//! see.
//!
//! [`without_params`] gives the path as upstreams that drop path
//! parameters (`;...` in each segment: Tomcat, Jetty, older Spring) read
//! it, so that the pipeline can check that it routes the same way.
//!
//! An already normal path (the usual case) is returned borrowed, after one
//! pass over its bytes and no allocation.

use std::borrow::Cow;
use std::fmt;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Does not start with `/`.
    NotAbsolute,
    /// `%2F` or `%5C`: an encoded separator.
    EncodedSeparator,
    /// A raw `\`.
    Backslash,
    /// A NUL byte, raw or `%00`.
    Nul,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `..` segments that climb above the root.
    AboveRoot,
    /// An overlong UTF-8 encoding (`%C0%AE`).
    Overlong,
}

impl PathError {
    /// The reason, as the 400 answer gives it.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "path does not start with /",
            PathError::EncodedSeparator => "encoded / or \\ in path",
            PathError::Backslash => "backslash in path",
            PathError::Nul => "NUL in path",
            PathError::BadEscape => "bad percent-encoding in path",
            PathError::AboveRoot => "path climbs above the root",
            PathError::Overlong => "overlong UTF-8 in path",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PathError {}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The byte a `%XY` at `i` encodes, checked.
fn escape_at(b: &[u8], i: usize) -> Result<u8, PathError> {
    match (
        b.get(i + 1).copied().and_then(hex_value),
        b.get(i + 2).copied().and_then(hex_value),
    ) {
        (Some(h), Some(l)) => match h << 4 | l {
            0 => Err(PathError::Nul),
            b'/' | b'\\' => Err(PathError::EncodedSeparator),
            v => Ok(v),
        },
        _ => Err(PathError::BadEscape),
    }
}

/// Whether the escape `%XY` at `i`, which encodes `v`, begins an overlong
/// UTF-8 sequence: a lead byte C0 or C1 (always overlong), or E0 followed by
/// 80-9F, or F0 followed by 80-8F (RFC 3629 4).
fn overlong(b: &[u8], i: usize, v: u8) -> bool {
    let next = || {
        (b.get(i + 3) == Some(&b'%'))
            .then(|| escape_at(b, i + 3).ok())
            .flatten()
    };
    match v {
        0xC0 | 0xC1 => true,
        0xE0 => next().is_some_and(|n| (0x80..=0x9F).contains(&n)),
        0xF0 => next().is_some_and(|n| (0x80..=0x8F).contains(&n)),
        _ => false,
    }
}

/// Whether the segment starting at `b[i]` (just after a `/`) is empty, `.`
/// or `..`: one that the slow path rewrites.
fn odd_segment(b: &[u8], i: usize) -> bool {
    let end = b[i..]
        .iter()
        .position(|&c| c == b'/')
        .map_or(b.len(), |p| i + p);
    matches!(&b[i..end], b"" | b"." | b"..") && !(end == b.len() && i == end)
}

/// The normal form of `path` (see the module docs), borrowed when `path`
/// is already normal.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(b)? {
        return Ok(Cow::Borrowed(path));
    }
    // Decode the unreserved escapes first, so that encoded dots take part
    // in the dot-segment resolution.
    let decoded = decode_unreserved(path)?;
    resolve_dots(&decoded).map(Cow::Owned)
}

/// Whether the absolute path `b` is normal already; an error for what no
/// normalisation makes acceptable.
fn is_normal(b: &[u8]) -> Result<bool, PathError> {
    let mut normal = true;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let v = escape_at(b, i)?;
                if v >= 0xC0 && overlong(b, i, v) {
                    return Err(PathError::Overlong);
                }
                if is_unreserved(v) || b[i + 1..i + 3].iter().any(u8::is_ascii_lowercase) {
                    normal = false;
                }
                i += 3;
                continue;
            }
            b'/' if normal && odd_segment(b, i + 1) => normal = false,
            _ => {}
        }
        i += 1;
    }
    Ok(normal)
}

/// `path` with its unreserved escapes decoded and the others' hex digits
/// in upper case.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let v = escape_at(b, i)?;
            if is_unreserved(v) {
                decoded.push(char::from(v));
            } else {
                decoded.push('%');
                decoded.push(char::from(b[i + 1].to_ascii_uppercase()));
                decoded.push(char::from(b[i + 2].to_ascii_uppercase()));
            }
            i += 3;
        } else {
            // Copy the run up to the next escape: it may hold multi-byte
            // characters, which never contain b'%'.
            let end = b[i..]
                .iter()
                .position(|&c| c == b'%')
                .map_or(b.len(), |p| i + p);
            decoded.push_str(&path[i..end]);
            i = end;
        }
    }
    Ok(decoded)
}

/// The absolute path `decoded` with its empty, `.` and `..` segments
/// resolved; a trailing slash kept.
fn resolve_dots(decoded: &str) -> Result<String, PathError> {
    // `out` holds the resolved segments, each preceded by '/', without the
    // trailing slash; the root is "".
    let mut out = String::with_capacity(decoded.len());
    let mut trailing = false;
    for seg in decoded[1..].split('/') {
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => match out.rfind('/') {
                Some(p) => out.truncate(p),
                None => return Err(PathError::AboveRoot),
            },
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// `path` (normal, as [`normalize`] gives it) as an upstream that drops
/// path parameters reads it: each segment cut at its first `;`, then
/// normalised again (so `/a/..;/b` is `/b`). Borrowed when `path` has no
/// `;`.
pub fn without_params(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.contains(';') {
        return Ok(Cow::Borrowed(path));
    }
    let mut plain = String::with_capacity(path.len());
    for (n, seg) in path.split('/').enumerate() {
        if n > 0 {
            plain.push('/');
        }
        plain.push_str(seg.split(';').next().unwrap_or(""));
    }
    Ok(Cow::Owned(normalize(&plain)?.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/",
            "/admin/x",
            "/a.b/c..d/.e/..f/",
            "/caf%C3%A9",
            "/a%20b",
            "/a%25",
            "/Mixed/Case",
            "/a;b=c",
            "/é",
        ] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}: {:?}",
                normalize(p)
            );
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(norm("/%61dmin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/%41%7e%2d%5F%2e").unwrap(), "/A~-_.");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/a%20b%3f").unwrap(), "/a%20b%3F");
        // %25 is a literal percent: never decoded, so never decoded twice.
        assert_eq!(norm("/%2561").unwrap(), "/%2561");
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(norm("//admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/./admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/static/../admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/static/%2e%2E/admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/a/b/./../c").unwrap(), "/a/c");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/a//").unwrap(), "/a/");
        assert_eq!(norm("///").unwrap(), "/");
        assert_eq!(norm("/a/%2e").unwrap(), "/a/");
        assert_eq!(norm("/.").unwrap(), "/");
        assert_eq!(norm("/Admin//X").unwrap(), "/Admin/X");
    }

    #[test]
    fn refused() {
        for (p, e) in [
            ("/%2e%2e/x", PathError::AboveRoot),
            ("/../x", PathError::AboveRoot),
            ("/a/../../x", PathError::AboveRoot),
            ("/..", PathError::AboveRoot),
            ("/a/%2F/b", PathError::EncodedSeparator),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a%5Cb", PathError::EncodedSeparator),
            ("/a%00b", PathError::Nul),
            ("/a\0b", PathError::Nul),
            ("/a\\b", PathError::Backslash),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/static/%C0%AE%C0%AE/admin", PathError::Overlong),
            ("/%c0%af", PathError::Overlong),
            ("/%C1%9C", PathError::Overlong),
            ("/%E0%80%AE", PathError::Overlong),
            ("/%e0%9f%bf", PathError::Overlong),
            ("/%F0%80%80%AE", PathError::Overlong),
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("a/b", PathError::NotAbsolute),
        ] {
            assert_eq!(normalize(p), Err(e), "{p}");
        }
    }

    #[test]
    fn valid_multibyte_escapes_are_kept() {
        for p in ["/%E0%A4%85", "/%F0%9F%98%80", "/%C3%A9", "/%E0", "/%C0"] {
            let r = normalize(p);
            if p == "/%C0" {
                assert_eq!(r, Err(PathError::Overlong));
            } else {
                assert!(matches!(r, Ok(Cow::Borrowed(q)) if q == p), "{p}: {r:?}");
            }
        }
    }

    #[test]
    fn path_parameters_removed() {
        let w = |p| without_params(p).map(Cow::into_owned);
        assert!(matches!(without_params("/a/b"), Ok(Cow::Borrowed("/a/b"))));
        assert_eq!(w("/admin;x/y").unwrap(), "/admin/y");
        assert_eq!(w("/public/..;/admin/x").unwrap(), "/admin/x");
        assert_eq!(w("/a/.;x/b;c=d").unwrap(), "/a/b");
        assert_eq!(w("/;x/a").unwrap(), "/a");
        assert_eq!(w("/..;/a"), Err(PathError::AboveRoot));
    }

    #[test]
    fn the_result_is_a_fixed_point() {
        for p in [
            "/%61dmin/./x//y/../z/",
            "/a%2e%2e/b",
            "/%2e%2e%2e/",
            "/x/%7e%c3%a9/.",
            "//",
            "/a/b/../..",
        ] {
            let once = norm(p).unwrap();
            assert!(
                matches!(normalize(&once), Ok(Cow::Borrowed(q)) if q == once),
                "{p} -> {once}"
            );
        }
    }

    /// Every short path over the characters that matter: no panic, and
    /// every accepted path comes out normal.
    #[test]
    fn short_paths_exhaustively() {
        const ALPHABET: &[u8] = b"/.%2eEfF5ca";
        let mut buf = Vec::new();
        for len in 0..=5u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                buf.clear();
                buf.push(b'/');
                for _ in 0..len {
                    buf.push(ALPHABET[n % ALPHABET.len()]);
                    n /= ALPHABET.len();
                }
                let p = std::str::from_utf8(&buf).unwrap();
                if let Ok(q) = normalize(p) {
                    assert!(q.starts_with('/'), "{p} -> {q}");
                    assert!(!q.contains("//"), "{p} -> {q}");
                    assert!(!q.split('/').any(|s| s == "." || s == ".."), "{p} -> {q}");
                    assert!(
                        matches!(normalize(&q), Ok(Cow::Borrowed(r)) if r == q),
                        "{p} -> {q}"
                    );
                }
            }
        }
    }
}
