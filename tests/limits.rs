//! Connection-level limits and HTTP/2 abuse defences.

mod support;

use std::io::{Read, Write};
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_pauses_accepting_without_hurting_open_connections() {
    let b = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "max_connections = 2\n");
    let _p = Portico::start(&format!(
        "{l}\n[[route]]\nname = \"r\"\nupstream = \"a\"\n{}",
        upstream_toml("a", &[&b], "")
    ));
    let mut first = std::net::TcpStream::connect(addr).unwrap();
    let second = std::net::TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    // A third connection completes in the kernel's backlog but is not served.
    let mut third = std::net::TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    third
        .write_all(b"GET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        third.read(&mut buf).is_err(),
        "third connection was served beyond max_connections"
    );

    // The open ones are unhurt.
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    first
        .write_all(b"GET /first HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    first.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    drop(first);
    drop(second);

    // Once one closes, the waiting connection is accepted and served.
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = String::new();
    third.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// portico with a plain listener (HTTP/1.1 and h2c) and one route to `b`.
fn start_one_route(b: &Backend) -> (std::net::SocketAddr, Portico) {
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "[server]\naccess_log = \"off\"\n{l}\n[[route]]\nname = \"r\"\nupstream = \"a\"\n{}",
        upstream_toml("a", &[b], "")
    ));
    (addr, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_ends_the_offending_connection_only() {
    let b = Backend::start("a").await;
    let (addr, _p) = start_one_route(&b);
    // A well-behaved HTTP/2 connection, open across the attack.
    let good = h2c_client();
    assert_eq!(
        good.get(format!("http://{addr}/before"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let mut sent = 0;
    for i in 0..5000 {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/slow/1000?{i}"))
            .body(())
            .unwrap();
        match send.send_request(req, false) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
        if i % 50 == 0 {
            tokio::task::yield_now().await;
            if send.clone().ready().await.is_err() {
                break;
            }
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn_task).await;
    let err = match ended {
        Ok(Ok(Err(e))) => e,
        other => panic!(
            "the flooding connection was not ended with an error after {sent} resets: {other:?}"
        ),
    };
    // Either the GOAWAY is read, or the client, still writing its flood,
    // finds the connection already closed behind it.
    if err.is_go_away() {
        assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
    } else {
        assert!(
            err.is_io(),
            "expected GOAWAY or a closed connection, got {err:?}"
        );
    }
    assert!(sent < 5000, "all {sent} resets were accepted");

    // Others are unhurt.
    assert_eq!(
        good.get(format!("http://{addr}/after"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// One HTTP/2 frame: header and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The complete frames in `bytes`: (type, stream id, payload).
fn h2_frames(bytes: &[u8]) -> Vec<(u8, u32, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let h = &bytes[at..at + 9];
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        if at + 9 + len > bytes.len() {
            break;
        }
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        out.push((h[3], stream, &bytes[at + 9..at + 9 + len]));
        at += 9 + len;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_ping_and_settings_floods_get_goaway_enhance_your_calm() {
    let b = Backend::start("a").await;
    let (addr, _p) = start_one_route(&b);
    let good = h2c_client();
    let ok = |r: reqwest::Response| r.status() == 200;
    assert!(ok(good
        .get(format!("http://{addr}/before"))
        .send()
        .await
        .unwrap()));

    // A moderate number of PINGs is fine.
    let mut calm = std::net::TcpStream::connect(addr).unwrap();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(0x4, 0, 0, &[]));
    for _ in 0..100 {
        bytes.extend(h2_frame(0x6, 0, 0, &[7; 8]));
    }
    calm.write_all(&bytes).unwrap();

    for (kind, payload) in [(0x6u8, &[1u8; 8][..]), (0x4, &[][..])] {
        // SETTINGS + 500 frames of `kind`: the last one crosses the limit
        // (500 in 10 s), and nothing is sent after it.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(h2_frame(0x4, 0, 0, &[]));
        for _ in 0..500 {
            bytes.extend(h2_frame(kind, 0, 0, payload));
        }
        s.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got); // ends: the connection is closed
        let goaway = h2_frames(&got)
            .into_iter()
            .filter(|(kind, _, p)| *kind == 0x7 && p.len() >= 8)
            .map(|(_, _, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
            .next_back();
        assert_eq!(
            goaway,
            Some(0xb),
            "no GOAWAY(ENHANCE_YOUR_CALM) for frame type {kind}"
        );
    }

    // The calm connection and others are unhurt.
    let mut ping = h2_frame(0x6, 0, 0, &[9; 8]);
    ping.extend(h2_frame(0x1, 0x5, 1, &[0x82, 0x86, 0x84, 0x41, 0x01, b'a']));
    calm.write_all(&ping).unwrap();
    calm.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Its answer: a HEADERS frame on stream 1, after all it was sent before.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let answered = loop {
        if h2_frames(&got)
            .iter()
            .any(|(kind, stream, _)| *kind == 0x1 && *stream == 1)
        {
            break true;
        }
        match calm.read(&mut buf) {
            Ok(0) | Err(_) => break false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    assert!(answered, "the calm connection got no answer");
    assert!(ok(good
        .get(format!("http://{addr}/after"))
        .send()
        .await
        .unwrap()));
}
