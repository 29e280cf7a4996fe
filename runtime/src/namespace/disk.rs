//! The namespace sandbox's writable layer: an ext4 file system in a sparse
//! file of the sandbox's disk size (a copy of a blank one in the cache),
//! loop-mounted. Writing past it gives
//! `ENOSPC` inside the sandbox; the host's disk holds at most that much.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The mounted disk; unmounted on drop (its file goes with the sandbox's
/// folder).
#[derive(Debug)]
pub struct Disk {
    mount_point: PathBuf,
}

fn run(what: &str, command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .map_err(|e| Error::io(format!("{what}: running {:?}", command.get_program()), e))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Unavailable {
        backend: crate::Backend::Namespace,
        reason: format!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

impl Disk {
    /// Makes a `bytes`-sized disk in `folder` and mounts it on `mount_point`:
    /// a copy of the blank file system of that size kept in `cache` (made
    /// once, with `mkfs.ext4`), so that a new sandbox copies a few MiB of
    /// metadata instead of formatting.
    pub fn create(cache: &Path, folder: &Path, mount_point: &Path, bytes: u64) -> Result<Disk> {
        let blank = blank_disk(cache, bytes)?;
        let image = folder.join("disk.img");
        copy_sparse(&blank, &image, bytes)
            .map_err(|e| Error::io("copying the blank disk for the sandbox", e))?;
        std::fs::create_dir_all(mount_point)
            .map_err(|e| Error::io("creating the disk's mount point", e))?;
        // The copy's inode tables are holes, read as zeros: nothing to initialise.
        run(
            "mounting the sandbox's disk (needs loop devices)",
            Command::new("mount")
                .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noinit_itable"])
                .arg(&image)
                .arg(mount_point),
        )?;
        Ok(Disk {
            mount_point: mount_point.to_path_buf(),
        })
    }
}

/// The blank ext4 file system of `bytes` in `cache`, formatted if missing
/// (into a temporary name, renamed once complete).
fn blank_disk(cache: &Path, bytes: u64) -> Result<PathBuf> {
    let folder = cache.join("blank-disk");
    let blank = folder.join(format!("ext4-{bytes}.img"));
    if blank.exists() {
        return Ok(blank);
    }
    std::fs::create_dir_all(&folder).map_err(|e| Error::io("creating the blank-disk cache", e))?;
    let partial = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(&folder)
        .map_err(|e| Error::io("creating the blank disk", e))?;
    partial
        .as_file()
        .set_len(bytes)
        .map_err(|e| Error::io("sizing the blank disk", e))?;
    run(
        "formatting the sandbox's disk (mkfs.ext4, e2fsprogs)",
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
            .args(["-E", "lazy_itable_init=1,nodiscard"])
            .arg(partial.path()),
    )?;
    partial
        .persist(&blank)
        .map_err(|e| Error::io("keeping the blank disk", e.error))?;
    Ok(blank)
}

/// Copies the `bytes`-long sparse file `from` to a new file `to`, its holes
/// left as holes (only the data extents are copied).
fn copy_sparse(from: &Path, to: &Path, bytes: u64) -> std::io::Result<()> {
    use nix::unistd::{Whence, lseek};
    let source = std::fs::File::open(from)?;
    let target = std::fs::File::create_new(to)?;
    target.set_len(bytes)?;
    let end = i64::try_from(bytes).map_err(|_| std::io::Error::other("disk too large"))?;
    let mut offset = 0;
    while offset < end {
        let data = match lseek(&source, offset, Whence::SeekData) {
            Ok(data) => data,
            Err(nix::errno::Errno::ENXIO) => break, // only holes are left
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(&source, data, Whence::SeekHole)?.min(end);
        let (mut read_at, mut write_at) = (data, data);
        while read_at < hole {
            let len = usize::try_from(hole - read_at).unwrap_or(usize::MAX);
            let copied = nix::fcntl::copy_file_range(
                &source,
                Some(&mut read_at),
                &target,
                Some(&mut write_at),
                len,
            )?;
            if copied == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        offset = hole;
    }
    Ok(())
}

impl Drop for Disk {
    fn drop(&mut self) {
        // Lazily: a process still dying inside keeps it busy a moment; the
        // loop device is freed once it is unused (mount's autoclear).
        let Ok(path) = CString::new(self.mount_point.as_os_str().as_encoded_bytes()) else {
            return;
        };
        // SAFETY: umount2 with a valid NUL-terminated path and no other memory.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!("could not unmount {}: {e}", self.mount_point.display());
        }
    }
}
