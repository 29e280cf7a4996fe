//! E2B's control-plane API (`api.e2b.app`) for the sandboxes of one
//! `cellbox serve`: what the SDKs' `Sandbox.create`, `list`, `connect`,
//! `kill`, `set_timeout`, `pause`, `get_info` and `get_metrics` call, and
//! the sandbox logs the CLI reads. Every route needs the server's API key
//! in `X-API-Key`.
//!
//! - [`sandboxes`]: the routes
//! - [`model`]: their JSON

pub mod key;
pub mod model;
pub mod sandboxes;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::fleet::Fleet;
use super::guard::same_token;

/// The state behind the routes.
#[derive(Debug, Clone)]
pub struct Api {
    pub fleet: Arc<Fleet>,
    pub api_key: Arc<str>,
}

/// The control-plane routes.
pub fn router(api: Api) -> Router {
    use sandboxes::*;
    Router::new()
        .route("/sandboxes", post(create).get(list))
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(info).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/{id}/logs", get(logs_v1))
        .route("/v2/sandboxes/{id}/logs", get(logs_v2))
        .route("/sandboxes/{id}/fork", post(not_yet))
        .route("/sandboxes/{id}/snapshots", post(not_yet))
        .route("/snapshots", get(not_yet))
        .layer(middleware::from_fn_with_state(api.clone(), check_api_key))
        .with_state(api)
}

async fn check_api_key(State(api): State<Api>, request: Request, next: Next) -> Response {
    if !same_token(request.headers().get("x-api-key"), &api.api_key) {
        return error(
            StatusCode::UNAUTHORIZED,
            "a valid X-API-Key header is required (the key `cellbox serve` printed or was given)",
        );
    }
    next.run(request).await
}

/// E2B's error body: `{"code": status, "message": ...}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// A failed call, answered with E2B's error body.
#[derive(Debug)]
pub struct ApiError(Box<(StatusCode, String)>);

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(Box::new((status, message.into())))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = *self.0;
        let body = serde_json::json!({"code": status.as_u16(), "message": message});
        (status, axum::Json(body)).into_response()
    }
}
