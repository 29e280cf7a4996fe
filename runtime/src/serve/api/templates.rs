//! `GET /templates` and `DELETE /templates/{id}`: the default template, the
//! templates built with `cellbox template build`, and snapshots (which E2B
//! deletes as templates).

use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::sandboxes::{TEMPLATES, failed};
use super::{Api, error};
use crate::template::{TemplateInfo, TemplateStore};

/// One template as E2B's `GET /templates` lists it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "buildID")]
    build_id: String,
    aliases: Vec<String>,
    public: bool,
    build_status: &'static str,
    created_at: String,
    updated_at: String,
    #[serde(rename = "memoryMB")]
    memory_mb: u32,
    cpu_count: u32,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    envd_version: &'static str,
}

fn store() -> TemplateStore {
    TemplateStore::open(&crate::default_cache_dir())
}

fn listed(api: &Api, info: Option<&TemplateInfo>) -> Listed {
    let base = api.fleet.base_options();
    let (id, aliases, created, build, size) = match info {
        Some(t) => (
            t.name.clone(),
            vec![t.name.clone()],
            UNIX_EPOCH + Duration::from_secs(t.created),
            t.layers[0].clone(),
            t.size >> 20,
        ),
        None => (
            TEMPLATES[1].to_string(),
            TEMPLATES.iter().map(|s| s.to_string()).collect(),
            UNIX_EPOCH,
            "default".to_string(),
            0,
        ),
    };
    Listed {
        template_id: id,
        build_id: build,
        aliases,
        public: false,
        build_status: "ready",
        created_at: super::model::timestamp(created),
        updated_at: super::model::timestamp(created),
        memory_mb: info
            .and_then(|t| t.defaults.memory_mb)
            .unwrap_or(base.memory_mib),
        cpu_count: u32::from(
            info.and_then(|t| t.defaults.cpu_count)
                .unwrap_or(base.vcpus),
        ),
        disk_size_mb: u64::from(base.disk_mib).max(size),
        envd_version: super::model::ENVD_VERSION,
    }
}

pub async fn list(State(api): State<Api>) -> Response {
    let built = match store().list() {
        Ok(built) => built,
        Err(e) => return failed(&e),
    };
    let mut all = vec![listed(&api, None)];
    all.extend(built.iter().map(|t| listed(&api, Some(t))));
    Json(all).into_response()
}

/// Deletes a built template or a snapshot (the default template stays).
pub async fn delete(State(api): State<Api>, Path(id): Path<String>) -> Response {
    if TEMPLATES.contains(&id.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id} is the server's own template; it cannot be deleted"),
        );
    }
    match api.snapshots.delete(&id) {
        Ok(true) => return StatusCode::NO_CONTENT.into_response(),
        Ok(false) => {}
        Err(e) => return failed(&e),
    }
    let deleted = if crate::template::store::valid_name(&id) {
        store().delete(&id)
    } else {
        Ok(false)
    };
    match deleted {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("template {id} not found")),
        Err(e) => failed(&e),
    }
}
