//! HTTP/2 control-frame flood detection (SETTINGS and PING floods).
//!
//! hyper's h2 throttles a peer that floods PING or SETTINGS frames by
//! back-pressure but keeps the connection. SPEC asks that such a peer's
//! connection end with GOAWAY (ENHANCE_YOUR_CALM). [`H2Guard`] follows the
//! frame boundaries of both directions of one connection from the bytes
//! [`super::conn_io::ConnIo`] passes through: on the read side it counts
//! control frames that ask for an answer; on the write side it knows when
//! hyper is between two frames, the only place a GOAWAY of portico's own
//! may go.

use std::time::Duration;
use tokio::time::Instant;

/// More than this many PING and SETTINGS frames (not ACKs) in one window
/// is a flood. A well-behaved client sends a handful per minute.
const MAX_CONTROL_FRAMES: u32 = 500;
const WINDOW: Duration = Duration::from_secs(10);

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_SETTINGS: u8 = 0x4;
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

/// Both directions of one HTTP/2 connection, as far as flood control cares.
pub struct H2Guard {
    preface_left: usize,
    incoming: Frames,
    outgoing: Frames,
    window_start: Instant,
    in_window: u32,
    last_stream: u32,
    flooded: bool,
}

impl Default for H2Guard {
    fn default() -> Self {
        H2Guard {
            preface_left: PREFACE_LEN,
            incoming: Frames::default(),
            outgoing: Frames::default(),
            window_start: Instant::now(),
            in_window: 0,
            last_stream: 0,
            flooded: false,
        }
    }
}

impl H2Guard {
    /// Feeds bytes read from the client; true once the client is flooding.
    pub fn on_read(&mut self, mut bytes: &[u8]) -> bool {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        let mut control = 0u32;
        let last_stream = &mut self.last_stream;
        self.incoming.feed(bytes, |h| {
            let (kind, flags) = (h[3], h[4]);
            match kind {
                TYPE_PING | TYPE_SETTINGS if flags & FLAG_ACK == 0 => control += 1,
                TYPE_HEADERS => {
                    let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    *last_stream = (*last_stream).max(id);
                }
                _ => {}
            }
        });
        if control > 0 {
            let now = Instant::now();
            if now.duration_since(self.window_start) > WINDOW {
                self.window_start = now;
                self.in_window = 0;
            }
            self.in_window = self.in_window.saturating_add(control);
            if self.in_window > MAX_CONTROL_FRAMES {
                self.flooded = true;
            }
        }
        self.flooded
    }

    /// Feeds bytes the server wrote (accepted by the socket).
    pub fn on_written(&mut self, bytes: &[u8]) {
        self.outgoing.feed(bytes, |_| {});
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
}
