//! The admin API over real sockets: the token on non-GET requests, GET
//! /config with secrets masked, token file errors at their position.

mod support;

use support::prom::{check, position};
use support::*;

const TOKEN: &str = "s3cret-admin-token";

/// A portico with admin.token_file = "admin.token" (written with a trailing
/// newline, as editors do) and `extra` config.
fn start_with_token(extra: &str) -> (Portico, std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let (addr, l) = listener_toml("web", "");
    let cfg =
        format!("[admin]\nbind = \"{{admin}}\"\ntoken_file = \"admin.token\"\n\n{l}\n{extra}\n");
    (Portico::start_in(dir, &cfg), addr)
}

async fn post(p: &Portico, path: &str, auth: Option<&str>) -> reqwest::Response {
    let mut r = client().post(format!("http://{}{path}", p.admin));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_needs_the_bearer_token_before_anything_else() {
    let (p, _) = start_with_token("[[route]]\nname = \"ok\"\nrespond = { status = 200 }\n");
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/no-such-endpoint", "/metrics", "/config"] {
        let r = post(&p, path, None).await;
        assert_eq!(r.status(), 401, "POST {path} without a token");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"portico-admin\""
        );
        for wrong in [
            "Bearer wrong",
            "Bearer s3cret-admin-toke",
            "Bearer s3cret-admin-token-and-more",
            "Basic czNjcmV0",
            TOKEN,
        ] {
            assert_eq!(post(&p, path, Some(wrong)).await.status(), 401, "{wrong}");
        }
    }
    // With the token (the file's trailing newline trimmed; the scheme is
    // case-insensitive) the request gets past the check: an unknown path is
    // 404 and a GET endpoint is 405.
    assert_eq!(
        post(&p, "/no-such-endpoint", Some(&bearer)).await.status(),
        404
    );
    let r = post(&p, "/metrics", Some(&format!("bearer {TOKEN}"))).await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    // Other state-changing methods are guarded too.
    let r = client()
        .delete(format!("http://{}/config", p.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // GET endpoints need no token.
    for path in ["/health", "/ready", "/metrics", "/config"] {
        let r = client()
            .get(format!("http://{}{path}", p.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_the_config_in_force_with_secrets_masked() {
    let a = Backend::start("a").await;
    let (p, addr) = start_with_token(&format!(
        r#"[[route]]
name = "notes"
match.path_prefix = "/notes"
respond = {{ status = 200, body = "cache at redis://app:hunter2@127.0.0.1:6379/0" }}

[[route]]
name = "api"
upstream = "app"
cors = "web"

[cors.web]
allow_origins = ["https://app.example"]

{}"#,
        upstream_toml("app", &[&a], "")
    ));
    let r = client()
        .get(format!("http://{}/config", p.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let text = r.text().await.unwrap();
    assert!(!text.contains(TOKEN), "the admin token leaked: {text}");
    assert!(!text.contains("hunter2"), "a URL password leaked: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["generation"], 1);
    let c = &v["config"];
    // The token file's path may be shown, never what it holds.
    assert_eq!(c["admin"]["token_file"], "admin.token");
    assert_eq!(c["admin"]["bind"], p.admin.to_string());
    // URL userinfo keeps the user, loses the password.
    let notes = c["route"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "notes")
        .unwrap();
    assert_eq!(
        notes["respond"]["body"],
        "cache at redis://app:***@127.0.0.1:6379/0"
    );
    // Defaults are filled in: this is the config as it is in force.
    assert_eq!(c["listener"][0]["name"], "web");
    assert_eq!(c["listener"][0]["max_header_bytes"], 16384);
    assert_eq!(
        c["upstream"]["app"]["servers"][0]["addr"],
        a.addr.to_string()
    );
    assert_eq!(c["cors"]["web"]["max_age"], "10m");
    assert_eq!(
        c["cors"]["web"]["allow_methods"],
        serde_json::json!(["GET", "HEAD", "POST"])
    );
    // Masking is only for /config: the route itself still answers its body.
    let body = client()
        .get(format!("http://{addr}/notes"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("hunter2"));
}

#[test]
fn missing_or_empty_token_file_is_a_config_error_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[admin]\nbind = \"127.0.0.1:19901\"\ntoken_file = \"admin.token\"\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:18080\"\n";
    let path = dir.path().join("proxy.toml");
    let at = position(&path, text, "\"admin.token\"");

    let (out, stderr) = check(dir.path(), text);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.starts_with(&at),
        "{stderr:?} should start with {at:?}"
    );
    assert!(stderr.contains("admin.token"), "{stderr}");

    std::fs::write(dir.path().join("admin.token"), "\n").unwrap();
    let (out, stderr) = check(dir.path(), text);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.starts_with(&at),
        "{stderr:?} should start with {at:?}"
    );
    assert!(stderr.contains("empty"), "{stderr}");

    std::fs::write(dir.path().join("admin.token"), "tok\n").unwrap();
    let (out, stderr) = check(dir.path(), text);
    assert!(out.status.success(), "{stderr}");
}
