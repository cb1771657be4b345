//! The portico command line: run, check, version, and the shell
//! completions and man page generated from this same definition (so they
//! never drift from the options the binary accepts).

use clap::{CommandFactory, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "A stateless layer-7 reverse proxy and load balancer",
    long_about = "A stateless layer-7 reverse proxy and load balancer.\n\n\
        Without a subcommand, runs the proxy on the config file. SIGHUP \
        reloads it, SIGTERM/SIGINT drain and exit 0, SIGUSR1 reopens the \
        access log file.",
    after_help = "Config: --config, else $PORTICO_CONFIG, else ./proxy.toml. \
        Exit codes: 0 ok, 1 config or start-up error, 2 bad command line."
)]
struct Cli {
    /// Config file (default: $PORTICO_CONFIG, else ./proxy.toml).
    #[arg(long, global = true, value_name = "PATH")]
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
    /// Print a shell completion script (bash, elvish, fish, powershell, zsh).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `portico manpage > portico.1`.
    Manpage,
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("PORTICO_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("proxy.toml"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Version) => {
            println!("portico {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(Command::Completions { shell }) => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "portico", &mut out);
            return print_bytes(&out);
        }
        Some(Command::Manpage) => {
            let mut out = Vec::new();
            if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut out) {
                return fail(format!("portico: cannot render the man page: {e}"));
            }
            return print_bytes(&out);
        }
        _ => {}
    }
    init_logging();
    let lc = match portico::config::load(&config_path(&cli)) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match cli.command {
        Some(Command::Check) => check(lc),
        _ => run(lc),
    }
}

/// Operational logs on stderr, filtered by RUST_LOG (default info).
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: under systemd stderr goes to the
        // journal, where escape codes are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Writes generated text to stdout; a closed pipe (`| head`) is an error
/// reported on stderr, not a panic as `print!` would make it.
fn print_bytes(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("portico: cannot write to stdout: {e}")),
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
