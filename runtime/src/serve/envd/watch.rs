//! envd's folder watching: `WatchDir` (a stream of events, what the JS SDK
//! uses) and `CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher` (events
//! collected for polling, what the Python SDK uses), over the guest's
//! inotify watches ([`crate::guest::FolderWatch`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Envd;
use super::connect::{self, Code, Message, RpcError};
use crate::guest::{FolderWatch, FsEvent, FsEventKind};
use crate::lock;

/// How often an idle stream says it is alive.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Events a polled watcher keeps until they are fetched (the oldest go).
const KEPT: usize = 10_000;

/// E2B's `FilesystemEvent`.
fn event_json(event: &FsEvent) -> Value {
    let kind = match event.kind {
        FsEventKind::Create => "EVENT_TYPE_CREATE",
        FsEventKind::Write => "EVENT_TYPE_WRITE",
        FsEventKind::Remove => "EVENT_TYPE_REMOVE",
        FsEventKind::Rename => "EVENT_TYPE_RENAME",
        FsEventKind::Chmod => "EVENT_TYPE_CHMOD",
    };
    json!({"name": event.name, "type": kind})
}

async fn start(envd: &Envd, request: &Message) -> Result<FolderWatch, RpcError> {
    let path = request.string("path")?;
    let recursive = request.has("recursive") && request.bool("recursive")?;
    Ok(envd.sandbox.files().watch_dir(&path, recursive).await?)
}

/// `WatchDir`: `start`, then each change as `filesystem`, keepalives while
/// quiet; the watch ends when the client goes.
pub async fn stream(envd: &Envd, request: &Message) -> Result<Response, RpcError> {
    let mut watch = start(envd, request).await?;
    let (frames, receiver) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if frames
            .send(connect::envelope(&json!({"start": {}})))
            .await
            .is_err()
        {
            return;
        }
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        loop {
            let message = tokio::select! {
                next = watch.next() => match next {
                    Some(Ok(events)) => events.iter().map(|e| json!({"filesystem": event_json(e)})).collect(),
                    Some(Err(error)) => {
                        let error = RpcError::from(error);
                        let _ = frames.send(connect::end_of_stream(Some(&error))).await;
                        return;
                    }
                    None => break,
                },
                _ = keepalive.tick() => vec![json!({"keepalive": {}})],
            };
            for message in message {
                if frames.send(connect::envelope(&message)).await.is_err() {
                    return; // the client went away; dropping the watch stops it
                }
            }
        }
        let _ = frames.send(connect::end_of_stream(None)).await;
    });
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|frame| (frame, receiver))
    });
    Ok(connect::stream_response(body))
}

/// Watchers whose events are fetched by polling, by id.
#[derive(Debug, Default)]
pub struct Watchers {
    next: std::sync::atomic::AtomicU64,
    table: Mutex<HashMap<String, Polled>>,
}

#[derive(Debug)]
struct Polled {
    events: Arc<Mutex<VecDeque<Value>>>,
    collector: tokio::task::JoinHandle<()>,
}

impl Drop for Polled {
    fn drop(&mut self) {
        // Ends the collector, which drops (and so stops) its watch.
        self.collector.abort();
    }
}

/// `CreateWatcher`: starts collecting; answers the watcher's id.
pub async fn create(envd: &Envd, request: &Message) -> Result<Value, RpcError> {
    let mut watch = start(envd, request).await?;
    let events: Arc<Mutex<VecDeque<Value>>> = Arc::default();
    let sink = events.clone();
    let collector = tokio::spawn(async move {
        while let Some(Ok(batch)) = watch.next().await {
            let mut kept = lock(&sink);
            for event in &batch {
                if kept.len() == KEPT {
                    kept.pop_front();
                }
                kept.push_back(event_json(event));
            }
        }
    });
    let watchers = &envd.watchers;
    let id = format!(
        "w{}",
        watchers
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    );
    lock(&watchers.table).insert(id.clone(), Polled { events, collector });
    Ok(json!({"watcherId": id}))
}

fn unknown(id: &str) -> RpcError {
    RpcError::new(Code::NotFound, format!("no watcher {id}"))
}

/// `GetWatcherEvents`: the events since the last call.
pub fn events(envd: &Envd, request: &Message) -> Result<Value, RpcError> {
    let id = request.string("watcherId")?;
    let table = lock(&envd.watchers.table);
    let polled = table.get(&id).ok_or_else(|| unknown(&id))?;
    let events: Vec<Value> = lock(&polled.events).drain(..).collect();
    Ok(json!({"events": events}))
}

/// `RemoveWatcher`.
pub fn remove(envd: &Envd, request: &Message) -> Result<Value, RpcError> {
    let id = request.string("watcherId")?;
    match lock(&envd.watchers.table).remove(&id) {
        Some(_) => Ok(json!({})),
        None => Err(unknown(&id)),
    }
}
