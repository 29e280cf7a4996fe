//! envd's `process.Process` service: start commands and stream their output
//! (`Start`, `Connect`), list them, feed their stdin, signal them.
//!
//! A command started here ends when its `Start` stream does: at the
//! stream's deadline (`Connect-Timeout-Ms`, which the SDKs set from their
//! `timeout`) or when the client goes away, the command's process group is
//! killed, as envd does. `Connect` streams only watch. Terminals (PTY) are not
//! supported.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Envd;
use super::connect::{self, Code, Message, RpcError};
use crate::error::Error;
use crate::guest::{CommandHandle, CommandOptions, Stream};
use crate::lock;
use crate::serve::reset::Reset;

/// How often an idle stream says it is alive (which is also how soon a
/// client that went away is noticed).
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Response frames waiting for a slow client before output is held back.
const FRAME_BACKLOG: usize = 64;

/// The commands started through this service, by pid.
#[derive(Debug, Default)]
pub struct Processes(Mutex<HashMap<u32, Arc<Tracked>>>);

/// A running command and the streams that watch it.
#[derive(Debug)]
pub struct Tracked {
    pid: u32,
    tag: Option<String>,
    /// Whether it runs in a terminal (its output is then `pty` data).
    pty: bool,
    /// Its `ProcessConfig`, as `List` reports it.
    config: Value,
    watchers: Mutex<Vec<mpsc::UnboundedSender<Value>>>,
}

impl Tracked {
    fn watch(&self) -> mpsc::UnboundedReceiver<Value> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.watchers).push(tx);
        rx
    }

    /// Sends a `ProcessEvent` to every watcher still listening.
    fn publish(&self, event: Value) {
        lock(&self.watchers).retain(|watcher| watcher.send(event.clone()).is_ok());
    }
}

impl Processes {
    fn get(&self, pid: u32) -> Option<Arc<Tracked>> {
        lock(&self.0).get(&pid).cloned()
    }

    fn by_tag(&self, tag: &str) -> Option<Arc<Tracked>> {
        let table = lock(&self.0);
        table
            .values()
            .find(|tracked| tracked.tag.as_deref() == Some(tag))
            .cloned()
    }
}

/// `POST /process.Process/{method}`.
pub async fn call(
    State(envd): State<Envd>,
    Path(method): Path<String>,
    reset: Reset,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match method.as_str() {
        "Start" | "Connect" | "StreamInput" => {
            let result = async {
                let messages = connect::stream_request(&headers, &body)?;
                match method.as_str() {
                    "Start" => start(&envd, &single(messages)?, &headers, reset).await,
                    "Connect" => watch(&envd, &single(messages)?, &headers, reset),
                    _ => stream_input(&envd, &messages).await,
                }
            }
            .await;
            result.unwrap_or_else(connect::stream_error)
        }
        _ => connect::unary(unary(&envd, &method, &headers, &body).await),
    }
}

fn single(messages: Vec<Message>) -> Result<Message, RpcError> {
    let count = messages.len();
    let mut messages = messages.into_iter();
    match (messages.next(), count) {
        (Some(message), 1) => Ok(message),
        _ => Err(RpcError::invalid(format!(
            "a server-streaming call takes one request message, not {count}"
        ))),
    }
}

async fn unary(
    envd: &Envd,
    method: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, RpcError> {
    let request = connect::unary_request(headers, body)?;
    let commands = envd.sandbox.commands();
    match method {
        "List" => {
            let table = lock(&envd.processes.0);
            let processes: Vec<Value> = table
                .values()
                .map(|tracked| {
                    let mut info = json!({"config": tracked.config, "pid": tracked.pid});
                    if let Some(tag) = &tracked.tag {
                        info["tag"] = json!(tag);
                    }
                    info
                })
                .collect();
            Ok(json!({"processes": processes}))
        }
        "SendInput" => {
            let pid = selected(envd, &request)?;
            let input = request.message("input")?;
            commands.send_stdin(pid, &input_bytes(&input)?).await?;
            Ok(json!({}))
        }
        "SendSignal" => {
            let pid = selected(envd, &request)?;
            let signals = [("SIGNAL_SIGTERM", 15), ("SIGNAL_SIGKILL", 9)];
            match request.enumeration("signal", &signals)? {
                9 | 15 => commands.kill(pid).await?,
                other => return Err(RpcError::invalid(format!("unsupported signal {other}"))),
            }
            Ok(json!({}))
        }
        "CloseStdin" => {
            commands.close_stdin(selected(envd, &request)?).await?;
            Ok(json!({}))
        }
        "Update" => {
            let pid = selected(envd, &request)?;
            let (cols, rows) = pty_size(&request.message("pty")?)?;
            commands.resize(pid, cols, rows).await?;
            Ok(json!({}))
        }
        other => Err(RpcError::new(
            Code::Unimplemented,
            format!("process.Process has no method {other}"),
        )),
    }
}

/// A `ProcessInput`'s bytes: for the command's stdin or its terminal.
fn input_bytes(input: &Message) -> Result<Vec<u8>, RpcError> {
    if input.has("pty") {
        input.bytes("pty")
    } else {
        input.bytes("stdin")
    }
}

/// A `PTY` message's `size` (`cols`, `rows`), each 1 to 1000; an unknown
/// size (0 × 0, what a client without a terminal sends, as E2B's CLI does
/// under `script`) is 80 × 24.
fn pty_size(pty: &Message) -> Result<(u16, u16), RpcError> {
    let size = pty.message("size")?;
    let (cols, rows) = match (size.u32("cols")?, size.u32("rows")?) {
        (0, 0) => (80, 24),
        given => given,
    };
    let valid = |n: u32| (1..=1000).contains(&n);
    if !valid(cols) || !valid(rows) {
        return Err(RpcError::invalid(format!(
            "a terminal of {cols} × {rows}: each side must be 1 to 1000"
        )));
    }
    Ok((cols as u16, rows as u16))
}

/// The pid a `ProcessSelector` (in the request's `process` field) names.
fn selected(envd: &Envd, request: &Message) -> Result<u32, RpcError> {
    let selector = request.message("process")?;
    if selector.has("pid") {
        return selector.u32("pid");
    }
    let tag = selector.string("tag")?;
    if tag.is_empty() {
        return Err(RpcError::invalid("select the process by its pid or tag"));
    }
    envd.processes
        .by_tag(&tag)
        .map(|tracked| tracked.pid)
        .ok_or_else(|| RpcError::new(Code::NotFound, format!("no process tagged \"{tag}\"")))
}

/// The user an SDK asks a process to run as: envd's `Authorization: Basic
/// base64("NAME:")` (the SDKs send it for `user="root"` and the like).
fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let decoded = BASE64.decode(value.strip_prefix("Basic ")?.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let name = text.split(':').next()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// `Start`: runs the command and streams its events until it ends.
async fn start(
    envd: &Envd,
    request: &Message,
    headers: &HeaderMap,
    reset: Reset,
) -> Result<Response, RpcError> {
    let pty = match request.has("pty") {
        true => Some(pty_size(&request.message("pty")?)?),
        false => None,
    };
    let process = request.message("process")?;
    let cmd = process.string("cmd")?;
    if cmd.is_empty() {
        return Err(RpcError::invalid("process.cmd is empty"));
    }
    let args = process.strings("args")?;
    let envs = process.string_map("envs")?;
    let cwd = process.optional_string("cwd")?;
    let tag = request.optional_string("tag")?;
    // Absent means open (envd's old default); the SDKs say false unless
    // asked. A terminal's input stays open.
    let keep_stdin = pty.is_some() || !request.has("stdin") || request.bool("stdin")?;
    let options = CommandOptions {
        cwd: cwd.clone(),
        env: envs.clone(),
        timeout: None,
        user: basic_auth_user(headers),
        pty: pty.map(|(cols, rows)| crate::guest::PtySize { cols, rows }),
    };
    let handle = envd
        .sandbox
        .commands()
        .start(&shell_line(&cmd, &args), &options)
        .await?;
    // A command that already ended (`exit 4`) has no stdin to close: its
    // end is in its events all the same.
    if !keep_stdin {
        match handle.close_stdin().await {
            Ok(()) | Err(crate::Error::NotFound(_)) => {}
            Err(error) => {
                let _ = handle.kill().await;
                return Err(error.into());
            }
        }
    }
    let pid = handle.pid();
    let tracked = Arc::new(Tracked {
        pid,
        tag,
        pty: pty.is_some(),
        config: config_json(&cmd, &args, &envs, cwd.as_deref()),
        watchers: Mutex::default(),
    });
    let events = tracked.watch();
    lock(&envd.processes.0).insert(pid, tracked.clone());
    tokio::spawn(follow(envd.clone(), tracked, handle));
    Ok(stream(
        envd.clone(),
        pid,
        events,
        connect::deadline(headers),
        true,
        reset,
    ))
}

fn config_json(
    cmd: &str,
    args: &[String],
    envs: &BTreeMap<String, String>,
    cwd: Option<&str>,
) -> Value {
    let mut config = json!({"cmd": cmd, "args": args, "envs": envs});
    if let Some(cwd) = cwd {
        config["cwd"] = json!(cwd);
    }
    config
}

/// `Connect`: streams the events of a running command from now on.
fn watch(
    envd: &Envd,
    request: &Message,
    headers: &HeaderMap,
    reset: Reset,
) -> Result<Response, RpcError> {
    let pid = selected(envd, request)?;
    let tracked = envd.processes.get(pid).ok_or_else(|| {
        RpcError::new(
            Code::NotFound,
            format!("no process {pid} started through envd is running"),
        )
    })?;
    let events = tracked.watch();
    Ok(stream(
        envd.clone(),
        pid,
        events,
        connect::deadline(headers),
        false,
        reset,
    ))
}

/// `StreamInput` (client stream): a `start` naming the process, then `data`.
async fn stream_input(envd: &Envd, messages: &[Message]) -> Result<Response, RpcError> {
    let mut pid = None;
    for message in messages {
        if message.has("start") {
            pid = Some(selected(envd, &message.message("start")?)?);
        } else if message.has("data") {
            let pid = pid.ok_or_else(|| RpcError::invalid("data before the start message"))?;
            let input = message.message("data")?.message("input")?;
            envd.sandbox
                .commands()
                .send_stdin(pid, &input_bytes(&input)?)
                .await?;
        }
    }
    let frames = [connect::envelope(&json!({})), connect::end_of_stream(None)];
    Ok(connect::stream_response(futures_util::stream::iter(frames)))
}

/// Waits for the command, publishing its output and its end.
async fn follow(envd: Envd, tracked: Arc<Tracked>, handle: CommandHandle) {
    let mut on_output = |stream: Stream, text: &str| {
        let key = match stream {
            _ if tracked.pty => "pty",
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        tracked.publish(json!({"data": {key: BASE64.encode(text)}}));
    };
    let end = match handle.wait_with_output(&mut on_output).await {
        Ok(result) => Some(json!({"exitCode": result.exit_code, "exited": true,
            "status": format!("exit status {}", result.exit_code)})),
        // The sandbox went (killed, timed out): its streams are cut without
        // an end, as a VM's connections are when it goes (see `pump`).
        Err(Error::SandboxDied { .. }) => None,
        Err(error) => Some(json!({"exitCode": -1, "exited": false, "status": "error",
            "error": error.to_string()})),
    };
    lock(&envd.processes.0).remove(&tracked.pid);
    if let Some(end) = end {
        tracked.publish(json!({"end": end}));
    }
    lock(&tracked.watchers).clear();
}

/// A stream of a command's events: `start` first, then each event, with
/// keepalives while it is quiet.
fn stream(
    envd: Envd,
    pid: u32,
    events: mpsc::UnboundedReceiver<Value>,
    deadline: Option<Duration>,
    owns_command: bool,
    reset: Reset,
) -> Response {
    // The frames, then (if the stream was cut) an error, which aborts the
    // response with a reset of its connection: the client sees the
    // connection fail mid-request, as when a sandbox's VM goes.
    let (frames, receiver) = mpsc::channel::<std::io::Result<Bytes>>(FRAME_BACKLOG);
    tokio::spawn(async move {
        let ending = pump(pid, events, &frames, deadline).await;
        let error = match ending {
            Ending::Ended => None,
            Ending::Cut => {
                reset.reset();
                let _ = frames
                    .send(Err(std::io::Error::other("the sandbox went")))
                    .await;
                return;
            }
            Ending::Deadline => Some(RpcError::new(
                Code::DeadlineExceeded,
                format!(
                    "the stream reached its deadline ({:?}){}",
                    deadline.unwrap_or_default(),
                    if owns_command {
                        "; the command was killed"
                    } else {
                        ""
                    }
                ),
            )),
            Ending::ClientGone => None,
        };
        if owns_command && ending != Ending::Ended {
            match envd.sandbox.commands().kill(pid).await {
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(error) => tracing::warn!(pid, %error, "could not kill an abandoned command"),
            }
        }
        if ending != Ending::ClientGone {
            let _ = frames
                .send(Ok(connect::end_of_stream(error.as_ref())))
                .await;
        }
    });
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|frame| (frame, receiver))
    });
    connect::fallible_stream_response(body)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Ended,
    /// The command's events stopped without an end: the sandbox went.
    Cut,
    Deadline,
    ClientGone,
}

async fn pump(
    pid: u32,
    mut events: mpsc::UnboundedReceiver<Value>,
    frames: &mpsc::Sender<std::io::Result<Bytes>>,
    deadline: Option<Duration>,
) -> Ending {
    let send = |event: Value| frames.send(Ok(connect::envelope(&json!({"event": event}))));
    if send(json!({"start": {"pid": pid}})).await.is_err() {
        return Ending::ClientGone;
    }
    let deadline = deadline.map(|after| Instant::now() + after);
    let expired = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => return Ending::Cut,
            },
            () = &mut expired => return Ending::Deadline,
            _ = keepalive.tick() => json!({"keepalive": {}}),
        };
        let ended = event.get("end").is_some();
        if send(event).await.is_err() {
            return Ending::ClientGone;
        }
        if ended {
            return Ending::Ended;
        }
    }
}

/// `cmd` and `args` as one `sh -c` line that runs exactly that program.
fn shell_line(cmd: &str, args: &[String]) -> String {
    let quote = |word: &str| format!("'{}'", word.replace('\'', r"'\''"));
    let words: Vec<String> = std::iter::once(cmd)
        .chain(args.iter().map(String::as_str))
        .map(quote)
        .collect();
    format!("exec {}", words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_comes_from_basic_authorization() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            basic_auth_user(&headers)
        };
        assert_eq!(
            with(&format!("Basic {}", BASE64.encode("root:"))).as_deref(),
            Some("root")
        );
        assert_eq!(
            with(&format!("Basic {}", BASE64.encode("user:pw"))).as_deref(),
            Some("user")
        );
        assert_eq!(with(&format!("Basic {}", BASE64.encode(":"))), None);
        assert_eq!(with("Basic not base64!"), None);
        assert_eq!(with("Bearer abc"), None);
        assert_eq!(basic_auth_user(&HeaderMap::new()), None);
    }

    #[test]
    fn the_shell_line_passes_every_argument_through_unchanged() {
        let args: Vec<String> = [
            "-c",
            r#"printf '%s|' "$0" "$1"; echo"#,
            "it's",
            "$HOME `x` \"y\" \\",
        ]
        .map(String::from)
        .to_vec();
        let line = shell_line("/bin/sh", &args);
        let output = std::process::Command::new("/bin/sh")
            .args(["-c", &line])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            "it's|$HOME `x` \"y\" \\|\n"
        );
    }
}
