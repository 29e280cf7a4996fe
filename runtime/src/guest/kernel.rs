//! The guest kernel for the microVM: Linux 6.1 from Debian's
//! `linux-source-6.1`, `tinyconfig` plus `guest-kernel/config.fragment`, built
//! on first use by `guest-kernel/build.sh` and cached by those inputs.

use std::path::{Path, PathBuf};

use crate::builder;
use crate::error::Result;
use crate::progress::Progress;

const BUILD_SCRIPT: &str = include_str!("../../../guest-kernel/build.sh");
const FRAGMENT: &str = include_str!("../../../guest-kernel/config.fragment");

const KIND: &str = "kernel";
const VMLINUX: &str = "vmlinux";

/// A built guest kernel.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    dir: PathBuf,
}

impl GuestKernel {
    /// Returns the cached kernel, building it first if there is none (about
    /// ten minutes on 2 cores; progress goes to `progress`). Blocking.
    ///
    /// Without root, a kernel that root shared (`cellbox setup --user NAME`)
    /// is used when the own cache has none.
    pub fn ensure(cache_root: &Path, progress: &Progress) -> Result<GuestKernel> {
        let files = [("build.sh", BUILD_SCRIPT), ("config.fragment", FRAGMENT)];
        let key = Path::new(KIND).join(builder::script_key(&files));
        if let Some(dir) = super::artifacts::shared(cache_root, &key, VMLINUX) {
            return Ok(GuestKernel { dir });
        }
        let dir = builder::script_build(
            cache_root,
            KIND,
            VMLINUX,
            &files,
            "building the guest kernel (guest-kernel/build.sh; about ten minutes)",
            progress,
        )?;
        Ok(GuestKernel { dir })
    }

    /// The folder that holds the kernel's files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The uncompressed ELF kernel (with the PVH entry note).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join(VMLINUX)
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
