//! The control plane's sandbox routes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::model::{
    ConnectRequest, LogLine, Metric, NO_EGRESS_PROXY, NetworkUpdate, NewSandbox, RefreshRequest,
    SandboxCreated, SandboxInfo, TimeoutRequest, state_name,
};
use super::{Api, ApiError, error, page};
use crate::serve::clock::parse_rfc3339;
use crate::serve::fleet::{Entry, Fleet, Missing, MountedVolume, OnTimeout, Spec, State as Run};
use crate::serve::sandbox_log::Level;
use crate::serve::status::status_of;
use crate::template::TemplateStore;

/// The template names the SDKs use by default; each means cellbox's one
/// template (Python with numpy, pandas, matplotlib; the E2B API's shape).
pub const TEMPLATES: &[&str] = &[
    "base",
    "code-interpreter-v1",
    "code-interpreter",
    "code-interpreter-beta",
    "cellbox",
];
/// A sandbox's timeout when the request gives none (E2B's SDK default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest timeout (E2B: 24 hours).
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

pub(super) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

pub(super) fn timeout(seconds: Option<u64>) -> Result<Duration, ApiError> {
    let timeout = seconds.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    if timeout > MAX_TIMEOUT {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "timeout {}s is past the maximum of {}s",
                timeout.as_secs(),
                MAX_TIMEOUT.as_secs()
            ),
        ));
    }
    Ok(timeout)
}

pub(super) fn find(api: &Api, id: &str) -> Result<std::sync::Arc<Entry>, ApiError> {
    api.fleet.get(id).map_err(|missing| {
        let why = match missing {
            Missing::Ended => "it was killed or reached its timeout",
            Missing::Unknown => "no such sandbox",
        };
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("sandbox {id} not found ({why})"),
        )
    })
}

pub(super) fn failed(error_: &crate::Error) -> Response {
    error(status_of(error_), error_.to_string())
}

pub async fn create(State(api): State<Api>, body: Bytes) -> Response {
    let request: NewSandbox = match parse(&body) {
        Ok(request) => request,
        Err(response) => return response.into_response(),
    };
    let (snapshot, custom_template) = if TEMPLATES.contains(&request.template_id.as_str()) {
        (None, None)
    } else if let Some(kept) = api.snapshots.find(&request.template_id) {
        (Some(kept.snapshot.clone()), None)
    } else if TemplateStore::open(&crate::default_cache_dir())
        .get(&request.template_id)
        .is_ok()
    {
        (None, Some(request.template_id.clone()))
    } else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "template {:?} not found; this server has its default template (named any of {}), the templates built with `cellbox template build`, and its snapshots",
                request.template_id,
                TEMPLATES.join(", ")
            ),
        );
    };
    let timeout = match timeout(request.timeout) {
        Ok(timeout) => timeout,
        Err(response) => return response.into_response(),
    };
    let auto_pause = request.auto_pause.unwrap_or(false);
    let auto_resume = request.auto_resume.as_ref().is_some_and(|a| a.enabled());
    if auto_resume && !auto_pause {
        return error(
            StatusCode::BAD_REQUEST,
            "autoResume needs autoPause (a sandbox that is killed at its timeout cannot resume)",
        );
    }
    if request
        .network
        .as_ref()
        .is_some_and(|n| n.egress.egress_proxy.is_some())
    {
        return error(StatusCode::BAD_REQUEST, NO_EGRESS_PROXY);
    }
    let network = request.network_policy(secret_source(&api));
    if let Err(e) = network.check() {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let public_traffic = request.public_traffic();
    let mask_request_host = request.mask_request_host();
    let mut volumes = Vec::new();
    for mount in &request.volume_mounts {
        let checked = cellbox_guest_init::launch::Volume::new(String::new(), mount.path.clone());
        if let Err(why) = checked {
            return error(StatusCode::BAD_REQUEST, why);
        }
        match api.volumes.get(&mount.name) {
            Ok(volume) => volumes.push(MountedVolume {
                mount: crate::VolumeMount {
                    source: api.volumes.folder(&volume.id),
                    target: mount.path.clone(),
                },
                name: volume.name,
            }),
            Err(_) => {
                let message = format!("volume {} not found", mount.name);
                return error(StatusCode::NOT_FOUND, message);
            }
        }
    }
    let spec = Spec {
        template: request.template_id,
        timeout,
        on_timeout: if auto_pause {
            OnTimeout::Pause
        } else {
            OnTimeout::Kill
        },
        auto_resume,
        metadata: request.metadata,
        network,
        public_traffic,
        mask_request_host,
        volumes,
        env_vars: request.env_vars,
        custom_template,
        snapshot,
    };
    match api.fleet.create(spec).await {
        Ok(entry) => (
            StatusCode::CREATED,
            Json(SandboxCreated::of(&entry, api.fleet.domain())),
        )
            .into_response(),
        Err(e) => failed(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// `k=v&k2=v2`, URL-encoded.
    metadata: Option<String>,
    /// `running,paused`.
    state: Option<String>,
    /// `asc` (oldest first) or `desc` (newest first, the default).
    order: Option<String>,
    /// Only sandboxes started at or after this RFC 3339 time.
    started_after: Option<String>,
    /// Only sandboxes of this template (its id or name).
    template: Option<String>,
    next_token: Option<String>,
    limit: Option<usize>,
}

pub async fn list(State(api): State<Api>, Query(query): Query<ListQuery>) -> Response {
    let wanted: BTreeMap<String, String> = match &query.metadata {
        Some(pairs) => match serde_urlencoded_pairs(pairs) {
            Some(wanted) => wanted,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "metadata must be k=v pairs joined by &",
                );
            }
        },
        None => BTreeMap::new(),
    };
    let states: Vec<&str> = query
        .state
        .as_deref()
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let newest_first = match query.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("order must be asc or desc, not {other:?}"),
            );
        }
    };
    let started_after = match query.started_after.as_deref().map(parse_rfc3339) {
        None => None,
        Some(Some(time)) => Some(time),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "startedAfter must be an RFC 3339 time, such as 2026-01-02T03:04:05Z",
            );
        }
    };
    let mut matching: Vec<_> = api
        .fleet
        .list()
        .into_iter()
        .filter(|e| states.is_empty() || states.contains(&state_name(e.state())))
        .filter(|e| {
            wanted
                .iter()
                .all(|(k, v)| e.spec.metadata.get(k) == Some(v))
        })
        .filter(|e| started_after.is_none_or(|after| e.started_at >= after))
        .filter(|e| {
            query.template.as_deref().is_none_or(|t| {
                e.spec.template == t || e.spec.custom_template.as_deref() == Some(t)
            })
        })
        .collect();
    if newest_first {
        matching.reverse();
    }
    let (headers, page) = page(&matching, query.next_token.as_deref(), query.limit, |e| {
        &e.id
    });
    let page: Vec<SandboxInfo> = page.iter().map(|e| SandboxInfo::of(e, false)).collect();
    (headers, Json(page)).into_response()
}

/// `k=v&k2=v2` (form-encoded) as a map; `None` if a pair has no `=`.
fn serde_urlencoded_pairs(text: &str) -> Option<BTreeMap<String, String>> {
    let mut pairs = BTreeMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=')?;
        pairs.insert(percent_decode(k)?, percent_decode(v)?);
    }
    Some(pairs)
}

/// Decodes `%XX` escapes and `+` (form encoding).
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.bytes();
    while let Some(b) = rest.next() {
        match b {
            b'%' => {
                let hex = [rest.next()?, rest.next()?];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => bytes.push(b' '),
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).ok()
}

pub async fn info(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match find(&api, &id) {
        Ok(entry) => Json(SandboxInfo::of(&entry, true)).into_response(),
        Err(response) => response.into_response(),
    }
}

pub async fn kill(State(api): State<Api>, Path(id): Path<String>) -> Response {
    if api.fleet.kill(&id, "asked through the API").await {
        return StatusCode::NO_CONTENT.into_response();
    }
    match find(&api, &id) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(response) => response.into_response(),
    }
}

/// The server's secrets, for the rules' placeholders (looked up as each
/// request leaves, so an updated secret counts at once).
fn secret_source(api: &Api) -> crate::SecretSource {
    let secrets = api.secrets.clone();
    crate::SecretSource::new(Arc::new(move |name: &str| {
        secrets.value_of(name).map(|v| v.reveal().to_owned())
    }))
}

/// `PUT /sandboxes/{id}/network`: replaces a running sandbox's egress rules.
pub async fn update_network(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (entry, request) = match (find(&api, &id), parse::<NetworkUpdate>(&body)) {
        (Ok(entry), Ok(request)) => (entry, request),
        (Err(response), _) | (_, Err(response)) => return response.into_response(),
    };
    if request.egress.egress_proxy.is_some() {
        return error(StatusCode::BAD_REQUEST, NO_EGRESS_PROXY);
    }
    if entry.state() == Run::Paused {
        let why = format!("sandbox {id} is paused: resume it to change its network");
        return error(StatusCode::CONFLICT, why);
    }
    match entry
        .update_network(request.network_policy(secret_source(&api)))
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ crate::Error::InvalidArgument(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn set_timeout(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> Response {
    let (entry, request) = match (find(&api, &id), parse::<TimeoutRequest>(&body)) {
        (Ok(entry), Ok(request)) => (entry, request),
        (Err(response), _) | (_, Err(response)) => return response.into_response(),
    };
    match timeout(Some(request.timeout)) {
        Ok(timeout) => {
            Fleet::set_timeout(&entry, timeout);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(response) => response.into_response(),
    }
}

pub async fn refresh(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> Response {
    let (entry, request) = match (find(&api, &id), parse::<RefreshRequest>(&body)) {
        (Ok(entry), Ok(request)) => (entry, request),
        (Err(response), _) | (_, Err(response)) => return response.into_response(),
    };
    match timeout(request.duration) {
        Ok(timeout) => {
            Fleet::extend_timeout(&entry, timeout);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(response) => response.into_response(),
    }
}

pub async fn pause(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let entry = match find(&api, &id) {
        Ok(entry) => entry,
        Err(response) => return response.into_response(),
    };
    match Fleet::pause(&entry).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already paused"),
        ),
        Err(e) => failed(&e),
    }
}

/// `POST /sandboxes/{id}/resume`: a paused sandbox only.
pub async fn resume(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> Response {
    let entry = match find(&api, &id) {
        Ok(entry) => entry,
        Err(response) => return response.into_response(),
    };
    if entry.state() == crate::serve::fleet::State::Running {
        return error(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already running"),
        );
    }
    connect(State(api), Path(id), body).await
}

/// `POST /sandboxes/{id}/connect`: resumes a paused sandbox (201), or
/// extends a running one's timeout (200).
pub async fn connect(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> Response {
    let (entry, request) = match (find(&api, &id), parse::<ConnectRequest>(&body)) {
        (Ok(entry), Ok(request)) => (entry, request),
        (Err(response), _) | (_, Err(response)) => return response.into_response(),
    };
    let timeout = match timeout(request.timeout) {
        Ok(timeout) => timeout,
        Err(response) => return response.into_response(),
    };
    match Fleet::resume(&entry, timeout).await {
        Ok(resumed) => {
            let status = if resumed {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(SandboxCreated::of(&entry, api.fleet.domain()))).into_response()
        }
        Err(e) => failed(&e),
    }
}

#[derive(Debug, Deserialize)]
pub struct MetricsQuery {
    /// Unix seconds.
    start: Option<u64>,
    end: Option<u64>,
}

pub async fn metrics(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(query): Query<MetricsQuery>,
) -> Response {
    let entry = match find(&api, &id) {
        Ok(entry) => entry,
        Err(response) => return response.into_response(),
    };
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    match entry.metrics(query.start.map(at), query.end.map(at)).await {
        Ok(samples) => Json(samples.iter().map(Metric::from).collect::<Vec<_>>()).into_response(),
        Err(e) => failed(&e),
    }
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    /// v1: milliseconds since the epoch; entries from then on.
    start: Option<u64>,
    /// v2: the `seq` of the last entry seen (in each entry's `fields`).
    cursor: Option<u64>,
    limit: Option<usize>,
    level: Option<String>,
    /// v2: `forward` (oldest first, default) or `backward`.
    direction: Option<String>,
}

fn log_lines(api: &Api, id: &str, query: &LogsQuery) -> Result<Vec<LogLine>, ApiError> {
    let Some(log) = api.fleet.log(id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("sandbox {id} not found"),
        ));
    };
    let level = match query.level.as_deref() {
        Some(name) => Level::parse(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("level {name:?}: expected debug, info, warn or error"),
            )
        })?,
        None => Level::Debug,
    };
    let mut entries = log.entries(level, query.cursor);
    if let Some(start) = query.start {
        entries.retain(|e| e.millis() >= start);
    }
    if query.direction.as_deref() == Some("backward") {
        entries.reverse();
    }
    entries.truncate(query.limit.unwrap_or(1000).min(1000));
    Ok(entries.iter().map(LogLine::from).collect())
}

/// v1: `{"logs": [{timestamp, line}], "logEntries": [...]}`.
pub async fn logs_v1(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Response {
    match log_lines(&api, &id, &query) {
        Ok(lines) => {
            let logs: Vec<_> = lines
                .iter()
                .map(|l| serde_json::json!({"timestamp": l.timestamp, "line": l.envd_line()}))
                .collect();
            Json(serde_json::json!({"logs": logs, "logEntries": lines})).into_response()
        }
        Err(response) => response.into_response(),
    }
}

/// v2: `{"logs": [{timestamp, message, level, fields}]}`.
pub async fn logs_v2(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Response {
    match log_lines(&api, &id, &query) {
        Ok(lines) => Json(serde_json::json!({ "logs": lines })).into_response(),
        Err(response) => response.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filters_are_form_encoded_pairs() {
        let pairs = serde_urlencoded_pairs("user=ada%20l&team=a%26b&x=1+2").unwrap();
        assert_eq!(pairs["user"], "ada l");
        assert_eq!(pairs["team"], "a&b");
        assert_eq!(pairs["x"], "1 2");
        assert!(serde_urlencoded_pairs("novalue").is_none());
        assert!(serde_urlencoded_pairs("k=%zz").is_none());
        assert!(serde_urlencoded_pairs("").unwrap().is_empty());
    }
}
