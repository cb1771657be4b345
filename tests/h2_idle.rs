//! HTTP/2 connections give their frame buffers back while idle (portico's
//! patch of h2, vendor/h2/PORTICO.md): the read, write and Huffman buffers
//! are released when drained and allocated again when traffic resumes.
//! These tests go idle between requests on one connection and check that
//! nothing of the connection's state went with the buffers: HPACK table
//! entries decoded from a released buffer, frames cut across reads, and
//! large answers written after a release.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::h2frames::{h2_frame, h2_frames, preface_then};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough for a connection to read nothing and release its buffers.
const IDLE: Duration = Duration::from_millis(200);

fn start(b: &Backend) -> (SocketAddr, Portico) {
    let (addr, l) = listener_toml("web", "");
    let cfg = format!(
        "{l}\n[[route]]\nname = \"all\"\nupstream = \"a\"\n{}",
        upstream_toml("a", &[b], "")
    );
    (addr, Portico::start(&cfg))
}

/// HPACK string literal, not Huffman-coded (lengths under 127).
fn hpack_str(s: &str) -> Vec<u8> {
    let mut v = vec![u8::try_from(s.len()).expect("short string")];
    v.extend_from_slice(s.as_bytes());
    v
}

/// A GET header block that puts three entries into the peer's dynamic
/// table (literals with incremental indexing, RFC 7541 6.2.1): `:path`
/// (static name 4), `:authority` (static name 1) and `name: value` (a new
/// name). Afterwards 62 is `name`, 63 `:authority`, 64 `:path`.
fn indexing_block(path: &str, authority: &str, name: &str, value: &str) -> Vec<u8> {
    // :method GET (2), :scheme http (6).
    let mut b = vec![0x82, 0x86, 0x44];
    b.extend(hpack_str(path));
    b.push(0x41);
    b.extend(hpack_str(authority));
    b.push(0x40);
    b.extend(hpack_str(name));
    b.extend(hpack_str(value));
    b
}

/// Reads frames from `s` into `buf` until stream `stream` ends (a HEADERS
/// or DATA frame with END_STREAM); fails on GOAWAY or RST_STREAM.
async fn read_until_end(s: &mut TcpStream, buf: &mut Vec<u8>, stream: u32) {
    let go = async {
        loop {
            let mut at = 0;
            for (kind, id, payload) in h2_frames(buf) {
                assert_ne!(kind, 7, "GOAWAY: {payload:?}");
                assert!(kind != 3 || id != stream, "stream {stream} reset");
                let flags = buf[at + 4];
                at += 9 + payload.len();
                if id == stream && (kind == 0 || kind == 1) && flags & 1 == 1 {
                    buf.drain(..at);
                    return;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed before stream {stream} ended");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), go)
        .await
        .expect("stream ended in time");
}

/// The attacker's-eye view of the HPACK case: the first request puts
/// `:authority`, `:path` and a custom header into the decoder's dynamic
/// table as literals whose bytes sit in the connection's read buffer. The
/// connection idles (the buffer is released), then the second request
/// names those entries by index only. The upstream must see exactly the
/// values of the first request.
#[tokio::test]
async fn table_entries_outlive_the_released_read_buffer() {
    let backend = Backend::start("a").await;
    let (addr, _p) = start(&backend);
    let mut s = TcpStream::connect(addr).await.expect("connect");

    let first = indexing_block("/first", "example.test", "x-tenant", "blue");
    s.write_all(&preface_then(&h2_frame(1, 0x5, 1, &first)))
        .await
        .expect("write");
    let mut buf = Vec::new();
    read_until_end(&mut s, &mut buf, 1).await;
    let seen = backend.last_seen();
    assert_eq!(seen.uri, "/first");
    assert_eq!(seen.headers["x-tenant"], "blue");

    tokio::time::sleep(IDLE).await;

    // Dynamic table now: 62 x-tenant: blue, 63 :authority, 64 :path /first.
    // :authority and x-tenant by index only, :path /second without
    // indexing (pseudo-headers first).
    let mut second = vec![0x82, 0x86, 0xbf, 0x04];
    second.extend(hpack_str("/second"));
    second.push(0xbe);
    let mut bytes = h2_frame(4, 1, 0, &[]); // SETTINGS ACK
    bytes.extend(h2_frame(1, 0x5, 3, &second));
    s.write_all(&bytes).await.expect("write");
    read_until_end(&mut s, &mut buf, 3).await;
    let seen = backend.last_seen();
    assert_eq!(seen.uri, "/second");
    assert_eq!(seen.headers["host"], "example.test");
    assert_eq!(seen.headers["x-tenant"], "blue");

    tokio::time::sleep(IDLE).await;

    // And the :path entry (64) by index, once more after idling.
    let third = [0x82, 0x86, 0xc0, 0xbf, 0xbe];
    s.write_all(&h2_frame(1, 0x5, 5, &third))
        .await
        .expect("write");
    read_until_end(&mut s, &mut buf, 5).await;
    let seen = backend.last_seen();
    assert_eq!(seen.uri, "/first");
    assert_eq!(seen.headers["host"], "example.test");
    assert_eq!(backend.request_count(), 3);
}

/// A frame cut across reads with pauses between the pieces: the read
/// buffer holds the partial frame and is not released under it.
#[tokio::test]
async fn a_frame_in_pieces_across_pauses_is_read_whole() {
    let backend = Backend::start("a").await;
    let (addr, _p) = start(&backend);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let block = indexing_block("/pieces", "example.test", "x-long", &"v".repeat(100));
    let bytes = preface_then(&h2_frame(1, 0x5, 1, &block));
    // Preface and SETTINGS, then the HEADERS frame in three pieces: inside
    // its 9-byte head, then inside its payload, then the rest.
    let headers_at = 24 + 9;
    let cuts = [headers_at, headers_at + 4, headers_at + 40, bytes.len()];
    let mut from = 0;
    for to in cuts {
        s.write_all(&bytes[from..to]).await.expect("write");
        from = to;
        tokio::time::sleep(IDLE).await;
    }
    let mut buf = Vec::new();
    read_until_end(&mut s, &mut buf, 1).await;
    let seen = backend.last_seen();
    assert_eq!(seen.uri, "/pieces");
    assert_eq!(seen.headers["x-long"], "v".repeat(100).as_str());
}

/// A real h2 client (Huffman-coded, indexed headers) over one connection
/// with idle gaps: small answers, a 1 MiB answer (more than the 16 KiB
/// write buffer, written after it was released) and an upload sent in
/// pieces with pauses between them.
#[tokio::test]
async fn one_connection_idling_between_requests_keeps_every_byte() {
    use futures_util::StreamExt;
    use sha2::Digest;
    let backend = Backend::start("a").await;
    let (addr, _p) = start(&backend);
    let c = h2c_client();
    let token = "Bearer ".to_string() + &"abcdefghij".repeat(30);
    for i in 0..4 {
        let r = c
            .get(format!("http://{addr}/round/{i}"))
            .header("x-request-kind", "idle-round-trip")
            .header("authorization", &token)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), http::Version::HTTP_2);
        assert_eq!(r.text().await.expect("body"), format!("a GET /round/{i}"));
        let seen = backend.last_seen();
        assert_eq!(seen.headers["x-request-kind"], "idle-round-trip");
        assert_eq!(seen.headers["authorization"], token.as_str());
        tokio::time::sleep(IDLE).await;
    }

    let r = c
        .get(format!("http://{addr}/download/1048576"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").len(), 1_048_576);
    tokio::time::sleep(IDLE).await;

    let pieces: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'a' + i; 20_000]).collect();
    let whole = pieces.concat();
    let stream = futures_util::stream::iter(pieces).then(|p| async move {
        tokio::time::sleep(IDLE).await;
        Ok::<_, std::io::Error>(p)
    });
    let r = c
        .post(format!("http://{addr}/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.expect("body"),
        format!("{} {}", whole.len(), hex(&sha2::Sha256::digest(&whole)))
    );
    assert_eq!(backend.request_count(), 6);
}

/// A header block cut between HEADERS and CONTINUATION, the connection
/// idle in between (its buffers released under the pending block), with a
/// literal split across the two frames; a later request names the entry
/// it made by index.
#[tokio::test]
async fn a_header_block_continued_after_idling_is_decoded_whole() {
    let backend = Backend::start("a").await;
    let (addr, _p) = start(&backend);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let block = indexing_block("/continued", "example.test", "x-region", "north-east-1");
    // Cut inside the value of x-region; the HEADERS frame has END_STREAM
    // only: the block goes on in a CONTINUATION.
    let cut = block.len() - 5;
    s.write_all(&preface_then(&h2_frame(1, 0x1, 1, &block[..cut])))
        .await
        .expect("write");
    tokio::time::sleep(IDLE).await;
    s.write_all(&h2_frame(9, 0x4, 1, &block[cut..])) // CONTINUATION, END_HEADERS
        .await
        .expect("write");
    let mut buf = Vec::new();
    read_until_end(&mut s, &mut buf, 1).await;
    let seen = backend.last_seen();
    assert_eq!(seen.uri, "/continued");
    assert_eq!(seen.headers["x-region"], "north-east-1");

    tokio::time::sleep(IDLE).await;
    // 62 x-region, 63 :authority, 64 :path.
    let mut bytes = h2_frame(4, 1, 0, &[]);
    bytes.extend(h2_frame(1, 0x5, 3, &[0x82, 0x86, 0xc0, 0xbf, 0xbe]));
    s.write_all(&bytes).await.expect("write");
    read_until_end(&mut s, &mut buf, 3).await;
    let seen = backend.last_seen();
    assert_eq!(seen.uri, "/continued");
    assert_eq!(seen.headers["host"], "example.test");
    assert_eq!(seen.headers["x-region"], "north-east-1");
    assert_eq!(backend.request_count(), 2);
}

/// portico's own HTTP/2 upstream connection goes idle between requests
/// (h2's client side has the same buffers): every request after an idle
/// gap arrives whole, on the one upstream connection.
#[tokio::test]
async fn an_idle_http2_upstream_connection_is_reused_whole() {
    let backend = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "");
    let cfg = format!(
        "{l}\n[[route]]\nname = \"all\"\nupstream = \"a\"\n{}",
        upstream_toml("a", &[&backend], "protocol = \"http2\"")
    );
    let _p = Portico::start(&cfg);
    let c = client();
    for i in 0..3 {
        let r = c
            .get(format!("http://{addr}/up/{i}"))
            .header("x-tenant", "green")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        // Over HTTP/2 the upstream sees the absolute form (:scheme,
        // :authority, :path).
        let body = r.text().await.expect("body");
        assert!(body.ends_with(&format!("/up/{i}")), "{body}");
        let seen = backend.last_seen();
        assert_eq!(seen.version, http::Version::HTTP_2);
        assert_eq!(seen.headers["x-tenant"], "green");
        tokio::time::sleep(IDLE).await;
    }
    let r = c
        .get(format!("http://{addr}/download/300000"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.bytes().await.expect("body").len(), 300_000);
    assert_eq!(backend.request_count(), 4);
    assert_eq!(backend.accepts.load(std::sync::atomic::Ordering::SeqCst), 1);
}
