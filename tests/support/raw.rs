//! A raw HTTP/1.1 upstream and client for the edge-rule tests: they see
//! and send the exact bytes, where hyper would normalise them away.

use super::parse_status;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a [`RawBackend`] answers to a head instead of its `200`: the raw
/// answer, and whether to close the connection after it.
pub type SpecialAnswer = fn(&str) -> Option<(&'static str, bool)>;

/// An HTTP/1.1 upstream on raw TCP that records every request head it
/// receives, byte for byte, and answers `200` with its name (or what its
/// [`SpecialAnswer`] says). Bodies (Content-Length only) are skipped.
pub struct RawBackend {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawBackend {
    pub async fn start(name: &'static str) -> RawBackend {
        RawBackend::start_with(name, |_| None).await
    }

    pub async fn start_with(name: &'static str, special: SpecialAnswer) -> RawBackend {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve_raw(s, name, h.clone(), special));
            }
        });
        RawBackend { addr, heads }
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.heads.lock().unwrap().len()
    }

    pub fn last(&self) -> String {
        self.heads().pop().expect("the backend saw no request")
    }
}

async fn serve_raw(
    mut s: tokio::net::TcpStream,
    name: &str,
    heads: Arc<Mutex<Vec<String>>>,
    special: SpecialAnswer,
) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_head(&mut s, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let chunked = header_values(&head, "transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        let body_read = if chunked {
            skip_chunked(&mut s, &mut buf).await
        } else {
            skip(&mut s, &mut buf, content_length(&head)).await
        };
        if !body_read {
            return;
        }
        let answer = special(&head);
        heads.lock().unwrap().push(head);
        let (answer, close) = match answer {
            Some((a, close)) => (a.to_string(), close),
            None => (
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                    name.len()
                ),
                false,
            ),
        };
        if s.write_all(answer.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Reads and drops `n` body bytes; false at EOF or on an error.
async fn skip(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, mut n: usize) -> bool {
    while n > 0 {
        if buf.is_empty() && !fill(s, buf).await {
            return false;
        }
        let k = n.min(buf.len());
        buf.drain(..k);
        n -= k;
    }
    true
}

/// Reads and drops a chunked body (a request without a known length, as
/// an HTTP/3 body whose end comes after its head is sent on); trailers
/// are not expected. False at EOF, an error or a malformed chunk line.
async fn skip_chunked(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            if !fill(s, buf).await {
                return false;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
        else {
            return false;
        };
        buf.drain(..line_end + 2);
        // the chunk and its CRLF; after the last (size 0) chunk, the empty
        // line that ends the body
        if !skip(s, buf, size + 2).await {
            return false;
        }
        if size == 0 {
            return true;
        }
    }
}

/// Reads more bytes into `buf`; false at EOF or on an error.
pub async fn fill(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads until `buf` holds a whole head; its length with the blank line.
pub async fn read_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        if !fill(s, buf).await {
            return None;
        }
    }
}

pub fn content_length(head: &str) -> usize {
    header_values(head, "content-length")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The values of every field of a raw head named exactly `name` (any case).
pub fn header_values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

pub fn request_line(head: &str) -> &str {
    head.split("\r\n").next().unwrap_or("")
}

/// A client's exchange on a fresh connection: writes `req` and reads one
/// answer (head and Content-Length body): (status, head, body).
pub async fn exchange(addr: SocketAddr, req: &[u8]) -> (u16, String, String) {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut buf = Vec::new();
        let end = read_head(&mut s, &mut buf)
            .await
            .expect("portico closed before a response head");
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len = content_length(&head);
        while buf.len() < end + len && fill(&mut s, &mut buf).await {}
        let body = String::from_utf8_lossy(&buf[end..(end + len).min(buf.len())]).into_owned();
        let status = parse_status(&head).expect("a status line");
        (status, head, body)
    };
    tokio::time::timeout(Duration::from_secs(20), go)
        .await
        .expect("no answer from portico")
}
