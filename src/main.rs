//! The portico command line: run, check, version.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portico",
    about = "A stateless layer-7 reverse proxy and load balancer",
    disable_version_flag = true
)]
struct Cli {
    /// Config file (default: $PORTICO_CONFIG, else ./proxy.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate everything a run would load, print "ok".
    Check,
    /// Print the version.
    Version,
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("PORTICO_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("proxy.toml"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Version) = cli.command {
        println!("portico {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let lc = match portico::config::load(&config_path(&cli)) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    init_logging(&lc.config.server);
    match cli.command {
        Some(Command::Check) => check(lc),
        _ => run(lc),
    }
}

/// Operational logs on stderr, as text or JSON lines (server.log_format),
/// filtered by RUST_LOG when it is set and valid, else by server.log_level.
/// Both are read once, at start.
fn init_logging(server: &portico::config::ServerConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(server.log_level.get_ref()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match server.log_format {
        portico::config::LogFormat::Json => fmt.json().init(),
        // Colours only on a terminal: under systemd stderr goes to the
        // journal, where escape codes are noise.
        portico::config::LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("{e}");
    ExitCode::FAILURE
}

/// `portico check`: builds the whole runtime state, as a run would,
/// without binding or opening anything for writing.
fn check(lc: portico::config::LoadedConfig) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("portico: cannot start runtime: {e}")),
    };
    let built = rt.block_on(async {
        portico::snapshot::Snapshot::build(
            std::sync::Arc::new(lc),
            1,
            None,
            portico::snapshot::BuildMode::Check,
        )
        .map(|_| ())
    });
    match built {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Runs the proxy until it is stopped.
fn run(lc: portico::config::LoadedConfig) -> ExitCode {
    // Before the runtime starts: taking the sockets clears LISTEN_* from the
    // environment, which is only sound while no other thread runs.
    let inherited = portico::sys::inherited_sockets();
    let workers = match lc.config.server.worker_threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    // One worker: a current-thread runtime, with no cross-thread work stealing.
    let rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => return fail(format!("portico: cannot start runtime: {e}")),
    };
    match rt.block_on(portico::server::run(lc, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
