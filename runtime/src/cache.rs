//! The artefact cache: a directory outside any checkout, one sub-folder per
//! artefact keyed by a hash of the inputs that built it.

use std::fs::File;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Where cached artefacts live: `$CELLBOX_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/cellbox`, else `~/.cache/cellbox`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CELLBOX_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("cellbox");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/cellbox"),
        None => std::env::temp_dir().join("cellbox-cache"),
    }
}

/// Checks that `path` and every folder above it can be changed only by the
/// current user or root (a folder anyone may write to is fine only with the
/// sticky bit, as `/tmp`): cellbox runs what the cache holds — compiled code,
/// the guest's kernel and init — so it must not take it from a place another
/// user could have written.
pub fn check_trusted(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for place in path.ancestors() {
        let Ok(meta) = std::fs::metadata(place) else {
            continue; // not made yet: it will be ours
        };
        let writable_by_others = meta.mode() & 0o022 != 0;
        let sticky_dir = meta.is_dir() && meta.mode() & 0o1000 != 0;
        let owner_ok = meta.uid() == me || meta.uid() == 0;
        if !owner_ok || (writable_by_others && !sticky_dir) {
            return Err(Error::Artifact {
                what: "the artefact cache".into(),
                reason: format!(
                    "{} is owned by uid {} with mode {:o}: another user could replace what \
                     cellbox runs from {}; make it yours and not writable by others \
                     (chown, chmod go-w) or set CELLBOX_CACHE_DIR",
                    place.display(),
                    meta.uid(),
                    meta.mode() & 0o7777,
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

/// A short hex key for a list of named inputs.
pub fn input_key<'a>(inputs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut hasher = Sha256::new();
    for (name, bytes) in inputs {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An exclusive lock on a cache folder, so that two processes never build the
/// same artefact at once. Released on drop.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Blocks until the lock on `dir` is held, creating `dir` if needed.
    pub fn acquire(dir: &Path) -> Result<CacheLock> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating cache folder {}", dir.display()), e))?;
        let path = dir.join(".lock");
        let file = File::create(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        file.lock()
            .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
        Ok(CacheLock { _file: file })
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    replace(path, bytes, false)
}

/// [`write_atomically`], the file readable by its owner only (mode 600)
/// and on disk before it replaces the old one.
pub fn write_private_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    replace(path, bytes, true)
}

fn replace(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("partial");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o666 })
        .open(&tmp)
        .and_then(|mut file| {
            if private {
                // (A left-over temporary file keeps its mode otherwise.)
                use std::os::unix::fs::PermissionsExt as _;
                file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            file.write_all(bytes)?;
            if private {
                file.sync_all()?;
            }
            Ok(())
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Writes `value` as JSON to `path` the same way.
pub fn write_json_atomically(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| {
        Error::io(
            format!("writing {}", path.display()),
            std::io::Error::other(e),
        )
    })?;
    write_atomically(path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_cache_others_can_write_to_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let artefact = cache.join("kernel/abc");
        assert!(
            check_trusted(&artefact).is_ok(),
            "not made yet, below a private folder"
        );
        let mode = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        mode(&cache, 0o777);
        let refused = check_trusted(&artefact).unwrap_err().to_string();
        assert!(refused.contains("mode 777"), "{refused}");
        mode(&cache, 0o1777);
        assert!(check_trusted(&artefact).is_ok(), "sticky, like /tmp");
        mode(&cache, 0o755);
        let file = cache.join("module.cwasm");
        std::fs::write(&file, b"x").unwrap();
        mode(&file, 0o666);
        assert!(check_trusted(&file).is_err(), "a file others may write");
        mode(&file, 0o644);
        assert!(check_trusted(&file).is_ok());
        std::os::unix::fs::chown(&file, Some(12345), None).unwrap();
        assert!(check_trusted(&file).is_err(), "another user's file");
    }

    #[test]
    fn input_key_depends_on_names_and_contents() {
        let a = input_key([("a", &b"1"[..]), ("b", &b"2"[..])]);
        assert_eq!(a.len(), 16);
        assert_eq!(a, input_key([("a", &b"1"[..]), ("b", &b"2"[..])]));
        assert_ne!(a, input_key([("a", &b"1"[..]), ("b", &b"3"[..])]));
        assert_ne!(a, input_key([("a1", &b""[..]), ("b", &b"2"[..])]));
    }

    #[test]
    fn lock_and_atomic_write() {
        let dir = tempfile::tempdir().unwrap();
        let _lock = CacheLock::acquire(&dir.path().join("x")).unwrap();
        let file = dir.path().join("x/out.bin");
        write_atomically(&file, b"hello").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"hello");
        assert!(!file.with_extension("partial").exists());
    }
}
