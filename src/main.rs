//! The portico command line: run, check, version, and the shell
//! completions and man page generated from this same definition (so they
//! never drift from the options the binary accepts).

use clap::{CommandFactory, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: portico::sys::Allocator = portico::sys::Allocator;

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "A stateless layer-7 reverse proxy and load balancer",
    long_about = "A stateless layer-7 reverse proxy and load balancer.\n\n\
        Without a subcommand, runs the proxy on the config file: SIGHUP \
        reloads it, SIGTERM drains and exits 0.",
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
    /// GET a path of a running portico's admin API and exit 0 on a 2xx
    /// answer, 1 otherwise (a container HEALTHCHECK without curl).
    Probe {
        /// The admin address, ip:port (admin.bind or admin.public_bind).
        addr: std::net::SocketAddr,
        /// The path to GET.
        #[arg(long, default_value = "/health")]
        path: String,
    },
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
            if let Err(e) = manpage(&mut out) {
                return fail(format!("portico: cannot render the man page: {e}"));
            }
            return print_bytes(&out);
        }
        Some(Command::Probe { addr, ref path }) => {
            return match portico::admin::probe(addr, path, std::time::Duration::from_secs(2)) {
                Ok(status) => {
                    println!("{status}");
                    ExitCode::from(if (200..300).contains(&status) { 0 } else { 1 })
                }
                Err(e) => fail(format!("portico: probe {addr}{path}: {e}")),
            };
        }
        _ => {}
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
/// filtered by RUST_LOG when it is set to a valid filter, else by
/// server.log_level (checked with the config). Both are read once, at start.
fn init_logging(server: &portico::config::ServerConfig) {
    use tracing_subscriber::EnvFilter;
    // An empty RUST_LOG counts as unset: as a filter it would turn off every
    // line, errors included.
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (from_env, bad_env) = match env.as_deref().map(EnvFilter::try_new) {
        Some(Ok(f)) => (Some(f), None),
        Some(Err(e)) => (None, Some(e.to_string())),
        None => (None, None),
    };
    let filter = from_env.unwrap_or_else(|| {
        EnvFilter::try_new(server.log_level.get_ref()).unwrap_or_else(|_| EnvFilter::new("info"))
    });
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
    if let Some(error) = bad_env {
        tracing::warn!(
            rust_log = env.as_deref().unwrap_or_default(),
            error,
            "RUST_LOG is not a valid filter; server.log_level applies"
        );
    }
}

/// The man page's sections that clap does not know: how the process
/// behaves around the command line (roff).
const MAN_SECTIONS: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Reload the config: everything is built first and swapped in only if all of it succeeded; otherwise the old config keeps serving.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR, \fBSIGQUIT\fR
/ready turns 503, listeners keep accepting for server.shutdown_delay, then stop; in\-flight requests drain for up to server.shutdown_timeout; exit 0.
.TP
\fBSIGUSR1\fR
Reopen the access log file (after logrotate moved it).
.SH ENVIRONMENT
.TP
\fBPORTICO_CONFIG\fR
The config file when \-\-config is not given (else ./proxy.toml).
.TP
\fBRUST_LOG\fR
Filter of the operational logs on stderr, e.g. portico=debug; when unset, empty or invalid, server.log_level applies (default info).
.TP
\fBNOTIFY_SOCKET\fR, \fBLISTEN_FDS\fR, \fBLISTEN_PID\fR
Set by systemd: READY=1, RELOADING=1 and STOPPING=1 are sent to the notify socket; passed TCP listening sockets are adopted by the listener whose bind equals their address.
.SH EXIT STATUS
.TP
\fB0\fR
check passed, version, help, or a run stopped by a signal.
.TP
\fB1\fR
A config error (PATH:LINE:COL: what is wrong), an unreadable file, a bind that failed, or a run that could not start.
.TP
\fB2\fR
A bad command line.
.SH FILES
.TP
\fI/etc/portico/proxy.toml\fR
The config of the packaged systemd unit. Relative paths in it are relative to its folder.
.SH SEE ALSO
systemctl(1), systemd.service(5), systemd.socket(5); README.md for every config key.
"#;

/// The man page: clap's title, synopsis, description and options, the
/// subcommands with their descriptions (one page, not one per subcommand),
/// then [`MAN_SECTIONS`].
fn manpage(out: &mut Vec<u8>) -> std::io::Result<()> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    out.write_all(b".SH COMMANDS\n")?;
    for sub in cmd.get_subcommands() {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        writeln!(
            out,
            ".TP\n\\fBportico {}\\fR\n{}",
            sub.get_name(),
            about.replace('\\', "\\e").replace('-', "\\-")
        )?;
    }
    out.write_all(MAN_SECTIONS.as_bytes())?;
    man.render_version_section(out)
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
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    // Timeouts and idle times read the clock once per event-loop pass.
    let rt = builder
        .enable_all()
        .on_thread_unpark(portico::sys::event_loop_woke)
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => return fail(format!("portico: cannot start runtime: {e}")),
    };
    match rt.block_on(portico::server::run(lc, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
