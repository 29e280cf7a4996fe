//! Sandbox traffic on the API port. E2B's client proxy routes each request
//! by the headers the SDKs send with it (`E2b-Sandbox-Id`,
//! `E2b-Sandbox-Port`) or by its host (`{port}-{id}.{domain}`), and so does
//! this: to the sandbox's code-interpreter API (49999) or its envd (49983),
//! once the request shows that sandbox's token (`X-Access-Token`; for the
//! code interpreter its traffic token will do too, as the SDK sends only
//! that for contexts), and to
//! any other port to the server listening there ([`super::ports`]). Every
//! request lands in the sandbox's log.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;

use super::fleet::{Entry, Fleet, Missing, State as SandboxState};
use super::guard::same_token;
use super::ports;
use super::sandbox_log::Level;
use super::signed_url::{Refused, SignedFileUrl};

/// The header naming the sandbox a request is for.
pub const SANDBOX_ID: &str = "e2b-sandbox-id";
/// The header naming the port in it.
pub const SANDBOX_PORT: &str = "e2b-sandbox-port";
/// E2B's code-interpreter port.
pub const CODE_PORT: u16 = 49999;
/// envd's port.
pub const ENVD_PORT: u16 = 49983;

/// Passes requests that name no sandbox on (to the control plane); routes
/// the others to their sandbox.
pub async fn route(State(fleet): State<Arc<Fleet>>, request: Request, next: Next) -> Response {
    let (id, port) = match addressee(&request) {
        Addressee::Control => {
            let uri = request.uri();
            return match SignedFileUrl::parse(request.method().as_str(), uri.path(), uri.query()) {
                Some(signed) => signed_files(&fleet, &signed, request).await,
                None => next.run(request).await,
            };
        }
        Addressee::Sandbox { id, port } => (id, port),
        Addressee::Garbled => return unavailable("the sandbox id is not text"),
    };
    let entry = match fleet.get(&id) {
        Ok(entry) => entry,
        Err(Missing::Ended) => {
            return unavailable(format!(
                "The sandbox {id} was not found (it was killed or reached its timeout)"
            ));
        }
        Err(Missing::Unknown) => return unavailable(format!("The sandbox {id} was not found")),
    };
    let (service, port) = match port {
        Some(CODE_PORT) => (entry.code.clone(), CODE_PORT),
        Some(ENVD_PORT) => (entry.envd.clone(), ENVD_PORT),
        Some(port) => return own_server(&entry, port, request).await,
        None => {
            return unavailable(format!(
                "sandbox {id}: no port named (E2b-Sandbox-Port, or the host {{port}}-{id}.{{domain}})"
            ));
        }
    };
    if let Some(refusal) = token_refusal(&entry, port, &request) {
        return refusal;
    }
    if let Err(response) = wake(&entry).await {
        return response;
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let started = Instant::now();
    let response = match service.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status();
    let level = match status.as_u16() {
        500.. => Level::Error,
        400.. => Level::Warn,
        _ if path == "/health" => Level::Debug,
        _ => Level::Info,
    };
    entry.log.push(
        level,
        format!(
            "{} ({method} {path}: {status}, {:?})",
            action(&method, &path),
            started.elapsed()
        ),
    );
    response
}

/// The answer refusing `request` to `entry`'s code interpreter or envd
/// (`port`), if it lacks a credential: the envd token; for the code
/// interpreter, its traffic token too; for envd's files, a file URL this
/// sandbox signed.
fn token_refusal(entry: &Entry, port: u16, request: &Request) -> Option<Response> {
    let headers = request.headers();
    if same_token(headers.get("x-access-token"), &entry.token)
        || (port == CODE_PORT && ports::carries_traffic_token(entry, request))
    {
        return None;
    }
    let uri = request.uri();
    let signed = SignedFileUrl::parse(request.method().as_str(), uri.path(), uri.query())
        .filter(|_| port == ENVD_PORT);
    match signed.map(|signed| signed.signer([(entry.token.as_str(), ())])) {
        Some(Ok(())) => None,
        Some(Err(refused)) => Some(signature_refused(refused)),
        None => Some(
            (
                StatusCode::UNAUTHORIZED,
                format!("sandbox {}: a valid X-Access-Token is required", entry.id),
            )
                .into_response(),
        ),
    }
}

/// Who a request is for.
enum Addressee {
    /// The control plane (or a signed file URL).
    Control,
    Sandbox {
        id: String,
        port: Option<u16>,
    },
    /// A sandbox id that is not text.
    Garbled,
}

/// The sandbox and port E2B's headers name, else those the `Host` names.
fn addressee(request: &Request) -> Addressee {
    let headers = request.headers();
    if let Some(id) = headers.get(SANDBOX_ID) {
        let Ok(id) = id.to_str() else {
            return Addressee::Garbled;
        };
        let port = headers
            .get(SANDBOX_PORT)
            .and_then(|p| p.to_str().ok())
            .and_then(|p| p.parse::<u16>().ok());
        let id = id.to_owned();
        return Addressee::Sandbox { id, port };
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match host.and_then(ports::named_by_host) {
        Some((port, id)) => Addressee::Sandbox {
            id: id.to_ascii_lowercase(),
            port: Some(port),
        },
        None => Addressee::Control,
    }
}

/// A request for a server started in the sandbox.
async fn own_server(entry: &Entry, port: u16, request: Request) -> Response {
    if !ports::admits(entry, &request) {
        return ports::refused(&entry.id);
    }
    if let Err(response) = wake(entry).await {
        return response;
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = ports::forward(entry, port, request).await;
    let status = response.status();
    let level = if status.is_server_error() {
        Level::Warn
    } else {
        Level::Info
    };
    entry
        .log
        .push(level, format!("port {port}: {method} {path}: {status}"));
    response
}

/// A signed file URL (E2B's `download_url`/`upload_url`), which names no
/// sandbox: served by envd of the sandbox whose token signed it.
async fn signed_files(fleet: &Fleet, signed: &SignedFileUrl, request: Request) -> Response {
    let sandboxes = fleet.list();
    let signer = signed.signer(sandboxes.iter().map(|e| (e.token.as_str(), e)));
    let entry = match signer {
        Ok(entry) => entry.clone(),
        Err(refused) => return signature_refused(refused),
    };
    if let Err(response) = wake(&entry).await {
        return response;
    }
    match entry.envd.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// E2B's answer to a file URL whose signature does not hold.
fn signature_refused(refused: Refused) -> Response {
    let message = match refused {
        Refused::Expired => "signature is already expired",
        Refused::NoMatch => "invalid signature",
    };
    let body = serde_json::json!({"code": 401, "message": message});
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

/// A paused sandbox resumes on traffic if it was created to; otherwise the
/// request is refused.
async fn wake(entry: &Entry) -> Result<(), Response> {
    if entry.state() == SandboxState::Running {
        return Ok(());
    }
    if !entry.spec.auto_resume {
        return Err(unavailable(format!(
            "sandbox {} is paused; resume it (Sandbox.connect) first",
            entry.id
        )));
    }
    Fleet::resume(entry, entry.spec.timeout)
        .await
        .map(drop)
        .map_err(|e| unavailable(format!("sandbox {} could not resume: {e}", entry.id)))
}

/// E2B's proxy answers 502 for a sandbox it cannot reach; the SDKs turn
/// the message into their "sandbox not running" errors.
fn unavailable(message: impl Into<String>) -> Response {
    (StatusCode::BAD_GATEWAY, message.into()).into_response()
}

/// What a request to a sandbox does, in words for its log.
fn action(method: &axum::http::Method, path: &str) -> String {
    let rpc = |prefix: &str| path.strip_prefix(prefix).map(str::to_owned);
    if let Some(call) = rpc("/process.Process/") {
        return format!("command: {call}");
    }
    if let Some(call) = rpc("/filesystem.Filesystem/") {
        return format!("files: {call}");
    }
    match (method.as_str(), path) {
        ("POST", "/execute") => "code run".into(),
        ("GET", "/files") => "file read".into(),
        ("POST", "/files") => "file written".into(),
        ("GET", "/health") => "health check".into(),
        (_, p) if p.starts_with("/contexts") => "context call".into(),
        _ => "request".into(),
    }
}
