//! Quickstart: three demo backends and portico in front of them.
//!
//! `cargo run --release --example demo` starts backends on 127.0.0.1:9001-9003
//! (each answers with its own name), then runs portico on the shipped
//! proxy.toml (or the file named by `--config` / $PORTICO_CONFIG) in the same
//! process. `curl http://127.0.0.1:8080/hello` then gets a proxied answer;
//! repeat it to watch round-robin. Ctrl-C stops both.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::path::PathBuf;

async fn backend(name: &'static str, port: u16) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let body = format!("hello from {name}: {} {}\n", req.method(), req.uri());
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("x-backend", name)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_default(),
                )
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn main() -> std::process::ExitCode {
    let path = std::env::args()
        .skip_while(|a| a != "--config")
        .nth(1)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("PORTICO_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("proxy.toml"));
    let lc = match portico::config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: under systemd stderr goes to the
        // journal, where escape codes are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        for (name, port) in [
            ("backend-1", 9001),
            ("backend-2", 9002),
            ("backend-3", 9003),
        ] {
            tokio::spawn(async move {
                if let Err(e) = backend(name, port).await {
                    eprintln!("demo backend {name} on port {port}: {e}");
                }
            });
        }
        let bind = lc
            .config
            .listeners
            .first()
            .map(|l| l.bind.get_ref().clone())
            .unwrap_or_default();
        eprintln!("\nportico is up. Try:\n\n    curl -i http://{bind}/hello\n");
        match portico::server::run(lc, Default::default()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
