//! HTTP/3 edges, from the client's side with an h3 client: the shared
//! pipeline's request rules (path normalisation before routing, encoded
//! separators, claim headers, case-sensitive methods) checked against a raw
//! TCP upstream that records the request heads it got, byte for byte; and
//! max_connections on the QUIC side lowered by a reload while connections
//! are open.

mod support;

use bytes::Bytes;
use jsonwebtoken::EncodingKey;
use std::net::SocketAddr;
use std::time::Duration;
use support::http3::*;
use support::jwt::*;
use support::prom::scrape_until;
use support::raw::*;
use support::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn token(sub: &str) -> String {
    mint_with(
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
        None,
        &claims(sub),
    )
}

/// An HTTP/3-only listener with routes: `/admin/` behind a JWT policy that
/// forwards `sub` as x-user-id (upstream "admin"), `/m/` for POST only,
/// `/open/` without auth, and a catch-all `/` (upstream "all").
async fn start() -> (SocketAddr, Portico, Pki, RawBackend, RawBackend) {
    let admin = RawBackend::start("admin").await;
    let all = RawBackend::start("all").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    write(dir.path(), "secret", SECRET);
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        r#"[server]
access_log = "off"
{l}protocols = ["http3"]
tls.cert = "certs/server.crt"
tls.key = "certs/server.key"

[auth.jwt]
type = "jwt"
algorithms = ["HS256"]
secret_file = "secret"
forward_claims = {{ sub = "x-user-id" }}

[upstream.admin]
servers = ["{}"]

[upstream.all]
servers = ["{}"]

[[route]]
name = "admin"
match.path_prefix = "/admin/"
upstream = "admin"
auth = "jwt"

[[route]]
name = "post-only"
match.path_prefix = "/m/"
match.methods = ["POST"]
upstream = "all"

[[route]]
name = "open"
match.path_prefix = "/open/"
upstream = "all"

[[route]]
name = "all"
match.path_prefix = "/"
upstream = "all"
"#,
        admin.addr, all.addr
    );
    let p = Portico::start_in(dir, &config);
    (addr, p, pki, admin, all)
}

/// A request for `https://localhost{path}` with these extra fields.
fn request_with(method: &str, path: &str, fields: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::builder()
        .method(http::Method::from_bytes(method.as_bytes()).unwrap())
        .uri(format!("https://localhost{path}"));
    for (n, v) in fields {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap()
}

async fn send(c: &mut H3Conn, req: http::Request<()>) -> H3Response {
    let what = format!("{} {}", req.method(), req.uri());
    tokio::time::timeout(Duration::from_secs(20), c.request(req, Bytes::new()))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer"))
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_paths_are_normalised_before_routing() {
    let (addr, _p, pki, admin, all) = start().await;
    let mut c = H3Client::new(&pki, false).connect(addr).await.unwrap();

    // Spellings of /admin/x: each meets the admin route's auth.
    for path in [
        "/%61dmin/x",
        "/static/../admin/x",
        "//admin/x",
        "/./admin/x",
    ] {
        let r = send(&mut c, request_with("GET", path, &[])).await;
        assert_eq!(r.status, 401, "{path}: {r:?}");
        let challenge = r.headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.to_ascii_lowercase().starts_with("bearer"),
            "{path}: {r:?}"
        );
    }
    assert_eq!(all.count(), 0, "the catch-all saw {:?}", all.heads());
    assert_eq!(admin.count(), 0, "{:?}", admin.heads());

    // With a token, the admin upstream gets the normalised path.
    let auth = format!("Bearer {}", token("alice"));
    let r = send(
        &mut c,
        request_with(
            "GET",
            "/static/../%61dmin/./x?q=%2e%2E",
            &[("authorization", &auth)],
        ),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "admin"), "{r:?}");
    assert_eq!(
        request_line(&admin.last()),
        "GET /admin/x?q=%2e%2E HTTP/1.1"
    );

    // Encoded separators and climbs above the root: 400, nothing upstream.
    for path in ["/a%2Fb", "/admin%2fx", "/a%5Cb", "/%2e%2e/x", "/../x"] {
        let r = send(
            &mut c,
            request_with("GET", path, &[("authorization", &auth)]),
        )
        .await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
    }
    assert_eq!(all.count(), 0, "{:?}", all.heads());
    assert_eq!(admin.count(), 1, "{:?}", admin.heads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_claim_headers_never_reach_the_upstream() {
    let (addr, _p, pki, admin, all) = start().await;
    let mut c = H3Client::new(&pki, false).connect(addr).await.unwrap();
    let fakes = [
        ("x_user_id", "admin"),
        ("x-user-id", "admin"),
        ("x-user_id", "admin"),
    ];
    let is_claim = |l: &str| {
        l.split_once(':')
            .is_some_and(|(n, _)| n.trim().to_ascii_lowercase().replace('_', "-") == "x-user-id")
    };

    // Routes without auth: no claim field at all.
    for path in ["/open/x", "/x"] {
        let r = send(&mut c, request_with("GET", path, &fakes)).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let seen = all.last();
        assert!(request_line(&seen).contains(path), "{seen}");
        assert!(!seen.split("\r\n").any(is_claim), "{path}: {seen}");
    }

    // The auth route: only portico's value, once.
    let auth = format!("Bearer {}", token("alice"));
    let mut fields = fakes.to_vec();
    fields.push(("authorization", &auth));
    let r = send(&mut c, request_with("GET", "/admin/x", &fields)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = admin.last();
    let claims: Vec<&str> = seen.split("\r\n").filter(|l| is_claim(l)).collect();
    assert_eq!(claims.len(), 1, "{seen}");
    assert_eq!(header_values(&seen, "x-user-id"), ["alice"], "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_methods_are_case_sensitive() {
    let (addr, _p, pki, _admin, all) = start().await;
    let mut c = H3Client::new(&pki, false).connect(addr).await.unwrap();
    for m in ["post", "Post", "pOST"] {
        let r = send(&mut c, request_with(m, "/m/x", &[])).await;
        assert_eq!(r.status, 400, "{m}: {r:?}");
    }
    // `get` would reach the catch-all as an extension method.
    let r = send(&mut c, request_with("get", "/open/x", &[])).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(all.count(), 0, "{:?}", all.heads());

    let r = send(&mut c, request_with("POST", "/m/x", &[])).await;
    assert_eq!((r.status, r.text().as_str()), (200, "all"), "{r:?}");
    assert_eq!(request_line(&all.last()), "POST /m/x HTTP/1.1");
}

/// Waits until the listener "web" counts `n` open HTTP/3 connections.
async fn open_h3_connections(admin: SocketAddr, n: f64) {
    let labels = [("listener", "web"), ("protocol", "http3")];
    let m = scrape_until(admin, |m| {
        m.value_or_zero("portico_connections_active", &labels) == n
    })
    .await;
    assert_eq!(
        m.value_or_zero("portico_connections_active", &labels),
        n,
        "{}",
        m.text
    );
}

/// Connects with a client of its own and sends one GET, in a task.
fn connect_and_get(
    pki: &Pki,
    addr: SocketAddr,
    path: &'static str,
) -> tokio::task::JoinHandle<Result<(u16, H3Client, H3Conn), H3Error>> {
    let client = H3Client::new(pki, false);
    tokio::spawn(async move {
        let mut c = client.connect(addr).await?;
        let r = c.get(path).await?;
        Ok((r.status, client, c))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_max_connections_holds_for_http3_while_connections_are_open() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml("web", "");
    let config = |max: usize| {
        format!(
            "[server]\naccess_log = \"off\"\n{l}protocols = [\"http3\"]\nmax_connections = {max}\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n\n[[route]]\nname = \"r\"\nupstream = \"u\"\n{}",
            upstream_toml("u", &[&b], "")
        )
    };
    let p = Portico::start_in(dir, &config(2));
    // Long enough for a connection at the limit to be served if the limit
    // did not hold; a slow machine can only make this check weaker.
    let never = Duration::from_millis(700);

    // Two open, then the limit drops to 1.
    let client = H3Client::new(&pki, false);
    let mut first = client.connect(addr).await.unwrap();
    assert_eq!(first.get("/1").await.unwrap().status, 200);
    let mut second = client.connect(addr).await.unwrap();
    assert_eq!(second.get("/2").await.unwrap().status, 200);
    open_h3_connections(p.admin, 2.0).await;
    p.write_config(&config(1));
    assert_eq!(p.reload().await.0, 200);

    // One closes: one is still open, so a third waits.
    first.close();
    drop(first);
    open_h3_connections(p.admin, 1.0).await;
    let third = connect_and_get(&pki, addr, "/3");
    tokio::time::sleep(never).await;
    assert!(
        !third.is_finished(),
        "served with 2 open under max_connections = 1"
    );

    // Both closed: the third is served.
    second.close();
    drop(second);
    let (status, _client3, third) = third.await.unwrap().unwrap();
    assert_eq!(status, 200);

    // The limit stays 1: with the third open, a fourth waits for it.
    open_h3_connections(p.admin, 1.0).await;
    let fourth = connect_and_get(&pki, addr, "/4");
    tokio::time::sleep(never).await;
    assert!(
        !fourth.is_finished(),
        "max_connections = 1 did not hold after the reload"
    );

    // Raised again, the limit applies at once: the waiting fourth is
    // served while the third is still open.
    p.write_config(&config(2));
    assert_eq!(p.reload().await.0, 200);
    let (status, _client4, _fourth) = fourth.await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(third.clone().get("/3-again").await.unwrap().status, 200);
}
