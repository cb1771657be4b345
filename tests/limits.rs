//! Connection-level limits and HTTP/2 abuse defences.

mod support;

use std::io::{Read, Write};
use std::time::Duration;
use support::h2frames::*;
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

/// HPACK for `GET http://127.0.0.1/<path>`: indexed :method GET and
/// :scheme http, literal :path and :authority (indexed names, no indexing).
fn h2_get(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"127.0.0.1");
    block
}

/// Reads from `s` into `buf` until `done` holds for the frames read so far
/// (panics on EOF or a read error).
fn h2_read_until(
    s: &mut std::net::TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[(u8, u32, &[u8])]) -> bool,
) {
    let mut chunk = [0u8; 16 * 1024];
    while !done(&h2_frames(buf)) {
        let n = s.read(&mut chunk).expect("read from portico");
        assert!(n > 0, "connection closed; frames: {:?}", h2_frames(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
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

    // The attacker opens a stream, waits until portico has taken it (the
    // request reached the upstream, which holds it unanswered), then resets
    // it: hyper's own limit on streams reset before they were accepted
    // never sees these, whatever the timing.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend(h2_frame(0x4, 0, 0, &[]));
    s.write_all(&preface).unwrap();
    let open_and_reset = |s: &mut std::net::TcpStream, id: u32| {
        let before = b.requests.load(std::sync::atomic::Ordering::SeqCst);
        s.write_all(&h2_frame(
            0x1,
            0x5,
            id,
            &h2_get(&format!("/slow/600000?{id}")),
        ))
        .unwrap();
        while b.requests.load(std::sync::atomic::Ordering::SeqCst) == before {
            std::thread::sleep(Duration::from_millis(2));
        }
        // RST_STREAM(CANCEL)
        s.write_all(&h2_frame(0x3, 0, id, &8u32.to_be_bytes()))
            .unwrap();
    };
    // 100 premature resets are tolerated: the connection still serves.
    for i in 0..100 {
        open_and_reset(&mut s, 2 * i + 1);
    }
    s.write_all(&h2_frame(0x1, 0x5, 201, &h2_get("/fine")))
        .unwrap();
    let mut buf = Vec::new();
    h2_read_until(&mut s, &mut buf, |frames| {
        frames
            .iter()
            .any(|&(kind, id, p)| kind == 0x1 && id == 201 && p.first() == Some(&0x88))
    });
    // The 101st (more than half of the 101 streams opened) ends it.
    open_and_reset(&mut s, 203);
    h2_read_until(&mut s, &mut buf, |frames| {
        frames.iter().any(|&(kind, _, _)| kind == 0x7)
    });
    let frames = h2_frames(&buf);
    let goaway = frames.iter().find(|f| f.0 == 0x7).unwrap().2;
    assert_eq!(u32::from_be_bytes(goaway[0..4].try_into().unwrap()), 203);
    assert_eq!(
        u32::from_be_bytes(goaway[4..8].try_into().unwrap()),
        0xb,
        "GOAWAY(ENHANCE_YOUR_CALM)"
    );
    // And the connection is closed.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), 103);

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
