//! `cellbox run`: cells in order in one fresh session.

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::{
    Backend, BackendPolicy, Error, Execution, Executor, HybridConfig, HybridExecutor, Language,
    MicroVmConfig, MicroVmExecutor, NamespaceConfig, NamespaceExecutor, NetworkPolicy, Progress,
    RunCodeOptions, RunOptions, Sandbox, SandboxOptions, WasmConfig, WasmEngine, WasmExecutor,
};

use super::render::Output;
use super::{EXIT_CELL_ERROR, EXIT_OK, EXIT_SANDBOX_ERROR};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Which backend runs the cells.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Print one JSON object per cell (the Execution plus "backend").
    #[arg(long)]
    json: bool,
    /// Wall-clock limit per cell, in seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// The cells' language: python, javascript (js), typescript (ts), bash, r or java.
    #[arg(long, short = 'l', value_name = "LANGUAGE", default_value = "python")]
    language: Language,
    /// Let the cells reach the internet (a heavy backend: microVM or
    /// namespace; off by default).
    #[arg(long)]
    allow_internet_access: bool,
    /// An address, CIDR block or domain name the cells may reach even when
    /// otherwise refused; repeat for more. Alone, it is all they may reach.
    #[arg(long, value_name = "ADDRESS")]
    allow_out: Vec<String>,
    /// An address or CIDR block the cells may not reach; repeat for more.
    #[arg(long, value_name = "ADDRESS")]
    deny_out: Vec<String>,
    /// Make the sandbox from this template (`cellbox template build`).
    #[arg(long, value_name = "NAME")]
    template: Option<String>,
    /// Start the interpreter from scratch instead of from the snapshot.
    #[arg(long, hide = true)]
    no_preinit: bool,
    /// A cell of code; repeat for more cells.
    #[arg(
        short = 'c',
        long = "code",
        value_name = "CELL",
        required_unless_present = "file"
    )]
    cells: Vec<String>,
    /// A Python file (one cell, or cells split at `# %%` lines) or a Jupyter
    /// notebook (its code cells; the outputs go to a copy, see --output).
    #[arg(value_name = "FILE", conflicts_with = "cells")]
    file: Option<std::path::PathBuf>,
    /// Where a notebook's copy with outputs goes (default: NAME.out.ipynb).
    #[arg(long, value_name = "PATH", requires = "file")]
    output: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The fast path, moving to the heavy backend (microVM, else namespace) when a cell needs it.
    Auto,
    /// CPython for WASI in process.
    Wasm,
    /// A KVM microVM.
    Vm,
    /// A Linux-namespace sandbox.
    Namespace,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() && secs < 1e9 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

/// Runs the cells and returns the exit status.
pub async fn run(mut args: RunArgs) -> u8 {
    let out = Output::new(args.json);
    let mut notebook = None;
    if let Some(path) = &args.file {
        match super::notebook::load(path) {
            Ok((cells, nb)) => {
                args.cells = cells;
                notebook = nb;
            }
            Err(message) => {
                eprintln!("cellbox: error: {message}");
                return EXIT_SANDBOX_ERROR;
            }
        }
    }
    if args.language != Language::Python || args.network().enabled() || args.template.is_some() {
        return run_in_sandbox(&args, &out).await;
    }
    let backend = match args.backend {
        BackendChoice::Auto | BackendChoice::Wasm => Backend::Wasm,
        BackendChoice::Vm => Backend::Vm,
        BackendChoice::Namespace => Backend::Namespace,
    };
    let hybrid = args.backend == BackendChoice::Auto;
    let mut session = match start(backend, hybrid, args.no_preinit, &args.cells).await {
        Ok(session) => session,
        Err(error) => {
            out.sandbox_error(backend, &Execution::default(), &error);
            return EXIT_SANDBOX_ERROR;
        }
    };
    let options = RunOptions {
        timeout: args.timeout,
        ..Default::default()
    };
    let mut status = EXIT_OK;
    for (n, cell) in args.cells.iter().enumerate() {
        let mut seen = Execution::default();
        let result = session
            .execute(cell, &options, &mut |event| {
                seen.apply(event);
                out.stream(event);
            })
            .await;
        if let (Ok(execution), Some(notebook)) = (&result, notebook.as_mut()) {
            notebook.record(n, execution);
        }
        // The router reports where each cell ran.
        if !show(&out, session.backend(), &result, &seen, &mut status) {
            break;
        }
    }
    let _ = session.close().await;
    if let (Some(notebook), Some(path)) = (&notebook, &args.file) {
        let target = args
            .output
            .clone()
            .unwrap_or_else(|| super::notebook::default_output(path));
        match notebook.save(&target) {
            Ok(()) => eprintln!("cellbox: outputs written to {}", target.display()),
            Err(message) => {
                eprintln!("cellbox: error: {message}");
                status = EXIT_SANDBOX_ERROR;
            }
        }
    }
    status
}

impl RunArgs {
    fn network(&self) -> NetworkPolicy {
        NetworkPolicy {
            allow_internet_access: self.allow_internet_access,
            allow_out: self.allow_out.clone(),
            deny_out: self.deny_out.clone(),
            ..Default::default()
        }
    }
}

/// Cells in a language other than Python, with network access or from a
/// template: they run in the language's default context of a sandbox on the
/// heavy backend (the fast path runs Python only, without either).
async fn run_in_sandbox(args: &RunArgs, out: &Output) -> u8 {
    let network = args.network();
    let language = args.language;
    let (backend, policy) = match args.backend {
        BackendChoice::Wasm => {
            eprintln!(
                "cellbox: error: the WebAssembly fast path runs Python only; run {language} with --backend auto, vm or namespace"
            );
            return EXIT_SANDBOX_ERROR;
        }
        BackendChoice::Namespace => (Backend::Namespace, BackendPolicy::Namespace),
        BackendChoice::Vm => (Backend::Vm, BackendPolicy::Vm),
        BackendChoice::Auto => match cellbox_vmm::kvm_support::linux_guest_blocker() {
            None if args.template.is_none() => (Backend::Vm, BackendPolicy::Vm),
            _ => (Backend::Namespace, BackendPolicy::Namespace),
        },
    };
    let options = SandboxOptions {
        backend: policy,
        network,
        template: args.template.clone(),
        progress: Progress::new(|line| eprintln!("cellbox: {line}")),
        ..Default::default()
    };
    let sandbox = match Sandbox::create(options).await {
        Ok(sandbox) => sandbox,
        Err(error) => {
            out.sandbox_error(backend, &Execution::default(), &error);
            return EXIT_SANDBOX_ERROR;
        }
    };
    let options = RunCodeOptions {
        language: Some(language),
        timeout: args.timeout,
        ..Default::default()
    };
    let mut status = EXIT_OK;
    for cell in &args.cells {
        let mut seen = Execution::default();
        let result = sandbox
            .run_code_with(cell, &options, &mut |event| {
                seen.apply(event);
                out.stream(event);
            })
            .await;
        if !show(out, backend, &result, &seen, &mut status) {
            break;
        }
    }
    let _ = sandbox.close().await;
    status
}

/// Shows how a cell ended (`seen`: what it printed before a failure) and
/// folds that into the exit status; false when the next cell cannot run.
fn show(
    out: &Output,
    backend: Backend,
    result: &crate::Result<Execution>,
    seen: &Execution,
    status: &mut u8,
) -> bool {
    match result {
        Ok(execution) => {
            out.execution(backend, execution);
            if execution.error.is_some() {
                *status = (*status).max(EXIT_CELL_ERROR);
            }
            true
        }
        Err(error) => {
            out.sandbox_error(backend, seen, error);
            *status = EXIT_SANDBOX_ERROR;
            // After these the session restarts and the next cell runs.
            matches!(error, Error::Timeout { .. } | Error::SandboxDied { .. })
        }
    }
}

async fn start(
    backend: Backend,
    hybrid: bool,
    no_preinit: bool,
    cells: &[String],
) -> crate::Result<Box<dyn Executor>> {
    let progress = Progress::new(|line| eprintln!("cellbox: {line}"));
    match backend {
        Backend::Wasm => {
            let engine = WasmEngine::load(WasmConfig {
                preinitialize: !no_preinit,
                progress: progress.clone(),
                ..Default::default()
            })
            .await?;
            if hybrid {
                let config = HybridConfig {
                    progress,
                    prestart: false,
                    ..Default::default()
                };
                let mut session = HybridExecutor::start(&engine, config).await?;
                // All cells are known: start the heavy backend early only if one needs it.
                if cells.iter().any(|cell| session.needs_heavy(cell).is_some()) {
                    session.prestart_heavy();
                }
                return Ok(Box::new(session));
            }
            Ok(Box::new(
                WasmExecutor::start(&engine, Default::default()).await?,
            ))
        }
        Backend::Namespace => {
            let config = NamespaceConfig {
                progress: Progress::new(|line| eprintln!("cellbox: {line}")),
                ..Default::default()
            };
            Ok(Box::new(NamespaceExecutor::start(config).await?))
        }
        Backend::Vm => {
            let config = MicroVmConfig {
                progress: Progress::new(|line| eprintln!("cellbox: {line}")),
                ..Default::default()
            };
            Ok(Box::new(MicroVmExecutor::start(config).await?))
        }
    }
}
