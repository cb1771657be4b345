//! What portico does with HTTP/1.1 upstream responses, seen from the
//! upstream's side: a scripted raw upstream answers each request with exact
//! bytes (every framing edge: chunk extensions and trailers, close-delimited
//! bodies, HEAD, 1xx, bodiless statuses, bodies cut short, leftover bytes
//! after a response, malformed heads), and the tests check what the client
//! got and how many upstream connections were opened, so a connection is
//! reused exactly when that is safe and a response is never read as the
//! answer to another request.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::script::{Reply, Scripted, Step};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Portico with one listener and one route to a one-server pool on `up`.
fn proxy(up: &Scripted) -> (SocketAddr, Portico) {
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "{l}\n[[route]]\nname = \"r\"\nupstream = \"u\"\ntimeout = \"10s\"\n\
         [upstream.u]\nservers = [\"{}\"]\n",
        up.addr
    ));
    (addr, p)
}

/// A Content-Length response with `body`.
fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The request target of a raw head.
fn target(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// Answers every request with its own target as the body; the connection
/// kept open.
fn echo_target(head: &str) -> Reply {
    Reply::bytes(ok(target(head)))
}

/// GET `path`: status and body (the body read to its end).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// Asserts that GET `path` gets the upstream's own answer to it.
async fn assert_own_answer(addr: SocketAddr, path: &str, p: &Portico) {
    assert_eq!(
        get(addr, path).await,
        (200, path.to_string()),
        "{}",
        p.stderr()
    );
}

/// A raw HTTP/1.1 exchange with `Connection: close` and `extra` header
/// lines: the whole answer as portico wrote it.
fn raw_get(addr: SocketAddr, path: &str, extra: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n");
    raw_exchange(addr, req.as_bytes(), Duration::from_secs(10)).expect("connect")
}

/// Decodes a chunked body: the data and the trailer section (raw lines).
fn dechunk(mut raw: &str) -> (String, String) {
    let mut body = String::new();
    loop {
        let (line, rest) = raw.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return (body, rest.trim_end_matches("\r\n").to_string());
        }
        body.push_str(&rest[..size]);
        raw = &rest[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_responses_reuse_one_connection() {
    let up = Scripted::start(|_, _, h| echo_target(h)).await;
    let (addr, p) = proxy(&up);
    for i in 0..5 {
        assert_own_answer(addr, &format!("/r{i}"), &p).await;
    }
    assert_eq!(up.accepts(), 1);
    let got = up.got();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|g| g.conn == 0));
}

/// Several chunks, a chunk extension, uppercase hex and a trailer field.
const CHUNKED: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
    5;x=y\r\nhello\r\nA\r\n0123456789\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-checksum: abc\r\n\r\n";
/// The same without the trailer section.
const CHUNKED_NO_TRAILERS: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
    5;x=y\r\nhello\r\nA\r\n0123456789\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
const CHUNKED_BODY: &str = "hello0123456789abcdefghijklmnopqrstuvwxyz";

fn chunked_then_echo(head: &str) -> Reply {
    match target(head) {
        "/chunked" => Reply::bytes(CHUNKED),
        "/plain" => Reply::bytes(CHUNKED_NO_TRAILERS),
        _ => echo_target(head),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_with_extensions_is_decoded_and_its_connection_reused() {
    let up = Scripted::start(|_, _, h| chunked_then_echo(h)).await;
    let (addr, p) = proxy(&up);
    for _ in 0..2 {
        assert_eq!(get(addr, "/plain").await, (200, CHUNKED_BODY.to_string()));
        assert_own_answer(addr, "/next", &p).await;
    }
    assert_eq!(up.accepts(), 1, "{}", p.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_with_trailers_is_decoded_and_never_desyncs() {
    let up = Scripted::start(|_, _, h| chunked_then_echo(h)).await;
    let (addr, p) = proxy(&up);
    assert_eq!(get(addr, "/chunked").await, (200, CHUNKED_BODY.to_string()));
    assert_own_answer(addr, "/next", &p).await;

    // On the wire to an HTTP/1.1 client: chunked again, the same data.
    // The trailer section is dropped today, even for a client that sent
    // `TE: trailers` (see the ignored test below).
    for extra in ["TE: trailers\r\n", ""] {
        let (data, trailers) = chunked_on_the_wire(addr, extra);
        assert_eq!(data, CHUNKED_BODY);
        if extra.is_empty() {
            assert_eq!(trailers, "");
        }
        assert_own_answer(addr, "/after", &p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_is_reused_after_a_response_with_trailers() {
    let up = Scripted::start(|_, _, h| chunked_then_echo(h)).await;
    let (addr, p) = proxy(&up);
    assert_eq!(get(addr, "/chunked").await, (200, CHUNKED_BODY.to_string()));
    assert_own_answer(addr, "/next", &p).await;
    assert_eq!(up.accepts(), 1, "{}", p.stderr());
}

/// GET /chunked over raw HTTP/1.1 with `extra` header lines: the data and
/// the trailer section of the chunked answer.
fn chunked_on_the_wire(addr: SocketAddr, extra: &str) -> (String, String) {
    let raw = raw_get(addr, "/chunked", extra);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert_eq!(parse_status(head), Some(200), "{raw}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked"), "{raw}");
    assert!(!lower.contains("content-length"), "{raw}");
    let (data, trailers) = dechunk(body);
    (data, trailers.to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "today's HTTP/1.1 server side drops response trailers: the upstream's Trailer field is removed as hop-by-hop, and hyper's encoder sends only declared trailer fields"]
async fn chunked_response_trailers_reach_an_http11_client_that_accepts_them() {
    let up = Scripted::start(|_, _, h| chunked_then_echo(h)).await;
    let (addr, _p) = proxy(&up);
    let (data, trailers) = chunked_on_the_wire(addr, "TE: trailers\r\n");
    assert_eq!(data, CHUNKED_BODY);
    assert_eq!(trailers, "x-checksum: abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_trailers_reach_an_http2_client() {
    use http_body_util::{BodyExt, Empty};
    let up = Scripted::start(|_, _, h| chunked_then_echo(h)).await;
    let (addr, _p) = proxy(&up);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/chunked"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let collected = r.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(collected.to_bytes(), CHUNKED_BODY.as_bytes());
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc");
    assert_eq!(up.accepts(), 1);
}

/// `/gz` gets a body coded gzip, then chunked; anything else its target.
fn gzip_chunked_then_echo(head: &str) -> Reply {
    if target(head) == "/gz" {
        Reply::bytes(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8bab\r\n3\r\ncde\r\n0\r\n\r\n",
        )
    } else {
        echo_target(head)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_portico_does_not_decode_gets_502_and_a_new_connection() {
    // `gzip, chunked`: portico decodes only chunked; passing the body on
    // would hand the client gzip bytes as if they had no coding.
    let up = Scripted::start(|_, _, h| gzip_chunked_then_echo(h)).await;
    let (addr, p) = proxy(&up);
    let r = client()
        .get(format!("http://{addr}/gz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_own_answer(addr, "/next", &p).await;
    assert_eq!(up.accepts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_left_undecoded_is_not_passed_on_as_identity() {
    // Transfer codings are hop-by-hop: a proxy that does not decode gzip
    // either keeps it in the Transfer-Encoding it sends (HTTP/1.1 client)
    // or refuses the response.
    let up = Scripted::start(|_, _, h| gzip_chunked_then_echo(h)).await;
    let (addr, _p) = proxy(&up);
    let raw = raw_get(addr, "/gz", "");
    let head = raw.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(
        parse_status(&raw) == Some(502) || head.contains("transfer-encoding: gzip, chunked"),
        "{raw:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_body_arrives_whole_and_its_connection_is_not_reused() {
    let up = Scripted::start(|_, _, h| {
        if target(h) == "/eof" {
            Reply::bytes_then_close("HTTP/1.1 200 OK\r\n\r\nbody until the end")
        } else {
            echo_target(h)
        }
    })
    .await;
    let (addr, p) = proxy(&up);
    assert_eq!(
        get(addr, "/eof").await,
        (200, "body until the end".to_string())
    );
    assert_own_answer(addr, "/next", &p).await;
    assert_eq!(up.accepts(), 2);
}

/// Answers each request with `head` (a status line and fields, then the
/// request's target as a Content-Length body), keeping the socket open:
/// only portico's own reading of `head` may keep it from being reused;
/// asserts that it is not.
async fn assert_not_reused(head: &'static str) {
    let up = Scripted::start(move |_, _, h| {
        Reply::bytes(format!(
            "{head}Content-Length: {}\r\n\r\n{}",
            target(h).len(),
            target(h)
        ))
    })
    .await;
    let (addr, p) = proxy(&up);
    assert_own_answer(addr, "/one", &p).await;
    assert_own_answer(addr, "/two", &p).await;
    assert_eq!(up.accepts(), 2);
    assert!(up.got().iter().all(|g| g.nth == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_in_a_response_is_honoured() {
    assert_not_reused("HTTP/1.1 200 OK\r\nConnection: close\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_response_without_keepalive_is_not_reused() {
    assert_not_reused("HTTP/1.0 200 OK\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_with_content_length_has_no_body_on_the_wire() {
    let up = Scripted::start(|_, _, h| {
        if h.starts_with("HEAD ") {
            Reply::bytes("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        } else {
            echo_target(h)
        }
    })
    .await;
    let (addr, p) = proxy(&up);
    let r = client()
        .head(format!("http://{addr}/h"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "1000");
    assert_own_answer(addr, "/next", &p).await;
    assert_eq!(up.accepts(), 1);
    assert_eq!(up.got()[1].nth, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_204_and_304_keep_the_connection() {
    let up = Scripted::start(|_, _, h| match target(h) {
        "/204" => Reply::bytes("HTTP/1.1 204 No Content\r\n\r\n"),
        "/304" => Reply::bytes("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"),
        // A 304's Content-Length is the selected representation's: no body.
        "/304cl" => Reply::bytes("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
        _ => echo_target(h),
    })
    .await;
    let (addr, p) = proxy(&up);
    for (path, status) in [("/204", 204), ("/304", 304), ("/304cl", 304)] {
        assert_eq!(get(addr, path).await, (status, String::new()), "{path}");
        assert_own_answer(addr, &format!("{path}/next"), &p).await;
    }
    assert_eq!(up.accepts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_before_the_final_one_are_passed_over() {
    let up = Scripted::start(|_, _, h| {
        if target(h) == "/1xx" {
            Reply::bytes(
                "HTTP/1.1 100 Continue\r\n\r\n\
                 HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                 HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
            )
        } else {
            echo_target(h)
        }
    })
    .await;
    let (addr, p) = proxy(&up);
    assert_eq!(get(addr, "/1xx").await, (200, "final".to_string()));
    assert_own_answer(addr, "/next", &p).await;
    assert_eq!(up.accepts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_written_byte_by_byte_is_read_whole() {
    let up = Scripted::start(|_, _, h| Reply {
        steps: vec![Step::Dribble(
            format!(
                "HTTP/1.1 200 OK\r\nX-Slow: yes\r\nContent-Length: {}\r\n\r\n{}",
                target(h).len(),
                target(h)
            )
            .into_bytes(),
        )],
        skip_body: false,
    })
    .await;
    let (addr, p) = proxy(&up);
    let r = client()
        .get(format!("http://{addr}/dribbled"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-slow"], "yes");
    assert_eq!(r.text().await.unwrap(), "/dribbled");
    assert_own_answer(addr, "/next", &p).await;
    assert_eq!(up.accepts(), 1);
}

/// A body of `len` bytes that shows where each byte belongs.
fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 23) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_bodies_in_uneven_writes_arrive_whole_and_keep_the_connection() {
    // Around the sizes the reader sizes its buffers by: the first read
    // (8 KiB, head included), the rest of a body read at once when it is
    // at most 64 KiB, and larger bodies in parts. Each body comes in three
    // writes with pauses: the head with a first piece, then two more.
    const SIZES: [usize; 8] = [1, 8000, 8192, 8600, 65_536, 65_537, 70_000, 300_000];
    let up = Scripted::start(|_, _, h| {
        let len: usize = target(h).trim_start_matches('/').parse().unwrap_or(0);
        let body = patterned(len);
        let mut first = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        let (a, rest) = body.split_at(len.min(3000));
        let (b, c) = rest.split_at(rest.len() / 3);
        first.extend_from_slice(a);
        Reply {
            steps: vec![
                Step::Write(first),
                Step::Sleep(Duration::from_millis(20)),
                Step::Write(b.to_vec()),
                Step::Sleep(Duration::from_millis(20)),
                Step::Write(c.to_vec()),
            ],
            skip_body: false,
        }
    })
    .await;
    let (addr, p) = proxy(&up);
    let c = client();
    for len in SIZES {
        let r = c.get(format!("http://{addr}/{len}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{len}: {}", p.stderr());
        assert_eq!(r.headers()["content-length"], len.to_string().as_str());
        let got = r.bytes().await.unwrap();
        assert!(
            got[..] == patterned(len)[..],
            "{len}: a different body came ({} bytes)",
            got.len()
        );
    }
    assert_eq!(
        up.accepts(),
        1,
        "every exchange ended clean on one connection"
    );
}

const SMUGGLED: &str = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nSMUGGLE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_response_in_the_same_write_are_never_an_answer() {
    let up = Scripted::start(|_, _, h| {
        if target(h) == "/first" {
            Reply::bytes(format!("{}{SMUGGLED}", ok("first")))
        } else {
            echo_target(h)
        }
    })
    .await;
    let (addr, p) = proxy(&up);
    assert_eq!(get(addr, "/first").await, (200, "first".to_string()));
    for path in ["/second", "/third"] {
        assert_own_answer(addr, path, &p).await;
    }
    assert_eq!(up.accepts(), 2, "{}", p.stderr());
    assert_eq!(up.got()[1].conn, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_response_in_a_later_write_are_never_an_answer() {
    let up = Scripted::start(|_, _, h| {
        if target(h) == "/first" {
            Reply {
                steps: vec![
                    Step::Write(ok("first").into_bytes()),
                    Step::Sleep(Duration::from_millis(20)),
                    Step::Write(SMUGGLED.as_bytes().to_vec()),
                ],
                skip_body: false,
            }
        } else {
            echo_target(h)
        }
    })
    .await;
    let (addr, p) = proxy(&up);
    assert_eq!(get(addr, "/first").await, (200, "first".to_string()));
    // The stray bytes have arrived before the next request is sent.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_own_answer(addr, "/second", &p).await;
    assert_eq!(up.accepts(), 2, "{}", p.stderr());
}

/// Answers `bad` to `/bad` and its own target to anything else.
async fn bad_then_good(bad: &'static str) -> (Scripted, SocketAddr, Portico) {
    let up = Scripted::start(move |_, _, h| {
        if target(h) == "/bad" {
            Reply::bytes(bad)
        } else {
            echo_target(h)
        }
    })
    .await;
    let (addr, p) = proxy(&up);
    (up, addr, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_response_heads_get_502() {
    for bad in [
        "garbage\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nabc",
    ] {
        let (up, addr, p) = bad_then_good(bad).await;
        let (status, _) = get(addr, "/bad").await;
        assert_eq!(status, 502, "{bad:?}: {}", p.stderr());
        assert_own_answer(addr, "/next", &p).await;
        assert_eq!(up.accepts(), 2, "{bad:?}");
    }
}

/// A chunked response that also carries a Content-Length of `len` (the
/// chunked data is "hello"): read by Content-Length, the rest of the
/// chunks would be taken for the next answer.
fn chunked_and_length(len: usize) -> &'static str {
    Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        .into_boxed_str(),
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// GETs each of `paths` in turn on one keep-alive connection, each
/// request written once the previous answer (head and Content-Length or
/// chunked body) was read: the answers, as many as came before portico closed.
async fn on_one_connection(addr: SocketAddr, paths: &[&str]) -> Vec<String> {
    use support::raw::{content_length, fill, read_head};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    for path in paths {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        if s.write_all(req.as_bytes()).await.is_err() {
            break;
        }
        let read = tokio::time::timeout(Duration::from_secs(10), read_head(&mut s, &mut buf));
        let Some(end) = read.await.expect("no answer") else {
            break;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let n = if head.contains("transfer-encoding: chunked") {
            // Up to the last chunk (none of these bodies has trailers).
            loop {
                if let Some(i) = find(&buf[end..], b"0\r\n\r\n") {
                    break end + i + 5;
                }
                if !fill(&mut s, &mut buf).await {
                    break buf.len();
                }
            }
        } else {
            let len = content_length(&head);
            while buf.len() < end + len && fill(&mut s, &mut buf).await {}
            (end + len).min(buf.len())
        };
        answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        buf.drain(..n);
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_with_content_length_never_desyncs_either_side() {
    for len in [3, 6] {
        let (_up, addr, p) = bad_then_good(chunked_and_length(len)).await;
        // Upstream side: the next requests get their own answers.
        for path in ["/next", "/again"] {
            assert_own_answer(addr, path, &p).await;
        }
        // Client side: on the same client connection, the next answer (if
        // the connection is still open) is the upstream's answer to it,
        // not the rest of the chunks.
        let answers = on_one_connection(addr, &["/bad", "/next"]).await;
        assert_eq!(parse_status(&answers[0]), Some(200), "{answers:?}");
        if let Some(next) = answers.get(1) {
            assert_eq!(parse_status(next), Some(200), "{answers:?}");
            assert!(next.ends_with("\r\n\r\n/next"), "{answers:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_with_content_length_is_framed_by_chunks_and_not_reused() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and an
    // intermediary removes the Content-Length before forwarding; §6.1: the
    // connection is closed after such a message.
    for len in [3, 6] {
        let (up, addr, p) = bad_then_good(chunked_and_length(len)).await;
        let raw = raw_get(addr, "/bad", "");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert_eq!(parse_status(head), Some(200), "{raw}");
        assert!(
            !head.to_ascii_lowercase().contains("content-length"),
            "{raw}"
        );
        assert_eq!(dechunk(body).0, "hello");
        assert_own_answer(addr, "/next", &p).await;
        assert_eq!(up.accepts(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_is_not_completed_to_the_client() {
    let up = Scripted::start(|_, _, h| {
        if target(h) == "/short" {
            Reply::bytes_then_close("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        } else {
            echo_target(h)
        }
    })
    .await;
    let (addr, p) = proxy(&up);
    // A keep-alive request: portico closes the connection only because the
    // response it started cannot be completed.
    let raw = raw_exchange(
        addr,
        b"GET /short HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_secs(10),
    )
    .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect(&raw);
    assert_eq!(parse_status(head), Some(200), "{raw}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 100"),
        "{raw}"
    );
    assert!(body.len() < 100, "{raw}");
    assert_own_answer(addr, "/next", &p).await;
    assert_eq!(up.accepts(), 2);
}

/// Answers with the request's target after `before`, keeps the
/// connection open for `after`, then closes it while it is idle.
fn answer_then_close(head: &str, before: Duration, after: Duration) -> Reply {
    Reply {
        steps: vec![
            Step::Sleep(before),
            Step::Write(ok(target(head)).into_bytes()),
            Step::Sleep(after),
            Step::Close,
        ],
        skip_body: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_after_the_upstream_closed_its_idle_connection_arrives_once() {
    let up = Scripted::start(|conn, _, h| {
        if conn == 0 {
            answer_then_close(h, Duration::ZERO, Duration::from_millis(50))
        } else {
            echo_target(h)
        }
    })
    .await;
    let (addr, p) = proxy(&up);
    assert_own_answer(addr, "/first", &p).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = client()
        .post(format!("http://{addr}/post"))
        .body("the one and only body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", p.stderr());
    assert_eq!(r.text().await.unwrap(), "/post");
    let posts: Vec<_> = up
        .got()
        .into_iter()
        .filter(|g| g.head.starts_with("POST "))
        .collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].body, b"the one and only body");
    assert_eq!(posts[0].conn, 1);
}

/// An upstream that answers a POST with 413 and `Connection: close` as
/// soon as it has read the head, and closes without reading the body.
async fn early_413_upstream() -> Scripted {
    Scripted::start(|_, _, h| {
        if h.starts_with("POST ") {
            Reply {
                steps: vec![
                    Step::Write(
                        b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo big!"
                            .to_vec(),
                    ),
                    Step::Close,
                ],
                skip_body: true,
            }
        } else {
            echo_target(h)
        }
    })
    .await
}

/// POSTs a 5 MiB Content-Length body, written in 64 KiB pieces with short
/// pauses, and reads what portico answers while the body is still being
/// written, up to the end of a Content-Length body or a close.
async fn slow_large_post(addr: SocketAddr) -> String {
    const LEN: usize = 5 * 1024 * 1024;
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let head =
            format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {LEN}\r\n\r\n");
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..LEN / chunk.len() {
            wr.write_all(&chunk).await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut answer = Vec::new();
    let read = async {
        let mut piece = [0u8; 4096];
        loop {
            if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&answer[..end + 4]).into_owned();
                if answer.len() >= end + 4 + support::raw::content_length(&head) {
                    break;
                }
            }
            match rd.read(&mut piece).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&piece[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no answer");
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_before_the_body_is_read_is_a_whole_answer() {
    // Today the 413 reaches the client only when it is read before the
    // failed body write ends the exchange; otherwise the answer is 502 (see
    // the ignored test below). Either way: one whole answer, and the pool
    // carries on.
    let up = early_413_upstream().await;
    let (addr, p) = proxy(&up);
    let answer = slow_large_post(addr).await;
    match parse_status(&answer) {
        Some(413) => assert!(answer.ends_with("\r\n\r\ntoo big!"), "{answer}"),
        Some(502) => {}
        _ => panic!("{answer}: {}", p.stderr()),
    }
    assert_own_answer(addr, "/next", &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_413_before_the_body_is_read_reaches_the_client() {
    let up = early_413_upstream().await;
    let (addr, p) = proxy(&up);
    let answer = slow_large_post(addr).await;
    assert_eq!(parse_status(&answer), Some(413), "{answer}: {}", p.stderr());
    assert!(answer.ends_with("\r\n\r\ntoo big!"), "{answer}");
}

/// A response head with one field value of `kib` KiB.
fn big_head(kib: usize) -> &'static str {
    Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "a".repeat(kib * 1024)
        )
        .into_boxed_str(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_of_a_mebibyte_gets_502() {
    let (up, addr, p) = bad_then_good(big_head(1024)).await;
    let (status, _) = get(addr, "/bad").await;
    assert_eq!(status, 502, "{}", p.stderr());
    assert_own_answer(addr, "/next", &p).await;
    assert_eq!(up.accepts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_over_64_kib_gets_502() {
    let (up, addr, p) = bad_then_good(big_head(70)).await;
    let (status, _) = get(addr, "/bad").await;
    assert_eq!(status, 502, "{}", p.stderr());
    assert_own_answer(addr, "/next", &p).await;
    assert_eq!(up.accepts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_line_without_a_reason_phrase_is_fine() {
    for bad in [
        "HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok",
    ] {
        let (up, addr, p) = bad_then_good(bad).await;
        assert_eq!(get(addr, "/bad").await, (200, "ok".to_string()), "{bad:?}");
        assert_own_answer(addr, "/next", &p).await;
        assert_eq!(up.accepts(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_obs_folded_response_header_gets_502() {
    // RFC 9112 §5.2: a proxy either rejects obs-fold with 502 or unfolds
    // it; portico rejects it.
    let (up, addr, p) =
        bad_then_good("HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok").await;
    assert_eq!(get(addr, "/bad").await.0, 502, "{}", p.stderr());
    assert_own_answer(addr, "/next", &p).await;
    assert_eq!(up.accepts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_chunk_size_cuts_the_response_short() {
    let (up, addr, p) = bad_then_good(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
    )
    .await;
    let r = client()
        .get(format!("http://{addr}/bad"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "the body was completed");
    assert_own_answer(addr, "/next", &p).await;
    assert_eq!(up.accepts(), 2);
}

/// portico in front of `up` with passive ejection on; the admin address
/// is the process's.
fn proxy_ejecting(up: &Scripted) -> (SocketAddr, Portico) {
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "{l}\n[[route]]\nname = \"r\"\nupstream = \"u\"\ntimeout = \"10s\"\n\
         [upstream.u]\nservers = [\"{}\"]\npassive_eject = \"30s\"\n",
        up.addr
    ));
    (addr, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_closes_on_an_upload_is_not_ejected_for_it() {
    // The server reads the head of a large upload and closes without an
    // answer (as servers do to uploads they refuse): the failed exchange
    // is a 502, but not a server that is down. Counted as one, any client
    // could take every server out of rotation with a few uploads.
    let up = Scripted::start(|_, _, h| {
        if h.starts_with("POST ") {
            Reply {
                steps: vec![Step::Close],
                skip_body: true,
            }
        } else {
            echo_target(h)
        }
    })
    .await;
    let (addr, p) = proxy_ejecting(&up);
    let answer = slow_large_post(addr).await;
    assert_eq!(parse_status(&answer), Some(502), "{answer}: {}", p.stderr());
    let m = support::prom::scrape(p.admin).await;
    let server = up.addr.to_string();
    let labels = [("upstream", "u"), ("server", server.as_str())];
    assert_eq!(
        m.value_or_zero("portico_upstream_ejections_total", &labels),
        0.0
    );
    assert_own_answer(addr, "/next", &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_connections_closed_by_the_upstream_are_all_seen_closed() {
    // 150 pooled connections, every one closed by the server while idle;
    // a POST (not retry-safe) then must go on a new connection. Checking
    // each idle connection for a close must not stop believing what it
    // sees after a number of them (tokio's task budget).
    const N: usize = 150;
    let up = Scripted::start(|conn, _, h| {
        if conn < N {
            answer_then_close(h, Duration::from_millis(300), Duration::from_millis(100))
        } else {
            echo_target(h)
        }
    })
    .await;
    let (addr, p) = proxy(&up);
    let c = client();
    let gets = (0..N).map(|i| {
        let c = c.clone();
        async move {
            let r = c.get(format!("http://{addr}/g{i}")).send().await.unwrap();
            r.status().as_u16()
        }
    });
    let statuses = futures_util::future::join_all(gets).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(up.accepts(), N);
    // Every pooled connection is closed by now.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = c
        .post(format!("http://{addr}/post"))
        .body("once")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", p.stderr());
    assert_eq!(r.text().await.unwrap(), "/post");
}
