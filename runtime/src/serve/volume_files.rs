//! A volume's files as its content API reaches them on the host. A volume is
//! writable by the sandboxes that mount it, so anything in it may be a trap:
//! every path is resolved inside the volume's folder (`openat2` with
//! `RESOLVE_IN_ROOT`: `..` and symbolic links, absolute ones included, stay
//! in it; no `/proc` magic links), and the last step of a path never follows
//! a link. What a sandbox plants cannot make the server read, write or
//! remove anything outside the volume.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::mkdirat;
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, unlinkat};
use serde::Serialize;

use super::volumes::{ID_BASE, USER};

/// Entries a listing returns at most (a deep tree is cut there).
pub const MAX_LISTED: usize = 10_000;

/// A volume's folder, opened once per request.
#[derive(Debug)]
pub struct VolumeRoot {
    root: OwnedFd,
}

/// One entry (E2B's `VolumeEntryStat`); ids as the sandbox sees them.
#[derive(Debug, Serialize)]
pub struct EntryStat {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub path: String,
    pub size: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: String,
    pub mtime: String,
    pub ctime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Owner and mode asked for a new entry (ids as the sandbox sees them).
#[derive(Debug, Clone, Copy)]
pub struct NewEntry {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from(e)
}

impl VolumeRoot {
    pub fn open(folder: &Path) -> io::Result<VolumeRoot> {
        let root = nix::fcntl::open(folder, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(errno)?;
        Ok(VolumeRoot { root })
    }

    /// `path` inside the volume, its last step not followed if a link.
    fn resolve(&self, path: &str, flags: OFlag) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(&self.root, relative(path), how).map_err(errno)
    }

    /// The folder holding `path` (resolved inside) and the last name.
    fn parent(&self, path: &str) -> io::Result<(OwnedFd, String)> {
        let clean = relative(path);
        let (folder, name) = match clean.rsplit_once('/') {
            Some((folder, name)) => (folder, name),
            None => (".", clean),
        };
        if name.is_empty() || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path:?} names no entry"),
            ));
        }
        let folder = self.resolve(folder, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        Ok((folder, name.to_owned()))
    }

    pub fn stat(&self, path: &str) -> io::Result<EntryStat> {
        let (folder, name) = match self.parent(path) {
            Ok(found) => found,
            // The volume's root itself.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                let fd = self.resolve(".", OFlag::O_PATH | OFlag::O_DIRECTORY)?;
                let stat = fstatat(&fd, "", AtFlags::AT_EMPTY_PATH).map_err(errno)?;
                return Ok(entry("", "/", &stat, None));
            }
            Err(e) => return Err(e),
        };
        describe(&folder, &name, &shown(path))
    }

    /// The entries under `path`, `depth` levels deep (at least 1).
    pub fn list(&self, path: &str, depth: u32) -> io::Result<Vec<EntryStat>> {
        let folder = self.resolve(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut found = Vec::new();
        list_into(folder, &shown(path), depth.max(1), &mut found)?;
        Ok(found)
    }

    /// Makes the folder `path` (and its parents if `parents`).
    pub fn make_dir(&self, path: &str, new: NewEntry, parents: bool) -> io::Result<EntryStat> {
        if parents {
            let mut so_far = String::new();
            let steps: Vec<&str> = relative(path).split('/').collect();
            for step in &steps[..steps.len().saturating_sub(1)] {
                so_far = format!("{so_far}/{step}");
                match self.make_one(&so_far, new) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.make_one(path, new)?;
        self.stat(path)
    }

    fn make_one(&self, path: &str, new: NewEntry) -> io::Result<()> {
        let (folder, name) = self.parent(path)?;
        let mode = Mode::from_bits_truncate(new.mode.unwrap_or(0o755) & 0o7777);
        mkdirat(&folder, name.as_str(), mode).map_err(errno)?;
        own(&folder, &name, new)
    }

    /// Opens the regular file `path` for reading.
    pub fn open_read(&self, path: &str) -> io::Result<std::fs::File> {
        let fd = self.resolve(path, OFlag::O_RDONLY)?;
        let file = std::fs::File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path:?} is not a file"),
            ));
        }
        Ok(file)
    }

    /// A new file aside `path`, to be [`VolumeRoot::finish_write`]n in place.
    pub fn start_write(&self, path: &str) -> io::Result<PendingWrite> {
        let (folder, name) = self.parent(path)?;
        let aside = format!(".{name}.cellbox-upload");
        let _ = unlinkat(&folder, aside.as_str(), UnlinkatFlags::NoRemoveDir);
        let how = OpenHow::new()
            .flags(
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
            )
            .mode(Mode::from_bits_truncate(0o600))
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let file = openat2(&folder, aside.as_str(), how).map_err(errno)?;
        Ok(PendingWrite {
            file: std::fs::File::from(file),
            folder,
            aside,
            name,
            path: shown(path),
        })
    }

    /// Removes `path` (a folder with everything in it).
    pub fn remove(&self, path: &str) -> io::Result<()> {
        let (folder, name) = self.parent(path)?;
        remove_entry(&folder, &name)
    }

    /// Changes the owner and mode of `path` (a link's own owner only).
    pub fn set(&self, path: &str, new: NewEntry) -> io::Result<EntryStat> {
        let (folder, name) = self.parent(path)?;
        own(&folder, &name, NewEntry { mode: None, ..new })?;
        if let Some(mode) = new.mode {
            let stat =
                fstatat(&folder, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno)?;
            if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a symbolic link has no mode of its own",
                ));
            }
            let fd = self.resolve(path, OFlag::O_RDONLY)?;
            nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode & 0o7777)).map_err(errno)?;
        }
        describe(&folder, &name, &shown(path))
    }
}

/// A file being written aside its final name.
#[derive(Debug)]
pub struct PendingWrite {
    pub file: std::fs::File,
    folder: OwnedFd,
    aside: String,
    name: String,
    path: String,
}

impl PendingWrite {
    /// Gives the file its owner and mode and renames it into place.
    pub fn finish(self, new: NewEntry) -> io::Result<EntryStat> {
        let mode = Mode::from_bits_truncate(new.mode.unwrap_or(0o644) & 0o7777);
        nix::sys::stat::fchmod(&self.file, mode).map_err(errno)?;
        own(&self.folder, &self.aside, new)?;
        nix::fcntl::renameat(
            &self.folder,
            self.aside.as_str(),
            &self.folder,
            self.name.as_str(),
        )
        .map_err(errno)?;
        describe(&self.folder, &self.name, &self.path)
    }

    /// Drops what was written (a broken upload changes nothing).
    pub fn abandon(self) -> io::Result<()> {
        unlinkat(
            &self.folder,
            self.aside.as_str(),
            UnlinkatFlags::NoRemoveDir,
        )
        .map_err(errno)
    }
}

/// `path` without its leading slashes ("." for the root).
fn relative(path: &str) -> &str {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() { "." } else { trimmed }
}

/// `path` as answers show it: absolute, without a trailing slash.
fn shown(path: &str) -> String {
    match relative(path) {
        "." => "/".into(),
        rest => format!("/{rest}"),
    }
}

/// Gives `name` in `folder` its owner (host ids of the sandbox's; `user` by
/// default), without following a link.
fn own(folder: &OwnedFd, name: &str, new: NewEntry) -> io::Result<()> {
    let host = |id: Option<u32>| ID_BASE + id.unwrap_or(USER).min(65_535);
    fchownat(
        folder,
        name,
        Some(Uid::from_raw(host(new.uid))),
        Some(Gid::from_raw(host(new.gid))),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(errno)
}

fn describe(folder: &OwnedFd, name: &str, path: &str) -> io::Result<EntryStat> {
    let stat = fstatat(folder, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno)?;
    let target = if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
        nix::fcntl::readlinkat(folder, name)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(entry(name, path, &stat, target))
}

fn entry(name: &str, path: &str, stat: &FileStat, target: Option<String>) -> EntryStat {
    let kind = match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => "file",
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFLNK => "symlink",
        _ => "unknown",
    };
    // Host ids outside the sandbox's range show as the sandbox sees them: nobody.
    let sandbox_id = |id: u32| {
        id.checked_sub(ID_BASE)
            .filter(|id| *id <= 65_535)
            .unwrap_or(65_534)
    };
    let time =
        |seconds: i64, nanos: i64| super::clock::rfc3339(seconds, Some((nanos / 1000) as u32));
    EntryStat {
        name: name.to_owned(),
        kind,
        path: path.to_owned(),
        size: stat.st_size,
        mode: stat.st_mode & 0o7777,
        uid: sandbox_id(stat.st_uid),
        gid: sandbox_id(stat.st_gid),
        atime: time(stat.st_atime, stat.st_atime_nsec),
        mtime: time(stat.st_mtime, stat.st_mtime_nsec),
        ctime: time(stat.st_ctime, stat.st_ctime_nsec),
        target,
    }
}

/// Lists `folder` (shown as `path`) into `found`, `depth` levels deep;
/// folders are opened without following links.
fn list_into(
    folder: OwnedFd,
    path: &str,
    depth: u32,
    found: &mut Vec<EntryStat>,
) -> io::Result<()> {
    let dup = folder.try_clone()?;
    let mut dir = Dir::from_fd(dup).map_err(errno)?;
    let mut names: Vec<String> = dir
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    for name in names {
        if found.len() >= MAX_LISTED {
            return Ok(());
        }
        let child = format!("{}/{name}", path.trim_end_matches('/'));
        let stat = describe(&folder, &name, &child)?;
        let is_dir = stat.kind == "directory";
        found.push(stat);
        if is_dir && depth > 1 {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let sub =
                nix::fcntl::openat(&folder, name.as_str(), flags, Mode::empty()).map_err(errno)?;
            list_into(sub, &child, depth - 1, found)?;
        }
    }
    Ok(())
}

/// Removes `name` from `folder`, a folder's contents first; links and
/// folders are never followed.
fn remove_entry(folder: &OwnedFd, name: &str) -> io::Result<()> {
    let stat = fstatat(folder, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let sub = nix::fcntl::openat(folder, name, flags, Mode::empty()).map_err(errno)?;
        let names: Vec<String> = Dir::from_fd(sub.try_clone()?)
            .map_err(errno)?
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "." && n != "..")
            .collect();
        for child in names {
            remove_entry(&sub, &child)?;
        }
        unlinkat(folder, name, UnlinkatFlags::RemoveDir).map_err(errno)
    } else {
        unlinkat(folder, name, UnlinkatFlags::NoRemoveDir).map_err(errno)
    }
}
