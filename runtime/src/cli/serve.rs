//! `cellbox serve`: E2B's code-interpreter API for one local sandbox.

use std::io::Write;
use std::net::IpAddr;

use clap::Args;

use cellbox::serve::{Access, ServeConfig, serve};
use cellbox::{BackendPolicy, Progress, SandboxOptions};

use super::run::BackendChoice;
use super::{EXIT_OK, EXIT_SANDBOX_ERROR};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Which backends the sandbox may use.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Address to listen on; beyond loopback only with an access token.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Require this token in every request's X-Access-Token header.
    #[arg(long, env = "CELLBOX_ACCESS_TOKEN", hide_env_values = true)]
    access_token: Option<String>,
    /// Generate an access token, print it, and require it.
    #[arg(long, conflicts_with = "access_token")]
    secure: bool,
    /// A web origin (e.g. http://localhost:3000) whose pages may call the API; repeatable.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// A host name this machine is reached by, beyond localhost and the bound address; repeatable.
    #[arg(long = "allow-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Port of the code-interpreter API (E2B's SDK uses 49999 in debug mode).
    #[arg(long, default_value_t = 49999)]
    port: u16,
    /// Port of envd, the files and commands API (E2B's SDK uses 49983; 0: none).
    #[arg(long, default_value_t = 49983)]
    envd_port: u16,
}

pub async fn run(args: ServeArgs) -> u8 {
    let backend = match args.backend {
        BackendChoice::Auto => BackendPolicy::Auto,
        BackendChoice::Wasm => BackendPolicy::Wasm,
        BackendChoice::Vm => BackendPolicy::Vm,
        BackendChoice::Namespace => BackendPolicy::Namespace,
    };
    let mut sandbox = SandboxOptions::default()
        .with_backend(backend)
        .with_inactivity_timeout(None);
    sandbox.progress = Progress::new(|line| eprintln!("cellbox: {line}"));
    let token = match (args.access_token, args.secure) {
        (Some(token), _) => Some(token),
        (None, true) => match Access::generate_token() {
            Ok(token) => {
                let _ = writeln!(std::io::stdout().lock(), "{token}");
                eprintln!("cellbox: the access token (send it as X-Access-Token) is printed above");
                Some(token)
            }
            Err(error) => {
                eprintln!("cellbox: error: {error}");
                return EXIT_SANDBOX_ERROR;
            }
        },
        (None, false) => None,
    };
    let access = Access {
        token,
        allowed_origins: args.allowed_origins,
        allowed_hosts: args.allowed_hosts,
    };
    let config = ServeConfig {
        bind: args.bind,
        access,
        code_port: args.port,
        envd_port: (args.envd_port != 0).then_some(args.envd_port),
        sandbox,
    };
    eprintln!(
        "cellbox: serving E2B's code-interpreter API on http://{}:{} and envd on port {} (Ctrl-C stops)",
        args.bind, args.port, args.envd_port
    );
    match serve(config, shutdown_signal()).await {
        Ok(()) => EXIT_OK,
        Err(error) => {
            eprintln!("cellbox: error: {error}");
            EXIT_SANDBOX_ERROR
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
