//! The code-interpreter API of E2B's sandboxes (their port 49999), served by a
//! cellbox [`Sandbox`]: what `Sandbox.run_code` and the context calls of the
//! `e2b-code-interpreter` SDKs send and expect.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::event::Event;
use crate::executor::Interrupt;
use crate::guest::ContextInfo;
use crate::guest::Language;
use crate::lock;
use crate::sandbox::{RunCodeOptions, Sandbox};
use crate::serve::reset::Reset;

/// Largest request body (a cell's code and its variables).
const BODY_LIMIT: usize = 16 << 20;
/// How often an idle `/execute` stream says it is alive (and notices a client
/// that went away, so that the cell is interrupted).
const KEEPALIVE: Duration = Duration::from_secs(1);

/// The state behind the routes.
#[derive(Clone)]
struct App {
    sandbox: Sandbox,
    contexts: Arc<Mutex<BTreeMap<String, ContextInfo>>>,
    /// One queue per context: concurrent `/execute` calls run in arrival order.
    queues: Arc<Mutex<HashMap<String, Arc<Queue>>>>,
}

/// A ticket queue: tickets are taken when a request arrives, served in order.
#[derive(Default)]
struct Queue {
    next: std::sync::atomic::AtomicU64,
    serving: tokio::sync::watch::Sender<u64>,
}

impl Queue {
    fn ticket(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    async fn wait_for_turn(&self, ticket: u64) {
        let _ = self
            .serving
            .subscribe()
            .wait_for(|serving| *serving == ticket)
            .await;
    }

    fn done(&self, ticket: u64) {
        self.serving.send_replace(ticket + 1);
    }
}

/// A request's turn in its queue; it ends when dropped, also if the cell's
/// task panics, so that no failed request leaves the queue stuck.
struct Turn<'a>(&'a Queue, u64);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.done(self.1);
    }
}

impl App {
    fn queue(&self, context: &str) -> Arc<Queue> {
        let mut queues = lock(&self.queues);
        queues.entry(context.to_string()).or_default().clone()
    }

    fn context(&self, id: &str) -> Option<ContextInfo> {
        lock(&self.contexts).get(id).cloned()
    }
}

/// The routes, serving `sandbox`.
pub fn router(sandbox: Sandbox) -> Router {
    let app = App {
        sandbox,
        contexts: Arc::default(),
        queues: Arc::default(),
    };
    Router::new()
        .route("/health", get(|| async { axum::Json("OK") }))
        .route("/execute", post(execute))
        .route("/contexts", post(create_context).get(list_contexts))
        .route("/contexts/{id}/restart", post(restart_context))
        .route("/contexts/{id}", delete(remove_context))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

#[derive(Debug, Deserialize)]
struct ExecuteRequest {
    code: String,
    context_id: Option<String>,
    language: Option<String>,
    env_vars: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct CreateContextRequest {
    language: Option<String>,
    cwd: Option<String>,
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

fn bad_json(rejection: JsonRejection) -> Response {
    text(
        rejection.status(),
        format!("invalid request: {}", rejection.body_text()),
    )
}

/// The language a request names (none: Python), or why cellbox does not run it.
fn language_of(name: Option<&str>) -> Result<Language, String> {
    name.map_or(Ok(Language::Python), str::parse)
}

fn context_json(context: &ContextInfo) -> Value {
    json!({"id": context.id, "language": context.language.name(), "cwd": context.cwd})
}

/// The context `id` names: a language's default one, or one made here.
fn known_context(app: &App, id: &str) -> Option<ContextInfo> {
    Language::of_default_context(id)
        .map(default_context)
        .or_else(|| app.context(id))
}

fn default_context(language: Language) -> ContextInfo {
    ContextInfo {
        id: language.default_context().into(),
        cwd: "/home/user".into(),
        language,
    }
}

async fn execute(
    State(app): State<App>,
    reset: Reset,
    body: Result<axum::Json<ExecuteRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(axum::Json(request)) => request,
        Err(rejection) => return bad_json(rejection),
    };
    if request.context_id.is_some() && request.language.is_some() {
        return text(
            StatusCode::BAD_REQUEST,
            "Only one of context_id or language can be provided",
        );
    }
    let language = match language_of(request.language.as_deref()) {
        Ok(language) => language,
        Err(refused) => return text(StatusCode::BAD_REQUEST, refused),
    };
    let context = match request.context_id.as_deref() {
        None => default_context(language),
        Some(id) => match known_context(&app, id) {
            Some(context) => context,
            None => return text(StatusCode::NOT_FOUND, format!("Context {id} not found")),
        },
    };
    let queue_id = context.id.clone();
    tracing::info!(context = %queue_id, bytes = request.code.len(), "POST /execute");

    let (lines, received) = mpsc::unbounded_channel::<io::Result<String>>();
    let queue = app.queue(&queue_id);
    let ticket = queue.ticket();
    tokio::spawn(async move {
        queue.wait_for_turn(ticket).await;
        let _turn = Turn(&queue, ticket);
        // A client that left while waiting gets nothing run.
        if !lines.is_closed() {
            run_cell(app, request, context, lines, reset).await;
        }
    });
    // A line that is an error aborts the response (see `run_cell`).
    let stream = futures_util::stream::unfold(received, |mut received| async move {
        received.recv().await.map(|line| (line, received))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| {
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot build the response",
            )
        })
}

/// Runs one cell (its turn in the queue has come), writing its events as JSON lines.
/// A client that goes away interrupts the cell. If the sandbox went (killed,
/// timed out) meanwhile, the response is cut after the cell's last line, as
/// E2B's is when its VM goes: the SDK then asks whether the sandbox runs and
/// says it was killed.
async fn run_cell(
    app: App,
    request: ExecuteRequest,
    context: ContextInfo,
    lines: mpsc::UnboundedSender<io::Result<String>>,
    reset: Reset,
) {
    let interrupt = Interrupt::new();
    let send = {
        let lines = lines.clone();
        let interrupt = interrupt.clone();
        move |value: Value| {
            if lines.send(Ok(format!("{value}\n"))).is_err() {
                interrupt.interrupt();
            }
        }
    };
    let run = async {
        let options = RunCodeOptions {
            context: Some(context),
            language: None,
            env: request.env_vars.clone().unwrap_or_default(),
            timeout: None,
            interrupt: Some(interrupt.clone()),
        };
        let mut on_event = |event: &Event| {
            if let Some(line) = event_json(event) {
                send(line);
            }
        };
        app.sandbox
            .run_code_with(&request.code, &options, &mut on_event)
            .await
    };
    tokio::pin!(run);
    let mut ticks = tokio::time::interval(KEEPALIVE);
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            _ = ticks.tick() => send(json!({"type": "keepalive"})),
        }
    };
    let gone = !app.sandbox.is_running().await;
    match outcome {
        Ok(execution) => {
            if let Some(count) = execution.execution_count {
                send(json!({"type": "number_of_executions", "execution_count": count}));
            }
        }
        Err(error) => send(sandbox_error_json(&error)),
    }
    if gone {
        reset.reset();
        let _ = lines.send(Err(io::Error::other("the sandbox went")));
        return;
    }
    send(json!({"type": "end_of_execution"}));
}

/// A cell event as the line E2B's SDK parses (`None` for the end marker).
fn event_json(event: &Event) -> Option<Value> {
    Some(match event {
        Event::Stdout(text) => json!({"type": "stdout", "text": text, "timestamp": now_iso8601()}),
        Event::Stderr(text) => json!({"type": "stderr", "text": text, "timestamp": now_iso8601()}),
        Event::Result(result) => {
            let mut value = serde_json::to_value(result.as_ref()).unwrap_or_else(|_| json!({}));
            if let Value::Object(fields) = &mut value {
                fields.retain(|_, v| !v.is_null());
                fields.insert("type".into(), json!("result"));
                if let Some(Value::String(text)) = fields.get_mut("text") {
                    *text = crate::execution::e2b_text(text).to_string();
                }
            }
            value
        }
        Event::Error(error) => json!({
            "type": "error", "name": error.name, "value": error.value, "traceback": error.traceback,
        }),
        Event::End { .. } => return None,
    })
}

/// A failure of the sandbox itself, as an error line the SDK shows.
fn sandbox_error_json(error: &Error) -> Value {
    let name = match error {
        Error::Timeout { .. } => "TimeoutError",
        Error::Interrupted { .. } => "KeyboardInterrupt",
        _ => "SandboxError",
    };
    json!({"type": "error", "name": name, "value": error.to_string(), "traceback": ""})
}

/// The current time as RFC 3339 (UTC, microseconds), like Jupyter's message dates.
fn now_iso8601() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    super::clock::rfc3339(seconds, Some(since.subsec_micros()))
}

async fn create_context(
    State(app): State<App>,
    body: Result<axum::Json<CreateContextRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(axum::Json(request)) => request,
        Err(rejection) => return bad_json(rejection),
    };
    let language = match language_of(request.language.as_deref()) {
        Ok(language) => language,
        Err(refused) => return text(StatusCode::BAD_REQUEST, refused),
    };
    tracing::info!(cwd = ?request.cwd, %language, "POST /contexts");
    let cwd = request.cwd.as_deref().unwrap_or("/home/user");
    match app.sandbox.create_context(Some(cwd), language).await {
        Ok(context) => {
            let body = context_json(&context);
            lock(&app.contexts).insert(context.id.clone(), context);
            axum::Json(body).into_response()
        }
        Err(error) => error_response(&error),
    }
}

async fn list_contexts(State(app): State<App>) -> Response {
    let contexts = lock(&app.contexts).clone();
    let list: Vec<Value> = Language::ALL
        .into_iter()
        .map(default_context)
        .chain(contexts.into_values())
        .map(|c| context_json(&c))
        .collect();
    axum::Json(list).into_response()
}

async fn restart_context(State(app): State<App>, Path(id): Path<String>) -> Response {
    tracing::info!(context = %id, "POST /contexts/{{id}}/restart");
    let Some(context) = known_context(&app, &id) else {
        return text(StatusCode::NOT_FOUND, format!("Context {id} not found"));
    };
    let queue = app.queue(&id);
    let ticket = queue.ticket();
    queue.wait_for_turn(ticket).await;
    let restarted = app.sandbox.restart_context(&context).await;
    queue.done(ticket);
    match restarted {
        Ok(()) => axum::Json(Value::Null).into_response(),
        Err(error) => error_response(&error),
    }
}

async fn remove_context(State(app): State<App>, Path(id): Path<String>) -> Response {
    tracing::info!(context = %id, "DELETE /contexts/{{id}}");
    let Some(context) = known_context(&app, &id) else {
        return text(StatusCode::NOT_FOUND, format!("Context {id} not found"));
    };
    match app.sandbox.remove_context(&context).await {
        Ok(()) => {
            lock(&app.contexts).remove(&id);
            axum::Json(Value::Null).into_response()
        }
        Err(error) => error_response(&error),
    }
}

fn error_response(error: &Error) -> Response {
    text(super::status::status_of(error), error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let stamp = now_iso8601();
        assert_eq!(stamp.len(), "2026-11-22T01:02:03.123456Z".len(), "{stamp}");
        assert!(stamp.starts_with("20") && stamp.ends_with('Z'));
        assert_eq!(&stamp[4..5], "-");
        assert_eq!(&stamp[10..11], "T");
    }

    #[test]
    fn events_become_sdk_lines() {
        let line = event_json(&Event::Stdout("hi\n".into())).unwrap();
        assert_eq!(
            (line["type"].as_str(), line["text"].as_str()),
            (Some("stdout"), Some("hi\n"))
        );
        let result = crate::CellResult {
            text: Some("2".into()),
            is_main_result: true,
            ..Default::default()
        };
        let line = event_json(&Event::Result(Box::new(result))).unwrap();
        assert_eq!(
            line,
            json!({"type": "result", "text": "2", "is_main_result": true})
        );
        assert!(
            event_json(&Event::End {
                execution_count: Some(1)
            })
            .is_none()
        );
    }

    #[test]
    fn languages_are_read_or_refused() {
        assert_eq!(language_of(None), Ok(Language::Python));
        assert_eq!(language_of(Some("Python")), Ok(Language::Python));
        assert_eq!(language_of(Some("js")), Ok(Language::Javascript));
        assert_eq!(language_of(Some("bash")), Ok(Language::Bash));
        assert_eq!(language_of(Some("r")), Ok(Language::R));
        assert_eq!(language_of(Some("java")), Ok(Language::Java));
        let refused = language_of(Some("cobol")).unwrap_err();
        assert!(refused.contains("\"cobol\""), "{refused}");
    }
}
