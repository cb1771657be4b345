//! HTTP/2 abuse detection: PING and SETTINGS floods, and rapid reset.
//!
//! hyper's h2 throttles a peer that floods PING or SETTINGS frames by
//! back-pressure but keeps the connection, and its own rapid-reset limit
//! counts only streams reset before hyper accepted them, which depends on
//! timing. SPEC asks that such a peer's connection end with GOAWAY
//! (ENHANCE_YOUR_CALM). [`H2Guard`] follows the frame boundaries of both
//! directions of one connection from the bytes [`super::conn_io::ConnIo`]
//! passes through: on the read side it counts control frames that ask for
//! an answer, the streams the client opens, and its premature resets; on
//! the write side it sees which streams got response HEADERS, and knows
//! when hyper is between two frames, the only place a GOAWAY of portico's
//! own may go.
//!
//! A flood is:
//! - more than [`MAX_CONTROL_FRAMES`] PING and SETTINGS frames (not ACKs)
//!   in a 10 s window;
//! - rapid reset: in a 10 s window, more than [`MAX_PREMATURE_RESETS`]
//!   premature resets that are also more than half of the streams the
//!   client opened. A premature reset is a client RST_STREAM on a stream
//!   the client opened and to which portico has sent neither HEADERS nor
//!   RST_STREAM. A browser or gRPC client cancelling a few calls, or even
//!   most calls at a human pace, stays far below; a rapid-reset attack
//!   (open, reset, repeat) crosses it after 101 streams, whatever the
//!   timing of hyper's accepting them.
//!
//! Which streams await an answer is kept for the client's latest
//! [`TRACKED`] stream ids only (a fixed bitmap, no allocation): a reset of
//! an older stream is not counted. Keeping older streams open costs the
//! client a concurrent stream each, which `max_concurrent_streams` bounds.

use std::time::Duration;
use tokio::time::Instant;

/// More than this many PING and SETTINGS frames (not ACKs) in one window
/// is a flood. A well-behaved client sends a handful per minute.
const MAX_CONTROL_FRAMES: u32 = 500;
const WINDOW: Duration = Duration::from_secs(10);
/// More than this many premature resets in one window (and more than half
/// of the streams opened in it) is rapid reset.
const MAX_PREMATURE_RESETS: u32 = 100;
/// Client streams (odd ids) whose answer state is followed: the latest
/// this many.
const TRACKED: u32 = 512;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_SETTINGS: u8 = 0x4;
const TYPE_RST_STREAM: u8 = 0x3;
const TYPE_PING: u8 = 0x6;
const FLAG_ACK: u8 = 0x1;
/// ENHANCE_YOUR_CALM (RFC 9113 7).
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Where a byte stream of frames is: in a frame header, or in a payload.
#[derive(Default)]
struct Frames {
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: usize,
}

impl Frames {
    /// Feeds `bytes`; calls `on_header` with each complete frame header.
    fn feed(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(&[u8; FRAME_HEADER_LEN])) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == FRAME_HEADER_LEN {
                let h = self.header;
                self.payload_left =
                    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                self.header_len = 0;
                on_header(&h);
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }
}

fn stream_id(h: &[u8; FRAME_HEADER_LEN]) -> u32 {
    u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff
}

/// Rapid-reset accounting: which of the latest [`TRACKED`] client streams
/// await portico's answer, and the counts of the current window.
struct Resets {
    /// Bit `(id / 2) % TRACKED`: stream `id` is open and unanswered.
    waiting: [u64; (TRACKED / 64) as usize],
    window_start: Instant,
    opened: u32,
    premature: u32,
}

impl Default for Resets {
    fn default() -> Self {
        Resets {
            waiting: [0; (TRACKED / 64) as usize],
            window_start: crate::sys::coarse_now(),
            opened: 0,
            premature: 0,
        }
    }
}

impl Resets {
    /// The bitmap slot of client stream `id`, if it is among the latest
    /// [`TRACKED`] up to `last` (the highest the client opened).
    fn slot(last: u32, id: u32) -> Option<(usize, u64)> {
        if id.is_multiple_of(2) || id > last || (last - id) / 2 >= TRACKED {
            return None;
        }
        let bit = (id / 2) % TRACKED;
        Some(((bit / 64) as usize, 1u64 << (bit % 64)))
    }

    fn roll_window(&mut self) {
        let now = crate::sys::coarse_now();
        if now.duration_since(self.window_start) > WINDOW {
            self.window_start = now;
            self.opened = 0;
            self.premature = 0;
        }
    }

    /// The client opened stream `id`; `last` was the highest before it.
    /// The ids it skipped are closed (RFC 9113 5.1.1), and their slots,
    /// like those of streams now older than the tracked range, are freed.
    fn opened(&mut self, last: u32, id: u32) {
        let first = if last == 0 { 1 } else { last + 2 };
        let skipped = (id - first) / 2;
        if skipped >= TRACKED {
            self.waiting = [0; (TRACKED / 64) as usize];
        } else {
            for k in 0..skipped {
                let bit = (first / 2 + k) % TRACKED;
                self.waiting[(bit / 64) as usize] &= !(1u64 << (bit % 64));
            }
        }
        if let Some((word, mask)) = Self::slot(id, id) {
            self.waiting[word] |= mask;
        }
        self.roll_window();
        self.opened = self.opened.saturating_add(1);
    }

    /// portico sent HEADERS or RST_STREAM on stream `id`.
    fn answered(&mut self, last: u32, id: u32) {
        if let Some((word, mask)) = Self::slot(last, id) {
            self.waiting[word] &= !mask;
        }
    }

    /// The client reset stream `id`; true once that makes rapid reset.
    fn client_reset(&mut self, last: u32, id: u32) -> bool {
        let Some((word, mask)) = Self::slot(last, id) else {
            return false;
        };
        if self.waiting[word] & mask == 0 {
            return false;
        }
        self.waiting[word] &= !mask;
        self.roll_window();
        self.premature = self.premature.saturating_add(1);
        self.premature > MAX_PREMATURE_RESETS && self.premature > self.opened / 2
    }
}

/// Both directions of one HTTP/2 connection, as far as abuse control cares.
pub struct H2Guard {
    preface_left: usize,
    incoming: Frames,
    outgoing: Frames,
    window_start: Instant,
    in_window: u32,
    last_stream: u32,
    resets: Resets,
    flooded: Option<&'static str>,
}

impl Default for H2Guard {
    fn default() -> Self {
        H2Guard {
            preface_left: PREFACE_LEN,
            incoming: Frames::default(),
            outgoing: Frames::default(),
            window_start: crate::sys::coarse_now(),
            in_window: 0,
            last_stream: 0,
            resets: Resets::default(),
            flooded: None,
        }
    }
}

impl H2Guard {
    /// Feeds bytes read from the client; true once the client is abusive.
    pub fn on_read(&mut self, mut bytes: &[u8]) -> bool {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        let mut control = 0u32;
        let last_stream = &mut self.last_stream;
        let resets = &mut self.resets;
        let mut rapid_reset = false;
        self.incoming.feed(bytes, |h| {
            let (kind, flags) = (h[3], h[4]);
            match kind {
                TYPE_PING | TYPE_SETTINGS if flags & FLAG_ACK == 0 => control += 1,
                TYPE_HEADERS => {
                    let id = stream_id(h);
                    // A client stream is opened by HEADERS with a new odd id;
                    // HEADERS on an older one are trailers.
                    if id % 2 == 1 && id > *last_stream {
                        resets.opened(*last_stream, id);
                        *last_stream = id;
                    }
                }
                TYPE_RST_STREAM => rapid_reset |= resets.client_reset(*last_stream, stream_id(h)),
                _ => {}
            }
        });
        if rapid_reset && self.flooded.is_none() {
            self.flooded = Some("rapid reset (streams opened and reset before an answer)");
        }
        if control > 0 {
            let now = crate::sys::coarse_now();
            if now.duration_since(self.window_start) > WINDOW {
                self.window_start = now;
                self.in_window = 0;
            }
            self.in_window = self.in_window.saturating_add(control);
            if self.in_window > MAX_CONTROL_FRAMES && self.flooded.is_none() {
                self.flooded = Some("PING/SETTINGS flood");
            }
        }
        self.flooded.is_some()
    }

    /// What the client did, once [`H2Guard::on_read`] said it floods.
    pub fn abuse(&self) -> &'static str {
        self.flooded.unwrap_or("")
    }

    /// Feeds bytes the server wrote (accepted by the socket).
    pub fn on_written(&mut self, bytes: &[u8]) {
        let (resets, last_stream) = (&mut self.resets, self.last_stream);
        self.outgoing.feed(bytes, |h| {
            if matches!(h[3], TYPE_HEADERS | TYPE_RST_STREAM) {
                resets.answered(last_stream, stream_id(h));
            }
        });
    }

    /// Whether a frame of portico's own may be written now (hyper is not in
    /// the middle of one).
    pub fn between_frames(&self) -> bool {
        self.outgoing.at_boundary()
    }

    /// GOAWAY(ENHANCE_YOUR_CALM) naming the last stream the client opened.
    pub fn goaway(&self) -> [u8; FRAME_HEADER_LEN + 8] {
        let mut f = [0u8; FRAME_HEADER_LEN + 8];
        f[2] = 8; // length
        f[3] = 0x7; // GOAWAY
        f[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
        f[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn counts_pings_across_split_reads_and_ignores_acks() {
        let mut g = H2Guard::default();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(TYPE_SETTINGS, 0, 0, &[]));
        bytes.extend(frame(TYPE_HEADERS, 0x4, 7, &[0x82]));
        for _ in 0..MAX_CONTROL_FRAMES {
            bytes.extend(frame(TYPE_PING, FLAG_ACK, 0, &[0; 8]));
        }
        for _ in 0..MAX_CONTROL_FRAMES - 1 {
            bytes.extend(frame(TYPE_PING, 0, 0, &[0; 8]));
        }
        // Fed in awkward pieces: frame headers split across reads.
        for chunk in bytes.chunks(7) {
            assert!(!g.on_read(chunk));
        }
        // SETTINGS + 499 PINGs = 500: at the limit, not over it.
        assert!(g.on_read(&frame(TYPE_PING, 0, 0, &[0; 8])));
        let goaway = g.goaway();
        assert_eq!(&goaway[..9], &[0, 0, 8, 7, 0, 0, 0, 0, 0]);
        assert_eq!(u32::from_be_bytes(goaway[9..13].try_into().unwrap()), 7);
        assert_eq!(u32::from_be_bytes(goaway[13..17].try_into().unwrap()), 0xb);
    }

    #[test]
    fn knows_when_the_writer_is_between_frames() {
        let mut g = H2Guard::default();
        let f = frame(0x0, 0, 1, &[1, 2, 3, 4, 5]);
        assert!(g.between_frames());
        g.on_written(&f[..4]);
        assert!(!g.between_frames());
        g.on_written(&f[4..12]);
        assert!(!g.between_frames());
        g.on_written(&f[12..]);
        assert!(g.between_frames());
    }

    fn opened_guard() -> H2Guard {
        let mut g = H2Guard::default();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(TYPE_SETTINGS, 0, 0, &[]));
        assert!(!g.on_read(&bytes));
        g
    }

    fn open_and_reset(g: &mut H2Guard, id: u32) -> bool {
        let mut bytes = frame(TYPE_HEADERS, 0x5, id, &[0x82]);
        bytes.extend(frame(TYPE_RST_STREAM, 0, id, &8u32.to_be_bytes()));
        g.on_read(&bytes)
    }

    #[test]
    fn rapid_reset_ends_the_connection_after_the_limit() {
        let mut g = opened_guard();
        for i in 0..MAX_PREMATURE_RESETS {
            assert!(!open_and_reset(&mut g, 2 * i + 1), "stream {}", 2 * i + 1);
        }
        assert!(open_and_reset(&mut g, 2 * MAX_PREMATURE_RESETS + 1));
        assert!(g.abuse().starts_with("rapid reset"));
        let goaway = g.goaway();
        assert_eq!(
            u32::from_be_bytes(goaway[9..13].try_into().unwrap()),
            2 * MAX_PREMATURE_RESETS + 1
        );
    }

    #[test]
    fn resets_after_an_answer_or_of_a_minority_of_streams_are_fine() {
        let mut g = opened_guard();
        // Streams answered (HEADERS or RST_STREAM from portico), then reset
        // by the client: not premature.
        for i in 0..1000u32 {
            let id = 2 * i + 1;
            assert!(!g.on_read(&frame(TYPE_HEADERS, 0x5, id, &[0x82])));
            let kind = if i % 2 == 0 {
                TYPE_HEADERS
            } else {
                TYPE_RST_STREAM
            };
            g.on_written(&frame(kind, 0x4, id, &[0x88]));
            assert!(!g.on_read(&frame(TYPE_RST_STREAM, 0, id, &[0, 0, 0, 8])));
        }
        // Premature resets of fewer than half the streams opened.
        for i in 1000..1500u32 {
            let id = 2 * i + 1;
            if i % 3 == 0 {
                assert!(!open_and_reset(&mut g, id));
            } else {
                assert!(!g.on_read(&frame(TYPE_HEADERS, 0x5, id, &[0x82])));
            }
        }
        // Resets of streams never opened, long gone, or reset twice.
        assert!(!g.on_read(&frame(TYPE_RST_STREAM, 0, 5001, &[0, 0, 0, 8])));
        assert!(!g.on_read(&frame(TYPE_RST_STREAM, 0, 3, &[0, 0, 0, 8])));
        assert!(!g.on_read(&frame(TYPE_RST_STREAM, 0, 2005, &[0, 0, 0, 8])));
    }

    #[test]
    fn skipped_and_out_of_range_streams_are_not_counted() {
        let mut g = opened_guard();
        // Streams 1..=199 open, unanswered; then a jump far ahead: the
        // skipped ids are closed and the old ones out of range.
        for i in 0..100u32 {
            assert!(!g.on_read(&frame(TYPE_HEADERS, 0x5, 2 * i + 1, &[0x82])));
        }
        assert!(!g.on_read(&frame(TYPE_HEADERS, 0x5, 100_001, &[0x82])));
        for i in 0..100u32 {
            assert!(!g.on_read(&frame(TYPE_RST_STREAM, 0, 2 * i + 1, &[0, 0, 0, 8])));
        }
        // A small jump: the slots of the skipped ids are cleared, so a
        // stream that reuses one is judged on its own.
        for id in (100_003..100_003 + 2 * MAX_PREMATURE_RESETS).step_by(4) {
            assert!(!open_and_reset(&mut g, id));
        }
        assert_eq!(g.resets.premature, MAX_PREMATURE_RESETS / 2);
    }
}
