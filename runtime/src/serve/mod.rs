//! `cellbox serve`: a local, offline stand-in for E2B — its control plane
//! and the APIs inside its sandboxes — so that the unmodified E2B SDKs run
//! their code in cellbox sandboxes, many at once.
//!
//! - [`api`]: the control plane (`/sandboxes`, …) on the API port, with
//!   the server's API key; [`fleet`] holds the sandboxes and their
//!   timeouts; [`sandbox_log`] what each did; [`snapshots`] the snapshots
//!   kept in the server's folder.
//! - [`gateway`]: sandbox traffic on the same port, routed by E2B's
//!   `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers or by host name, with each
//!   sandbox's token; [`ports`]: servers started in sandboxes.
//! - [`code_interpreter`]: `GET /health`, `POST /execute` (a stream of JSON
//!   lines), `POST/GET /contexts`, `POST /contexts/{id}/restart`,
//!   `DELETE /contexts/{id}` — E2B's port 49999.
//! - [`envd`]: files and commands over Connect RPC and `/files` — E2B's port
//!   49983.
//! - Debug mode (`E2B_DEBUG=true`): one default sandbox on the fixed ports
//!   49999 and 49983.
//! - [`tls`]: HTTPS on the API port too, with the server's own CA.
//! - [`volumes`]: volumes kept by the server, mounted into namespace
//!   sandboxes; [`volume_files`]: their content, reached safely.
//! - [`guard`]: all of it for this machine's programs only (`Host`,
//!   `Origin`, the optional access token); [`status`]: one mapping from
//!   errors to HTTP statuses.

pub mod api;
mod clock;
pub mod code_interpreter;
pub mod envd;
pub mod fleet;
pub mod gateway;
pub mod guard;
pub mod ports;
pub mod refusal;
pub mod reset;
pub mod sandbox_log;
pub mod secrets;
mod signed_url;
pub mod snapshots;
pub mod status;
pub mod tls;
pub mod volume_files;
pub mod volumes;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::middleware;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tower_http::timeout::RequestBodyTimeoutLayer;

pub use guard::Access;

use crate::error::{Error, Result};
use crate::sandbox::{Sandbox, SandboxOptions};

/// How long open requests may go on after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a request body (an upload, say) may stall before the request
/// fails: a client that stops sending holds nothing for longer.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The API port's default (`E2B_API_URL` and `E2B_SANDBOX_URL` point here).
pub const DEFAULT_API_PORT: u16 = 49980;

/// Where and what to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The address to listen on (loopback by default; beyond it only with an
    /// access token).
    pub bind: IpAddr,
    /// Who may call beyond this machine's own programs.
    pub access: Access,
    /// The control plane and sandbox traffic's port; `None`: none.
    pub api_port: Option<u16>,
    /// The key every control-plane request must carry in `X-API-Key`.
    pub api_key: String,
    /// Most sandboxes at once through the API.
    pub max_sandboxes: usize,
    /// Where snapshots are kept (they outlive the server).
    pub snapshot_dir: std::path::PathBuf,
    /// The file secrets are kept in (they outlive the server).
    pub secrets_file: std::path::PathBuf,
    /// Where volumes are kept (they outlive the server).
    pub volumes_dir: std::path::PathBuf,
    /// The debug sandbox's code-interpreter port (E2B's SDK expects 49999
    /// in debug mode); `None`: no debug sandbox.
    pub code_port: Option<u16>,
    /// The debug sandbox's envd port (E2B's SDK expects 49983); `None`: none.
    pub envd_port: Option<u16>,
    /// Options of every sandbox.
    pub sandbox: SandboxOptions,
    /// Where the API port's certificate authority is kept (HTTPS beside
    /// HTTP, [`tls`]); `None`: HTTP only.
    pub tls_dir: Option<std::path::PathBuf>,
    /// Where the sandboxes' own servers are reached: `{port}-{id}.{domain}`
    /// (E2B's sandbox domain); `None`: `localhost:{api port}`.
    pub sandbox_domain: Option<String>,
    /// Spare sandboxes kept running for the next creates, where the heavy
    /// backend is the namespace sandbox ([`crate::NamespacePool`]; 0: none).
    pub spares: usize,
}

impl ServeConfig {
    /// Serves on the default ports with `api_key`.
    pub fn new(api_key: impl Into<String>) -> ServeConfig {
        ServeConfig {
            bind: IpAddr::from([127, 0, 0, 1]),
            access: Access::default(),
            api_port: Some(DEFAULT_API_PORT),
            api_key: api_key.into(),
            max_sandboxes: 64,
            snapshot_dir: data_dir().join("snapshots"),
            secrets_file: data_dir().join("secrets.json"),
            volumes_dir: data_dir().join("volumes"),
            code_port: Some(49999),
            envd_port: Some(49983),
            sandbox: SandboxOptions::default().with_inactivity_timeout(None),
            sandbox_domain: None,
            tls_dir: Some(data_dir().join("tls")),
            spares: 1,
        }
    }
}

/// Serves until `shutdown` resolves, then kills every sandbox.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.access.check_bind(config.bind)?;
    if config.api_key.len() < 16 {
        return Err(Error::InvalidArgument(
            "the API key must be at least 16 characters".into(),
        ));
    }
    let shutdown = shutdown.boxed().shared();
    let mut config = config;
    let pooled = config.sandbox.template.is_none() && config.sandbox.heavy_is_namespace();
    if config.spares > 0 && pooled && config.sandbox.namespace_pool.is_none() {
        let spares = config.sandbox.namespace_config(Vec::new());
        let pool = crate::NamespacePool::new(spares, config.spares);
        config.sandbox.namespace_pool = Some(Arc::new(pool));
    }
    let fleet = fleet::Fleet::new(config.sandbox.clone(), config.max_sandboxes);
    let debug = match config.code_port.is_some() || config.envd_port.is_some() {
        true => Some(Sandbox::create(config.sandbox.clone()).await?),
        false => None,
    };
    let guarded = |router: axum::Router, access: &Access| {
        guard::guard(router, access, config.bind)
            .layer(RequestBodyTimeoutLayer::new(BODY_IDLE_TIMEOUT))
    };
    let mut servers: Vec<BoxFuture<'static, Result<()>>> = Vec::new();
    if let Some(port) = config.api_port {
        let snapshots = Arc::new(snapshots::Snapshots::open(&config.snapshot_dir)?);
        let secrets = Arc::new(secrets::Secrets::open(&config.secrets_file)?);
        let volumes = Arc::new(volumes::Volumes::open(&config.volumes_dir)?);
        let stores = api::Stores {
            snapshots,
            secrets,
            volumes,
        };
        let api = api_app(fleet.clone(), stores, &config.api_key);
        // Sandbox traffic carries each sandbox's own token, the control
        // plane the API key: the server's access token is not asked for.
        let access = Access {
            token: None,
            ..config.access.clone()
        };
        let app = guarded(api, &access);
        let mut listener = listen(SocketAddr::new(config.bind, port)).await?;
        if let Some(dir) = &config.tls_dir {
            let ca = Arc::new(crate::tls::CertAuthority::open(dir)?);
            tracing::info!(ca = %dir.join("ca.pem").display(), "HTTPS too on the API port");
            listener.tls = Some(ca.acceptor());
        }
        let port = listener.local_port()?;
        fleet.set_domain(match &config.sandbox_domain {
            Some(domain) => domain.clone(),
            None => format!("localhost:{port}"),
        });
        servers.push(serve_on(listener, "the API", app, shutdown.clone()));
    }
    if let Some(debug) = &debug {
        let access = &config.access;
        if let Some(port) = config.code_port {
            let app = guarded(code_interpreter::router(debug.clone()), access);
            servers.push(
                server(
                    "the debug code-interpreter API",
                    config.bind,
                    port,
                    app,
                    shutdown.clone(),
                )
                .await?,
            );
        }
        if let Some(port) = config.envd_port {
            let app = guarded(envd::router(debug.clone()), access);
            servers.push(server("the debug envd", config.bind, port, app, shutdown.clone()).await?);
        }
    }
    let all = futures_util::future::try_join_all(servers).map(|r| r.map(drop));
    // Requests still open (a command's stream, a long cell) get a grace
    // period after the signal; then the sandboxes close under them.
    let served = tokio::select! {
        served = all => served,
        () = async { shutdown.await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("requests still open {SHUTDOWN_GRACE:?} after the shutdown signal; closing the sandboxes");
            Ok(())
        }
    };
    fleet.kill_all().await;
    let closed = match debug {
        Some(debug) => debug.close().await,
        None => Ok(()),
    };
    served.and(closed)
}

/// The API port's routes: sandbox traffic (by its headers) to `fleet`'s
/// sandboxes, everything else to the control plane.
pub fn api_app(fleet: Arc<fleet::Fleet>, stores: api::Stores, api_key: &str) -> axum::Router {
    api::router(api::Api {
        fleet: fleet.clone(),
        snapshots: stores.snapshots,
        secrets: stores.secrets,
        volumes: stores.volumes,
        api_key: Arc::from(api_key),
    })
    .layer(middleware::from_fn_with_state(fleet, gateway::route))
}

/// Listens on `port` and serves `app` until `shutdown`.
async fn server(
    what: &'static str,
    bind: IpAddr,
    port: u16,
    app: axum::Router,
    shutdown: futures_util::future::Shared<BoxFuture<'static, ()>>,
) -> Result<BoxFuture<'static, Result<()>>> {
    let listener = listen(SocketAddr::new(bind, port)).await?;
    Ok(serve_on(listener, what, app, shutdown))
}

/// Serves `app` on `listener` until `shutdown`.
fn serve_on(
    listener: reset::ResettingListener,
    what: &'static str,
    app: axum::Router,
    shutdown: futures_util::future::Shared<BoxFuture<'static, ()>>,
) -> BoxFuture<'static, Result<()>> {
    if let Ok(address) = listener.listener.local_addr() {
        tracing::info!(%address, "{what} listening");
    }
    async move {
        let app = app.into_make_service_with_connect_info::<reset::Reset>();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::io(format!("serving {what}"), e))
    }
    .boxed()
}

/// A listener whose connections send small writes (JSON lines, stream
/// frames) at once (with Nagle's algorithm each answer waited ~40 ms for the
/// client's delayed ACK), and which a request may end with a reset.
async fn listen(address: SocketAddr) -> Result<reset::ResettingListener> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::io(format!("listening on {address}"), e))?;
    Ok(reset::ResettingListener {
        listener,
        tls: None,
    })
}

/// `N` random bytes from the kernel, for `what` (a token, an id).
pub(crate) fn random_bytes<const N: usize>(what: &str) -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| std::io::Read::read_exact(&mut random, &mut bytes))
        .map_err(|e| Error::io(format!("reading /dev/urandom for {what}"), e))?;
    Ok(bytes)
}

/// 20 random lower-case letters and digits, for `what` (a sandbox id, like
/// E2B's; a volume's id and token).
pub(crate) fn random_id(what: &str) -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let bytes: [u8; 20] = random_bytes(what)?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

/// Where the server keeps what outlives it (snapshots, secrets):
/// `$XDG_DATA_HOME/cellbox`, else `~/.local/share/cellbox`.
pub fn data_dir() -> std::path::PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".local/share"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from("/var/tmp"))
        .join("cellbox")
}
