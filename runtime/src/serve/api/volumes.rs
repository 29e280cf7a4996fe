//! E2B's volume routes: the control plane's `/volumes` (with the API key)
//! and the content API `/volumecontent/{id}/…` (with the volume's own token,
//! `Authorization: Bearer …`), which reads and writes a volume's files
//! whether or not a sandbox has it mounted ([`crate::serve::volume_files`]).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use super::sandboxes::parse;
use super::{Api, ApiError, error};
use crate::serve::volume_files::{EntryStat, NewEntry, VolumeRoot};
use crate::serve::volumes::{Refusal, Volume};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVolume {
    name: String,
}

/// E2B's `VolumeAndToken`.
fn with_token(volume: &Volume, domain: Option<&str>) -> serde_json::Value {
    let mut body = json!({"volumeID": volume.id, "name": volume.name, "token": volume.token()});
    if let Some(domain) = domain {
        body["domain"] = json!(domain);
    }
    body
}

fn refused(refusal: Refusal) -> ApiError {
    ApiError::from(refusal)
}

/// `POST /volumes`.
pub async fn create(State(api): State<Api>, body: Bytes) -> Response {
    let request: NewVolume = match parse(&body) {
        Ok(request) => request,
        Err(response) => return response.into_response(),
    };
    match api.volumes.create(&request.name) {
        Ok(volume) => {
            let body = with_token(&volume, api.fleet.domain());
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(refusal) => refused(refusal).into_response(),
    }
}

/// `GET /volumes`.
pub async fn list(State(api): State<Api>) -> Response {
    let all: Vec<_> = api
        .volumes
        .list()
        .iter()
        .map(|v| json!({"volumeID": v.id, "name": v.name}))
        .collect();
    Json(all).into_response()
}

/// `GET /volumes/{id}`.
pub async fn get(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.volumes.get(&id) {
        Ok(volume) => Json(with_token(&volume, api.fleet.domain())).into_response(),
        Err(refusal) => refused(refusal).into_response(),
    }
}

/// `DELETE /volumes/{id}`: refused while a sandbox has it mounted.
pub async fn destroy(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let volume = match api.volumes.get(&id) {
        Ok(volume) => volume,
        Err(refusal) => return refused(refusal).into_response(),
    };
    let folder = api.volumes.folder(&volume.id);
    let users: Vec<String> = api
        .fleet
        .list()
        .iter()
        .filter(|e| e.spec.volumes.iter().any(|v| v.mount.source == folder))
        .map(|e| e.id.clone())
        .collect();
    if !users.is_empty() {
        let message = format!("volume {id} is mounted by sandboxes {}", users.join(", "));
        return error(StatusCode::CONFLICT, message);
    }
    match api.volumes.destroy(&volume.id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) => refused(refusal).into_response(),
    }
}

/// The query of every content route.
#[derive(Debug, Deserialize)]
pub struct ContentQuery {
    path: String,
    depth: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
    force: Option<bool>,
}

impl ContentQuery {
    fn new_entry(&self) -> NewEntry {
        NewEntry {
            uid: self.uid,
            gid: self.gid,
            mode: self.mode,
        }
    }
}

/// `PATCH /volumecontent/{id}/path`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
}

/// The volume a content request is for, opened once its bearer token is
/// shown.
#[derive(Debug)]
pub struct Opened(VolumeRoot);

impl FromRequestParts<Api> for Opened {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Opened, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, api)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        let volume = api.volumes.get(&id).map_err(refused)?;
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if volume.id != id || !bearer.is_some_and(|token| volume.token_is(token)) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("volume {id}: its token is required (Authorization: Bearer ...)"),
            ));
        }
        let root = VolumeRoot::open(&api.volumes.folder(&volume.id)).map_err(|e| failed(&e))?;
        Ok(Opened(root))
    }
}

/// An error of the file system as E2B's answer.
fn failed(e: &std::io::Error) -> ApiError {
    use std::io::ErrorKind::*;
    let status = match e.kind() {
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | DirectoryNotEmpty => StatusCode::CONFLICT,
        InvalidInput | NotADirectory | IsADirectory | InvalidFilename => StatusCode::BAD_REQUEST,
        _ if e.raw_os_error() == Some(libc::ELOOP) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}

fn stat_answer(status: StatusCode, stat: std::io::Result<EntryStat>) -> Response {
    match stat {
        Ok(stat) => (status, Json(stat)).into_response(),
        Err(e) => failed(&e).into_response(),
    }
}

/// Runs blocking file work off the async threads (a panic in it is this
/// request's error, not the server's end).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let done = tokio::task::spawn_blocking(work).await;
    done.unwrap_or_else(|e| {
        Err(std::io::Error::other(format!(
            "volume file work failed: {e}"
        )))
    })
}

/// `GET /volumecontent/{id}/path`.
pub async fn stat(Opened(root): Opened, Query(query): Query<ContentQuery>) -> Response {
    stat_answer(
        StatusCode::OK,
        blocking(move || root.stat(&query.path)).await,
    )
}

/// `PATCH /volumecontent/{id}/path`.
pub async fn change(
    Opened(root): Opened,
    Query(query): Query<ContentQuery>,
    body: Bytes,
) -> Response {
    let change: Change = match parse(&body) {
        Ok(change) => change,
        Err(response) => return response.into_response(),
    };
    let new = NewEntry {
        uid: change.uid,
        gid: change.gid,
        mode: change.mode,
    };
    stat_answer(
        StatusCode::OK,
        blocking(move || root.set(&query.path, new)).await,
    )
}

/// `DELETE /volumecontent/{id}/path`.
pub async fn remove(Opened(root): Opened, Query(query): Query<ContentQuery>) -> Response {
    match blocking(move || root.remove(&query.path)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(&e).into_response(),
    }
}

/// `GET /volumecontent/{id}/dir`.
pub async fn list_dir(Opened(root): Opened, Query(query): Query<ContentQuery>) -> Response {
    let depth = query.depth.unwrap_or(1);
    match blocking(move || root.list(&query.path, depth)).await {
        Ok(entries) => Json(entries).into_response(),
        Err(e) => failed(&e).into_response(),
    }
}

/// `POST /volumecontent/{id}/dir`.
pub async fn make_dir(Opened(root): Opened, Query(query): Query<ContentQuery>) -> Response {
    let (new, parents) = (query.new_entry(), query.force == Some(true));
    let made = blocking(move || root.make_dir(&query.path, new, parents)).await;
    stat_answer(StatusCode::CREATED, made)
}

/// `GET /volumecontent/{id}/file`: the file, streamed.
pub async fn read(Opened(root): Opened, Query(query): Query<ContentQuery>) -> Response {
    let file = match blocking(move || root.open_read(&query.path)).await {
        Ok(file) => file,
        Err(e) => return failed(&e).into_response(),
    };
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `PUT /volumecontent/{id}/file`: written aside, renamed into place once
/// whole (a broken upload changes nothing).
pub async fn write(
    Opened(root): Opened,
    Query(query): Query<ContentQuery>,
    request: Request,
) -> Response {
    let path = query.path.clone();
    let pending = match blocking(move || root.start_write(&path)).await {
        Ok(pending) => pending,
        Err(e) => return failed(&e).into_response(),
    };
    let mut out = match pending.file.try_clone() {
        Ok(file) => tokio::fs::File::from_std(file),
        Err(e) => {
            let _ = blocking(move || pending.abandon()).await;
            return failed(&e).into_response();
        }
    };
    let mut body = request.into_body().into_data_stream();
    let mut written = Ok(());
    while let Some(chunk) = body.next().await {
        written = match chunk {
            Ok(chunk) => out.write_all(&chunk).await,
            Err(e) => Err(std::io::Error::other(format!("the upload broke off: {e}"))),
        };
        if written.is_err() {
            break;
        }
    }
    if written.is_ok() {
        written = out.flush().await;
    }
    drop(out);
    if let Err(e) = written {
        let _ = blocking(move || pending.abandon()).await;
        return failed(&e).into_response();
    }
    let new = query.new_entry();
    stat_answer(
        StatusCode::CREATED,
        blocking(move || pending.finish(new)).await,
    )
}
