//! The microVM's warm start: a snapshot of a booted guest whose default
//! Python kernel has numpy, pandas and matplotlib imported and whose
//! guest-init waits for the host. It is made once per guest build and VM
//! shape (kept in the cache, keyed by them) and every new sandbox is a VM
//! restored from it: its memory file is shared copy-on-write, and the
//! host's `Hello` gives each VM fresh randomness (guest-init's `reseed`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cellbox_guest_init::protocol::WARM_MARK;
use cellbox_vmm::{Vm, VmConfig};

use crate::error::{Error, Result};
use crate::progress::Progress;

/// Bumped when what the snapshot holds changes in a way its key misses.
const RECIPE: &str = "1";

/// The snapshot folder for VMs made from `config` (booted with guest-init's
/// `--warm`), made first if missing. Blocking: booting and importing the
/// data stack take seconds, under emulation minutes.
pub fn ensure(
    cache_root: &Path,
    config: &VmConfig,
    boot_timeout: Duration,
    progress: &Progress,
) -> Result<PathBuf> {
    let disks: Vec<String> = config
        .disks
        .iter()
        .map(|d| format!("{}:{}", d.path.display(), d.writable))
        .collect();
    let vcpus = [config.vcpus];
    let memory = config.memory_mib.to_le_bytes();
    let key = crate::cache::input_key([
        ("recipe", RECIPE.as_bytes()),
        ("kernel", config.kernel.as_os_str().as_encoded_bytes()),
        ("cmdline", config.cmdline.as_bytes()),
        ("disks", disks.join("\n").as_bytes()),
        ("vcpus", &vcpus[..]),
        ("memory", &memory[..]),
    ]);
    let dir = cache_root.join("vm-snapshot").join(key);
    crate::builder::ensure_built(&dir, "ready", |dir| {
        progress.report(&format!(
            "making the microVM's warm snapshot in {} (once per guest build)",
            dir.display()
        ));
        make(dir, config.clone(), boot_timeout)?;
        crate::cache::write_atomically(&dir.join("ready"), b"")
    })
}

fn make(dir: &Path, config: VmConfig, boot_timeout: Duration) -> Result<()> {
    let failed = |reason: String| Error::Artifact {
        what: "the microVM's warm snapshot".into(),
        reason,
    };
    let started = Instant::now();
    let mut vm = Vm::start(config).map_err(|e| failed(e.to_string()))?;
    // Booting, then importing the data stack: allow for both.
    if !vm.console().wait_for(WARM_MARK, boot_timeout * 4) {
        vm.stop();
        let console = vm.console().text();
        let tail: Vec<&str> = console.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(failed(format!(
            "the guest did not get warm within {:?}; last console lines:\n{}",
            boot_timeout * 4,
            tail.join("\n")
        )));
    }
    let booted = started.elapsed();
    vm.snapshot(dir).map_err(|e| failed(e.to_string()))?;
    tracing::info!(
        "warm snapshot made: guest warm after {booted:?}, saved after {:?}",
        started.elapsed()
    );
    vm.stop();
    Ok(())
}
