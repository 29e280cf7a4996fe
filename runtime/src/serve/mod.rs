//! `cellbox serve`: a local, offline stand-in for the HTTP API that E2B's
//! code-interpreter SDK talks to inside a sandbox, so that the unmodified SDK
//! (with `E2B_DEBUG=true`) runs its code in a cellbox [`Sandbox`].
//!
//! - [`code_interpreter`]: `GET /health`, `POST /execute` (a stream of JSON
//!   lines), `POST/GET /contexts`, `POST /contexts/{id}/restart`,
//!   `DELETE /contexts/{id}` — E2B's port 49999.

pub mod code_interpreter;

use std::net::{IpAddr, SocketAddr};

use crate::error::{Error, Result};
use crate::sandbox::{Sandbox, SandboxOptions};

/// Where and what to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The address to listen on (loopback by default: the API has no authentication).
    pub bind: IpAddr,
    /// The code-interpreter API's port (E2B's SDK expects 49999).
    pub code_port: u16,
    /// The sandbox behind it.
    pub sandbox: SandboxOptions,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: IpAddr::from([127, 0, 0, 1]),
            code_port: 49999,
            sandbox: SandboxOptions::default().with_inactivity_timeout(None),
        }
    }
}

/// Serves one sandbox until `shutdown` resolves, then closes it.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let sandbox = Sandbox::create(config.sandbox.clone()).await?;
    let address = SocketAddr::new(config.bind, config.code_port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::io(format!("listening on {address}"), e))?;
    tracing::info!(%address, "code-interpreter API listening");
    let app = code_interpreter::router(sandbox.clone());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serving the code-interpreter API", e));
    let closed = sandbox.close().await;
    served.and(closed)
}
