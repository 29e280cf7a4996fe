//! The freestanding test guest (`vmm/test-guest/`, C, built with gcc): the
//! same 64-bit boot path as Linux, and the real devices under real KVM on any
//! host, PVM included. Used by the KVM tests and the benchmarks.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The test guest's source folder.
pub const SOURCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test-guest");

/// Builds the test guest into `out_dir/test-guest.elf` (about a second).
pub fn build(out_dir: &Path) -> io::Result<PathBuf> {
    let elf = out_dir.join("test-guest.elf");
    let output = Command::new("bash")
        .arg(Path::new(SOURCE_DIR).join("build.sh"))
        .arg(&elf)
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "building the test guest failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(elf)
}
