//! A control group per sandbox, capping its memory and process count, with
//! user code in a child group of its own; it also freezes the sandbox
//! (pause) and counts its CPU time and memory (metrics). Works with the
//! unified (v2) hierarchy and with v1's `memory` and `pids` (plus `freezer`
//! and `cpuacct` where mounted).

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
    /// How to read and freeze the whole sandbox.
    files: CgroupFiles,
}

/// The sandbox-wide files that pause it and tell what it uses.
#[derive(Debug, Clone)]
pub struct CgroupFiles {
    /// Unified hierarchy (v2) or v1.
    v2: bool,
    /// The folder with the memory files.
    memory: PathBuf,
    /// The folder with the CPU time (`cpu.stat` or `cpuacct.usage`).
    cpu: Option<PathBuf>,
    /// The folder that freezes (`cgroup.freeze` or `freezer.state`).
    freezer: Option<PathBuf>,
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
    /// Creates `name` (inside `parent`, a folder under each hierarchy, when
    /// given) with the given limits: `memory_bytes` and `max_processes` +
    /// [`INIT_PROCESSES`] for the sandbox, `max_processes` and the memory
    /// less guest-init's reserve for user code.
    pub fn create(
        parent: Option<&str>,
        name: &str,
        memory_bytes: u64,
        max_processes: u32,
    ) -> Result<Cgroup> {
        let name = &match parent {
            Some(parent) => Path::new(parent).join(name),
            None => PathBuf::from(name),
        };
        let memory_user = memory_bytes.saturating_sub(memory_reserve(memory_bytes));
        let processes = u64::from(max_processes);
        let pids = Split {
            file: "pids.max",
            sandbox: processes + u64::from(INIT_PROCESSES),
            user: processes,
        };
        let root = Path::new(ROOT);
        let v2 = root.join("cgroup.controllers").exists();
        let v1_extra = |controller: &str| {
            let parent = root
                .join(controller)
                .join(name.parent().unwrap_or(Path::new("")));
            Some(root.join(controller)).filter(|_| !v2 && parent.is_dir())
        };
        let (freezer, cpuacct) = (v1_extra("freezer"), v1_extra("cpuacct"));
        let mut cgroup = Cgroup {
            dirs: Vec::new(),
            roots: Vec::new(),
            files: CgroupFiles {
                v2,
                memory: root.join(if v2 { "" } else { "memory" }).join(name),
                cpu: if v2 {
                    Some(root.join(name))
                } else {
                    cpuacct.as_ref().map(|d| d.join(name))
                },
                freezer: if v2 {
                    Some(root.join(name))
                } else {
                    freezer.as_ref().map(|d| d.join(name))
                },
            },
        };
        if v2 {
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
            for extra in [freezer, cpuacct].into_iter().flatten() {
                cgroup.make(&extra.join(name), &[], None)?;
            }
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

    /// Without root: lets the sandbox's own root open the user groups'
    /// `cgroup.procs` (cgroup v1 lets a process be moved only through a file
    /// opened by its own uid, and the sandbox's ids are not this user's) for
    /// as long as the returned guard lives, which should be until the
    /// sandbox has started. Another user opening one meanwhile could only
    /// move their own processes into this sandbox's limits.
    pub fn share_user_procs(&self) -> Result<SharedUserProcs> {
        use std::os::unix::fs::PermissionsExt;
        let files: Vec<PathBuf> = self
            .roots
            .iter()
            .map(|d| d.join(USER_CGROUP).join("cgroup.procs"))
            .collect();
        let shared = SharedUserProcs(files);
        for file in &shared.0 {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| Error::io(format!("opening {} to the sandbox", file.display()), e))?;
        }
        Ok(shared)
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

    /// The files that pause the sandbox and tell what it uses.
    pub fn files(&self) -> CgroupFiles {
        self.files.clone()
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

/// The user groups' `cgroup.procs` files while the sandbox may open them
/// ([`Cgroup::share_user_procs`]); closed to others again on drop.
#[derive(Debug)]
pub struct SharedUserProcs(Vec<PathBuf>);

impl SharedUserProcs {
    /// The files, for the sandbox's PID 1 to open.
    pub fn files(&self) -> &[PathBuf] {
        &self.0
    }
}

impl Drop for SharedUserProcs {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        for file in &self.0 {
            let _ = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644));
        }
    }
}

impl CgroupFiles {
    /// Freezes (`true`) or thaws everything in the sandbox, and waits until
    /// the kernel says it is done.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let Some(dir) = &self.freezer else {
            return Err(Error::Unavailable {
                backend: crate::Backend::Namespace,
                reason: format!(
                    "pausing needs the freezer control group, not mounted under {ROOT}"
                ),
            });
        };
        let (file, value, done_file, done) = match (self.v2, frozen) {
            (true, true) => ("cgroup.freeze", "1", "cgroup.events", "frozen 1"),
            (true, false) => ("cgroup.freeze", "0", "cgroup.events", "frozen 0"),
            (false, true) => ("freezer.state", "FROZEN", "freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED", "freezer.state", "THAWED"),
        };
        write(&dir.join(file), value)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = read(&dir.join(done_file))?;
            if state.lines().any(|line| line.trim() == done) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::SandboxDied {
                    reason: format!(
                        "the sandbox did not reach {done:?} within 10 s ({})",
                        state.trim()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// CPU time used by everything in the sandbox so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        let Some(dir) = &self.cpu else {
            return Ok(Duration::ZERO);
        };
        if self.v2 {
            let micros = stat_value(&read(&dir.join("cpu.stat"))?, "usage_usec");
            return Ok(Duration::from_micros(micros));
        }
        let nanos = read(&dir.join("cpuacct.usage"))?
            .trim()
            .parse()
            .unwrap_or(0);
        Ok(Duration::from_nanos(nanos))
    }

    /// Memory in use (page cache included) and, of it, page cache (bytes).
    pub fn memory(&self) -> Result<(u64, u64)> {
        let (used, stat_key) = if self.v2 {
            ("memory.current", "file")
        } else {
            ("memory.usage_in_bytes", "total_cache")
        };
        let used = read(&self.memory.join(used))?.trim().parse().unwrap_or(0);
        let cache = stat_value(&read(&self.memory.join("memory.stat"))?, stat_key);
        Ok((used, cache))
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Closed,
        _ => Error::io(format!("reading {}", path.display()), e),
    })
}

/// The number after `key` in a `key value` per line file (`memory.stat`).
fn stat_value(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir(dir).map_err(|e| Error::Unavailable {
        backend: crate::Backend::Namespace,
        reason: format!(
            "cannot create the control group {} ({e}); the namespace backend needs root or \
             control groups delegated to its user (`cellbox setup --user NAME`)",
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
