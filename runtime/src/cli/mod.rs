//! The `cellbox` command line (feature `cli`): argument parsing and the
//! runtime setup shared by the subcommands. [`run`] is the whole program.

mod e2b_toml;
mod notebook;
mod render;
mod run;
mod sandbox;
mod serve;
mod template;
mod terminal;

use clap::{Parser, Subcommand};

/// Run stateful Python cells in a local sandbox.
#[derive(Debug, Parser)]
#[command(name = "cellbox", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run cells in order in one fresh session.
    Run(run::RunArgs),
    /// Serve E2B's API and sandboxes to the E2B SDKs (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY).
    Serve(serve::ServeArgs),
    /// List, kill, spawn, connect to and read the logs of the sandboxes of a running `cellbox serve`.
    Sandbox(sandbox::SandboxArgs),
    /// Make, build, list and delete custom templates (from an e2b.Dockerfile).
    Template(template::TemplateArgs),
    /// As root, once: let the user NAME run namespace sandboxes without root
    /// (subordinate ids, control groups delegated to them, the guest's root
    /// file system shared in /var/cache/cellbox).
    Setup {
        /// The user to set up.
        #[arg(long)]
        user: String,
    },
    /// Build the guest layer (guest-init and its kernel drivers) into the
    /// new folder OUT, for packaging: the Python wheel ships one.
    #[command(hide = true)]
    GuestLayer { out: std::path::PathBuf },
}

/// Exit status: every cell ran without error.
pub const EXIT_OK: u8 = 0;
/// Exit status: a cell raised an exception.
pub const EXIT_CELL_ERROR: u8 = 1;
/// Exit status: the sandbox itself failed.
pub const EXIT_SANDBOX_ERROR: u8 = 2;

/// Runs the command line `args` (the program's name first) and returns the
/// exit status. Help, version and usage errors are printed here, never
/// ending the process, so that a host program (the Python package's
/// `cellbox` command) can call it.
pub fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                EXIT_SANDBOX_ERROR
            } else {
                EXIT_OK
            };
        }
    };
    // A host that set up its own logging keeps it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cellbox: error: cannot start the async runtime: {e}");
            return EXIT_SANDBOX_ERROR;
        }
    };
    match cli.command {
        Command::Run(args) => runtime.block_on(run::run(args)),
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::Sandbox(args) => runtime.block_on(sandbox::run(args)),
        Command::Template(args) => runtime.block_on(template::run(args)),
        Command::Setup { user } => setup(&user),
        Command::GuestLayer { out } => build_guest_layer(&out),
    }
}

fn setup(user: &str) -> u8 {
    let progress = crate::Progress::new(|line| eprintln!("cellbox: {line}"));
    let cache = crate::default_cache_dir();
    match crate::namespace::rootless::setup(user, &cache, &progress) {
        Ok(done) => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            for line in done {
                let _ = writeln!(out, "cellbox setup: {line}");
            }
            let _ = writeln!(
                out,
                "cellbox setup: {user} can now run `cellbox run --backend namespace`"
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("cellbox: error: {e}");
            EXIT_SANDBOX_ERROR
        }
    }
}

fn build_guest_layer(out: &std::path::Path) -> u8 {
    let progress = crate::Progress::new(|line| eprintln!("cellbox: {line}"));
    let target = crate::default_cache_dir().join("guest-init-target");
    match crate::guest::artifacts::build_layer(out, &target, &progress) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("cellbox: error: {e}");
            EXIT_SANDBOX_ERROR
        }
    }
}
