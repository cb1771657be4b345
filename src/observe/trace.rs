//! W3C trace context: the `traceparent` and `tracestate` headers.
//!
//! Guarantees: a request's `traceparent` goes upstream, unchanged, only if
//! it is one valid header: version-00 is exactly `00-` 32 lowercase hex
//! trace id, not all zero, `-` 16 lowercase hex parent id, not all zero,
//! `-` 2 hex flags (55 characters); a higher version (two lowercase hex
//! digits, not `ff`) is read by those first 55 characters and is valid if
//! they are and the header ends there or goes on with `-` (what a later
//! version may add is passed on, not read). Anything else (malformed,
//! version `ff`, several headers) is removed, so an upstream never sees a
//! trace context portico would not log. Without a valid `traceparent` the
//! `tracestate` headers are removed too: W3C forbids using one alone.
//! Checking allocates nothing.

use http::header::HeaderName;
use http::HeaderMap;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The length of a version-00 `traceparent`, and of the part of a higher
/// version that is read.
const LEN: usize = 55;

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
/// stays, as does `tracestate`), else `None`, and every `traceparent` and
/// `tracestate` header is removed.
pub fn check(headers: &mut HeaderMap) -> Option<TraceId> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let id = match (values.next(), values.next()) {
        (Some(only), None) => parse(only.as_bytes()),
        (None, _) => {
            // Most requests: one lookup, nothing to remove but a stray
            // tracestate.
            headers.remove(&TRACESTATE);
            return None;
        }
        _ => None,
    };
    if id.is_none() {
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
    }
    id
}

/// The trace id of a `traceparent` value of any version portico can read.
fn parse(v: &[u8]) -> Option<TraceId> {
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &[u8]| s.iter().all(|&c| c == b'0');
    let version = v.get(..2)?;
    let fits = match version {
        b"00" => v.len() == LEN,
        b"ff" => false,
        _ => v.len() == LEN || v.get(LEN) == Some(&b'-'),
    };
    if !fits || !hex(version) || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
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
    const STATE: &str = "congo=t61rcWkgMzE";

    /// The trace id, the `traceparent` values left and the `tracestate`
    /// values left after checking `values` sent with one `tracestate`.
    fn run(values: &[&str]) -> (Option<String>, Vec<String>, usize) {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        h.append(&TRACESTATE, HeaderValue::from_static(STATE));
        let id = check(&mut h).map(|t| t.as_str().to_string());
        let left = h
            .get_all(&TRACEPARENT)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        (id, left, h.get_all(&TRACESTATE).iter().count())
    }

    #[test]
    fn a_valid_header_stays_and_gives_its_trace_id() {
        let (id, left, state) = run(&[OK]);
        assert_eq!(id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(left, [OK]);
        assert_eq!(state, 1);
    }

    #[test]
    fn a_higher_version_is_read_by_its_first_55_characters() {
        for ok in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next",
            "fe-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff-x",
        ] {
            let (id, left, state) = run(&[ok]);
            assert_eq!(
                id.as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{ok}"
            );
            assert_eq!(left, [ok], "passed on unchanged");
            assert_eq!(state, 1, "{ok}");
        }
    }

    #[test]
    fn invalid_headers_are_removed_with_tracestate() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // Version 00 is exactly 55 characters.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            // Version ff is invalid, whatever follows.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // A higher version: its first 55 characters must be valid...
            "01-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            // ... and what follows them must start with '-'.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-012",
            // The version is two lowercase hex digits.
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "1-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "garbage",
            "",
        ] {
            assert_eq!(run(&[bad]), (None, vec![], 0), "{bad}");
        }
        assert_eq!(run(&[OK, OK]), (None, vec![], 0), "two headers");
        assert_eq!(run(&[]), (None, vec![], 0), "tracestate alone");
    }
}
