//! HTTP/1.x request framing, followed from the bytes the client sends.
//!
//! [`H1Framing`] reads each head, then its body (by Content-Length or
//! chunked, as strictly as hyper does), so that it knows where every head
//! starts, pipelined or not, and which request had both Content-Length and
//! Transfer-Encoding: a conflict hyper resolves silently once it has
//! parsed the head. Bytes it cannot follow (which hyper rejects as well, a
//! head over the cap, or a tunnel after an upgrade) end the tracking for
//! the rest of the connection: [`H1Framing::lost_from`] names the first
//! request whose framing is unknown.
//!
//! It only observes: the bytes pass on unchanged, and the work per read is
//! a scan of what was read (a head is parsed where it was read, or copied,
//! up to its cap, when it spans reads; a body is skipped by counting).

/// Follows the HTTP/1.x request stream of a connection from the bytes read.
pub struct H1Framing {
    state: Framing,
    /// The head being read, up to `cap` bytes.
    head: Vec<u8>,
    cap: usize,
    /// Heads completed so far: the sequence number of the next request.
    heads: u64,
    /// The first request whose head had both Content-Length and
    /// Transfer-Encoding.
    length_and_chunked: Option<u64>,
    /// The request from which on the stream could not be followed.
    lost_from: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    Head,
    Length(u64),
    Chunked(Chunk),
    Lost,
}

/// Where a chunked body is (RFC 9112 7.1), as strictly as hyper reads it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Chunk {
    Size { size: u64, digits: bool },
    SizeSpace(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

impl H1Framing {
    /// Follows a stream whose heads may take up to `cap` bytes.
    pub fn new(cap: usize) -> H1Framing {
        H1Framing {
            state: Framing::Head,
            head: Vec::new(),
            cap,
            heads: 0,
            length_and_chunked: None,
            lost_from: None,
        }
    }

    /// The first request (by sequence number on the connection, 0 for the
    /// first) whose head carried both Content-Length and Transfer-Encoding.
    pub fn length_and_chunked(&self) -> Option<u64> {
        self.length_and_chunked
    }

    /// The first request whose framing is unknown: from it on the stream
    /// could not be followed.
    pub fn lost_from(&self) -> Option<u64> {
        self.lost_from
    }

    /// Whether every byte so far belongs to a request whose head and body
    /// are complete (`heads` of them): the next byte starts a new head.
    /// Never once the stream could not be followed.
    pub fn between_requests(&self) -> Option<u64> {
        (self.state == Framing::Head && self.head.is_empty()).then_some(self.heads)
    }

    /// Takes the next bytes read from the client; true if that taught
    /// [`H1Framing::length_and_chunked`] or [`H1Framing::lost_from`]
    /// something new.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let before = (self.length_and_chunked, self.lost_from);
        while !bytes.is_empty() {
            match self.state {
                Framing::Lost => break,
                Framing::Head => bytes = self.feed_head(bytes),
                Framing::Length(n) => {
                    let k = n.min(bytes.len() as u64);
                    bytes = &bytes[k as usize..];
                    self.state = match n - k {
                        0 => Framing::Head,
                        left => Framing::Length(left),
                    };
                }
                Framing::Chunked(Chunk::Data(n)) => {
                    let k = n.min(bytes.len() as u64);
                    bytes = &bytes[k as usize..];
                    self.state = Framing::Chunked(match n - k {
                        0 => Chunk::DataCr,
                        left => Chunk::Data(left),
                    });
                }
                Framing::Chunked(c) => {
                    self.state = chunk_step(c, bytes[0]);
                    bytes = &bytes[1..];
                }
            }
            if self.state == Framing::Lost {
                self.lost_from = Some(self.heads);
                break;
            }
        }
        before != (self.length_and_chunked, self.lost_from)
    }

    /// Takes head bytes; returns what follows the head, if it ended.
    fn feed_head<'a>(&mut self, mut bytes: &'a [u8]) -> &'a [u8] {
        if self.head.is_empty() {
            // Empty lines before a request line are ignored (RFC 9112 2.2).
            let skip = bytes
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
                .unwrap_or(bytes.len());
            bytes = &bytes[skip..];
            if bytes.is_empty() {
                return bytes;
            }
        }
        let before = self.head.len();
        if before == 0 {
            // Most heads arrive whole in one read: parsed where they are,
            // not copied.
            if let Some(end) = head_end(&bytes[..bytes.len().min(self.cap)]) {
                self.state = self.parse_head(&bytes[..end]);
                return &bytes[end..];
            }
        }
        let room = self.cap.saturating_sub(before);
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        // The end may straddle two reads: look from a little before.
        let from = before.saturating_sub(2);
        let Some(end) = head_end(&self.head[from..]).map(|e| from + e) else {
            if self.head.len() >= self.cap {
                self.state = Framing::Lost;
            }
            return &[];
        };
        let head = std::mem::take(&mut self.head);
        self.state = self.parse_head(&head[..end]);
        // Kept for the next split head, emptied.
        self.head = head;
        self.head.clear();
        &bytes[end.saturating_sub(before)..]
    }

    /// The framing of the body after `head` (a whole head, up to and
    /// including its empty line).
    fn parse_head(&mut self, head: &[u8]) -> Framing {
        // Uninitialised: filling 128 empty headers (4 KiB) for every head
        // cost more than parsing a small one.
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
        let mut req = httparse::Request::new(&mut []);
        if !matches!(
            req.parse_with_uninit_headers(head, &mut headers),
            Ok(httparse::Status::Complete(_))
        ) {
            return Framing::Lost;
        }
        let seq = self.heads;
        self.heads += 1;
        let mut length = None;
        let mut te = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = Some(h.value);
            } else if h.name.eq_ignore_ascii_case("content-length") && length.is_none() {
                length = Some(h.value);
            }
        }
        match (te, length) {
            (Some(te), length) => {
                if length.is_some() && self.length_and_chunked.is_none() {
                    self.length_and_chunked = Some(seq);
                }
                let last = te.rsplit(|&b| b == b',').next().unwrap_or(te);
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    Framing::Chunked(Chunk::Size {
                        size: 0,
                        digits: false,
                    })
                } else {
                    Framing::Lost
                }
            }
            (None, Some(v)) => {
                match std::str::from_utf8(v.trim_ascii())
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    Some(0) => Framing::Head,
                    Some(n) => Framing::Length(n),
                    None => Framing::Lost,
                }
            }
            (None, None) => Framing::Head,
        }
    }
}

/// Where a head ends in `b`: just after its empty line (CRLF or bare LF).
fn head_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'\n', &b[i..]) {
        let at = i + p + 1;
        match b.get(at..) {
            Some([b'\n', ..]) => return Some(at + 1),
            Some([b'\r', b'\n', ..]) => return Some(at + 2),
            _ => i = at,
        }
        if i >= b.len() {
            break;
        }
    }
    None
}

fn chunk_step(c: Chunk, b: u8) -> Framing {
    let next = match (c, b) {
        (Chunk::Size { size, .. }, _) if b.is_ascii_hexdigit() => {
            let d = u64::from((b as char).to_digit(16).unwrap_or(0));
            match size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                Some(size) => Chunk::Size { size, digits: true },
                None => return Framing::Lost,
            }
        }
        (Chunk::Size { size, digits: true }, b' ' | b'\t') => Chunk::SizeSpace(size),
        (Chunk::Size { size, digits: true } | Chunk::SizeSpace(size), b';') => {
            Chunk::Extension(size)
        }
        (Chunk::Size { size, digits: true } | Chunk::SizeSpace(size), b'\r') => Chunk::SizeLf(size),
        (Chunk::SizeSpace(size), b' ' | b'\t') => Chunk::SizeSpace(size),
        (Chunk::Extension(size), b'\r') => Chunk::SizeLf(size),
        (Chunk::Extension(_), b'\n') => return Framing::Lost,
        (Chunk::Extension(size), _) => Chunk::Extension(size),
        (Chunk::SizeLf(0), b'\n') => Chunk::TrailerStart,
        (Chunk::SizeLf(size), b'\n') => Chunk::Data(size),
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Size {
            size: 0,
            digits: false,
        },
        (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
        (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
        (Chunk::TrailerStart | Chunk::Trailer, _) => Chunk::Trailer,
        (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
        (Chunk::EndLf, b'\n') => return Framing::Head,
        _ => return Framing::Lost,
    };
    Framing::Chunked(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step`; (first CL+TE request, lost from).
    fn follow(bytes: &[u8], step: usize) -> (Option<u64>, Option<u64>) {
        let mut f = H1Framing::new(1024);
        for piece in bytes.chunks(step) {
            f.feed(piece);
        }
        (f.length_and_chunked(), f.lost_from())
    }

    #[test]
    fn finds_the_request_with_length_and_chunked_in_any_piece_sizes() {
        let mut stream = b"GET /0 HTTP/1.1\r\nHost: a\r\n\r\n\r\n".to_vec();
        // A body that looks like a head with both fields: it is a body.
        stream.extend_from_slice(
            b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 63\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked",
        );
        stream.extend_from_slice(
            b"POST /2 HTTP/1.1\nHost: a\nTransfer-Encoding: gzip, chunked\n\n5;ext=\"v\"\r\nhello\r\nA \r\n0123456789\r\n0\r\nTrailer: 1\r\n\r\n",
        );
        stream.extend_from_slice(
            b"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        );
        for step in [1, 2, 3, 7, 64, stream.len()] {
            assert_eq!(follow(&stream, step), (Some(3), None), "pieces of {step}");
        }
    }

    #[test]
    fn bytes_it_cannot_follow_end_the_tracking() {
        let mut f = H1Framing::new(1024);
        assert!(f.feed(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ));
        assert_eq!(f.lost_from(), Some(2));
        assert_eq!(f.length_and_chunked(), None);
        assert!(!f.feed(b"GET / HTTP/1.1\r\n\r\n"));
        // A head over the cap, in pieces or in one read (whose end, past
        // the cap, must not count).
        let (_, lost) = follow(&vec![b'a'; 4096], 100);
        assert_eq!(lost, Some(0));
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend_from_slice(&[b'a'; 2000]);
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(follow(&long, long.len()), (None, Some(0)));
    }
}
