//! File requests, answered from the guest's own file system with the
//! file-system identity of the sandbox's user ([`crate::confine::DEFAULT_USER`]),
//! as in E2B: what they create is the user's, and they reach only what the
//! user may (a link user code planted towards `/etc/passwd` gets
//! "permission denied", not root's write).

use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::confine::User;
use crate::protocol::{FILE_CHUNK, Failure, FileStat, ReplyBody};

fn failed(path: &str, e: std::io::Error) -> ReplyBody {
    let failure = match e.kind() {
        ErrorKind::NotFound => Failure::NotFound,
        // The request makes no sense for what is at the path.
        ErrorKind::IsADirectory
        | ErrorKind::NotADirectory
        | ErrorKind::AlreadyExists
        | ErrorKind::DirectoryNotEmpty
        | ErrorKind::InvalidInput
        | ErrorKind::InvalidFilename => Failure::BadRequest,
        _ => Failure::Io,
    };
    ReplyBody::failed(failure, format!("{path}: {e}"))
}

fn done(path: &str, result: std::io::Result<()>) -> ReplyBody {
    result.map_or_else(|e| failed(path, e), |()| ReplyBody::Done)
}

/// Streams a file (or `length` bytes of it from `offset`) in chunks of at
/// most [`FILE_CHUNK`] bytes, one in memory at a time; the last reply has
/// `eof: true`.
pub fn read(path: &str, offset: u64, length: Option<u64>, send: &mut dyn FnMut(ReplyBody)) {
    let mut file = match as_user(|| fs::File::open(path)) {
        Ok(file) => file,
        Err(e) => return send(failed(path, e)),
    };
    if offset > 0
        && let Err(e) = file.seek(SeekFrom::Start(offset))
    {
        return send(failed(path, e));
    }
    let mut remaining = length.unwrap_or(u64::MAX);
    let mut buffer = vec![0u8; FILE_CHUNK.min(usize::try_from(remaining).unwrap_or(FILE_CHUNK))];
    loop {
        let want = buffer
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let mut filled = 0;
        while filled < want {
            match file.read(&mut buffer[filled..want]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return send(failed(path, e)),
            }
        }
        remaining -= filled as u64;
        let eof = filled < want || remaining == 0;
        send(ReplyBody::FileChunk {
            data: BASE64.encode(&buffer[..filled]),
            eof,
        });
        if eof {
            return;
        }
    }
}

pub fn write(path: &str, data: &str, append: bool) -> ReplyBody {
    let bytes = match BASE64.decode(data) {
        Ok(bytes) => bytes,
        Err(e) => {
            return ReplyBody::failed(Failure::BadRequest, format!("data is not base64: {e}"));
        }
    };
    let parent = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty());
    let written = as_user(|| {
        if let Some(parent) = parent {
            fs::create_dir_all(parent)?;
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)?;
        if !append {
            // Given to the user, as E2B's envd does (its watchers see that
            // change of owner); best effort, the user may not own the file.
            let user = User::default_user();
            let _ = std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid));
        }
        file.write_all(&bytes)
    });
    done(path, written)
}

/// `f`, done as the sandbox's user.
fn as_user<T>(f: impl FnOnce() -> T) -> T {
    crate::confine::as_user(User::default_user(), f)
}

pub fn stat(path: &str) -> Result<FileStat, ReplyBody> {
    stat_named(path, &AccountNames::read())
}

/// [`stat`] with the account names at hand. A symbolic link is described by
/// what it points to (as E2B's envd does), with its absolute target.
fn stat_named(path: &str, names: &AccountNames) -> Result<FileStat, ReplyBody> {
    let link = as_user(|| fs::symlink_metadata(path)).map_err(|e| failed(path, e))?;
    let (meta, symlink_target) = if link.file_type().is_symlink() {
        let target = as_user(|| fs::canonicalize(path))
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
        // A dangling link stays a link.
        let meta = as_user(|| fs::metadata(path)).unwrap_or(link);
        (meta, target)
    } else {
        (link, None)
    };
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string());
    Ok(FileStat {
        name,
        path: path.to_string(),
        is_dir: meta.is_dir(),
        size: meta.len(),
        mode: meta.permissions().mode(),
        modified: meta.mtime(),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        symlink_target,
        metadata: as_user(|| crate::metadata::get(path)),
    })
}

/// The guest's account and group names, read once per request.
struct AccountNames {
    passwd: String,
    group: String,
}

impl AccountNames {
    fn read() -> AccountNames {
        AccountNames {
            passwd: fs::read_to_string("/etc/passwd").unwrap_or_default(),
            group: fs::read_to_string("/etc/group").unwrap_or_default(),
        }
    }

    fn user(&self, uid: u32) -> String {
        name_of(&self.passwd, uid)
    }

    fn group(&self, gid: u32) -> String {
        name_of(&self.group, gid)
    }
}

/// The longest account name shown; the tables are the sandbox's to write,
/// and a longer name (hostile or broken) is shown as its number.
const MAX_NAME: usize = 64;

/// The name with numeric id `id` in a `passwd`/`group`-style table (name
/// first, id third); the number itself where none has it.
fn name_of(table: &str, id: u32) -> String {
    table
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)?.parse() == Ok(id)).then_some(name)
        })
        .filter(|name| name.len() <= MAX_NAME)
        .map_or_else(|| id.to_string(), str::to_string)
}

pub fn list(path: &str) -> ReplyBody {
    let entries = match as_user(|| fs::read_dir(path)) {
        Ok(entries) => entries,
        Err(e) => return failed(path, e),
    };
    let names = AccountNames::read();
    let mut stats = Vec::new();
    for entry in entries.flatten() {
        if let Ok(stat) = stat_named(&entry.path().to_string_lossy(), &names) {
            stats.push(stat);
        }
    }
    stats.sort_by(|a, b| a.name.cmp(&b.name));
    ReplyBody::Entries { entries: stats }
}

/// Keeps `metadata` on `path`, as the sandbox's user.
pub fn set_metadata(
    path: &str,
    metadata: &std::collections::BTreeMap<String, String>,
) -> ReplyBody {
    if let Some(why) = crate::metadata::invalid(metadata) {
        return ReplyBody::failed(Failure::BadRequest, why);
    }
    match as_user(|| crate::metadata::set(path, metadata)) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => ReplyBody::failed(
            Failure::BadRequest,
            format!("{path}: its file system keeps no metadata (extended attributes)"),
        ),
        result => done(path, result),
    }
}

pub fn make_dir(path: &str) -> ReplyBody {
    done(path, as_user(|| fs::create_dir_all(path)))
}

/// Removes `path` (a folder with its contents); nothing there is no error,
/// as with E2B's envd (`rm -rf`).
pub fn remove(path: &str) -> ReplyBody {
    let result = as_user(|| match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    });
    done(path, result)
}

pub fn rename(from: &str, to: &str) -> ReplyBody {
    done(from, as_user(|| fs::rename(from, to)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_named_from_the_tables_or_left_as_numbers() {
        let table = "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n\
                     broken\nodd:x:notanumber:1\n";
        assert_eq!(name_of(table, 0), "root");
        assert_eq!(name_of(table, 1000), "user");
        assert_eq!(name_of(table, 4242), "4242");
        let groups = "root:x:0:\nuser:x:1000:\n";
        assert_eq!(name_of(groups, 1000), "user");
        let hostile = format!("{}:x:7:7::/:/bin/sh\n", "a".repeat(10_000));
        assert_eq!(name_of(&hostile, 7), "7", "an overlong name is its number");
    }

    #[test]
    fn a_link_is_described_by_its_target() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let target = dir.path().join("target.txt");
        fs::write(&target, "hello").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("target.txt", &link).unwrap();
        let stat = stat(link.to_str().unwrap()).unwrap();
        assert_eq!(stat.name, "link");
        assert_eq!(stat.size, 5);
        assert_eq!(stat.mode & 0o170_000, 0o100_000, "the target's type");
        let real = fs::canonicalize(&target).unwrap();
        assert_eq!(stat.symlink_target.as_deref(), real.to_str());
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink("nowhere", &dangling).unwrap();
        let stat = super::stat(dangling.to_str().unwrap()).unwrap();
        assert_eq!(stat.mode & 0o170_000, 0o120_000, "still a link");
        assert_eq!(stat.symlink_target, None);
    }

    #[test]
    fn write_read_stat_list_rename_remove() {
        let dir = tempfile::tempdir().unwrap();
        // Requests act as the sandbox's user, who may write here.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join("sub/a.bin");
        let path = path.to_str().unwrap();
        let data = vec![7u8; FILE_CHUNK + 10];
        assert_eq!(
            write(path, &BASE64.encode(&data[..5]), false),
            ReplyBody::Done
        );
        assert_eq!(
            write(path, &BASE64.encode(&data[5..]), true),
            ReplyBody::Done
        );
        let mut chunks = Vec::new();
        read(path, 0, None, &mut |reply| chunks.push(reply));
        let mut back = Vec::new();
        for chunk in &chunks {
            let ReplyBody::FileChunk { data, .. } = chunk else {
                panic!("{chunk:?}")
            };
            back.extend(BASE64.decode(data).unwrap());
        }
        assert_eq!(back, data);
        assert_eq!(chunks.len(), 2);
        let mut ranged = Vec::new();
        read(path, 3, Some(4), &mut |reply| ranged.push(reply));
        assert_eq!(
            ranged,
            [ReplyBody::FileChunk {
                data: BASE64.encode(&data[3..7]),
                eof: true
            }]
        );
        let mut past_end = Vec::new();
        read(path, 1 << 40, Some(10), &mut |reply| past_end.push(reply));
        assert_eq!(
            past_end,
            [ReplyBody::FileChunk {
                data: String::new(),
                eof: true
            }]
        );
        let mut directory = Vec::new();
        read(dir.path().to_str().unwrap(), 0, None, &mut |r| {
            directory.push(r)
        });
        assert!(matches!(
            directory[..],
            [ReplyBody::Failed {
                failure: Failure::BadRequest,
                ..
            }]
        ));
        assert_eq!(stat(path).unwrap().size, data.len() as u64);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let owner = |p: &Path| fs::metadata(p).map(|m| (m.uid(), m.gid())).unwrap();
            assert_eq!(owner(Path::new(path)), (1000, 1000), "the file");
            assert_eq!(
                owner(&dir.path().join("sub")),
                (1000, 1000),
                "its new folder"
            );
            assert_eq!(
                owner(dir.path()),
                (0, 0),
                "an existing folder is left alone"
            );
        }
        let sub = dir.path().join("sub");
        let ReplyBody::Entries { entries } = list(sub.to_str().unwrap()) else {
            panic!()
        };
        assert_eq!(entries[0].name, "a.bin");
        let moved = dir.path().join("b.bin");
        assert_eq!(rename(path, moved.to_str().unwrap()), ReplyBody::Done);
        assert_eq!(remove(sub.to_str().unwrap()), ReplyBody::Done);
        assert_eq!(
            remove(sub.to_str().unwrap()),
            ReplyBody::Done,
            "gone: no error"
        );
        assert!(matches!(
            stat(path),
            Err(ReplyBody::Failed {
                failure: Failure::NotFound,
                ..
            })
        ));
        assert!(matches!(
            write(path, "not base64!", false),
            ReplyBody::Failed {
                failure: Failure::BadRequest,
                ..
            }
        ));
    }
}
