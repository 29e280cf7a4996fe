//! A control group per sandbox, capping its memory and process count. Works
//! with the unified (v2) hierarchy and with v1's `memory` and `pids`.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

const ROOT: &str = "/sys/fs/cgroup";

/// The sandbox's control group(s); removed on drop, after killing what is left.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value)
        .map_err(|e| Error::io(format!("writing {value} to {}", path.display()), e))
}

impl Cgroup {
    /// Creates `name` with the given limits.
    pub fn create(name: &str, memory_bytes: u64, max_processes: u32) -> Result<Cgroup> {
        let root = Path::new(ROOT);
        let cgroup = if root.join("cgroup.controllers").exists() {
            let dir = root.join(name);
            let cgroup = Cgroup {
                dirs: vec![dir.clone()],
            };
            mkdir(&dir)?;
            write(&dir.join("memory.max"), &memory_bytes.to_string())?;
            let _ = write(&dir.join("memory.swap.max"), "0");
            write(&dir.join("pids.max"), &max_processes.to_string())?;
            cgroup
        } else if root.join("memory").is_dir() && root.join("pids").is_dir() {
            let (memory, pids) = (root.join("memory").join(name), root.join("pids").join(name));
            let cgroup = Cgroup {
                dirs: vec![memory.clone(), pids.clone()],
            };
            mkdir(&memory)?;
            mkdir(&pids)?;
            write(
                &memory.join("memory.limit_in_bytes"),
                &memory_bytes.to_string(),
            )?;
            let memsw = memory.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &memory_bytes.to_string())?;
            }
            write(&pids.join("pids.max"), &max_processes.to_string())?;
            cgroup
        } else {
            return Err(Error::Unavailable {
                backend: crate::Backend::Namespace,
                reason: format!("no memory and pids control groups under {ROOT}"),
            });
        };
        Ok(cgroup)
    }

    /// The `cgroup.procs` files a process writes "0" to in order to join.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
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
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) on processes inside this sandbox's own control group.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for dir in &self.dirs {
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::warn!("could not remove control group {}: {e}", dir.display());
            }
        }
    }
}
