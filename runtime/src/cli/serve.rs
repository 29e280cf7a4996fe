//! `cellbox serve`: E2B's control plane and sandbox APIs for local
//! sandboxes.

use std::io::Write;
use std::net::IpAddr;

use clap::Args;

use crate::serve::api::key;
use crate::serve::{Access, ServeConfig, serve};
use crate::{BackendPolicy, Progress, SandboxOptions};

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
    /// Port of the control plane and all sandboxes' traffic (point E2B_API_URL and E2B_SANDBOX_URL here; 0: none).
    #[arg(long, default_value_t = crate::serve::DEFAULT_API_PORT)]
    api_port: u16,
    /// The key the control plane requires in X-API-Key (E2B_API_KEY); by default one made on first start and kept in ~/.config/cellbox/api-key.
    #[arg(long, env = "CELLBOX_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Where servers started in sandboxes are reached: {port}-{sandbox id}.{domain}, E2B's get_host(port) (default: localhost:{api port}; a name under localhost resolves to this machine).
    #[arg(long, value_name = "DOMAIN")]
    sandbox_domain: Option<String>,
    /// Where the API port's certificate authority for HTTPS is kept, made on first start (default: ~/.local/share/cellbox/tls; trust its ca.pem with SSL_CERT_FILE or NODE_EXTRA_CA_CERTS).
    #[arg(long, env = "CELLBOX_TLS_DIR", conflicts_with = "no_tls")]
    tls_dir: Option<std::path::PathBuf>,
    /// Serve plain HTTP only on the API port.
    #[arg(long)]
    no_tls: bool,
    /// Most sandboxes at once through the API.
    #[arg(long, default_value_t = 64)]
    max_sandboxes: usize,
    /// Namespace sandboxes kept started ahead of the next creates (where the namespace sandbox is the heavy backend).
    #[arg(long, default_value_t = 1)]
    spares: usize,
    /// Where snapshots are kept (default: ~/.local/share/cellbox/snapshots).
    #[arg(long, env = "CELLBOX_SNAPSHOT_DIR")]
    snapshot_dir: Option<std::path::PathBuf>,
    /// The file secrets are kept in, private (default: ~/.local/share/cellbox/secrets.json).
    #[arg(long, env = "CELLBOX_SECRETS_FILE")]
    secrets_file: Option<std::path::PathBuf>,
    /// Where volumes are kept (default: ~/.local/share/cellbox/volumes).
    #[arg(long, env = "CELLBOX_VOLUMES_DIR")]
    volumes_dir: Option<std::path::PathBuf>,
    /// Port of the debug sandbox's code-interpreter API (E2B's SDK uses 49999 with E2B_DEBUG=true; 0: no debug sandbox, nor its envd).
    #[arg(long, default_value_t = 49999)]
    port: u16,
    /// Port of the debug sandbox's envd, its files and commands (E2B's SDK uses 49983; 0: none).
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
    let api_key = match args.api_key {
        Some(key) => key,
        None => {
            let file = key::default_key_file();
            match key::load_or_create(&file) {
                Ok((key, created)) => {
                    if created {
                        let _ = writeln!(std::io::stdout().lock(), "{key}");
                        eprintln!(
                            "cellbox: a new API key (printed above) is kept in {}",
                            file.display()
                        );
                    }
                    key
                }
                Err(error) => {
                    eprintln!("cellbox: error: {error}");
                    return EXIT_SANDBOX_ERROR;
                }
            }
        }
    };
    let some = |port: u16| (port != 0).then_some(port);
    let config = ServeConfig {
        bind: args.bind,
        access,
        api_port: some(args.api_port),
        api_key,
        max_sandboxes: args.max_sandboxes,
        spares: args.spares,
        sandbox_domain: args.sandbox_domain,
        tls_dir: match args.no_tls {
            true => None,
            false => Some(
                args.tls_dir
                    .unwrap_or_else(|| crate::serve::data_dir().join("tls")),
            ),
        },
        snapshot_dir: args
            .snapshot_dir
            .unwrap_or_else(crate::serve::snapshots::default_snapshot_dir),
        secrets_file: args
            .secrets_file
            .unwrap_or_else(|| crate::serve::data_dir().join("secrets.json")),
        volumes_dir: args
            .volumes_dir
            .unwrap_or_else(|| crate::serve::data_dir().join("volumes")),
        code_port: some(args.port),
        // No debug sandbox, no envd for it.
        envd_port: some(args.envd_port).filter(|_| args.port != 0),
        sandbox,
    };
    if let Some(port) = config.api_port {
        eprintln!(
            "cellbox: E2B's API on http://{0}:{port}: E2B_API_URL=http://{0}:{port} E2B_SANDBOX_URL=http://{0}:{port} \
             E2B_API_KEY=<the key in ~/.config/cellbox/api-key, or --api-key>",
            args.bind
        );
        if let Some(dir) = &config.tls_dir {
            let ca = dir.join("ca.pem");
            eprintln!(
                "cellbox: HTTPS on the same port, with certificates of the local CA {0} for names under localhost \
                 (trust it: SSL_CERT_FILE={0} for Python, NODE_EXTRA_CA_CERTS={0} for Node.js); \
                 servers in sandboxes at http(s)://PORT-SANDBOXID.localhost:{port}",
                ca.display()
            );
        }
    }
    if let Some(port) = config.code_port {
        eprintln!(
            "cellbox: a debug sandbox (E2B_DEBUG=true) on port {port}, its envd on port {} (Ctrl-C stops)",
            args.envd_port
        );
    }
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
