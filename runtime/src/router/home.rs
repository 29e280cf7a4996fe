//! Copying a session's home folder (`/home/user`) between the fast path's
//! host folder, the heavy guest and a snapshot's folder on the host.
//!
//! Only folders and regular files are copied (not symbolic links, devices
//! or sockets: a link could point anywhere, a device never ends), names
//! from the guest must be plain file names, and a copy out of a sandbox
//! stops with [`Error::LimitReached`] past its byte and entry budget.

use std::path::{Component, Path};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use crate::error::{Error, Result};
use crate::guest::GuestClient;

/// The home folder of every session.
pub const HOME: &str = "/home/user";
/// Deepest folder nesting copied out of a sandbox.
const MAX_DEPTH: usize = 64;
const TOO_LARGE: &str = "the sandbox's files are larger than a snapshot may keep";

/// What a copy out of a sandbox may still take.
#[derive(Debug)]
pub struct Budget {
    bytes: u64,
    entries: u64,
    /// Set once a write went past `bytes`.
    exceeded: bool,
}

impl Budget {
    /// At most `bytes` of file content and `entries` files and folders.
    pub fn new(bytes: u64, entries: u64) -> Budget {
        Budget {
            bytes,
            entries,
            exceeded: false,
        }
    }

    /// Fails if a write went past the budget.
    pub fn check(&self) -> Result<()> {
        if self.exceeded {
            return Err(Error::LimitReached(TOO_LARGE.into()));
        }
        Ok(())
    }

    fn take_entry(&mut self) -> Result<()> {
        self.entries = self.entries.checked_sub(1).ok_or_else(|| {
            Error::LimitReached("the sandbox has more files than a snapshot may keep".into())
        })?;
        Ok(())
    }

    fn take_bytes(&mut self, n: u64) -> std::io::Result<()> {
        match self.bytes.checked_sub(n) {
            Some(left) => self.bytes = left,
            None => {
                self.exceeded = true;
                return Err(std::io::Error::other(TOO_LARGE));
            }
        }
        Ok(())
    }
}

/// A writer that fails once its budget's bytes run out.
#[derive(Debug)]
pub struct Bounded<'a, W> {
    pub inner: W,
    pub budget: &'a mut Budget,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Bounded<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Err(e) = self.budget.take_bytes(buf.len() as u64) {
            return Poll::Ready(Err(e));
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        // Give back what was not written after all.
        let unwritten = match &written {
            Poll::Ready(Ok(n)) => buf.len() - n,
            _ => buf.len(),
        };
        self.budget.bytes += unwritten as u64;
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether `name` (from the guest) is one plain file name.
fn plain_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(components.next(), Some(Component::Normal(_)))
        && components.next().is_none()
        && !name.contains('/')
}

/// Copies the host folder `from` into the guest's home folder.
pub async fn to_guest(from: &Path, guest: &GuestClient) -> Result<()> {
    let mut pending = vec![from.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(relative) = path.strip_prefix(from) else {
                continue;
            };
            let target = format!("{HOME}/{}", relative.display());
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => {
                    guest.make_dir(&target).await?;
                    pending.push(path);
                }
                Ok(kind) if kind.is_file() => {
                    guest.upload(&path, &target).await?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Copies the guest's home folder into the (empty) host folder `to`.
pub async fn from_guest(guest: &GuestClient, to: &Path, budget: &mut Budget) -> Result<()> {
    let mut pending = vec![(HOME.to_string(), to.to_path_buf(), 0)];
    while let Some((dir, host_dir, depth)) = pending.pop() {
        for stat in guest.list_dir(&dir).await? {
            if !plain_name(&stat.name) {
                return Err(Error::SandboxDied {
                    reason: format!("the guest listed a file named {:?}", stat.name),
                });
            }
            let guest_path = format!("{dir}/{}", stat.name);
            let host_path = host_dir.join(&stat.name);
            let kind = stat.mode & libc::S_IFMT;
            if stat.is_dir && kind == libc::S_IFDIR && depth < MAX_DEPTH {
                budget.take_entry()?;
                std::fs::create_dir(&host_path)
                    .map_err(|e| Error::io(format!("creating {}", host_path.display()), e))?;
                pending.push((guest_path, host_path, depth + 1));
            } else if kind == libc::S_IFREG {
                budget.take_entry()?;
                let file = tokio::fs::File::create(&host_path)
                    .await
                    .map_err(|e| Error::io(format!("creating {}", host_path.display()), e))?;
                let mut out = Bounded {
                    inner: file,
                    budget: &mut *budget,
                };
                let copied = guest.read_file_to(&guest_path, &mut out).await;
                budget.check()?;
                copied?;
            }
        }
    }
    Ok(())
}

/// Copies the host folder `from` into the (existing) host folder `to`.
pub fn between_host(from: &Path, to: &Path, budget: &mut Budget) -> Result<()> {
    let io = |what: &Path, e| Error::io(format!("copying {}", what.display()), e);
    let mut pending = vec![(from.to_path_buf(), to.to_path_buf(), 0)];
    while let Some((dir, target_dir, depth)) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let entry = entry.map_err(|e| io(&dir, e))?;
            let (path, target) = (entry.path(), target_dir.join(entry.file_name()));
            let kind = entry.file_type().map_err(|e| io(&path, e))?;
            if kind.is_dir() && depth < MAX_DEPTH {
                budget.take_entry()?;
                std::fs::create_dir_all(&target).map_err(|e| io(&target, e))?;
                pending.push((path, target, depth + 1));
            } else if kind.is_file() {
                budget.take_entry()?;
                let size = entry.metadata().map_err(|e| io(&path, e))?.len();
                budget
                    .take_bytes(size)
                    .map_err(|_| Error::LimitReached(TOO_LARGE.into()))?;
                std::fs::copy(&path, &target).map_err(|e| io(&path, e))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_come_from_the_guest() {
        assert!(plain_name("data.csv"));
        assert!(plain_name(".hidden"));
        for bad in ["", ".", "..", "a/b", "/etc", "../x"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_host_copy_skips_links_and_stops_at_its_budget() {
        let root = std::env::temp_dir().join(format!("cellbox-home-{}", std::process::id()));
        let (from, to) = (root.join("from"), root.join("to"));
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(from.join("sub/a.txt"), b"12345").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", from.join("link")).unwrap();

        between_host(&from, &to, &mut Budget::new(5, 10)).unwrap();
        assert_eq!(std::fs::read(to.join("sub/a.txt")).unwrap(), b"12345");
        assert!(std::fs::symlink_metadata(to.join("link")).is_err());

        let again = root.join("again");
        std::fs::create_dir_all(&again).unwrap();
        let error = between_host(&from, &again, &mut Budget::new(4, 10)).unwrap_err();
        assert!(matches!(error, Error::LimitReached(_)), "{error}");
        let error = between_host(&from, &again, &mut Budget::new(100, 1)).unwrap_err();
        assert!(matches!(error, Error::LimitReached(_)), "{error}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
