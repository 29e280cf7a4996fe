//! The real guest kernel under the cellbox VMM: it finds the virtio-mmio
//! disk, mounts the ext4 root from it and registers vsock. Slow, and not run
//! in CI (`#[ignore]`).
//!
//! # Running it
//!
//! ```text
//! cargo test -p cellbox-tests --test microvm_kernel -- --ignored --nocapture
//! ```
//!
//! It needs a read-write `/dev/kvm`, about 600 MiB of RAM for the guest and the
//! VMM, the guest kernel (`cellbox::guest::GuestKernel`, about ten minutes to
//! build on 2 cores the first time) and the guest's ext4 root image
//! (`cellbox::guest::GuestArtifacts`, minutes the first time); both are cached
//! under `~/.cache/cellbox` (or `$CELLBOX_CACHE_DIR`). `--nocapture` shows
//! when each milestone was reached; a failure prints the exit reason and the
//! tail of the console log.
//!
//! # The command line, and why
//!
//! ```text
//! console=ttyS0 earlyprintk=serial,ttyS0 ignore_loglevel panic=-1 reboot=k
//! root=/dev/vda clearcpuid=cx16,xsave,smap,popcnt
//! ```
//!
//! (the VMM appends the `virtio_mmio.device=` entries). On a PVM-backed
//! `/dev/kvm` (`kvm_pvm`, no hardware VMX) the guest kernel runs at addresses
//! PVM cannot map for it, so every kernel instruction goes through KVM's
//! instruction emulator, and the boot stops with `ExitReason::Failed` ("KVM
//! internal error (emulation failed)") at the first instruction the emulator
//! does not know. `clearcpuid=` hides the features whose instructions the
//! kernel would otherwise use; each entry was needed, found in this order:
//!
//! - `cx16`: `lock cmpxchg16b` in SLUB (`___slab_alloc`), right after the
//!   "Memory:" line;
//! - `xsave`: `xrstor` in `fpu__init_system_xstate`; without XSAVE the FPU code
//!   uses FXSAVE/FXRSTOR, which the emulator handles;
//! - `smap`: the `clac`/`stac` that alternatives patch into every kernel entry
//!   (first hit on the first interrupt after patching, `asm_common_interrupt`);
//! - `popcnt`: `popcnt` patched into the bitmap weight helpers (`__bitmap_weight`).
//!
//! `panic=-1` and `reboot=k` make a panicking guest reset at once, so a
//! failure ends the VM (`ExitReason::Reset`) instead of waiting out the timeout.
//! On hardware KVM nothing is emulated; the list only hides a few CPU features.
//!
//! # Status on our PVM host (2 cores), measured 2026-11-22
//!
//! Passes in about 19 s: `[vda]` found 17.1 s after `Vm::start` (guest clock
//! 16.4 s), PF_VSOCK registered at 17.2 s guest time, "EXT4-fs (vda): mounted"
//! 18.6 s. Two things make that possible beyond the command line:
//!
//! - Linux 6.1 runs `int3_selftest()` unconditionally, and KVM's emulator
//!   cannot emulate `int3` in long mode; the VMM's run loop finishes that one
//!   emulation failure itself (steps over the `int3`, injects #BP), see
//!   `vmm/src/vcpu.rs`.
//! - Any other instruction the emulator does not know stops the VM with
//!   `ExitReason::Failed` naming the address and bytes — that is how the
//!   `clearcpuid=` list above was found.
//!
//! Past the milestones the kernel starts `/usr/sbin/init` and stops at the next
//! emulation gap (`fwait` in `fpu__drop`): user space under PVM is out of reach,
//! which is why `MicroVmExecutor` refuses PVM hosts.

use std::time::{Duration, Instant};

use cellbox::Progress;
use cellbox::guest::{GuestArtifacts, GuestKernel};
use cellbox_vmm::{Vm, VmConfig};

/// The CPU features hidden from the guest (see the module documentation).
const CLEARCPUID: &str = "cx16,xsave,smap,popcnt";

/// How long the whole boot may take to show all three milestones.
const BOOT_TIMEOUT: Duration = Duration::from_secs(6 * 60);

/// What the console must show: (milestone, the kernel's line).
const MILESTONES: [(&str, &str); 3] = [
    (
        "virtio-blk disk found",
        // The disk is the first virtio-mmio device, so it is virtio0.
        "virtio_blk virtio0: [vda]",
    ),
    (
        "ext4 root mounted from virtio-blk",
        "EXT4-fs (vda): mounted",
    ),
    (
        "vsock registered",
        "NET: Registered PF_VSOCK protocol family",
    ),
];

#[test]
#[ignore = "slow: boots the real guest kernel; see the doc comment"]
fn the_guest_kernel_finds_its_disk_mounts_the_root_and_registers_vsock() {
    let progress = Progress::new(|line| eprintln!("{line}"));
    let cache = cellbox::default_cache_dir();
    let kernel = GuestKernel::ensure(&cache, &progress).expect("building the guest kernel");
    let image = GuestArtifacts::ensure(&cache, &progress)
        .and_then(|artifacts| artifacts.ext4_image(&progress))
        .expect("building the guest root image");

    let cmdline = format!(
        "console=ttyS0 earlyprintk=serial,ttyS0 ignore_loglevel panic=-1 reboot=k \
         root=/dev/vda clearcpuid={CLEARCPUID}"
    );
    let config = VmConfig::new(kernel.vmlinux())
        .with_cmdline(cmdline)
        .with_memory_mib(512)
        .with_disk(&image, true)
        .with_vsock(3);
    let started = Instant::now();
    let mut vm = Vm::start(config).expect("starting the VM");

    for (milestone, line) in MILESTONES {
        // Waits in short steps so that a guest that died stops the test at once.
        while !vm.console().wait_for(line, Duration::from_secs(1)) {
            let stopped = vm.exit_reason();
            if stopped.is_some() || started.elapsed() > BOOT_TIMEOUT {
                let reason = vm.stop();
                panic!(
                    "no \"{line}\" ({milestone}) after {:.1?}: the VM {}\n\
                     --- console (last 40 lines) ---\n{}",
                    started.elapsed(),
                    match stopped {
                        Some(_) => format!("stopped by itself: {reason:?}"),
                        None => "was still running".to_string(),
                    },
                    tail(&vm.console().text(), 40),
                );
            }
        }
        eprintln!("{milestone} after {:.1?}", started.elapsed());
    }

    let text = vm.console().text();
    for (_, line) in MILESTONES {
        let found = text.lines().find(|l| l.contains(line)).unwrap_or_default();
        eprintln!("  {found}");
    }
    vm.stop();
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
