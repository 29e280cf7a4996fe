//! envd's folder watching: `WatchDir` (a stream of events, what the JS SDK
//! uses) and `CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher` (events
//! collected for polling, what the Python SDK uses), over the guest's
//! inotify watches ([`crate::guest::FolderWatch`]). With `include_entry`,
//! each event carries the entry's `EntryInfo`, read when it is delivered.
//!
//! An upload is written aside and renamed into place ([`super::files`]), so
//! that a broken one changes nothing; watchers see it as E2B's envd, which
//! writes in place, shows it: the aside file's changes are the
//! destination's, and the rename into place is not shown.

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

/// One watch, as the client asked for it.
struct Watch {
    events: FolderWatch,
    shown: Shown,
}

/// What each event of a watch shows.
#[derive(Debug, Clone)]
struct Shown {
    /// The watched folder, absolute.
    folder: String,
    include_entry: bool,
}

/// Shows an upload's changes as changes to its destination.
#[derive(Debug, Default)]
struct Uploads {
    /// The destination just renamed into place, whose arrival is hidden.
    renamed_into: Option<String>,
}

impl Uploads {
    /// The event as the client sees it; `None`: not shown.
    fn show(&mut self, event: &FsEvent) -> Option<FsEvent> {
        if let Some(destination) = self.renamed_into.take()
            && event.kind == FsEventKind::Create
            && event.name == destination
        {
            return None;
        }
        let Some(destination) = event.name.strip_suffix(super::files::UPLOAD_SUFFIX) else {
            return Some(event.clone());
        };
        if event.kind == FsEventKind::Rename {
            self.renamed_into = Some(destination.to_string());
            return None;
        }
        Some(FsEvent {
            name: destination.to_string(),
            kind: event.kind,
        })
    }
}

/// E2B's `FilesystemEvent`, with the entry's `EntryInfo` if asked for and
/// the entry is there.
async fn event_json(envd: &Envd, shown: &Shown, event: &FsEvent) -> Value {
    let kind = match event.kind {
        FsEventKind::Create => "EVENT_TYPE_CREATE",
        FsEventKind::Write => "EVENT_TYPE_WRITE",
        FsEventKind::Remove => "EVENT_TYPE_REMOVE",
        FsEventKind::Rename => "EVENT_TYPE_RENAME",
        FsEventKind::Chmod => "EVENT_TYPE_CHMOD",
    };
    let mut json = json!({"name": event.name, "type": kind});
    let gone = matches!(event.kind, FsEventKind::Remove | FsEventKind::Rename);
    if shown.include_entry && !gone {
        let path = format!("{}/{}", shown.folder.trim_end_matches('/'), event.name);
        if let Ok(stat) = envd.sandbox.files().stat(&path).await {
            json["entry"] = super::filesystem::entry(&stat);
        }
    }
    json
}

async fn start(envd: &Envd, request: &Message) -> Result<Watch, RpcError> {
    let path = request.string("path")?;
    let flag = |name| -> Result<bool, RpcError> { Ok(request.has(name) && request.bool(name)?) };
    let recursive = flag("recursive")?;
    let include_entry = flag("includeEntry")?;
    // (`allowNetworkMounts` is accepted: a sandbox has no network mounts.)
    let files = envd.sandbox.files();
    let folder = files.stat(&path).await?.path;
    let events = files.watch_dir(&path, recursive).await?;
    Ok(Watch {
        events,
        shown: Shown {
            folder,
            include_entry,
        },
    })
}

/// `WatchDir`: `start`, then each change as `filesystem`, keepalives while
/// quiet; the watch ends when the client goes.
pub async fn stream(envd: &Envd, request: &Message) -> Result<Response, RpcError> {
    let Watch { mut events, shown } = start(envd, request).await?;
    let envd = envd.clone();
    let mut uploads = Uploads::default();
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
            let messages = tokio::select! {
                next = events.next() => match next {
                    Some(Ok(batch)) => {
                        let mut messages = Vec::new();
                        for event in batch.iter().filter_map(|e| uploads.show(e)) {
                            messages.push(json!({"filesystem": event_json(&envd, &shown, &event).await}));
                        }
                        messages
                    }
                    Some(Err(error)) => {
                        let error = RpcError::from(error);
                        let _ = frames.send(connect::end_of_stream(Some(&error))).await;
                        return;
                    }
                    None => break,
                },
                _ = keepalive.tick() => vec![json!({"keepalive": {}})],
            };
            for message in messages {
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
    events: Arc<Mutex<VecDeque<FsEvent>>>,
    shown: Shown,
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
    let Watch { mut events, shown } = start(envd, request).await?;
    let kept: Arc<Mutex<VecDeque<FsEvent>>> = Arc::default();
    let sink = kept.clone();
    let collector = tokio::spawn(async move {
        let mut uploads = Uploads::default();
        while let Some(Ok(batch)) = events.next().await {
            let mut kept = lock(&sink);
            for event in batch.iter().filter_map(|e| uploads.show(e)) {
                if kept.len() == KEPT {
                    kept.pop_front();
                }
                kept.push_back(event);
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
    let polled = Polled {
        events: kept,
        shown,
        collector,
    };
    lock(&watchers.table).insert(id.clone(), polled);
    Ok(json!({"watcherId": id}))
}

fn unknown(id: &str) -> RpcError {
    RpcError::new(Code::NotFound, format!("no watcher {id}"))
}

/// `GetWatcherEvents`: the events since the last call (entries read now).
pub async fn events(envd: &Envd, request: &Message) -> Result<Value, RpcError> {
    let id = request.string("watcherId")?;
    let (batch, shown) = {
        let table = lock(&envd.watchers.table);
        let polled = table.get(&id).ok_or_else(|| unknown(&id))?;
        let batch: Vec<FsEvent> = lock(&polled.events).drain(..).collect();
        (batch, polled.shown.clone())
    };
    let mut events = Vec::with_capacity(batch.len());
    for event in &batch {
        events.push(event_json(envd, &shown, event).await);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_is_shown_as_written_in_place() {
        let event = |name: &str, kind| FsEvent {
            name: name.into(),
            kind,
        };
        let aside = format!("dir/a.txt{}", super::super::files::UPLOAD_SUFFIX);
        let mut uploads = Uploads::default();
        let shown: Vec<_> = [
            event(&aside, FsEventKind::Create),
            event(&aside, FsEventKind::Chmod),
            event(&aside, FsEventKind::Write),
            event(&aside, FsEventKind::Rename),
            event("dir/a.txt", FsEventKind::Create),
            event("dir/a.txt", FsEventKind::Create),
            event("dir/b.txt", FsEventKind::Rename),
        ]
        .iter()
        .filter_map(|e| uploads.show(e))
        .collect();
        assert_eq!(
            shown,
            [
                event("dir/a.txt", FsEventKind::Create),
                event("dir/a.txt", FsEventKind::Chmod),
                event("dir/a.txt", FsEventKind::Write),
                // Only the arrival right after the rename is the upload's.
                event("dir/a.txt", FsEventKind::Create),
                event("dir/b.txt", FsEventKind::Rename),
            ]
        );
    }
}
