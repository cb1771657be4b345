//! portico's HTTP/1.1 client: one exchange at a time on a pooled upstream
//! connection, written and read by the task of the request itself.
//!
//! hyper's client runs a task per connection and hands it each request,
//! its response and every body chunk through channels: three task hops per
//! request. Here the request's own task writes the head and body, reads the
//! response head, and the response body (polled by the client connection's
//! task) reads the connection directly and gives it back to its server's
//! idle stack when the exchange is complete.
//!
//! Guarantees:
//! - the request goes out as `HTTP/1.1`, its headers as given
//!   (`Transfer-Encoding` excepted: the framing is the client's own): an
//!   empty body is sent without framing headers, a body of known length
//!   with its `Content-Length`, any other body chunked, except that a GET,
//!   HEAD or CONNECT whose length is unknown goes without its body (as
//!   hyper's client sends it); the head and a body already received go
//!   out in one write, and a body that fails before anything was written
//!   sends nothing; request trailers are not sent (`Trailer` is
//!   hop-by-hop, so no field was announced);
//! - a response is read by RFC 9112 §6.3: no body for HEAD, 1xx, 204 and
//!   304; else chunked when `Transfer-Encoding` is present (any coding but
//!   chunked alone makes the response invalid, since it could reach the
//!   client only as if the body had none; a `Content-Length` beside it is
//!   removed), else exactly `Content-Length` bytes (every value equal, or
//!   the response is invalid), else up to the close; interim 1xx answers
//!   other than 101 are skipped; 101 is an answer only to a request that
//!   asked to upgrade;
//! - a connection is reused only when the exchange is complete both ways
//!   (request body sent to its end, response read to its end with no byte
//!   beyond it), the response was HTTP/1.1 without `Connection: close`, and
//!   its framing was sound (no read-to-close, no length beside a transfer
//!   coding); anything else closes it, so a response can never be read as
//!   the next one's;
//! - a connection that fails or closes before a response head while the
//!   request is still being written, or before any byte of an answer on a
//!   reused connection, is [`H1Error::Closed`], not [`H1Error::Io`]: a
//!   server refusing an upload early, or closing an idle connection as the
//!   request came, is not a server that is down;
//! - once the response head is in, the rest of an upload is written as the
//!   response body is read (a client that reads no response while it
//!   uploads, to a server that answers before reading the upload, waits
//!   for the timeouts);
//! - a request's first write waits until the tasks already runnable have
//!   run (see [`behind_the_ready`]), so the requests read in one event-loop
//!   pass reach the servers in one burst;
//! - a response head is at most [`MAX_HEAD`] bytes and
//!   [`MAX_HEADERS`] fields, a chunk-size line or the trailer section at
//!   most [`MAX_LINE`] bytes: beyond, the response is invalid.

use crate::body::{BoxError, RequestBody};
use crate::tls::ClientIo;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use std::future::poll_fn;
use std::io::{self, IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest response head read (NGINX's default is 4 or 8 KiB,
/// HAProxy's 16 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line, and trailer section.
pub const MAX_LINE: usize = 16 * 1024;

/// How much room a read asks for at first.
const READ_RESERVE: usize = 8 * 1024;
/// How much room a body's reads grow to ask for, as long as each fills
/// what it had (a large download in fewer reads).
const MAX_READ: usize = 64 * 1024;

/// Why an exchange failed before a response head.
#[derive(Debug)]
pub enum H1Error {
    /// The connection failed (a write or a read) or closed before the head,
    /// after the whole request was written.
    Io(io::Error),
    /// The connection failed or closed while the request was still being
    /// written (a server that answers an upload early, or refuses it, may
    /// close without reading it), or before any byte of an answer on a
    /// reused connection (the server closed it as the request came): not,
    /// by itself, a server that is down.
    Closed(io::Error),
    /// The upstream's bytes are not an HTTP/1.x response.
    Invalid(&'static str),
    /// The request body failed (the client's stream, or portico's limits).
    ClientBody(BoxError),
}

impl std::fmt::Display for H1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            H1Error::Io(e) => write!(f, "{e}"),
            H1Error::Closed(e) => {
                write!(f, "{e} (request not fully written, or a reused connection)")
            }
            H1Error::Invalid(why) => f.write_str(why),
            H1Error::ClientBody(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for H1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            H1Error::Io(e) | H1Error::Closed(e) => Some(e),
            H1Error::Invalid(_) => None,
            H1Error::ClientBody(e) => Some(&**e),
        }
    }
}

fn invalid<T>(why: &'static str) -> Result<T, H1Error> {
    Err(H1Error::Invalid(why))
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed before the response was complete",
    )
}

/// Where a connection goes back once its exchange is complete (its
/// server's idle stack).
pub trait Home: Send + Sync {
    fn put_idle(&self, conn: H1Conn);
}

/// An idle HTTP/1.1 connection to one server.
pub struct H1Conn {
    io: ClientIo,
    /// Whether an exchange already ran on the connection.
    reused: bool,
    /// Bytes read and not consumed yet.
    rbuf: BytesMut,
    /// The request head being written (its allocation reused).
    wbuf: Vec<u8>,
}

/// A server's answer: the response, and for a 101 the connection itself.
pub struct Answer {
    pub response: Response<H1Body>,
    pub upgraded: Option<Upgraded>,
}

impl H1Conn {
    pub fn new(io: ClientIo) -> H1Conn {
        H1Conn {
            io,
            reused: false,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
        }
    }

    /// Whether the idle connection may carry a request: the server has not
    /// closed it and sent nothing unasked. Never waits (and no syscall
    /// unless the socket became readable since the last read).
    ///
    /// Polled outside tokio's task budget: with the budget spent, a read
    /// says Pending whatever the socket holds, and a closed connection
    /// would pass for a live one.
    pub fn alive(&mut self) -> bool {
        let io = &mut self.io;
        let probe = tokio::task::unconstrained(poll_fn(|cx| {
            let mut byte = [0u8; 1];
            let mut buf = ReadBuf::new(&mut byte);
            Pin::new(&mut *io).poll_read(cx, &mut buf)
        }));
        futures_util::FutureExt::now_or_never(probe).is_none()
    }

    /// Sends the request `head` + `body` and reads the response head;
    /// `home`: where the connection goes back when the exchange completes.
    pub async fn send(
        mut self,
        head: &http::request::Parts,
        body: RequestBody,
        home: Arc<dyn Home>,
    ) -> Result<Answer, H1Error> {
        let upgrade = connection_lists(&head.headers, b"upgrade");
        let head_only = head.method == Method::HEAD;
        let mut out = Outgoing::start(head, body, &mut self.wbuf);
        let mut scan = Scan::default();
        behind_the_ready().await;
        let head = poll_fn(|cx| self.poll_head(cx, &mut out, &mut scan)).await?;
        let (response, framing) = head.into_response(head_only)?;
        let mut live = Live {
            conn: self,
            out,
            decoder: framing.decoder,
            reusable: framing.reusable,
            home,
            read_size: READ_RESERVE,
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if !upgrade || !live.out.done {
                return invalid(
                    "101 to a request that did not ask to upgrade, or before it was sent",
                );
            }
            let upgraded = Upgraded {
                pre: live.conn.rbuf.split().freeze(),
                io: live.conn.io,
            };
            return Ok(Answer {
                response: response.map(|()| H1Body::new(None)),
                upgraded: Some(upgraded),
            });
        }
        let live = if live.decoder.is_done() {
            live.release();
            None
        } else {
            Some(live)
        };
        Ok(Answer {
            response: response.map(|()| H1Body::new(live)),
            upgraded: None,
        })
    }

    /// Writes what it can of the request and reads until a final response
    /// head (interim 1xx answers skipped).
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Outgoing,
        scan: &mut Scan,
    ) -> Poll<Result<Head, H1Error>> {
        loop {
            // An answer already in comes first (an early 401 to an upload
            // the client then fails is still the answer).
            if let Some(head) = parse_head(&mut self.rbuf, &mut scan.scanned)? {
                if head.status == 100 || (head.status > 101 && head.status < 200) {
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
            // A server may answer before it read the whole request (and may
            // stop reading it): a write failure waits for that answer.
            if let Poll::Ready(Err(Sent::Body(e))) = out.poll_send(cx, &mut self.io) {
                return Poll::Ready(Err(H1Error::ClientBody(e)));
            }
            if self.rbuf.len() >= MAX_HEAD {
                return Poll::Ready(invalid("response head too large"));
            }
            let failed = match std::task::ready!(read_more(
                cx,
                &mut self.io,
                &mut self.rbuf,
                READ_RESERVE / 2,
                READ_RESERVE
            )) {
                Ok(0) => out.write_error.take().unwrap_or_else(closed),
                Ok(_) => {
                    scan.answered = true;
                    continue;
                }
                Err(e) => e,
            };
            let servers_fault =
                out.done && out.write_error.is_none() && (scan.answered || !self.reused);
            return Poll::Ready(Err(if servers_fault {
                H1Error::Io(failed)
            } else {
                H1Error::Closed(failed)
            }));
        }
    }
}

/// Returns once every task that was runnable when it was called has run:
/// it wakes its own task and yields once, which puts the task at the back
/// of its worker's run queue.
///
/// Why: a server (a backend on another core) that is woken by each
/// request as it is written takes one wake-up, and runs one pass of its
/// event loop, per request. When the requests that one pass of portico's
/// event loop read are all written after the reading, the server's first
/// wake-up finds the others already queued. HAProxy orders its loop the
/// same way (all receives, then all sends). Under load the backends
/// switch context less often per request and portico's latency tail comes
/// down, at the same CPU per request: the one more poll of the request's
/// task (1–2 % more instructions) is repaid by the wake-ups it saves
/// (benches/RESULTS.md, section N). An idle proxy has nothing queued, and
/// the task runs again at once.
///
/// Not `tokio::task::yield_now`: that one waits for the next poll of the
/// I/O driver, which would hold every request back by a whole pass.
async fn behind_the_ready() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// How far the reading of a response head got.
#[derive(Default)]
struct Scan {
    /// How much of the buffer was searched for a head's end.
    scanned: usize,
    /// Whether the server sent any byte of an answer.
    answered: bool,
}

/// Whether a `Connection` field of `h` lists `token` (any case).
pub fn connection_lists(h: &HeaderMap, token: &[u8]) -> bool {
    h.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// Reads into `buf`, first making room for `want` bytes when it has room
/// for fewer than `room`.
fn read_more(
    cx: &mut Context<'_>,
    io: &mut ClientIo,
    buf: &mut BytesMut,
    room: usize,
    want: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < room {
        buf.reserve(want);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// A parsed response head.
struct Head {
    status: u16,
    minor: u8,
    /// The fields, their values slices of the head's bytes (no copy).
    headers: HeaderMap,
}

/// Parses a whole head at the front of `buf` (taking it out of `buf`), or
/// says there is none yet. `scanned`: how far `buf` was searched for the
/// head's end before, so a head that arrives in many pieces is not parsed
/// again for each.
fn parse_head(buf: &mut BytesMut, scanned: &mut usize) -> Result<Option<Head>, H1Error> {
    let from = scanned.saturating_sub(3);
    *scanned = buf.len();
    let rest = &buf[from..];
    if memchr::memmem::find(rest, b"\n\r\n").is_none()
        && memchr::memmem::find(rest, b"\n\n").is_none()
    {
        return Ok(None);
    }
    // The fields are not filled in before the parse: 100 empty ones cost
    // more than the parse of a typical head of about five.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return invalid("too many response header fields"),
        Err(_) => return invalid("invalid response head"),
    };
    let (Some(status), Some(minor)) = (res.code, res.version) else {
        return invalid("invalid response head");
    };
    // Where each field is, so that its value can be a slice of the head's
    // bytes once they are taken out of `buf` (which `res` borrows).
    // (u32: a head is at most MAX_HEAD plus one read long.)
    let base = buf.as_ptr() as usize;
    let mut at = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = res.headers.len();
    for (slot, h) in at.iter_mut().zip(res.headers.iter()) {
        let n = h.name.as_ptr() as usize - base;
        let v = h.value.as_ptr() as usize - base;
        *slot = (
            n as u32,
            (n + h.name.len()) as u32,
            v as u32,
            (v + h.value.len()) as u32,
        );
    }
    *scanned = 0;
    let bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &at[..count] {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name = HeaderName::from_bytes(&bytes[ns..ne])
            .or_else(|_| invalid("invalid response header name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(vs..ve))
            .or_else(|_| invalid("invalid response header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        minor,
        headers,
    }))
}

/// How a response's body is framed, and whether its connection may carry
/// another exchange after it.
struct Framing {
    decoder: Decoder,
    reusable: bool,
}

impl Head {
    fn into_response(self, head_only: bool) -> Result<(Response<()>, Framing), H1Error> {
        let status = StatusCode::from_u16(self.status).or_else(|_| invalid("invalid status"))?;
        let mut headers = self.headers;
        let framing = framing(status, &headers, head_only, self.minor)?;
        if headers.contains_key(TRANSFER_ENCODING) {
            // The chunks frame the body; a length beside them is not the
            // client's to see (RFC 9112 §6.3).
            headers.remove(CONTENT_LENGTH);
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok((response, framing))
    }
}

/// RFC 9112 §6.3, for a response.
fn framing(
    status: StatusCode,
    h: &HeaderMap,
    head_only: bool,
    minor: u8,
) -> Result<Framing, H1Error> {
    let close = minor == 0 || connection_lists(h, b"close");
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if no_body {
        return Ok(Framing {
            decoder: Decoder::Done,
            reusable: !close,
        });
    }
    let lengths = h.get_all(CONTENT_LENGTH);
    if h.contains_key(TRANSFER_ENCODING) {
        let mut codings = h
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty());
        // Only chunked is decoded: a body under another transfer coding
        // could reach the client only as if it had none.
        let chunked = codings
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !chunked {
            return invalid("a transfer coding other than chunked");
        }
        // A length beside a transfer coding is a message a different
        // reader could frame differently: read it by its chunks, then close.
        let alone = lengths.iter().next().is_none();
        return Ok(Framing {
            decoder: Decoder::Chunked(Chunk::Size),
            reusable: alone && !close,
        });
    }
    let mut length = None;
    for v in lengths {
        for t in v.as_bytes().split(|&b| b == b',') {
            let n =
                parse_length(t.trim_ascii()).ok_or(H1Error::Invalid("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return invalid("conflicting Content-Length values");
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => Framing {
            decoder: if n == 0 {
                Decoder::Done
            } else {
                Decoder::Length(n)
            },
            reusable: !close,
        },
        None => Framing {
            decoder: Decoder::Eof,
            reusable: false,
        },
    })
}

fn parse_length(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    t.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Why sending the request stopped.
enum Sent {
    /// The request body failed.
    Body(BoxError),
    /// The connection failed.
    Io(io::Error),
}

/// How the request body is framed on the wire.
enum ReqFraming {
    /// Exactly this many bytes still to send.
    Length(u64),
    Chunked,
}

/// The request on its way out: what is still to write of it (the head,
/// then each body frame with its chunk framing), and the body's frames to
/// come.
struct Outgoing {
    /// Head bytes, or a chunk-size line, not yet written.
    pre: Vec<u8>,
    pre_pos: usize,
    data: Bytes,
    post: &'static [u8],
    body: Option<RequestBody>,
    framing: ReqFraming,
    unflushed: bool,
    /// The first write failure: the request is not sent, but the server's
    /// answer may still come.
    write_error: Option<io::Error>,
    done: bool,
}

impl Outgoing {
    /// Encodes the head of `parts` (and its framing) into `wbuf`, which it
    /// takes over until the exchange ends.
    fn start(parts: &http::request::Parts, body: RequestBody, wbuf: &mut Vec<u8>) -> Outgoing {
        let mut pre = std::mem::take(wbuf);
        pre.clear();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        pre.extend_from_slice(parts.method.as_str().as_bytes());
        pre.push(b' ');
        pre.extend_from_slice(target.as_bytes());
        pre.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            if name == TRANSFER_ENCODING {
                continue;
            }
            pre.extend_from_slice(name.as_str().as_bytes());
            pre.extend_from_slice(b": ");
            pre.extend_from_slice(value.as_bytes());
            pre.extend_from_slice(b"\r\n");
        }
        // A GET, HEAD or CONNECT whose body's end is not known yet (an
        // HTTP/2 or HTTP/3 request whose HEADERS did not end the stream) is
        // sent without one, as hyper's client does: a chunked GET is not
        // what an upstream expects, and a client cancelling it must not
        // read as a failed upload.
        let bodiless = matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT);
        let declared = declared_length(&parts.headers);
        let exact = body.size_hint().exact();
        let empty = body.is_end_stream() || (bodiless && exact.is_none() && declared.is_none());
        let framing = match (empty, declared, exact) {
            (true, None, _)
                if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) =>
            {
                // RFC 9110 §8.6: a method that expects content says it has none.
                pre.extend_from_slice(b"content-length: 0\r\n");
                ReqFraming::Length(0)
            }
            (true, _, _) => ReqFraming::Length(0),
            (false, Some(n), _) => ReqFraming::Length(n),
            (false, None, Some(n)) => {
                let _ = write!(pre, "content-length: {n}\r\n");
                ReqFraming::Length(n)
            }
            (false, None, None) => {
                pre.extend_from_slice(b"transfer-encoding: chunked\r\n");
                ReqFraming::Chunked
            }
        };
        pre.extend_from_slice(b"\r\n");
        Outgoing {
            pre,
            pre_pos: 0,
            data: Bytes::new(),
            post: b"",
            body: (!empty).then_some(body),
            framing,
            unflushed: false,
            write_error: None,
            done: false,
        }
    }

    fn pending(&self) -> bool {
        self.pre_pos < self.pre.len() || !self.data.is_empty() || !self.post.is_empty()
    }

    /// Writes what is pending and the body's frames as they come; ready
    /// once the whole request is written and flushed.
    fn poll_send(&mut self, cx: &mut Context<'_>, io: &mut ClientIo) -> Poll<Result<(), Sent>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        if self.write_error.is_some() {
            return Poll::Pending;
        }
        match self.poll_write_all(cx, io) {
            Poll::Ready(Ok(())) => {
                self.done = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(Sent::Io(e))) => {
                self.write_error = Some(e);
                Poll::Pending
            }
            other => other,
        }
    }

    /// The body's next frame is asked for before what is pending is
    /// written, so that the head and a body already in go out in one
    /// write, and a body that fails at once (a malformed chunked upload)
    /// sends nothing upstream.
    fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut ClientIo,
    ) -> Poll<Result<(), Sent>> {
        let mut body_waits = false;
        loop {
            if let (Some(body), true) = (
                self.body.as_mut(),
                self.data.is_empty() && self.post.is_empty(),
            ) {
                if !body_waits {
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            let end = body.is_end_stream();
                            if let Ok(data) = frame.into_data() {
                                self.queue(data)?;
                            }
                            if end {
                                self.end()?;
                            }
                            continue;
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Sent::Body(e))),
                        Poll::Ready(None) => {
                            self.end()?;
                            continue;
                        }
                        Poll::Pending => body_waits = true,
                    }
                }
            }
            if self.pending() {
                let slices = [
                    IoSlice::new(&self.pre[self.pre_pos..]),
                    IoSlice::new(&self.data),
                    IoSlice::new(self.post),
                ];
                match std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices)) {
                    Ok(0) => return Poll::Ready(Err(Sent::Io(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => self.advance(n),
                    Err(e) => return Poll::Ready(Err(Sent::Io(e))),
                }
                self.unflushed = true;
                continue;
            }
            if self.unflushed {
                std::task::ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(Sent::Io)?;
                self.unflushed = false;
            }
            // Every declared byte is out: the request is whole even if the
            // body's end (an HTTP/2 END_STREAM in a frame of its own) is
            // still to come.
            if self.body.is_none() || matches!(self.framing, ReqFraming::Length(0)) {
                return Poll::Ready(Ok(()));
            }
            if body_waits {
                return Poll::Pending;
            }
        }
    }

    /// Queues one data frame with its framing.
    fn queue(&mut self, data: Bytes) -> Result<(), Sent> {
        if data.is_empty() {
            // An empty chunk would end a chunked body.
            return Ok(());
        }
        match &mut self.framing {
            ReqFraming::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err(Sent::Body(
                        "request body longer than its Content-Length".into(),
                    ));
                }
                *left -= n;
            }
            ReqFraming::Chunked => {
                // Behind the head when it is not written yet.
                if self.pre_pos == self.pre.len() {
                    self.pre.clear();
                    self.pre_pos = 0;
                }
                let _ = write!(self.pre, "{:x}\r\n", data.len());
                self.post = b"\r\n";
            }
        }
        self.data = data;
        Ok(())
    }

    /// The body ended: the chunked body's last chunk; a short body fails.
    fn end(&mut self) -> Result<(), Sent> {
        self.body = None;
        match self.framing {
            ReqFraming::Length(0) => Ok(()),
            ReqFraming::Length(_) => Err(Sent::Body(
                "request body shorter than its Content-Length".into(),
            )),
            ReqFraming::Chunked => {
                self.post = if self.post.is_empty() {
                    b"0\r\n\r\n"
                } else {
                    b"\r\n0\r\n\r\n"
                };
                Ok(())
            }
        }
    }

    fn advance(&mut self, mut n: usize) {
        let pre = (self.pre.len() - self.pre_pos).min(n);
        self.pre_pos += pre;
        n -= pre;
        let data = self.data.len().min(n);
        self.data.advance(data);
        n -= data;
        self.post = &self.post[n.min(self.post.len())..];
    }
}

/// The `Content-Length` the request's own headers declare, if valid.
fn declared_length(h: &HeaderMap) -> Option<u64> {
    let mut values = h.get_all(CONTENT_LENGTH).iter();
    let n = parse_length(values.next()?.as_bytes())?;
    values
        .all(|v| parse_length(v.as_bytes()) == Some(n))
        .then_some(n)
}

/// Where a chunked body's reader is.
#[derive(Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// How much of a response body is left to read.
enum Decoder {
    Length(u64),
    Chunked(Chunk),
    /// Up to the connection's close.
    Eof,
    Done,
}

impl Decoder {
    fn is_done(&self) -> bool {
        matches!(self, Decoder::Done)
    }
}

/// What reading a chunked body's framing did.
enum Step {
    /// More bytes are needed.
    More,
    /// The reader moved on.
    Moved,
    /// The body ended with these trailer fields.
    Trailers(HeaderMap),
}

/// An exchange under way once its response head is in: the connection,
/// the rest of the request, the rest of the response.
struct Live {
    conn: H1Conn,
    out: Outgoing,
    decoder: Decoder,
    reusable: bool,
    home: Arc<dyn Home>,
    /// What the next read of the body asks room for.
    read_size: usize,
}

impl Live {
    /// The response is read to its end: the connection goes back to its
    /// server when the whole exchange is clean, else closes.
    fn release(self) {
        if !self.reusable || !self.out.done || !self.conn.rbuf.is_empty() {
            return;
        }
        self.home.put_idle(H1Conn {
            io: self.conn.io,
            reused: true,
            rbuf: self.conn.rbuf,
            wbuf: self.out.pre,
        });
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // The rest of an upload goes on beside the response.
        if let Poll::Ready(Err(Sent::Body(e))) = self.out.poll_send(cx, &mut self.conn.io) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match self.decoder {
                Decoder::Done => return Poll::Ready(None),
                Decoder::Length(left) | Decoder::Chunked(Chunk::Data(left))
                    if !self.conn.rbuf.is_empty() =>
                {
                    let n = left.min(self.conn.rbuf.len() as u64);
                    let data = self.conn.rbuf.split_to(n as usize).freeze();
                    self.decoder = match (&self.decoder, left - n) {
                        (Decoder::Length(_), 0) => Decoder::Done,
                        (Decoder::Length(_), l) => Decoder::Length(l),
                        (_, 0) => Decoder::Chunked(Chunk::DataEnd),
                        (_, l) => Decoder::Chunked(Chunk::Data(l)),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::Eof if !self.conn.rbuf.is_empty() => {
                    let data = self.conn.rbuf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::Chunked(c @ (Chunk::Size | Chunk::DataEnd | Chunk::Trailers)) => {
                    match self.chunk_framing(c) {
                        Ok(Step::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                        Ok(Step::Moved) => continue,
                        Ok(Step::More) => {}
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                _ => {}
            }
            let (room, want) = match self.decoder {
                // The rest of a body of known length, up to MAX_READ, comes
                // in one read into one buffer of its size: fewer reads,
                // allocations and frames than growing toward it.
                Decoder::Length(left) if left <= MAX_READ as u64 => (left as usize, left as usize),
                _ => (self.read_size / 2, self.read_size),
            };
            let io = &mut self.conn.io;
            match std::task::ready!(read_more(cx, io, &mut self.conn.rbuf, room, want)) {
                Ok(0) if matches!(self.decoder, Decoder::Eof) => {
                    self.decoder = Decoder::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(Box::new(closed())))),
                Ok(n) => {
                    if n >= self.read_size && self.read_size < MAX_READ {
                        self.read_size *= 2;
                    }
                }
                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
            }
        }
    }

    /// Reads a chunk-size line, a chunk's CRLF or the trailer section from
    /// the buffer.
    fn chunk_framing(&mut self, c: Chunk) -> Result<Step, BoxError> {
        let buf = &mut self.conn.rbuf;
        match c {
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("invalid chunk: no CRLF after its data".into());
                }
                buf.advance(2);
                self.decoder = Decoder::Chunked(Chunk::Size);
                Ok(Step::Moved)
            }
            Chunk::Size => {
                let Some(end) = memchr::memchr(b'\n', buf) else {
                    return if buf.len() > MAX_LINE {
                        Err("chunk-size line too long".into())
                    } else {
                        Ok(Step::More)
                    };
                };
                let size = parse_chunk_size(&buf[..end])?;
                buf.advance(end + 1);
                self.decoder = Decoder::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(Step::Moved)
            }
            Chunk::Trailers => {
                let Some((end, trailers)) = parse_trailers(buf)? else {
                    return if buf.len() > MAX_LINE {
                        Err("trailer section too long".into())
                    } else {
                        Ok(Step::More)
                    };
                };
                buf.advance(end);
                self.decoder = Decoder::Done;
                Ok(trailers.map_or(Step::Moved, Step::Trailers))
            }
            Chunk::Data(_) => Ok(Step::More),
        }
    }
}

/// `1a;ext=v\r` (the line without its LF): the chunk's size.
fn parse_chunk_size(line: &[u8]) -> Result<u64, BoxError> {
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err("invalid chunk-size line: no CR before LF".into());
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("invalid chunk size".into());
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err("invalid chunk-size line".into());
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| "invalid chunk size")?;
    Ok(u64::from_str_radix(hex, 16)?)
}

/// The trailer section at the front of `buf`: its length (its final CRLF
/// included) and its fields (`None` when it has none); `None` while it is
/// not whole.
#[allow(clippy::type_complexity)]
fn parse_trailers(buf: &[u8]) -> Result<Option<(usize, Option<HeaderMap>)>, BoxError> {
    if buf.starts_with(b"\r\n") {
        return Ok(Some((2, None)));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (end, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("invalid trailer section".into()),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        map.append(
            HeaderName::from_bytes(f.name.as_bytes())?,
            HeaderValue::from_bytes(f.value)?,
        );
    }
    Ok(Some((end, (!map.is_empty()).then_some(map))))
}

/// A response body read from the upstream connection; the connection goes
/// back to its server once the body is read to its end (if the exchange
/// allows reuse), and closes if the body is dropped before.
pub struct H1Body {
    live: Option<Live>,
    /// A failure held back for one poll (see `poll_frame`).
    failed: Option<BoxError>,
}

impl H1Body {
    fn new(live: Option<Live>) -> H1Body {
        H1Body { live, failed: None }
    }
}

impl http_body::Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let Some(live) = this.live.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = live.poll_frame(cx);
        match polled {
            Poll::Ready(Some(Err(e))) => {
                // The connection closes now; the failure is reported on
                // the next poll, so that what the client's side holds of
                // the response (its head, the data before the failure)
                // is flushed first, as it would be had the failure come
                // later: a truncated answer, not none.
                this.live = None;
                this.failed = Some(e);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(_) if live.decoder.is_done() => {
                if let Some(live) = this.live.take() {
                    live.release();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.live.as_ref().is_none_or(|l| l.decoder.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.live.as_ref().map(|l| &l.decoder) {
            None | Some(Decoder::Done) => SizeHint::with_exact(0),
            Some(Decoder::Length(n)) => SizeHint::with_exact(*n),
            Some(_) => SizeHint::default(),
        }
    }
}

/// An upstream connection after a 101: the bytes the server sent after its
/// head, then the connection itself.
pub struct Upgraded {
    pre: Bytes,
    io: ClientIo,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tasks runnable at once: the first to reach `behind_the_ready`
    /// goes on only after the other has run.
    #[test]
    fn behind_the_ready_lets_the_runnable_tasks_go_first() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = |what: &'static str| {
            let order = order.clone();
            move || order.lock().expect("order").push(what)
        };
        let (first_in, first_out) = (log("first: read"), log("first: write"));
        let second = log("second: read");
        rt.block_on(async move {
            let a = tokio::spawn(async move {
                first_in();
                behind_the_ready().await;
                first_out();
            });
            let b = tokio::spawn(async move { second() });
            let _ = tokio::join!(a, b);
        });
        assert_eq!(
            *order.lock().expect("order"),
            ["first: read", "second: read", "first: write"]
        );
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1A\r").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"0;x=y\r").unwrap(), 0);
        assert_eq!(parse_chunk_size(b"10 ;x\r").unwrap(), 16);
        assert!(parse_chunk_size(b"zz\r").is_err());
        assert!(parse_chunk_size(b"1A").is_err());
        assert!(parse_chunk_size(b"1A x\r").is_err());
        assert!(parse_chunk_size(b"11111111111111111\r").is_err());
    }

    #[test]
    fn lengths() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"123"), Some(123));
        assert_eq!(parse_length(b"+1"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"99999999999999999999"), None);
    }

    fn framed(head: &str, head_only: bool) -> Result<Framing, H1Error> {
        let mut buf = BytesMut::from(head);
        let h = parse_head(&mut buf, &mut 0)?.expect("a whole head");
        let (r, f) = h.into_response(head_only)?;
        assert!(r.status().as_u16() >= 100);
        Ok(f)
    }

    #[test]
    fn response_framing() {
        let f = framed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).unwrap();
        assert!(matches!(f.decoder, Decoder::Length(5)) && f.reusable);
        let f = framed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap();
        assert!(f.decoder.is_done() && f.reusable);
        let f = framed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(matches!(f.decoder, Decoder::Chunked(Chunk::Size)) && f.reusable);
        assert!(framed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false
        )
        .is_err());
        assert!(framed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            false
        )
        .is_err());
        let f = framed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(matches!(f.decoder, Decoder::Chunked(_)) && !f.reusable);
        let f = framed("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert!(matches!(f.decoder, Decoder::Eof) && !f.reusable);
        let f = framed("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap();
        assert!(!f.reusable);
        let f = framed(
            "HTTP/1.1 200 OK\r\nConnection: Keep-Alive, close\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!f.reusable);
        let f = framed(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(f.decoder.is_done() && f.reusable);
        assert!(framed(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            false
        )
        .is_err());
        assert!(framed("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", false).is_ok());
        assert!(framed("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", false).is_err());
    }

    #[test]
    fn a_head_in_pieces_is_found_once_whole() {
        let whole = b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\nrest";
        let mut buf = BytesMut::new();
        let mut scanned = 0;
        for (i, b) in whole.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = parse_head(&mut buf, &mut scanned).unwrap();
            if i + 1 < whole.len() - 4 {
                assert!(got.is_none(), "at {i}");
            } else if let Some(h) = got {
                assert_eq!(h.status, 204);
                break;
            }
        }
    }

    #[test]
    fn trailers() {
        assert!(matches!(
            parse_trailers(b"\r\nnext").unwrap(),
            Some((2, None))
        ));
        let (end, t) = parse_trailers(b"Grpc-Status: 0\r\nX: y\r\n\r\nnext")
            .unwrap()
            .unwrap();
        assert_eq!(end, 24);
        assert_eq!(t.unwrap().get("grpc-status").unwrap(), "0");
        assert!(parse_trailers(b"Grpc-Status: 0\r\n").unwrap().is_none());
        // Where the section ends is where the parser says: bare LFs too.
        let (end, _) = parse_trailers(b"X: a\n\nJUNK").unwrap().unwrap();
        assert_eq!(end, 6);
        assert!(parse_trailers(b"bad header\r\n\r\n").is_err());
    }
}
