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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_ends_the_offending_connection_only() {
    let b = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start(&format!(
        "[server]\naccess_log = \"off\"\n{l}\n[[route]]\nname = \"r\"\nupstream = \"a\"\n{}",
        upstream_toml("a", &[&b], "")
    ));
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
