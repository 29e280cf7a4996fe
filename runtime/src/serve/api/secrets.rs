//! E2B's secret routes (`/secrets`): create, update (a new version), info
//! by id or name, list in pages, destroy. Values go in and never come out;
//! they live in [`crate::serve::secrets`].

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::sandboxes::parse;
use super::{Api, ApiError, error, page};
use crate::serve::clock::rfc3339;
use crate::serve::secrets::{Refusal, Secret, SecretValue};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSecret {
    name: String,
    value: SecretValue,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretUpdate {
    value: SecretValue,
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    next_token: Option<String>,
    limit: Option<usize>,
}

/// E2B's `Secret`: everything but the value.
fn info(secret: &Secret) -> Value {
    json!({
        "secretID": secret.id,
        "name": secret.name,
        "currentVersion": secret.version,
        "metadata": secret.metadata,
        "createdAt": rfc3339(secret.created_at as i64, None),
        "updatedAt": rfc3339(secret.updated_at as i64, None),
    })
}

fn answer(status: StatusCode, outcome: crate::Result<Result<Secret, Refusal>>) -> Response {
    match outcome {
        Ok(Ok(secret)) => (status, Json(info(&secret))).into_response(),
        Ok(Err(refusal)) => refused(refusal),
        Err(failure) => error(StatusCode::INTERNAL_SERVER_ERROR, failure.to_string()),
    }
}

fn refused(refusal: Refusal) -> Response {
    ApiError::from(refusal).into_response()
}

pub async fn create(State(api): State<Api>, body: Bytes) -> Response {
    match parse::<NewSecret>(&body) {
        Ok(new) => answer(
            StatusCode::CREATED,
            api.secrets.create(&new.name, new.value, new.metadata),
        ),
        Err(refused) => refused.into_response(),
    }
}

pub async fn update(State(api): State<Api>, Path(key): Path<String>, body: Bytes) -> Response {
    match parse::<SecretUpdate>(&body) {
        Ok(update) => answer(
            StatusCode::OK,
            api.secrets.update(&key, update.value, update.metadata),
        ),
        Err(refused) => refused.into_response(),
    }
}

pub async fn get(State(api): State<Api>, Path(key): Path<String>) -> Response {
    match api.secrets.get(&key) {
        Ok(secret) => Json(info(&secret)).into_response(),
        Err(refusal) => refused(refusal),
    }
}

pub async fn list(State(api): State<Api>, Query(query): Query<ListQuery>) -> Response {
    let all = api.secrets.list();
    let (headers, page) = page(&all, query.next_token.as_deref(), query.limit, |s| &s.id);
    let page: Vec<Value> = page.iter().map(info).collect();
    (headers, Json(page)).into_response()
}

pub async fn destroy(State(api): State<Api>, Path(key): Path<String>) -> Response {
    match api.secrets.destroy(&key) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => refused(Refusal::NotFound(format!("secret {key} not found"))),
        Err(failure) => error(StatusCode::INTERNAL_SERVER_ERROR, failure.to_string()),
    }
}
