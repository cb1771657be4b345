//! How portico's HTTP/2 answers are HPACK-encoded (vendor/h2/PORTICO.md):
//! `date` goes out as a literal that is never added to the dynamic table,
//! since each second brings a new value that would only lengthen the
//! table's chain of `date` entries and push others out.

mod support;

use std::time::Duration;
use support::h2frames::{h2_frame, h2_frames, preface_then};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HEADERS payload of stream `stream`'s answer, read from `s` (frames
/// of other streams and connection frames are skipped).
async fn answer_block(s: &mut TcpStream, buf: &mut Vec<u8>, stream: u32) -> Vec<u8> {
    let go = async {
        loop {
            let mut at = 0;
            let mut block = None;
            for (kind, id, payload) in h2_frames(buf) {
                assert_ne!(kind, 7, "GOAWAY");
                at += 9 + payload.len();
                if id == stream && kind == 1 {
                    block = Some(payload.to_vec());
                    break;
                }
            }
            if let Some(b) = block {
                buf.drain(..at);
                return b;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before the answer");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), go)
        .await
        .expect("answer in time")
}

#[tokio::test]
async fn date_is_never_added_to_the_dynamic_table() {
    let (addr, l) = listener_toml("web", "");
    let cfg = format!(
        "{l}\n[[route]]\nname = \"r\"\nmatch.path_prefix = \"/\"\nrespond = {{ status = 200, body = \"ok\" }}\n"
    );
    let _p = Portico::start(&cfg);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // GET http://example.test/ ; :authority as a literal without indexing.
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 12];
    block.extend_from_slice(b"example.test");
    s.write_all(&preface_then(&h2_frame(1, 0x5, 1, &block)))
        .await
        .expect("write");
    let mut buf = Vec::new();
    for stream in [1u32, 3, 5] {
        if stream > 1 {
            s.write_all(&h2_frame(1, 0x5, stream, &block))
                .await
                .expect("write");
        }
        let answer = answer_block(&mut s, &mut buf, stream).await;
        // `date` (static name 33) as a literal without indexing: 0000 then
        // the name index on 4 bits, 15 + 18. Indexed, it would be 0x61
        // (01 + 33) the first time and a one-byte reference after.
        assert!(
            answer.windows(2).any(|w| w == [0x0f, 0x12]),
            "stream {stream}: no unindexed date in {answer:02x?}"
        );
    }
}
