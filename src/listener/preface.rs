//! Telling HTTP/1.x from HTTP/2 on a plain connection that may be either.
//!
//! [`Preface`] decides only once the first bytes are, or cannot be, the
//! whole HTTP/2 connection preface (RFC 9113 3.4), whatever pieces they
//! arrive in: the same rule hyper applies, so both always agree on the
//! protocol. It keeps no copy of what it has seen: while undecided, the
//! bytes so far are a prefix of the preface, so a count says what they
//! were.

/// The HTTP/2 connection preface (RFC 9113 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How far the first bytes of a connection match the HTTP/2 preface.
#[derive(Default)]
pub struct Preface {
    matched: usize,
}

/// What the bytes read so far say about the protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still a prefix of the preface, and not the whole of it.
    Undecided,
    /// HTTP/1.x. `earlier` are the bytes of earlier reads, which the
    /// caller has not yet followed as HTTP/1.x; the latest read follows.
    Http1 { earlier: &'static [u8] },
    /// HTTP/2: the whole preface. `earlier` as for `Http1`.
    Http2 { earlier: &'static [u8] },
}

impl Preface {
    /// Takes the next bytes read; decides once they tell.
    pub fn feed(&mut self, read: &[u8]) -> Verdict {
        let earlier = self.matched;
        let take = (H2_PREFACE.len() - earlier).min(read.len());
        if read[..take] != H2_PREFACE[earlier..earlier + take] {
            return Verdict::Http1 {
                earlier: &H2_PREFACE[..earlier],
            };
        }
        self.matched += take;
        if self.matched == H2_PREFACE.len() {
            Verdict::Http2 {
                earlier: &H2_PREFACE[..earlier],
            }
        } else {
            Verdict::Undecided
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_on_the_whole_preface_in_any_pieces() {
        for step in [1, 5, H2_PREFACE.len()] {
            let mut p = Preface::default();
            let pieces: Vec<&[u8]> = H2_PREFACE.chunks(step).collect();
            let (last, first) = pieces.split_last().unwrap();
            for piece in first {
                assert_eq!(p.feed(piece), Verdict::Undecided);
            }
            let earlier = &H2_PREFACE[..H2_PREFACE.len() - last.len()];
            assert_eq!(p.feed(last), Verdict::Http2 { earlier });
        }
        let mut p = Preface::default();
        assert_eq!(p.feed(b"PRI "), Verdict::Undecided);
        assert_eq!(p.feed(b"/ HTTP/1.1"), Verdict::Http1 { earlier: b"PRI " });
        assert_eq!(
            Preface::default().feed(b"GET / HTTP/1.1\r\n"),
            Verdict::Http1 { earlier: b"" }
        );
    }
}
