//! The control plane's fork and snapshot routes (what a fork or snapshot
//! keeps: [`crate::sandbox::Snapshot`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::model::{
    ErrorBody, ForkRequest, ForkResult, SandboxCreated, SnapshotInfo, SnapshotRequest,
};
use super::sandboxes::{failed, find, parse, timeout};
use super::{Api, ApiError, error, page};
use crate::serve::fleet::{Entry, Spec, State as SandboxState};
use crate::serve::sandbox_log::Level;
use crate::serve::status::status_of;

/// Most forks one request makes (E2B: 20).
const MAX_FORKS: u32 = 20;
/// The forks' timeout when the request gives none (E2B's API default).
const FORK_TIMEOUT: u64 = 15;

/// A sandbox to snapshot: it must run (a paused one is resumed first).
fn running(api: &Api, id: &str) -> Result<std::sync::Arc<Entry>, ApiError> {
    let entry = find(api, id)?;
    if entry.state() == SandboxState::Paused {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is paused; resume or connect to it first"),
        ));
    }
    Ok(entry)
}

/// `POST /sandboxes/{id}/fork`: `count` copies of the sandbox, each its own
/// success or error ([`Fleet::fork`](crate::serve::fleet::Fleet::fork):
/// whole copies on the microVM, else its files and Python state).
pub async fn fork(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> Response {
    let request: ForkRequest = match parse(&body) {
        Ok(request) => request,
        Err(response) => return response.into_response(),
    };
    let count = request.count.unwrap_or(1);
    if !(1..=MAX_FORKS).contains(&count) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("count {count}: between 1 and {MAX_FORKS} forks at once"),
        );
    }
    let timeout = match timeout(Some(request.timeout.unwrap_or(FORK_TIMEOUT))) {
        Ok(timeout) => timeout,
        Err(response) => return response.into_response(),
    };
    let parent = match running(&api, &id) {
        Ok(parent) => parent,
        Err(response) => return response.into_response(),
    };
    let spec = Spec {
        timeout,
        network: parent.network(),
        ..parent.spec.clone()
    };
    let forks = api
        .fleet
        .fork(&parent, spec, count, || api.snapshots.scratch_dir())
        .await;
    let forks = match forks {
        Ok(forks) => forks,
        Err(e) => return failed(&e),
    };
    let results: Vec<ForkResult> = forks
        .into_iter()
        .map(|created| match created {
            Ok(entry) => {
                parent
                    .log
                    .push(Level::Info, format!("forked into sandbox {}", entry.id));
                ForkResult {
                    sandbox: Some(SandboxCreated::of(&entry, api.fleet.domain())),
                    error: None,
                }
            }
            Err(e) => ForkResult {
                sandbox: None,
                error: Some(ErrorBody {
                    code: status_of(&e).as_u16(),
                    message: e.to_string(),
                }),
            },
        })
        .collect();
    (StatusCode::CREATED, Json(results)).into_response()
}

/// `POST /sandboxes/{id}/snapshots`.
pub async fn take(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> Response {
    let request: SnapshotRequest = match parse(&body) {
        Ok(request) => request,
        Err(response) => return response.into_response(),
    };
    let entry = match running(&api, &id) {
        Ok(entry) => entry,
        Err(response) => return response.into_response(),
    };
    match api.snapshots.take(&entry, request.name).await {
        Ok(kept) => {
            if request.memory == Some(true) && !kept.snapshot.whole() {
                entry.log.push(
                    Level::Warn,
                    "a memory snapshot was asked for; off the microVM cellbox keeps files and Python state, not processes",
                );
            }
            entry.log.push(
                Level::Info,
                format!("snapshot {} taken", kept.label.reference()),
            );
            (StatusCode::CREATED, Json(SnapshotInfo::of(&kept.label))).into_response()
        }
        Err(e) => failed(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
    next_token: Option<String>,
    limit: Option<usize>,
}

/// `GET /snapshots`: oldest first, in pages.
pub async fn list(State(api): State<Api>, Query(query): Query<ListQuery>) -> Response {
    let matching = api
        .snapshots
        .list(query.sandbox_id.as_deref(), query.name.as_deref());
    let (headers, page) = page(&matching, query.next_token.as_deref(), query.limit, |k| {
        &k.label.id
    });
    let page: Vec<SnapshotInfo> = page.iter().map(|k| SnapshotInfo::of(&k.label)).collect();
    (headers, Json(page)).into_response()
}
