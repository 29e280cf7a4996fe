//! envd's file transfer routes: `GET /files?path=…` streams a file out of the
//! sandbox, `POST /files` streams files in (multipart form parts named by
//! their path, or a raw `application/octet-stream` body with `?path=`), both
//! ways optionally gzip-compressed. Nothing is held whole in memory.

use std::collections::BTreeMap;
use std::io;

use async_compression::tokio::bufread::{GzipDecoder, GzipEncoder};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

use super::Envd;
use super::connect::RpcError;
use crate::error::Error;
use crate::sandbox::Sandbox;

/// How much of a download is buffered between the guest and the client.
const DOWNLOAD_BUFFER: usize = 256 << 10;

/// The query of both routes (`username` is accepted and ignored: the sandbox
/// has one user).
#[derive(Debug, Deserialize)]
pub struct FileQuery {
    path: Option<String>,
}

/// A refused or failed transfer, answered with envd's error body:
/// `{"code": <HTTP status>, "message": …}`.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
}

fn failure(status: StatusCode, message: impl Into<String>) -> Failure {
    Failure {
        status,
        message: message.into(),
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({"code": self.status.as_u16(), "message": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

/// A sandbox error with the status envd's RPCs would give it.
fn sandbox_failure(error: Error) -> Failure {
    let error = RpcError::from(error);
    failure(error.code.status(), error.message)
}

fn required_path(query: &FileQuery) -> Result<&str, Failure> {
    match query.path.as_deref() {
        Some(path) if !path.is_empty() => Ok(path),
        _ => Err(failure(
            StatusCode::BAD_REQUEST,
            "the query parameter `path` is required",
        )),
    }
}

/// Whether the client takes gzip (`Accept-Encoding: gzip`, not with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let accepted = headers.get_all(header::ACCEPT_ENCODING).iter();
    let codings = accepted.filter_map(|value| value.to_str().ok());
    codings.flat_map(|value| value.split(',')).any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        let refused = parts.any(|p| p.strip_prefix("q=").and_then(|q| q.parse().ok()) == Some(0.0));
        name.eq_ignore_ascii_case("gzip") && !refused
    })
}

/// `GET /files?path=…`: the file's bytes, streamed (gzip-compressed if the
/// client takes it).
pub async fn download(
    State(envd): State<Envd>,
    Query(query): Query<FileQuery>,
    headers: HeaderMap,
) -> Response {
    let path = match required_path(&query) {
        Ok(path) => path.to_string(),
        Err(refused) => return refused.into_response(),
    };
    match envd.sandbox.files().stat(&path).await {
        Ok(stat) if stat.is_dir => {
            return failure(StatusCode::BAD_REQUEST, format!("{path} is a folder")).into_response();
        }
        Ok(_) => {}
        Err(error) => return sandbox_failure(error).into_response(),
    }
    let (mut writer, reader) = tokio::io::duplex(DOWNLOAD_BUFFER);
    let (result_tx, result_rx) = tokio::sync::oneshot::channel();
    let sandbox = envd.sandbox.clone();
    tokio::spawn(async move {
        let result = sandbox.files().read_to(&path, &mut writer).await;
        drop(writer);
        let _ = result_tx.send(result);
    });
    // A read that fails half way ends the body with an error, so that the
    // client sees a broken transfer rather than a short file.
    let outcome = futures_util::stream::once(async move {
        match result_rx.await {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(Err(io::Error::other(error.to_string()))),
            Err(_) => Some(Err(io::Error::other("the download stopped"))),
        }
    })
    .filter_map(std::future::ready);
    let (chunks, encoding): (BoxStream<'static, io::Result<Bytes>>, _) = if accepts_gzip(&headers) {
        let compressed = GzipEncoder::new(BufReader::new(reader));
        (ReaderStream::new(compressed).boxed(), "gzip")
    } else {
        (ReaderStream::new(reader).boxed(), "identity")
    };
    let body = Body::from_stream(chunks.chain(outcome));
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream"),
        (header::CONTENT_ENCODING, encoding),
    ];
    (StatusCode::OK, headers, body).into_response()
}

/// `POST /files`: writes the uploaded files (parents created, existing files
/// replaced) and answers with a `[{name, type, path}]` per file.
pub async fn upload(
    State(envd): State<Envd>,
    Query(query): Query<FileQuery>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let gzip = match upload_encoding(&headers, &kind) {
        Ok(gzip) => gzip,
        Err(refused) => return refused.into_response(),
    };
    let metadata = match upload_metadata(&headers) {
        Ok(metadata) => metadata,
        Err(refused) => return refused.into_response(),
    };
    let target = Target {
        sandbox: &envd.sandbox,
        metadata: &metadata,
    };
    let written = if kind.starts_with("multipart/form-data") {
        match Multipart::from_request(request, &()).await {
            Ok(multipart) => upload_parts(&target, query.path.as_deref(), multipart).await,
            Err(rejection) => Err(failure(rejection.status(), rejection.body_text())),
        }
    } else if kind.starts_with("application/octet-stream") {
        match required_path(&query) {
            Ok(path) => {
                let body = request.into_body().into_data_stream();
                let reader = StreamReader::new(body.map_err(io::Error::other));
                let mut reader: std::pin::Pin<Box<dyn AsyncRead + Send>> = if gzip {
                    Box::pin(GzipDecoder::new(reader))
                } else {
                    Box::pin(reader)
                };
                write(&target, path, &mut reader)
                    .await
                    .map(|info| vec![info])
            }
            Err(refused) => Err(refused),
        }
    } else {
        Err(failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send multipart/form-data or application/octet-stream, not \"{kind}\""),
        ))
    };
    match written {
        Ok(infos) => axum::Json(infos).into_response(),
        Err(failed) => failed.into_response(),
    }
}

/// The metadata an upload asks to keep on its files (`X-Metadata-<key>:
/// <value>` headers).
fn upload_metadata(headers: &HeaderMap) -> Result<BTreeMap<String, String>, Failure> {
    let mut metadata = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("x-metadata-") {
            let value = value.to_str().map_err(|_| {
                failure(
                    StatusCode::BAD_REQUEST,
                    format!("metadata {key}: not printable ASCII"),
                )
            })?;
            metadata.insert(key.to_string(), value.to_string());
        }
    }
    if let Some(why) = cellbox_guest_init::metadata::invalid(&metadata) {
        return Err(failure(StatusCode::BAD_REQUEST, why));
    }
    Ok(metadata)
}

/// Whether the upload is gzip-compressed; what cellbox's envd does not take
/// (other encodings, compressed multipart) is refused before anything is
/// written.
fn upload_encoding(headers: &HeaderMap, kind: &str) -> Result<bool, Failure> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" => Ok(false),
        "gzip" if kind.starts_with("application/octet-stream") => Ok(true),
        _ => Err(failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "uploads with Content-Encoding \"{encoding}\" are not supported here; \
                 send gzip with application/octet-stream, or the file uncompressed"
            ),
        )),
    }
}

/// Each file part goes to the path in its file name (or to `?path=`, which
/// allows a single part).
async fn upload_parts(
    target: &Target<'_>,
    query_path: Option<&str>,
    mut multipart: Multipart,
) -> Result<Vec<Value>, Failure> {
    let bad = |message: String| failure(StatusCode::BAD_REQUEST, message);
    let mut infos = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(format!("a malformed multipart body: {e}")))?
    {
        let path = match (query_path.filter(|p| !p.is_empty()), field.file_name()) {
            (Some(_), _) if !infos.is_empty() => {
                return Err(bad("with `path` in the query, send one file".into()));
            }
            (Some(path), _) => path.to_string(),
            (None, Some(name)) if !name.is_empty() => name.to_string(),
            _ => return Err(bad("a part without a file name (its path)".into())),
        };
        let mut reader = StreamReader::new(field.map_err(io::Error::other));
        infos.push(write(target, &path, &mut reader).await?);
    }
    if infos.is_empty() {
        return Err(bad("the upload has no files".into()));
    }
    Ok(infos)
}

/// Where uploaded files go, and what is kept on each.
struct Target<'a> {
    sandbox: &'a Sandbox,
    metadata: &'a BTreeMap<String, String>,
}

/// The name an upload is written to before it is renamed into place
/// (watchers see its changes as the destination's: [`super::watch`]).
pub const UPLOAD_SUFFIX: &str = ".cellbox-upload";

async fn write(
    target: &Target<'_>,
    path: &str,
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Value, Failure> {
    let sandbox = target.sandbox;
    // Written aside and renamed into place: a broken upload (even one whose
    // request is dropped half way) leaves the old file as it was.
    let files = sandbox.files();
    let mut partial = Partial {
        sandbox: sandbox.clone(),
        path: Some(format!("{path}{UPLOAD_SUFFIX}")),
    };
    let aside = partial.path.clone().unwrap_or_default();
    files
        .write_from(&aside, reader)
        .await
        .map_err(sandbox_failure)?;
    if !target.metadata.is_empty() {
        files
            .set_metadata(&aside, target.metadata)
            .await
            .map_err(sandbox_failure)?;
    }
    files.rename(&aside, path).await.map_err(sandbox_failure)?;
    partial.path = None;
    let stat = files.stat(path).await.map_err(sandbox_failure)?;
    let mut info = json!({"name": stat.name, "type": "file", "path": stat.path});
    if !stat.metadata.is_empty() {
        info["metadata"] = json!(stat.metadata);
    }
    Ok(info)
}

/// A file being uploaded, removed unless it was renamed into place.
struct Partial {
    sandbox: Sandbox,
    path: Option<String>,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let sandbox = self.sandbox.clone();
            tokio::spawn(async move {
                let _ = sandbox.files().remove(&path).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn gzip_is_sent_when_accepted_and_not_refused() {
        assert!(accepts_gzip(&headers(&[("accept-encoding", "gzip")])));
        assert!(accepts_gzip(&headers(&[(
            "accept-encoding",
            "br, GZIP;q=0.5"
        )])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "gzip;q=0")])));
        assert!(!accepts_gzip(&headers(&[(
            "accept-encoding",
            "identity, br"
        )])));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn uploads_take_gzip_only_as_octet_stream() {
        let octet = "application/octet-stream";
        assert!(!upload_encoding(&HeaderMap::new(), octet).unwrap());
        let gzip = headers(&[("content-encoding", "gzip")]);
        assert!(upload_encoding(&gzip, octet).unwrap());
        let refused = upload_encoding(&gzip, "multipart/form-data; boundary=x").unwrap_err();
        assert_eq!(refused.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let brotli = headers(&[("content-encoding", "br")]);
        assert!(upload_encoding(&brotli, octet).is_err());
    }

    #[test]
    fn metadata_comes_from_x_metadata_headers_and_is_checked() {
        let given = headers(&[("x-metadata-owner", "me"), ("x-other", "no")]);
        let metadata = upload_metadata(&given).unwrap();
        assert_eq!(metadata, BTreeMap::from([("owner".into(), "me".into())]));
        assert!(upload_metadata(&HeaderMap::new()).unwrap().is_empty());
        let mut bad = HeaderMap::new();
        bad.insert(
            "x-metadata-k",
            axum::http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(
            upload_metadata(&bad).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let too_many: Vec<(String, &str)> =
            (0..65).map(|i| (format!("x-metadata-k{i}"), "v")).collect();
        let mut many = HeaderMap::new();
        for (name, value) in &too_many {
            many.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                axum::http::HeaderValue::from_static(value),
            );
        }
        assert_eq!(
            upload_metadata(&many).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
