//! envd, the agent inside E2B's sandboxes (their port 49983), served by a
//! cellbox [`Sandbox`]: what the SDKs' `sandbox.files` and `sandbox.commands`
//! send and expect.
//!
//! - [`connect`]: the Connect protocol (JSON, HTTP/1.1)
//! - [`filesystem`]: `POST /filesystem.Filesystem/{Stat,MakeDir,Move,ListDir,Remove}`
//! - [`watch`]: `POST /filesystem.Filesystem/{WatchDir,CreateWatcher,GetWatcherEvents,RemoveWatcher}`
//! - [`process`]: `POST /process.Process/{Start,Connect,List,SendInput,StreamInput,SendSignal,CloseStdin}`
//! - [`files`]: `GET /files` and `POST /files` (streamed transfers)
//! - `GET /health`: 204

pub mod connect;
pub mod files;
pub mod filesystem;
pub mod process;
pub mod watch;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use crate::sandbox::Sandbox;

/// Largest Connect request (stdin sent in one call, a path).
const RPC_BODY_LIMIT: usize = 16 << 20;

/// The state behind the routes.
#[derive(Debug, Clone)]
pub struct Envd {
    sandbox: Sandbox,
    processes: Arc<process::Processes>,
    watchers: Arc<watch::Watchers>,
}

/// The routes, serving `sandbox`.
pub fn router(sandbox: Sandbox) -> Router {
    let envd = Envd {
        sandbox,
        processes: Arc::default(),
        watchers: Arc::default(),
    };
    Router::new()
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/files",
            get(files::download)
                .post(files::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/filesystem.Filesystem/{method}", post(filesystem::call))
        .route("/process.Process/{method}", post(process::call))
        .layer(DefaultBodyLimit::max(RPC_BODY_LIMIT))
        .layer(middleware::from_fn(log_request))
        .with_state(envd)
}

/// One `tracing` event per request: method, path, status, time to answer.
async fn log_request(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    tracing::info!(%method, %path, status, elapsed = ?started.elapsed(), "envd request");
    response
}
