//! The command line: version, check, config errors, start-up failures.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use support::*;

fn portico(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(args)
        .current_dir(dir)
        .env_remove("PORTICO_CONFIG")
        .output()
        .expect("run portico")
}

fn check(dir: &Path, text: &str) -> Output {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    portico(&["check", "--config", path.to_str().unwrap()], dir)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const GOOD: &str = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:18080"

[[route]]
name = "all"
upstream = "app"

[upstream.app]
servers = ["127.0.0.1:9001"]
"#;

#[test]
fn version_prints_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let o = portico(&["version"], dir.path());
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("portico {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_accepts_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let o = check(dir.path(), GOOD);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");
}

#[test]
fn check_reports_errors_at_path_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("proxy.toml");
    let p = p.to_str().unwrap();
    let cases: &[(&str, String, &str)] = &[
        (
            "syntax",
            GOOD.replace("name = \"all\"", "name = \"all"),
            ":7:",
        ),
        (
            "unknown field",
            GOOD.replace("name = \"all\"", "name = \"all\"\nupstreem = \"x\""),
            ":8:1: ",
        ),
        (
            "unknown upstream",
            GOOD.replace("upstream = \"app\"", "upstream = \"nope\""),
            ":8:12: ",
        ),
        (
            "duplicate listener",
            format!("{GOOD}\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:18081\"\n"),
            ":14:8: ",
        ),
        (
            "duplicate route",
            format!("{GOOD}\n[[route]]\nname = \"all\"\nrespond = {{ status = 200 }}\n"),
            ":14:8: ",
        ),
        (
            "missing cert",
            GOOD.replace(
                "bind = \"127.0.0.1:18080\"",
                "bind = \"127.0.0.1:18080\"\ntls.cert = \"nope.crt\"\ntls.key = \"nope.key\"",
            ),
            ":5:12: ",
        ),
        (
            "bad duration",
            GOOD.replace(
                "[upstream.app]",
                "[upstream.app]\nconnect_timeout = \"fast\"",
            ),
            ":11:19: ",
        ),
        (
            "both upstream and respond",
            GOOD.replace(
                "upstream = \"app\"",
                "upstream = \"app\"\nrespond = { status = 200 }",
            ),
            ":7:8: ",
        ),
        (
            "no listener",
            "[upstream.app]\nservers = [\"127.0.0.1:1\"]\n".to_string(),
            ":1:1: ",
        ),
        (
            "bad server",
            GOOD.replace("127.0.0.1:9001", "no-port"),
            ":11:11: ",
        ),
    ];
    for (what, text, at) in cases {
        let o = check(dir.path(), text);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.starts_with(&format!("{p}{at}")),
            "{what}: expected {p}{at}..., got {e}"
        );
        assert!(o.stdout.is_empty(), "{what}: printed to stdout");
    }
}

#[test]
fn check_reads_certificates_and_rejects_a_key_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    Pki::generate(dir.path());
    let tls = |cert: &str, key: &str| {
        GOOD.replace(
            "bind = \"127.0.0.1:18080\"",
            &format!("bind = \"127.0.0.1:18080\"\ntls.cert = \"{cert}\"\ntls.key = \"{key}\""),
        )
    };
    let o = check(dir.path(), &tls("certs/server.crt", "certs/server.key"));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = check(dir.path(), &tls("certs/server.crt", "certs/other.key"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(":6:11: "), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not fit"), "{}", stderr(&o));
    let o = check(dir.path(), &tls("certs/server.key", "certs/server.key"));
    assert_eq!(o.status.code(), Some(1), "a key is not a certificate");
}

#[test]
fn run_with_a_bad_config_binds_nothing_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = GOOD
        .replace("18080", &port.to_string())
        .replace("[upstream.app]", "[upstream.app]\nbogus = 1");
    std::fs::write(dir.path().join("proxy.toml"), text).unwrap();
    // No --config: ./proxy.toml is the default.
    let o = portico(&[], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("proxy.toml:11:1: "),
        "{}",
        stderr(&o)
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "port was left bound"
    );
}

#[test]
fn config_path_comes_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elsewhere.toml");
    std::fs::write(&path, GOOD).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("check")
        .env("PORTICO_CONFIG", &path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_taken_port_fails_start_up_with_the_listener_position() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let admin = free_port();
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\n{}",
        GOOD.replace("18080", &port.to_string())
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let o = portico(&["--config", path.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("proxy.toml:6:8: cannot bind"), "{e}");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", admin)).is_ok(),
        "admin port was left bound"
    );
}

#[test]
fn every_shipped_config_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs = vec![root.join("proxy.toml")];
    for e in std::fs::read_dir(root.join("examples")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            configs.push(p);
        }
    }
    assert!(
        configs.len() >= 2,
        "expected proxy.toml and examples/*.toml: {configs:?}"
    );
    for c in configs {
        // Copy next to generated certificates, since shipped configs name
        // certs/server.crt and certs/server.key relative to themselves.
        let dir = tempfile::tempdir().unwrap();
        Pki::generate(dir.path());
        let copy = dir.path().join(c.file_name().unwrap());
        std::fs::copy(&c, &copy).unwrap();
        let o = portico(&["check", "--config", copy.to_str().unwrap()], dir.path());
        assert!(
            o.status.success(),
            "{} fails check: {}",
            c.display(),
            stderr(&o)
        );
    }
}

#[test]
fn version_flags_print_the_version() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--version", "-V"] {
        let o = portico(&[flag], dir.path());
        assert!(o.status.success(), "{flag}: {}", stderr(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            format!("portico {}", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}

#[test]
fn completions_name_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = portico(&["completions", shell], dir.path());
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        for word in [
            "portico",
            "check",
            "version",
            "completions",
            "manpage",
            "config",
        ] {
            assert!(out.contains(word), "{shell} completions lack {word}");
        }
    }
    let o = portico(&["completions", "tcsh"], dir.path());
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn manpage_is_roff_naming_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let o = portico(&["manpage"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(".TH portico 1"), "{out}");
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
    for word in ["check", "version", "completions", "manpage", "config"] {
        assert!(out.contains(word), "man page lacks {word}");
    }
    for section in [
        ".SH COMMANDS",
        ".SH SIGNALS",
        ".SH ENVIRONMENT",
        ".SH EXIT STATUS",
    ] {
        assert!(out.contains(section), "man page lacks {section}");
    }
    assert!(out.contains("\\fBportico check\\fR"), "{out}");
}

/// `portico probe`, the container health check: exit 0 on a 2xx answer of
/// the admin API, 1 on any other answer or none.
#[test]
fn probe_exits_by_the_admin_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (_, listener) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "{listener}[[route]]\nname = \"r\"\nrespond = {{ status = 200, body = \"hi\" }}\n"
    ));
    let admin = p.admin.to_string();
    let ok = portico(&["probe", &admin], dir.path());
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "200");
    let ready = portico(&["probe", &admin, "--path", "/ready"], dir.path());
    assert!(ready.status.success(), "{}", stderr(&ready));
    // A path the admin API does not have: 404, so unhealthy.
    let missing = portico(&["probe", &admin, "--path", "/nope"], dir.path());
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&missing.stdout).trim(), "404");
    drop(p);
    // Nothing listening any more.
    let down = portico(&["probe", &admin], dir.path());
    assert_eq!(down.status.code(), Some(1));
    assert!(stderr(&down).contains("probe"), "{}", stderr(&down));
}
