//! W3C trace context: the `traceparent` header.
//!
//! Guarantees: a request's `traceparent` goes upstream only if it is one
//! valid version-00 header (`00-` 32 lowercase hex trace id, not all zero,
//! `-` 16 lowercase hex parent id, not all zero, `-` 2 hex flags); anything
//! else (malformed, another version, several headers) is removed, so an
//! upstream never sees a trace context portico would not log. Checking it
//! allocates nothing.

use http::header::HeaderName;
use http::HeaderMap;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The trace id of a valid `traceparent`: 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TraceId([u8; 32]);

impl TraceId {
    pub fn as_str(&self) -> &str {
        // Only lowercase hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Checks the request's `traceparent`: the trace id of a valid one (which
/// stays), else `None` and any `traceparent` header is removed.
pub fn check(headers: &mut HeaderMap) -> Option<TraceId> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let first = values.next()?;
    let id = if values.next().is_none() {
        parse(first.as_bytes())
    } else {
        None
    };
    if id.is_none() {
        headers.remove(&TRACEPARENT);
    }
    id
}

/// The trace id of a version-00 `traceparent` value.
fn parse(v: &[u8]) -> Option<TraceId> {
    if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &[u8]| s.iter().all(|&c| c == b'0');
    let (trace, parent, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    if !hex(trace) || !hex(parent) || !hex(flags) || zero(trace) || zero(parent) {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(trace);
    Some(TraceId(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const OK: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn run(values: &[&str]) -> (Option<String>, usize) {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        let id = check(&mut h).map(|t| t.as_str().to_string());
        (id, h.get_all(&TRACEPARENT).iter().count())
    }

    #[test]
    fn a_valid_header_stays_and_gives_its_trace_id() {
        let (id, n) = run(&[OK]);
        assert_eq!(id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(n, 1);
        assert_eq!(run(&[]), (None, 0));
    }

    #[test]
    fn invalid_headers_are_removed() {
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "garbage",
        ] {
            assert_eq!(run(&[bad]), (None, 0), "{bad}");
        }
        assert_eq!(run(&[OK, OK]), (None, 0), "two headers");
    }
}
