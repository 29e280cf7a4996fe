//! Snapshots and forks: a sandbox's files and Python state, kept in a host
//! folder, and new sandboxes started from them.
//!
//! Kept: the files under `/home/user` (folders and regular files, with their
//! content), and the default context's globals that pickle (values,
//! functions, classes and their instances, imported modules) with its
//! working folder; on the backend kind it ran on (the fast path, or the
//! heavy backend).
//!
//! Not kept: running processes and commands, open files and sockets, other
//! contexts, files outside `/home/user`, file modes, links and metadata, and
//! values that do not pickle (named by [`Snapshot::dropped`]). A snapshot is
//! a copy made through the running sandbox, not of its memory.
//!
//! Except on the microVM (without a network card): there a snapshot also
//! keeps the whole VM (its memory, so every context, process and value, and
//! its disk writes), and a sandbox started from it where the microVM can run
//! is that VM going on; elsewhere it starts from the pickled state. Forks of
//! such a sandbox are whole copies too.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Sandbox, SandboxOptions};
use crate::error::{Error, Result};
use crate::router::home::Budget;

/// The file that makes a folder a snapshot (written last).
const MANIFEST: &str = "snapshot.json";
/// The layout of snapshot folders this version writes and reads.
const FORMAT: u32 = 1;
/// The subfolder with the whole microVM (memory, processes, disk writes),
/// where the sandbox ran on one that could be saved.
const WHOLE: &str = "vm";
/// Most files and folders a snapshot keeps.
const MAX_ENTRIES: u64 = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    /// The id of the sandbox it was taken of.
    source: String,
    /// Seconds since the Unix epoch.
    created: u64,
    /// Whether the default context ran on the heavy backend.
    heavy: bool,
    /// The globals that did not pickle.
    dropped: Vec<String>,
    /// Whether [`WHOLE`] holds the whole microVM it ran on.
    #[serde(default)]
    whole: bool,
    /// Cells the default context had run.
    #[serde(default)]
    execution_count: u32,
}

/// A sandbox's state on disk (see the module's documentation for what it
/// keeps). Take one with [`Sandbox::snapshot`], start sandboxes from it
/// with [`Sandbox::from_snapshot`].
///
/// ```no_run
/// # async fn demo() -> cellbox::Result<()> {
/// use cellbox::{Sandbox, SandboxOptions, Snapshot};
///
/// let sandbox = Sandbox::create(SandboxOptions::default()).await?;
/// sandbox.run_code("def greet(name): return f'hello {name}'").await?;
/// let snapshot = sandbox.snapshot("/var/lib/myapp/snapshots/greeter").await?;
/// sandbox.close().await?;
///
/// let snapshot = Snapshot::open("/var/lib/myapp/snapshots/greeter")?;
/// let copy = Sandbox::from_snapshot(&snapshot, SandboxOptions::default()).await?;
/// assert_eq!(copy.run_code("greet('ada')").await?.text(), Some("'hello ada'"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Snapshot {
    dir: PathBuf,
    manifest: Manifest,
}

impl Snapshot {
    /// The snapshot in folder `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Snapshot> {
        let dir = dir.as_ref().to_path_buf();
        let file = dir.join(MANIFEST);
        let text = std::fs::read(&file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::NotFound(format!("{} holds no snapshot", dir.display()))
            }
            _ => Error::io(format!("reading {}", file.display()), e),
        })?;
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
            Error::InvalidArgument(format!("{} is not a snapshot: {e}", file.display()))
        })?;
        if manifest.format != FORMAT {
            return Err(Error::InvalidArgument(format!(
                "{} has snapshot format {}; this cellbox reads format {FORMAT}",
                dir.display(),
                manifest.format
            )));
        }
        Ok(Snapshot { dir, manifest })
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id of the sandbox it was taken of.
    pub fn source(&self) -> &str {
        &self.manifest.source
    }

    /// When it was taken.
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.manifest.created)
    }

    /// The default context's globals that the pickled state lacks (they do
    /// not pickle; a sandbox restored from the whole VM has them).
    pub fn dropped(&self) -> &[String] {
        &self.manifest.dropped
    }

    /// Whether it keeps the whole microVM the sandbox ran on (memory,
    /// processes, disk writes) besides the pickled state.
    pub fn whole(&self) -> bool {
        self.manifest.whole
    }

    /// Deletes its folder.
    pub fn delete(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("deleting {}", self.dir.display()), e))
    }
}

/// Creates the new folder `dir` (and missing parents), readable by this
/// user only.
fn new_private_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::InvalidArgument(format!(
                "{} already exists; a snapshot goes into a new folder",
                dir.display()
            )),
            _ => Error::io(format!("creating {}", dir.display()), e),
        })
}

impl Sandbox {
    /// Keeps this sandbox's files and Python state in the new folder `dir`
    /// (waits for a running cell of the default context to end). The
    /// sandbox goes on unchanged. At most its disk plus memory size is kept:
    /// past it, [`Error::LimitReached`] and nothing is left in `dir`.
    pub async fn snapshot(&self, dir: impl AsRef<Path>) -> Result<Snapshot> {
        let dir = dir.as_ref();
        new_private_dir(dir)?;
        let taken = self.save_into(dir).await;
        if taken.is_err() {
            let _ = std::fs::remove_dir_all(dir);
        }
        taken
    }

    async fn save_into(&self, dir: &Path) -> Result<Snapshot> {
        let limit = u64::from(self.options.disk_mib) + u64::from(self.options.memory_mib);
        let mut budget = Budget::new(limit << 20, MAX_ENTRIES);
        let mut inner = self.active().await?;
        let saved = inner.session.save_state(dir, &mut budget).await?;
        // Also the whole VM where there is one: a copy that keeps processes
        // and values that do not pickle (the pickled state serves elsewhere).
        let whole = inner.session.save_whole(&dir.join(WHOLE)).await?;
        let execution_count = inner.session.execution_count();
        drop(inner);
        let manifest = Manifest {
            format: FORMAT,
            source: self.id().to_string(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            heavy: saved.heavy,
            dropped: saved.dropped,
            whole,
            execution_count,
        };
        crate::cache::write_json_atomically(&dir.join(MANIFEST), &manifest)?;
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// A new sandbox with `options`, started from `snapshot`.
    pub async fn from_snapshot(snapshot: &Snapshot, options: SandboxOptions) -> Result<Sandbox> {
        if snapshot.manifest.whole && restores_whole(&options) {
            let dir = snapshot.dir.join(WHOLE);
            let count = snapshot.manifest.execution_count;
            return Sandbox::restore_whole(&dir, options, count).await;
        }
        let sandbox = Sandbox::create(options).await?;
        let loaded = match sandbox.active().await {
            Ok(mut inner) => {
                inner
                    .session
                    .load_state(&snapshot.dir, snapshot.manifest.heavy)
                    .await
            }
            Err(e) => Err(e),
        };
        match loaded {
            Ok(dropped) => {
                if !dropped.is_empty() {
                    tracing::warn!(?dropped, "names of the snapshot that could not be loaded");
                }
                Ok(sandbox)
            }
            Err(e) => {
                let _ = sandbox.close().await;
                Err(e)
            }
        }
    }

    /// A new, independent sandbox with this one's options, files and Python
    /// state; this one goes on unchanged. On the microVM (without a network
    /// card) the fork is a copy of the whole VM: every context, values that
    /// do not pickle, running threads and processes go on in it, with its
    /// own randomness. Elsewhere it keeps what a [`Snapshot`] keeps.
    pub async fn fork(&self) -> Result<Sandbox> {
        if let Some(copy) = self.fork_whole().await? {
            return Ok(copy);
        }
        let dir =
            std::env::temp_dir().join(format!("cellbox-fork-{:016x}", super::session::rand_id()));
        let snapshot = self.snapshot(&dir).await?;
        let fork = Sandbox::from_snapshot(&snapshot, self.options_now()).await;
        let _ = snapshot.delete();
        fork
    }

    /// A copy of the whole running sandbox (every context, process and
    /// value) where its backend can make one (the microVM without a network
    /// card); `None` elsewhere.
    pub async fn fork_whole(&self) -> Result<Option<Sandbox>> {
        let copy = self.active().await?.session.copy_whole().await?;
        Ok(copy.map(|session| Sandbox::around(session, (*self.options).clone())))
    }
}

/// Whether a sandbox with `options` may be the microVM of a whole snapshot:
/// one that may run on the microVM, without network (a VM with a network
/// card is never saved whole), where KVM can run it.
fn restores_whole(options: &SandboxOptions) -> bool {
    use super::BackendPolicy;
    matches!(options.backend, BackendPolicy::Auto | BackendPolicy::Vm)
        && !options.network.enabled()
        && options.template.is_none()
        && cellbox_vmm::kvm_support::linux_guest_blocker().is_none()
}
