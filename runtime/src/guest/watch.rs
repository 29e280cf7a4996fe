//! Watching a folder in the guest (`guest-init`'s inotify watches): changes
//! arrive in batches until the watch is stopped or dropped.

pub use cellbox_guest_init::protocol::{FsEvent, FsEventKind};
use cellbox_guest_init::protocol::{Op, ReplyBody};

use super::GuestClient;
use super::client::{Replies, failure};
use crate::error::{Error, Result};

/// A running watch of a guest folder; stopped when dropped.
#[derive(Debug)]
pub struct FolderWatch {
    client: GuestClient,
    watch: u32,
    replies: Replies,
    stopped: bool,
}

impl FolderWatch {
    /// The next changes; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<Vec<FsEvent>>> {
        match self.replies.recv().await? {
            ReplyBody::FsEvents { events } => Some(Ok(events)),
            ReplyBody::Done => None,
            other => Some(Err(failure(other))),
        }
    }

    /// Ends the watch.
    pub async fn stop(mut self) -> Result<()> {
        self.stopped = true;
        self.client.done(Op::Unwatch { watch: self.watch }).await
    }
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let (client, watch) = (self.client.clone(), self.watch);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = client.done(Op::Unwatch { watch }).await;
            });
        }
    }
}

impl GuestClient {
    /// Watches folder `path` (and, if `recursive`, what is below it, new
    /// folders included), as the sandbox's user.
    pub async fn watch_dir(&self, path: &str, recursive: bool) -> Result<FolderWatch> {
        let op = Op::WatchDir {
            path: path.to_string(),
            recursive,
        };
        let mut replies = self.request(op).await?;
        match replies.recv().await {
            Some(ReplyBody::WatchStarted { watch }) => Ok(FolderWatch {
                client: self.clone(),
                watch,
                replies,
                stopped: false,
            }),
            Some(other) => Err(failure(other)),
            None => Err(Error::SandboxDied {
                reason: "the guest closed the connection while starting a watch".into(),
            }),
        }
    }
}
