//! A scripted raw HTTP/1.1 upstream: the test decides, per connection and
//! per request, the exact bytes it answers (and when it closes), so the
//! proxy's response parsing can be tested on framings no real server
//! library would produce. It counts accepted connections and records each
//! request head and body.

use super::raw::{fill, header_values, read_head};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// One thing the upstream does in its answer to a request.
#[derive(Clone, Debug)]
pub enum Step {
    /// Writes these bytes in one write.
    Write(Vec<u8>),
    /// Writes these bytes one byte per write, with a short pause between.
    Dribble(Vec<u8>),
    /// Waits this long.
    Sleep(Duration),
    /// Closes the connection (nothing after it runs).
    Close,
}

/// The answer to one request.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub steps: Vec<Step>,
    /// Answers right after the head, without reading the request body.
    pub skip_body: bool,
}

impl Reply {
    /// These exact bytes, the connection kept open.
    pub fn bytes(b: impl AsRef<[u8]>) -> Reply {
        Reply {
            steps: vec![Step::Write(b.as_ref().to_vec())],
            skip_body: false,
        }
    }

    /// These exact bytes, then the connection closed.
    pub fn bytes_then_close(b: impl AsRef<[u8]>) -> Reply {
        Reply {
            steps: vec![Step::Write(b.as_ref().to_vec()), Step::Close],
            skip_body: false,
        }
    }
}

/// One request as the upstream read it.
#[derive(Clone, Debug)]
pub struct Got {
    /// The connection's number, from 0 in accept order.
    pub conn: usize,
    /// The request's number on its connection, from 0.
    pub nth: usize,
    pub head: String,
    /// The body (chunked bodies decoded); empty when it was not read.
    pub body: Vec<u8>,
}

/// Decides the answer to request `nth` on connection `conn` with `head`.
pub type Script = Arc<dyn Fn(usize, usize, &str) -> Reply + Send + Sync>;

/// The scripted upstream, on 127.0.0.1; runs until the test ends.
pub struct Scripted {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Scripted {
    pub async fn start(
        script: impl Fn(usize, usize, &str) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let script: Script = Arc::new(script);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (a, g) = (accepts.clone(), got.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let conn = a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, conn, script.clone(), g.clone()));
            }
        });
        Scripted { addr, accepts, got }
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Requests read so far, in order.
    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

async fn serve(
    mut s: tokio::net::TcpStream,
    conn: usize,
    script: Script,
    got: Arc<Mutex<Vec<Got>>>,
) {
    let mut buf = Vec::new();
    for nth in 0.. {
        let Some(end) = read_head(&mut s, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let reply = script(conn, nth, &head);
        let body = if reply.skip_body {
            Vec::new()
        } else {
            match read_body(&mut s, &mut buf, &head).await {
                Some(b) => b,
                None => return,
            }
        };
        got.lock().unwrap().push(Got {
            conn,
            nth,
            head,
            body,
        });
        for step in reply.steps {
            let ok = match step {
                Step::Write(b) => s.write_all(&b).await.is_ok(),
                Step::Dribble(b) => dribble(&mut s, &b).await,
                Step::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    true
                }
                Step::Close => false,
            };
            if !ok {
                return;
            }
        }
    }
}

async fn dribble(s: &mut tokio::net::TcpStream, b: &[u8]) -> bool {
    for byte in b {
        if s.write_all(&[*byte]).await.is_err() || s.flush().await.is_err() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// The request body (Content-Length or chunked, trailers dropped); None at
/// EOF, an error or a malformed chunk line.
async fn read_body(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    head: &str,
) -> Option<Vec<u8>> {
    let chunked = header_values(head, "transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    if !chunked {
        let n = header_values(head, "content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return take(s, buf, n).await;
    }
    let mut body = Vec::new();
    loop {
        let line = take_line(s, buf).await?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // trailer fields, up to the empty line
            while !take_line(s, buf).await?.is_empty() {}
            return Some(body);
        }
        body.extend(take(s, buf, size).await?);
        take_line(s, buf).await?;
    }
}

async fn take(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        if !fill(s, buf).await {
            return None;
        }
    }
    Some(buf.drain(..n).collect())
}

async fn take_line(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Some(line);
        }
        if !fill(s, buf).await {
            return None;
        }
    }
}
