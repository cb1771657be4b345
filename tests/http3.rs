//! HTTP/3 over QUIC through the one pipeline: requests and bodies, the
//! proxy's own answers (404, 431, 425), Alt-Svc on the TCP side, 0-RTT,
//! graceful shutdown, reloads, connection migration, Retry near the
//! connection limit.

mod support;

use bytes::Bytes;
use sha2::Digest;
use std::net::SocketAddr;
use std::time::Duration;
use support::http3::*;
use support::*;

/// A TLS listener with http3 (and the extra lines), one route "all" to the
/// backend pool "app", and whatever `extra` adds. Returns the config.
fn h3_config(addr_line: &str, listener_extra: &str, backend: &Backend, extra: &str) -> String {
    format!(
        "{addr_line}protocols = [\"http1\", \"http2\", \"http3\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n{listener_extra}\n{extra}\n[[route]]\nname = \"all\"\nmatch.path_prefix = \"/\"\nupstream = \"app\"\n{}",
        upstream_toml("app", &[backend], "")
    )
}

/// Starts portico with an http3 listener "web" on a free port.
fn start(backend: &Backend, listener_extra: &str, extra: &str) -> (Portico, SocketAddr, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start_in(dir, &h3_config(&l, listener_extra, backend, extra));
    (p, addr, pki)
}

fn sha_hex(b: &[u8]) -> String {
    hex(&sha2::Sha256::digest(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_ten_mib_post_go_through_the_pipeline() {
    let b = Backend::start("a").await;
    let (_p, addr, pki) = start(&b, "", "");
    let client = H3Client::new(&pki, false);
    let mut c = client.connect(addr).await.unwrap();

    let r = c.get("/hello?x=1").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "a GET /hello?x=1");
    assert_eq!(r.headers["x-backend"], "a");
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(!id.is_empty());
    // No connection-specific fields in HTTP/3, and no Alt-Svc on h3 itself.
    assert!(r.headers.get("connection").is_none());
    let seen = b.last_seen();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["host"], "localhost");
    assert_eq!(seen.headers["x-request-id"].to_str().unwrap(), id);
    assert!(seen.headers.get("early-data").is_none());

    // 10 MiB up, checked by hash at the backend.
    let body: Vec<u8> = (0..10u32 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let want = format!("{} {}", body.len(), sha_hex(&body));
    let r = c
        .request(request("POST", "/upload"), Bytes::from(body))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), want);

    // And 10 MiB down on the same connection.
    let r = c.get("/download/10485760").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 10 * 1024 * 1024);
    assert!(r.body.iter().all(|&x| x == b'x'));

    // A streamed echo keeps the body intact.
    let r = c
        .request(request("PUT", "/echo"), Bytes::from_static(b"ping pong"))
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ping pong"));
    c.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_answers_404_and_431_over_h3() {
    let b = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml("web", "");
    let cfg = format!(
        "{l}protocols = [\"http3\", \"http1\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\nmax_header_bytes = 4096\n[[route]]\nname = \"app\"\nmatch.path_prefix = \"/app/\"\nupstream = \"app\"\n{}",
        upstream_toml("app", &[&b], "")
    );
    let p = Portico::start_in(dir, &cfg);
    let client = H3Client::new(&pki, false);
    let mut c = client.connect(addr).await.unwrap();

    let r = c.get("/nope").await.unwrap();
    assert_eq!(r.status, 404);
    assert!(r.headers.contains_key("x-request-id"));
    assert!(r.text().starts_with("404 "));

    // Names + values over max_header_bytes (but under the advertised field
    // section size): the pipeline's 431, with a request id.
    let mut req = request("GET", "/app/x");
    req.headers_mut()
        .insert("x-big", "v".repeat(5000).parse().unwrap());
    let r = c.request(req, Bytes::new()).await.unwrap();
    assert_eq!(r.status, 431);
    assert!(r.headers.contains_key("x-request-id"));
    assert!(r.headers.get("connection").is_none());
    assert_eq!(b.request_count(), 0);

    // The connection is still good.
    let r = c.get("/app/ok").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "a GET /app/ok"));

    // The access log has the h3 requests.
    c.close();
    drop(c);
    let log = wait_for(|| {
        let out = p.stdout();
        (out.matches("HTTP/3").count() >= 3).then_some(out)
    })
    .await;
    assert!(log.contains("\"status\":404"), "{log}");
    assert!(log.contains("\"status\":431"), "{log}");
}

/// Polls `f` every 50 ms for up to 10 s.
async fn wait_for_async<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached in 10 s");
}

/// Polls `f` every 20 ms for up to 10 s.
async fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..500 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached in 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alt_svc_is_on_the_tcp_side_with_the_advertised_port() {
    let b = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (a1, l1) = listener_toml("bound", "");
    let (a2, l2) = listener_toml("mapped", "");
    let (a3, l3) = listener_toml("tcp-only", "");
    let tls = "tls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n";
    let cfg = format!(
        "{l1}protocols = [\"http1\", \"http2\", \"http3\"]\n{tls}\n{l2}protocols = [\"http1\", \"http2\", \"http3\"]\nalt_svc_port = 443\n{tls}\n{l3}{tls}\n[[route]]\nname = \"all\"\nupstream = \"app\"\n{}",
        upstream_toml("app", &[&b], "")
    );
    let p = Portico::start_in(dir, &cfg);

    for http2 in [false, true] {
        let c = pki.reqwest_client(http2);
        let get = |a: SocketAddr| c.get(format!("https://localhost:{}/x", a.port())).send();
        let r = get(a1).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["alt-svc"],
            format!("h3=\":{}\"; ma=86400", a1.port())
        );
        let r = get(a2).await.unwrap();
        assert_eq!(r.headers()["alt-svc"], "h3=\":443\"; ma=86400");
        let r = get(a3).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("alt-svc").is_none());
    }
    // The proxy's own answers carry it too (every TCP response).
    let r = pki
        .reqwest_client(false)
        .get(format!("https://localhost:{}/x", a1.port()))
        .header("x-big", "v".repeat(20000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert!(r.headers().contains_key("alt-svc"));
    // And the advertised port really serves HTTP/3.
    let mut c = H3Client::new(&pki, false).connect(a1).await.unwrap();
    match c.get("/y").await {
        Ok(r) => assert_eq!(r.status, 200),
        Err(e) => panic!("h3 GET failed: {e:?}\nportico: {}", p.stderr()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_post_gets_425_and_get_is_forwarded_with_early_data() {
    let b = Backend::start("a").await;
    let (_p, addr, pki) = start(&b, "tls.early_data = true\n", "");
    let client = H3Client::new(&pki, true);

    // A full handshake first: it brings the session ticket for 0-RTT.
    // Without early data, a POST (1-RTT) goes through.
    let mut c = client.connect(addr).await.unwrap();
    let r = c
        .request(request("POST", "/upload"), Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), format!("5 {}", sha_hex(b"hello")));
    assert!(b.last_seen().headers.get("early-data").is_none());
    c.close();
    drop(c);

    // Through a relay that holds the server's datagrams back, the client's
    // first flight (ClientHello + 0-RTT requests) reaches portico long
    // before the client can complete the handshake.
    let relay = delaying_relay(addr, Duration::from_millis(400)).await;
    let (mut c, accepted) = client.connect_0rtt(relay).await.unwrap();
    let accepted = accepted.expect("the client had a ticket and tried 0-RTT");
    let before = b.request_count();
    let post = {
        let mut c2 = c.clone();
        tokio::spawn(async move {
            c2.request(request("POST", "/upload"), Bytes::from_static(b"replay me"))
                .await
        })
    };
    let get = c.get("/early-get").await.unwrap();
    let post = post.await.unwrap().unwrap();
    assert_eq!(post.status, 425, "{}", post.text());
    assert!(post.headers.contains_key("x-request-id"));
    assert_eq!(get.status, 200);
    assert!(accepted.await, "the server accepted 0-RTT");
    // Only the GET reached the backend, marked as early data (RFC 8470).
    assert_eq!(b.request_count(), before + 1);
    let seen = b.last_seen();
    assert_eq!(seen.uri, "/early-get");
    assert_eq!(seen.headers["early-data"], "1");

    // After the handshake, the same POST on the same connection is served.
    let r = c
        .request(request("POST", "/upload"), Bytes::from_static(b"replay me"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(b.last_seen().headers.get("early-data").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_is_off_without_early_data() {
    let b = Backend::start("a").await;
    let (_p, addr, pki) = start(&b, "", "");
    let client = H3Client::new(&pki, true);
    let mut c = client.connect(addr).await.unwrap();
    assert_eq!(c.get("/one").await.unwrap().status, 200);
    c.close();
    drop(c);
    let (mut c, accepted) = client.connect_0rtt(addr).await.unwrap();
    // The client may try 0-RTT with its ticket; the server refuses it and
    // the request is sent again after the handshake.
    let r = c
        .request(request("POST", "/upload"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    if let Some(a) = accepted {
        assert!(
            !a.await,
            "0-RTT must not be accepted without tls.early_data"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_h3_request_finish() {
    let b = Backend::start("a").await;
    let (mut p, addr, pki) = start(&b, "", "");
    let client = H3Client::new(&pki, false);
    let mut c = client.connect(addr).await.unwrap();
    assert_eq!(c.get("/warm").await.unwrap().status, 200);
    let before = b.request_count();
    let slow = {
        let mut c2 = c.clone();
        tokio::spawn(async move { c2.get("/slow/800").await })
    };
    wait_for(|| (b.request_count() > before).then_some(())).await;
    p.signal("TERM");
    let r = slow.await.unwrap().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "a slow"));
    // GOAWAY was sent: a new request on that connection is refused.
    assert!(c.get("/after").await.is_err());
    // The process drains and exits 0.
    let status = p.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_the_udp_endpoint_serving() {
    let b = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml("web", "");
    let config = |protocols: &str, cert: &str, body: &str| {
        format!(
            "{l}protocols = [{protocols}]\ntls.cert = \"certs/{cert}.crt\"\ntls.key = \"certs/{cert}.key\"\n[[route]]\nname = \"fixed\"\nmatch.path_prefix = \"/fixed\"\nrespond = {{ status = 200, body = \"{body}\" }}\n[[route]]\nname = \"all\"\nupstream = \"app\"\n{}",
            upstream_toml("app", &[&b], "")
        )
    };
    let all = "\"http1\", \"http2\", \"http3\"";
    let p = Portico::start_in(dir, &config(all, "server", "one"));
    let client = H3Client::new(&pki, false);
    let mut c = client.connect(addr).await.unwrap();
    assert_eq!(c.get("/fixed").await.unwrap().text(), "one");

    // A reload that keeps http3: the open connection keeps working and
    // sees the new config; new connections too.
    p.write_config(&config(all, "server", "two"));
    assert_eq!(p.reload().await.0, 200);
    assert_eq!(c.get("/fixed").await.unwrap().text(), "two");
    let mut c2 = client.connect(addr).await.unwrap();
    assert_eq!(c2.get("/fixed").await.unwrap().text(), "two");

    // A new certificate (not signed by the test CA) applies to new
    // handshakes only: the open connection goes on.
    p.write_config(&config(all, "other", "three"));
    assert_eq!(p.reload().await.0, 200);
    assert!(client.connect(addr).await.is_err());
    assert_eq!(c.get("/fixed").await.unwrap().text(), "three");

    // Removing http3 closes the UDP side: the open connection is told to
    // go away (GOAWAY), and new handshakes fail; TCP keeps serving.
    p.write_config(&config("\"http1\", \"http2\"", "server", "four"));
    assert_eq!(p.reload().await.0, 200);
    tokio::time::timeout(Duration::from_secs(10), c.quic.closed())
        .await
        .expect("the QUIC side closes its connections");
    assert!(c.get("/fixed").await.is_err());
    let tcp = pki
        .reqwest_client(false)
        .get(format!("https://localhost:{}/fixed", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(tcp.text().await.unwrap(), "four");
    let refused = tokio::time::timeout(Duration::from_secs(5), client.connect(addr)).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "h3 still served after removal"
    );

    // Adding it back binds UDP again (once the old endpoint has let go of
    // the port: its closed connections linger a few round trips).
    p.write_config(&config(all, "server", "five"));
    wait_for_async(|| async { p.reload().await.0 == 200 }).await;
    let mut c3 = client.connect(addr).await.unwrap();
    assert_eq!(c3.get("/fixed").await.unwrap().text(), "five");
    assert_eq!(c3.get("/x").await.unwrap().text(), "a GET /x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_connection_keeps_working() {
    let b = Backend::start("a").await;
    let (_p, addr, pki) = start(&b, "", "");
    let client = H3Client::new(&pki, false);
    let mut c = client.connect(addr).await.unwrap();
    assert_eq!(c.get("/before").await.unwrap().status, 200);
    let old = client.endpoint.local_addr().unwrap();
    // The client moves to a new socket (a new source port, as after a NAT
    // rebinding).
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.endpoint.rebind(socket).unwrap();
    assert_ne!(client.endpoint.local_addr().unwrap(), old);
    let r = c.get("/after").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "a GET /after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_near_the_limit_go_through_retry_and_the_limit_holds() {
    let b = Backend::start("a").await;
    let (p, addr, pki) = start(&b, "max_connections = 10\n", "");
    let client = H3Client::new(&pki, false);
    let mut held = Vec::new();
    for i in 0..9 {
        let mut c = client.connect(addr).await.unwrap();
        let r = c.get(&format!("/c{i}")).await;
        let r = r.unwrap_or_else(|e| panic!("connection {i}: {e:?}\n{}", p.stderr()));
        assert_eq!(r.status, 200);
        held.push(c);
    }
    assert!(!p.stderr().contains("stateless Retry"));
    // 9 of 10 open: the tenth is asked to validate its address first,
    // and then served.
    let mut tenth = client.connect(addr).await.unwrap();
    assert_eq!(tenth.get("/tenth").await.unwrap().status, 200);
    assert!(p.stderr().contains("stateless Retry"), "{}", p.stderr());
    held.push(tenth);

    // At the limit an eleventh is not served until one closes.
    let client2 = H3Client::new(&pki, false);
    let eleventh = tokio::spawn(async move {
        let mut c = client2.connect(addr).await?;
        let r = c.get("/eleventh").await?;
        Ok::<_, H3Error>((r.status, client2, c))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !eleventh.is_finished(),
        "a connection was served beyond max_connections"
    );
    let first = held.remove(0);
    first.close();
    drop(first);
    let (status, _client2, _c) = eleventh.await.unwrap().unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_only_listener_binds_no_tcp_socket() {
    let b = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml("quic-only", "");
    let cfg = format!(
        "{l}protocols = [\"http3\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n[[route]]\nname = \"all\"\nupstream = \"app\"\n{}",
        upstream_toml("app", &[&b], "")
    );
    let _p = Portico::start_in(dir, &cfg);
    let mut c = H3Client::new(&pki, false).connect(addr).await.unwrap();
    assert_eq!(c.get("/only").await.unwrap().text(), "a GET /only");
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn http3_without_tls_is_a_config_error_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8443\"\nprotocols = [\"http1\", \"http3\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:4:13: ", path.display())) && err.contains("needs tls"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_protected_route_over_h3() {
    use serde_json::json;
    use support::jwt::*;
    let b = Backend::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let ec = TestKey::ec256();
    write(dir.path(), "ec.pub", &ec.public_pem);
    let (addr, l) = listener_toml("web", "");
    let cfg = format!(
        r#"{l}protocols = ["http1", "http2", "http3"]
tls.cert = "certs/server.crt"
tls.key = "certs/server.key"

[auth.users]
type = "jwt"
algorithms = ["ES256"]
keys = ["ec.pub"]
issuer = ["https://idp.test"]
required_scopes = ["write"]
forward_claims = {{ sub = "x-user-id" }}
forward_token = false
revocation = true

[[route]]
name = "api"
match.path_prefix = "/api/"
upstream = "app"
auth = "users"

{}"#,
        upstream_toml("app", &[&b], "")
    );
    let p = Portico::start_in(dir, &cfg);
    let mut c = H3Client::new(&pki, false).connect(addr).await.unwrap();
    let with_token = |path: &str, token: &str| {
        let mut req = request("GET", path);
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    let n = now();
    let good_claims = json!({"sub": "erin", "iss": "https://idp.test", "scope": "read write",
        "jti": "h3-1", "iat": n - 10, "exp": n + 600});

    // No token: 401 with the RFC 6750 challenge and a request id, nothing upstream.
    let r = c.get("/api/x").await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], r#"Bearer realm="portico""#);
    assert!(r.headers.contains_key("x-request-id"));

    // A forged signature (another key) and a wrong issuer: 401.
    let forged = TestKey::ec256().mint(Algorithm::ES256, None, &good_claims);
    let r = c
        .request(with_token("/api/x", &forged), Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let mut other_iss = good_claims.clone();
    other_iss["iss"] = json!("https://evil.test");
    let t = ec.mint(Algorithm::ES256, None, &other_iss);
    let r = c
        .request(with_token("/api/x", &t), Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 401);

    // Missing scope: 403 insufficient_scope.
    let mut read_only = good_claims.clone();
    read_only["scope"] = json!("read");
    let t = ec.mint(Algorithm::ES256, None, &read_only);
    let r = c
        .request(with_token("/api/x", &t), Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(
        r.headers["www-authenticate"],
        r#"Bearer realm="portico", error="insufficient_scope""#
    );
    assert_eq!(
        b.request_count(),
        0,
        "a rejected request reached the backend"
    );

    // A good token: forwarded with the claim header, without the token.
    let good = ec.mint(Algorithm::ES256, None, &good_claims);
    let r = c
        .request(with_token("/api/x", &good), Bytes::new())
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "api GET /api/x"));
    let seen = b.last_seen();
    assert_eq!(seen.headers["x-user-id"], "erin");
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(b.request_count(), 1);

    // Revoked through the admin API: the next h3 request with it gets 401.
    let revoked = client()
        .post(format!("http://{}/revoke", p.admin))
        .body(format!(r#"{{"jti": "h3-1", "exp": {}}}"#, n + 600))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let r = c
        .request(with_token("/api/x", &good), Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers["www-authenticate"],
        r#"Bearer realm="portico", error="invalid_token""#
    );
    assert_eq!(b.request_count(), 1);
    c.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h3_gets_its_trailers() {
    // gRPC health check over HTTP/3 to portico, HTTP/2 to a tonic server:
    // the response's DATA and its grpc-status trailers cross the adapter.
    let grpc = GrpcHealth::start().await;
    let grpc_addr = grpc.addr;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start_in(
        dir,
        &format!(
            "{l}protocols = [\"http3\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n[[route]]\nname = \"grpc\"\nupstream = \"grpc\"\n[upstream.grpc]\nservers = [\"{grpc_addr}\"]\nprotocol = \"http2\"\n"
        ),
    );
    let mut c = H3Client::new(&pki, false).connect(addr).await.unwrap();
    let grpc_call = |service: &str| {
        let mut req = request("POST", "/grpc.health.v1.Health/Check");
        let h = req.headers_mut();
        h.insert("content-type", "application/grpc".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        // HealthCheckRequest { service } in one uncompressed gRPC frame.
        let mut msg = vec![0x0a, service.len() as u8];
        msg.extend_from_slice(service.as_bytes());
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        (req, Bytes::from(frame))
    };

    let (req, body) = grpc_call("portico.Test");
    let r = c.request(req, body).await.unwrap();
    assert_eq!(r.status, 200);
    // HealthCheckResponse { status: SERVING (1) }.
    assert_eq!(&r.body[..], &[0, 0, 0, 0, 2, 0x08, 0x01]);
    let trailers = r.trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");

    // An unknown service: NOT_FOUND (5), from the server, in the answer.
    let (req, body) = grpc_call("nope");
    let r = c.request(req, body).await.unwrap();
    assert_eq!(r.status, 200);
    let status = r
        .trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| r.headers.get("grpc-status"))
        .expect("grpc-status");
    assert_eq!(status, "5");
    c.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_and_idle_timeout_hold_over_h3() {
    let b = Backend::start("a").await;
    let (_p, addr, pki) = start(
        &b,
        "h2_max_concurrent_streams = 2\nidle_timeout = \"1s\"",
        "",
    );
    let c = H3Client::new(&pki, false).connect(addr).await.unwrap();

    // Two slow requests use up the connection's two streams: a third
    // cannot even open its stream until one of them ends.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.get("/slow/1500").await.map(|r| r.status) })
        })
        .collect();
    wait_for(|| (b.request_count() == 2).then_some(())).await;
    let mut third = c.clone();
    let blocked = tokio::time::timeout(Duration::from_millis(500), third.get("/x")).await;
    assert!(
        blocked.is_err(),
        "a third stream opened beyond the limit of 2"
    );
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap(), 200);
    }
    let mut again = c.clone();
    assert_eq!(again.get("/x").await.unwrap().status, 200);

    // Then idle: portico closes the connection (H3_NO_ERROR) after
    // idle_timeout. The slow requests above outlived idle_timeout with
    // nothing on the wire: in flight, a connection is not idle.
    let t0 = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), c.quic.closed()).await;
    match closed {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(0x100))
        }
        other => panic!("not closed as idle: {other:?}"),
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );
}

/// systemd's portico.socket with ListenStream= and ListenDatagram= for the
/// same address: both sides are adopted, so the UDP port (already bound
/// here, as the service manager holds it) serves HTTP/3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_passed_by_the_service_manager_serve_tcp_and_http3() {
    use std::os::fd::AsRawFd;
    let b = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let udp = std::net::UdpSocket::bind(addr).unwrap();
    let listener = format!("[[listener]]\nname = \"web\"\nbind = \"{addr}\"\n");
    let p = Portico::start_activated(
        dir,
        &h3_config(&listener, "", &b, ""),
        vec![tcp.as_raw_fd(), udp.as_raw_fd()],
        Vec::new(),
    );
    // Without adoption the listener could not have bound UDP at all: the
    // port is taken by the passed socket.
    assert!(p.stderr().contains("adopting UDP socket"), "{}", p.stderr());
    let client = H3Client::new(&pki, false);
    let mut c = client.connect(addr).await.unwrap();
    let r = c.get("/over-h3").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "a GET /over-h3");
    drop((tcp, udp));
}
