//! The namespace sandbox's writable layer: an ext4 file system in a sparse
//! file of the sandbox's disk size, loop-mounted. Writing past it gives
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
    /// Makes a `bytes`-sized disk in `folder` and mounts it on `mount_point`.
    pub fn create(folder: &Path, mount_point: &Path, bytes: u64) -> Result<Disk> {
        let image = folder.join("disk.img");
        let file = std::fs::File::create(&image)
            .map_err(|e| Error::io("creating the sandbox's disk", e))?;
        file.set_len(bytes)
            .map_err(|e| Error::io("sizing the sandbox's disk", e))?;
        drop(file);
        run(
            "formatting the sandbox's disk (mkfs.ext4, e2fsprogs)",
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
                .args(["-E", "lazy_itable_init=1,nodiscard"])
                .arg(&image),
        )?;
        std::fs::create_dir_all(mount_point)
            .map_err(|e| Error::io("creating the disk's mount point", e))?;
        run(
            "mounting the sandbox's disk (needs loop devices)",
            Command::new("mount")
                .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
                .arg(&image)
                .arg(mount_point),
        )?;
        Ok(Disk {
            mount_point: mount_point.to_path_buf(),
        })
    }
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
