//! `cellbox serve`: a local, offline stand-in for the HTTP API that E2B's
//! code-interpreter SDK talks to inside a sandbox, so that the unmodified SDK
//! (with `E2B_DEBUG=true`) runs its code in a cellbox [`Sandbox`].
//!
//! - [`code_interpreter`]: `GET /health`, `POST /execute` (a stream of JSON
//!   lines), `POST/GET /contexts`, `POST /contexts/{id}/restart`,
//!   `DELETE /contexts/{id}` — E2B's port 49999.
//! - [`envd`]: files and commands over Connect RPC and `/files` — E2B's port
//!   49983.
//! - [`guard`]: both for this machine's programs only (`Host`, `Origin`,
//!   the optional access token).

mod clock;
pub mod code_interpreter;
pub mod envd;
pub mod guard;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::serve::{Listener, ListenerExt as _};
use futures_util::FutureExt as _;
use tower_http::timeout::RequestBodyTimeoutLayer;

pub use guard::Access;

use crate::error::{Error, Result};
use crate::sandbox::{Sandbox, SandboxOptions};

/// How long open requests may go on after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a request body (an upload, say) may stall before the request
/// fails: a client that stops sending holds nothing for longer.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and what to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The address to listen on (loopback by default; beyond it only with an
    /// access token).
    pub bind: IpAddr,
    /// Who may call beyond this machine's own programs.
    pub access: Access,
    /// The code-interpreter API's port (E2B's SDK expects 49999).
    pub code_port: u16,
    /// envd's port (E2B's SDK expects 49983); `None` serves no envd.
    pub envd_port: Option<u16>,
    /// The sandbox behind it.
    pub sandbox: SandboxOptions,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: IpAddr::from([127, 0, 0, 1]),
            access: Access::default(),
            code_port: 49999,
            envd_port: Some(49983),
            sandbox: SandboxOptions::default().with_inactivity_timeout(None),
        }
    }
}

/// Serves one sandbox until `shutdown` resolves, then closes it.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.access.check_bind(config.bind)?;
    let code_address = SocketAddr::new(config.bind, config.code_port);
    let code_listener = listen(code_address).await?;
    let envd_listener = match config.envd_port {
        Some(port) => Some(listen(SocketAddr::new(config.bind, port)).await?),
        None => None,
    };
    let sandbox = Sandbox::create(config.sandbox.clone()).await?;
    let shutdown = shutdown.boxed().shared();
    let guarded = |router: axum::Router| {
        guard::guard(router, &config.access, config.bind)
            .layer(RequestBodyTimeoutLayer::new(BODY_IDLE_TIMEOUT))
    };
    tracing::info!(address = %code_address, "code-interpreter API listening");
    let code = axum::serve(
        code_listener,
        guarded(code_interpreter::router(sandbox.clone())),
    )
    .with_graceful_shutdown(shutdown.clone())
    .into_future()
    .map(|served| served.map_err(|e| Error::io("serving the code-interpreter API", e)));
    let envd_shutdown = shutdown.clone();
    let envd = async {
        let Some(listener) = envd_listener else {
            return Ok(());
        };
        tracing::info!(address = ?listener.local_addr().ok(), "envd listening");
        axum::serve(listener, guarded(envd::router(sandbox.clone())))
            .with_graceful_shutdown(envd_shutdown)
            .await
            .map_err(|e| Error::io("serving envd", e))
    };
    let servers = async { tokio::try_join!(code, envd).map(drop) };
    // Requests still open (a command's stream, a long cell) get a grace
    // period after the signal; then the sandbox closes under them.
    let served = tokio::select! {
        served = servers => served,
        () = async { shutdown.await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("requests still open {SHUTDOWN_GRACE:?} after the shutdown signal; closing the sandbox");
            Ok(())
        }
    };
    let closed = sandbox.close().await;
    served.and(closed)
}

/// A listener whose connections send small writes (JSON lines, stream
/// frames) at once: with Nagle's algorithm each answer waited ~40 ms for the
/// client's delayed ACK.
async fn listen(address: SocketAddr) -> Result<impl Listener<Addr = SocketAddr>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::io(format!("listening on {address}"), e))?;
    Ok(listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "could not set TCP_NODELAY");
        }
    }))
}
