//! Argument parsing and the runtime setup shared by the subcommands.

mod notebook;
mod render;
mod run;
mod sandbox;
mod serve;
mod template;
mod terminal;

use std::process::ExitCode;

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
}

/// Exit status: every cell ran without error.
pub const EXIT_OK: u8 = 0;
/// Exit status: a cell raised an exception.
pub const EXIT_CELL_ERROR: u8 = 1;
/// Exit status: the sandbox itself failed.
pub const EXIT_SANDBOX_ERROR: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cellbox: error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_SANDBOX_ERROR);
        }
    };
    let status = match cli.command {
        Command::Run(args) => runtime.block_on(run::run(args)),
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::Sandbox(args) => runtime.block_on(sandbox::run(args)),
        Command::Template(args) => runtime.block_on(template::run(args)),
    };
    ExitCode::from(status)
}
