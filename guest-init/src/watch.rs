//! Watching folders (E2B's `files.watch_dir`): inotify on a folder, and with
//! `recursive` on every folder below it (new ones included), reported as
//! events named relative to the watched folder. Watches live in a registry
//! per host connection, like commands, and end on `Unwatch` or when the
//! connection does.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::confine::User;
use crate::lock;
use crate::protocol::{Failure, FsEvent, FsEventKind, ReplyBody};

/// Most watches at once per connection.
pub const MAX_WATCHES: usize = 64;
/// Most folders one recursive watch follows.
pub const MAX_FOLDERS: usize = 10_000;
/// Most events in one reply.
const BATCH: usize = 256;

/// The running watches of one host connection.
#[derive(Debug, Default)]
pub struct Watches {
    next: AtomicU32,
    stops: Mutex<BTreeMap<u32, Arc<AtomicBool>>>,
}

fn failed(failure: Failure, message: impl Into<String>) -> ReplyBody {
    ReplyBody::failed(failure, message)
}

/// What inotify tells about a folder's entries.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_ONLYDIR
        | AddWatchFlags::IN_DONT_FOLLOW
}

/// One inotify instance and the folder behind each of its watches.
struct Tree {
    inotify: Inotify,
    root: PathBuf,
    folders: HashMap<WatchDescriptor, PathBuf>,
    recursive: bool,
    user: User,
}

impl Tree {
    /// Watches `folder` (and, if recursive, what is below it), as the user.
    fn add(&mut self, folder: &Path) -> Result<(), String> {
        if self.folders.len() >= MAX_FOLDERS {
            return Err(format!("more than {MAX_FOLDERS} folders to watch"));
        }
        let added = crate::confine::as_user(&self.user, || self.inotify.add_watch(folder, mask()));
        let descriptor = added.map_err(|e| format!("watching {}: {e}", folder.display()))?;
        self.folders.insert(descriptor, folder.to_path_buf());
        if self.recursive {
            let entries = crate::confine::as_user(&self.user, || std::fs::read_dir(folder));
            for entry in entries.into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    // A folder that vanished meanwhile is no failure.
                    let _ = self.add(&entry.path());
                }
            }
        }
        Ok(())
    }

    /// The events waiting now.
    fn read(&mut self) -> Vec<FsEvent> {
        let Ok(events) = self.inotify.read_events() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for event in events {
            let (Some(folder), Some(name)) = (self.folders.get(&event.wd).cloned(), event.name)
            else {
                continue;
            };
            let path = folder.join(&name);
            let kind = if event.mask.contains(AddWatchFlags::IN_CREATE)
                || event.mask.contains(AddWatchFlags::IN_MOVED_TO)
            {
                FsEventKind::Create
            } else if event.mask.contains(AddWatchFlags::IN_MODIFY) {
                FsEventKind::Write
            } else if event.mask.contains(AddWatchFlags::IN_DELETE) {
                FsEventKind::Remove
            } else if event.mask.contains(AddWatchFlags::IN_MOVED_FROM) {
                FsEventKind::Rename
            } else if event.mask.contains(AddWatchFlags::IN_ATTRIB) {
                FsEventKind::Chmod
            } else {
                continue;
            };
            if self.recursive
                && kind == FsEventKind::Create
                && event.mask.contains(AddWatchFlags::IN_ISDIR)
            {
                let _ = self.add(&path);
            }
            let name = path
                .strip_prefix(&self.root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.push(FsEvent { name, kind });
        }
        out
    }
}

impl Watches {
    /// Watches `path` until [`Watches::unwatch`]: first
    /// [`ReplyBody::WatchStarted`], then batches of events, then `Done`.
    pub fn watch(&self, path: &str, recursive: bool, user: &User, send: &mut dyn FnMut(ReplyBody)) {
        if lock(&self.stops).len() >= MAX_WATCHES {
            return send(failed(
                Failure::BadRequest,
                format!("more than {MAX_WATCHES} watches at once"),
            ));
        }
        let is_dir = crate::confine::as_user(user, || std::fs::metadata(path));
        match is_dir {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return send(failed(
                    Failure::BadRequest,
                    format!("{path} is not a folder"),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return send(failed(Failure::NotFound, format!("{path}: no such folder")));
            }
            Err(e) => return send(failed(Failure::Io, format!("{path}: {e}"))),
        }
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(inotify) => inotify,
            Err(e) => return send(failed(Failure::Io, format!("inotify: {e}"))),
        };
        let mut tree = Tree {
            inotify,
            root: PathBuf::from(path),
            folders: HashMap::new(),
            recursive,
            user: user.clone(),
        };
        if let Err(e) = tree.add(Path::new(path)) {
            return send(failed(Failure::Io, e));
        }
        let watch = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let stop = Arc::new(AtomicBool::new(false));
        lock(&self.stops).insert(watch, stop.clone());
        send(ReplyBody::WatchStarted { watch });
        while !stop.load(Ordering::SeqCst) {
            let mut fds = [PollFd::new(tree.inotify.as_fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, PollTimeout::from(200u16)), Ok(1..)) {
                continue;
            }
            let events = tree.read();
            for batch in events.chunks(BATCH) {
                send(ReplyBody::FsEvents {
                    events: batch.to_vec(),
                });
            }
        }
        lock(&self.stops).remove(&watch);
        send(ReplyBody::Done);
    }

    /// Ends watch `watch` (its request then ends with `Done`).
    pub fn unwatch(&self, watch: u32) -> ReplyBody {
        match lock(&self.stops).get(&watch) {
            Some(stop) => {
                stop.store(true, Ordering::SeqCst);
                ReplyBody::Done
            }
            None => failed(Failure::NotFound, format!("no watch {watch}")),
        }
    }

    /// Ends every watch (the connection is ending).
    pub fn stop_all(&self) {
        for stop in lock(&self.stops).values() {
            stop.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Events until `wanted` is among them (or 5 s passed).
    fn until(rx: &mpsc::Receiver<ReplyBody>, wanted: &FsEvent) -> Vec<FsEvent> {
        let mut seen = Vec::new();
        while !seen.contains(wanted) {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(ReplyBody::FsEvents { events }) => seen.extend(events),
                other => panic!("{other:?} while waiting for {wanted:?}; saw {seen:?}"),
            }
        }
        seen
    }

    #[test]
    fn changes_below_a_folder_are_seen_new_folders_included_until_unwatched() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_string_lossy().into_owned();
        let watches = Arc::new(Watches::default());
        let (tx, rx) = mpsc::channel();
        let runner = {
            let (watches, root) = (watches.clone(), root.clone());
            std::thread::spawn(move || {
                watches.watch(&root, true, &User::current(), &mut |r| {
                    let _ = tx.send(r);
                })
            })
        };
        let Ok(ReplyBody::WatchStarted { watch }) = rx.recv() else {
            panic!("no start")
        };
        let event = |name: &str, kind| FsEvent {
            name: name.into(),
            kind,
        };
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        until(&rx, &event("sub", FsEventKind::Create));
        std::fs::write(dir.path().join("sub/deep.txt"), "x").unwrap();
        until(&rx, &event("sub/deep.txt", FsEventKind::Create));
        std::fs::write(dir.path().join("top.txt"), "1").unwrap();
        std::fs::write(dir.path().join("top.txt"), "12").unwrap();
        until(&rx, &event("top.txt", FsEventKind::Write));
        std::fs::rename(dir.path().join("top.txt"), dir.path().join("moved.txt")).unwrap();
        let seen = until(&rx, &event("moved.txt", FsEventKind::Create));
        assert!(
            seen.contains(&event("top.txt", FsEventKind::Rename)),
            "{seen:?}"
        );
        std::fs::remove_file(dir.path().join("moved.txt")).unwrap();
        until(&rx, &event("moved.txt", FsEventKind::Remove));

        assert_eq!(watches.unwatch(watch), ReplyBody::Done);
        loop {
            match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                ReplyBody::Done => break,
                ReplyBody::FsEvents { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        runner.join().unwrap();
        assert!(matches!(
            watches.unwatch(watch),
            ReplyBody::Failed {
                failure: Failure::NotFound,
                ..
            }
        ));
        let mut replies = Vec::new();
        watches.watch("/no/such/folder", false, &User::current(), &mut |r| {
            replies.push(r)
        });
        assert!(matches!(
            replies[..],
            [ReplyBody::Failed {
                failure: Failure::NotFound,
                ..
            }]
        ));
    }
}
