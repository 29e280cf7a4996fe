//! The guest kernel for the microVM: Linux 6.1 from Debian's
//! `linux-source-6.1`, `tinyconfig` plus `guest-kernel/config.fragment`, built
//! on first use by `guest-kernel/build.sh` and cached by those inputs.

use std::path::{Path, PathBuf};

use crate::builder;
use crate::error::Result;
use crate::progress::Progress;

const BUILD_SCRIPT: &str = include_str!("../../../guest-kernel/build.sh");
const FRAGMENT: &str = include_str!("../../../guest-kernel/config.fragment");

/// A built guest kernel.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    dir: PathBuf,
}

impl GuestKernel {
    /// Returns the cached kernel, building it first if there is none (about
    /// ten minutes on 2 cores; progress goes to `progress`). Blocking.
    pub fn ensure(cache_root: &Path, progress: &Progress) -> Result<GuestKernel> {
        let dir = builder::script_build(
            cache_root,
            "kernel",
            "vmlinux",
            &[("build.sh", BUILD_SCRIPT), ("config.fragment", FRAGMENT)],
            "building the guest kernel (guest-kernel/build.sh; about ten minutes)",
            progress,
        )?;
        Ok(GuestKernel { dir })
    }

    /// The uncompressed ELF kernel (with the PVH entry note).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    /// The compressed kernel.
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }

    /// The final kernel configuration.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config")
    }
}
