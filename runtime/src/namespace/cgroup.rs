//! A control group per sandbox, capping its memory and process count, with
//! user code in a child group of its own. Works with the unified (v2)
//! hierarchy and with v1's `memory` and `pids`.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use cellbox_guest_init::confine::{INIT_CGROUP, INIT_PROCESSES, USER_CGROUP, memory_reserve};
use std::time::Duration;

use crate::error::{Error, Result};

const ROOT: &str = "/sys/fs/cgroup";

/// The sandbox's control group(s), one per hierarchy (cgroup v2 has one; v1
/// has `memory` and `pids`), each split into [`INIT_CGROUP`] for guest-init
/// and [`USER_CGROUP`] for the code it runs, whose limits sit below the
/// sandbox's so that user code cannot starve guest-init. Removed on drop,
/// after killing what is left.
#[derive(Debug)]
pub struct Cgroup {
    /// Every folder made, children before their parent.
    dirs: Vec<PathBuf>,
    /// The sandbox's folder in each hierarchy.
    roots: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value)
        .map_err(|e| Error::io(format!("writing {value} to {}", path.display()), e))
}

/// A limit for the whole sandbox and the smaller one for its user code.
struct Split {
    file: &'static str,
    sandbox: u64,
    user: u64,
}

impl Cgroup {
    /// Creates `name` with the given limits: `memory_bytes` and
    /// `max_processes` + [`INIT_PROCESSES`] for the sandbox, `max_processes`
    /// and the memory less guest-init's reserve for user code.
    pub fn create(name: &str, memory_bytes: u64, max_processes: u32) -> Result<Cgroup> {
        let memory_user = memory_bytes.saturating_sub(memory_reserve(memory_bytes));
        let processes = u64::from(max_processes);
        let pids = Split {
            file: "pids.max",
            sandbox: processes + u64::from(INIT_PROCESSES),
            user: processes,
        };
        let root = Path::new(ROOT);
        let mut cgroup = Cgroup {
            dirs: Vec::new(),
            roots: Vec::new(),
        };
        if root.join("cgroup.controllers").exists() {
            let memory = Split {
                file: "memory.max",
                sandbox: memory_bytes,
                user: memory_user,
            };
            let swap = Split {
                file: "memory.swap.max",
                sandbox: 0,
                user: 0,
            };
            cgroup.make(&root.join(name), &[memory, pids], Some(&swap))?;
        } else if root.join("memory").is_dir() && root.join("pids").is_dir() {
            let memory = Split {
                file: "memory.limit_in_bytes",
                sandbox: memory_bytes,
                user: memory_user,
            };
            let memsw = Split {
                file: "memory.memsw.limit_in_bytes",
                ..memory
            };
            cgroup.make(&root.join("memory").join(name), &[memory], Some(&memsw))?;
            cgroup.make(&root.join("pids").join(name), &[pids], None)?;
        } else {
            return Err(Error::Unavailable {
                backend: crate::Backend::Namespace,
                reason: format!("no memory and pids control groups under {ROOT}"),
            });
        }
        Ok(cgroup)
    }

    /// Makes `dir` and its init and user children with `limits` (and
    /// `optional`, where the kernel has it).
    fn make(&mut self, dir: &Path, limits: &[Split], optional: Option<&Split>) -> Result<()> {
        mkdir(dir)?;
        self.dirs.push(dir.to_path_buf());
        self.roots.push(dir.to_path_buf());
        let set = |dir: &Path, user: bool| -> Result<()> {
            let present = optional.filter(|limit| dir.join(limit.file).exists());
            for limit in limits.iter().chain(present) {
                let value = if user { limit.user } else { limit.sandbox };
                write(&dir.join(limit.file), &value.to_string())?;
            }
            Ok(())
        };
        set(dir, false)?;
        let subtree = dir.join("cgroup.subtree_control");
        if subtree.exists() {
            write(&subtree, "+memory +pids")?;
        }
        for child in [INIT_CGROUP, USER_CGROUP] {
            let path = dir.join(child);
            mkdir(&path)?;
            self.dirs.insert(0, path.clone());
            if child == USER_CGROUP {
                set(&path, true)?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files guest-init's launcher writes "0" to in order
    /// to join the init groups.
    pub fn init_procs_files(&self) -> Vec<CString> {
        self.roots
            .iter()
            .filter_map(|d| {
                let file = d.join(INIT_CGROUP).join("cgroup.procs");
                CString::new(file.into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// The user groups' `cgroup.procs`, open for writing, for guest-init to
    /// put each user process in.
    pub fn open_user_procs(&self) -> Result<Vec<OwnedFd>> {
        self.roots
            .iter()
            .map(|d| {
                let file = d.join(USER_CGROUP).join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .map(OwnedFd::from)
                    .map_err(|e| Error::io(format!("opening {}", file.display()), e))
            })
            .collect()
    }

    fn pids(&self) -> Vec<i32> {
        self.dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir(dir).map_err(|e| Error::Unavailable {
        backend: crate::Backend::Namespace,
        reason: format!(
            "cannot create the control group {} ({e}); the namespace backend needs root",
            dir.display()
        ),
    })
}

impl Drop for Cgroup {
    /// Kills what is left and removes the folders, children first; a group
    /// whose last processes are still exiting refuses removal (EBUSY) for a
    /// moment, so both are retried for up to five seconds.
    fn drop(&mut self) {
        for attempt in 0..250 {
            for pid in self.pids() {
                // SAFETY: kill(2) on processes inside this sandbox's own control group.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let mut left = Vec::new();
            for dir in self.dirs.drain(..) {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) if attempt == 249 => {
                        tracing::warn!("could not remove control group {}: {e}", dir.display())
                    }
                    Err(_) => left.push(dir),
                }
            }
            self.dirs = left;
            if self.dirs.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
