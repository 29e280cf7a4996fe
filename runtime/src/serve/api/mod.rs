//! E2B's control-plane API (`api.e2b.app`) for the sandboxes of one
//! `cellbox serve`: what the SDKs' `Sandbox.create`, `list`, `connect`,
//! `kill`, `set_timeout`, `pause`, `get_info`, `get_metrics`, `fork` and
//! `create_snapshot` call, `Secret`'s and `Volume`'s calls, and
//! the sandbox logs the CLI reads. Every route needs the server's API key
//! in `X-API-Key`, but for a volume's content (its own token).
//!
//! - [`sandboxes`]: the sandboxes' routes; [`snapshots`]: forks and snapshots;
//!   [`secrets`]: secrets (write-only values); [`volumes`]: volumes and
//!   their content
//! - [`model`]: their JSON

pub mod key;
pub mod model;
pub mod sandboxes;
pub mod secrets;
pub mod snapshots;
pub mod templates;
pub mod volumes;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};

use super::fleet::Fleet;
use super::guard::same_token;
use super::secrets::Secrets;
use super::snapshots::Snapshots;
use super::volumes::Volumes;

/// What the server keeps beyond its sandboxes.
#[derive(Debug, Clone)]
pub struct Stores {
    pub snapshots: Arc<Snapshots>,
    pub secrets: Arc<Secrets>,
    pub volumes: Arc<Volumes>,
}

/// The state behind the routes.
#[derive(Debug, Clone)]
pub struct Api {
    pub fleet: Arc<Fleet>,
    pub snapshots: Arc<Snapshots>,
    pub secrets: Arc<Secrets>,
    pub volumes: Arc<Volumes>,
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
        .route("/sandboxes/{id}/network", put(update_network))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/{id}/logs", get(logs_v1))
        .route("/v2/sandboxes/{id}/logs", get(logs_v2))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route("/sandboxes/{id}/snapshots", post(snapshots::take))
        .route("/snapshots", get(snapshots::list))
        .route("/secrets", post(secrets::create).get(secrets::list))
        .route(
            "/secrets/{key}",
            get(secrets::get)
                .post(secrets::update)
                .delete(secrets::destroy),
        )
        .route("/templates", get(templates::list))
        .route("/templates/{id}", delete(templates::delete))
        .route("/volumes", post(volumes::create).get(volumes::list))
        .route("/volumes/{id}", get(volumes::get).delete(volumes::destroy))
        .layer(middleware::from_fn_with_state(api.clone(), check_api_key))
        // The content API asks for each volume's own token instead.
        .route(
            "/volumecontent/{id}/path",
            get(volumes::stat)
                .patch(volumes::change)
                .delete(volumes::remove),
        )
        .route(
            "/volumecontent/{id}/dir",
            get(volumes::list_dir).post(volumes::make_dir),
        )
        .route(
            "/volumecontent/{id}/file",
            get(volumes::read).put(volumes::write),
        )
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
/// Most entries in one page of a list.
const PAGE_LIMIT: usize = 100;

/// The page of `items` that follows the item whose id is `token` (the
/// previous page's last), with an `x-next-token` header if more follow.
pub fn page<'a, T>(
    items: &'a [T],
    token: Option<&str>,
    limit: Option<usize>,
    id: impl Fn(&T) -> &str,
) -> (HeaderMap, &'a [T]) {
    let limit = limit.unwrap_or(PAGE_LIMIT).clamp(1, PAGE_LIMIT);
    let start = match token {
        Some(token) => items
            .iter()
            .position(|item| id(item) == token)
            .map_or(items.len(), |i| i + 1),
        None => 0,
    };
    let page = &items[start..items.len().min(start + limit)];
    let mut headers = HeaderMap::new();
    if start + page.len() < items.len()
        && let Some(last) = page.last()
        && let Ok(token) = HeaderValue::from_str(id(last))
    {
        headers.insert("x-next-token", token);
    }
    (headers, page)
}

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

impl From<super::refusal::Refusal> for ApiError {
    fn from(refusal: super::refusal::Refusal) -> ApiError {
        use super::refusal::Refusal::*;
        match refusal {
            Invalid(why) => ApiError::new(StatusCode::BAD_REQUEST, why),
            NotFound(why) => ApiError::new(StatusCode::NOT_FOUND, why),
            NameTaken(why) => ApiError::new(StatusCode::CONFLICT, why),
            Full(why) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, why),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = *self.0;
        let body = serde_json::json!({"code": status.as_u16(), "message": message});
        (status, axum::Json(body)).into_response()
    }
}
