//! VM snapshots: everything a paused VM is, in a folder, and VMs made from
//! it that go on where it was ([`crate::Vm::snapshot`], [`crate::Vm::restore`]).
//!
//! The folder holds `vm.json` (the configuration, each vCPU's state, the
//! interrupt controllers, PIT and KVM clock, the serial port and every
//! virtio transport with its queue positions), `memory` (guest RAM; zero
//! pages are holes) and, per writable disk, `device-N.overlay`/`.written`
//! (the sectors the guest wrote). Restored VMs map `memory` privately: they
//! share its pages until they write them, and the folder is never changed.
//! Open vsock streams are not kept: a restored guest gets an RST for each
//! (`device-N.vsock` lists them), before anything new reaches it.

pub mod memory;
pub mod vcpu_state;

use std::path::{Path, PathBuf};

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data, kvm_irqchip,
    kvm_pit_state2,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use crate::config::{DiskConfig, VmConfig, VsockConfig};
use crate::devices::legacy::serial::SavedSerial;
use crate::devices::virtio::mmio::TransportState;
use crate::error::VmError;
pub use vcpu_state::VcpuState;

/// Bumped whenever `vm.json` changes shape.
pub(crate) const FORMAT: u32 = 1;
/// The state file's name in a snapshot folder.
pub const STATE_FILE: &str = "vm.json";
/// The guest RAM file's name in a snapshot folder.
pub const MEMORY_FILE: &str = "memory";

/// What a restored VM gets that is not in the snapshot.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Serve `CONNECT <port>` clients of the vsock device on this Unix
    /// socket (each restored VM needs its own path).
    pub vsock_unix_socket: Option<PathBuf>,
}

/// The contents of `vm.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotState {
    pub format: u32,
    pub config: SavedConfig,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    /// When it was taken (host wall clock, ns since the Unix epoch).
    pub taken_at_ns: u128,
    pub serial: SavedSerial,
    pub transports: Vec<TransportState>,
}

impl SnapshotState {
    /// Host wall-clock time now, as `taken_at_ns` counts it.
    pub fn now_ns() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    }

    /// How long ago the snapshot was taken (zero if the clock went back).
    pub fn waited(&self) -> std::time::Duration {
        let ns = Self::now_ns().saturating_sub(self.taken_at_ns);
        std::time::Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    pub fn write(&self, dir: &Path) -> Result<(), VmError> {
        let json = serde_json::to_vec(self)
            .map_err(|e| VmError::Snapshot(format!("cannot encode the state: {e}")))?;
        std::fs::write(dir.join(STATE_FILE), json).map_err(VmError::io("write the VM state"))
    }

    pub fn read(dir: &Path) -> Result<SnapshotState, VmError> {
        let path = dir.join(STATE_FILE);
        let json = std::fs::read(&path)
            .map_err(|e| VmError::Snapshot(format!("cannot read {}: {e}", path.display())))?;
        let state: SnapshotState = serde_json::from_slice(&json)
            .map_err(|e| VmError::Snapshot(format!("{} is not a VM state: {e}", path.display())))?;
        if state.format != FORMAT {
            return Err(VmError::Snapshot(format!(
                "the snapshot has format {}, this VMM reads {FORMAT}",
                state.format
            )));
        }
        if state.vcpus.len() != usize::from(state.config.vcpus) {
            return Err(VmError::Snapshot("the vCPU count does not match".into()));
        }
        Ok(state)
    }
}

/// The parts of a [`VmConfig`] a restored VM is built from (the kernel and
/// command line are in its memory already).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SavedConfig {
    pub vcpus: u8,
    pub memory_mib: u32,
    pub irqchip: bool,
    disks: Vec<SavedDisk>,
    vsock_cid: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedDisk {
    path: PathBuf,
    writable: bool,
    id: String,
}

impl SavedConfig {
    pub fn of(config: &VmConfig) -> SavedConfig {
        SavedConfig {
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            irqchip: config.irqchip,
            disks: config
                .disks
                .iter()
                .map(|d| SavedDisk {
                    path: d.path.clone(),
                    writable: d.writable,
                    id: d.id.clone(),
                })
                .collect(),
            vsock_cid: config.vsock.as_ref().map(|v| v.guest_cid),
        }
    }

    /// The configuration of a VM restored with `options`.
    pub fn restored(&self, options: &RestoreOptions) -> Result<VmConfig, VmError> {
        let config = VmConfig {
            kernel: PathBuf::new(),
            cmdline: String::new(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disks: self
                .disks
                .iter()
                .map(|d| DiskConfig {
                    path: d.path.clone(),
                    writable: d.writable,
                    id: d.id.clone(),
                })
                .collect(),
            vsock: self.vsock_cid.map(|guest_cid| VsockConfig {
                guest_cid,
                unix_socket: options.vsock_unix_socket.clone(),
            }),
            net: None,
            irqchip: self.irqchip,
        };
        config.validate().map_err(VmError::Config)?;
        Ok(config)
    }
}

/// The VM-wide KVM state: interrupt controllers, PIT and clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VmState {
    irqchips: Vec<kvm_irqchip>,
    pit: Option<kvm_pit_state2>,
    clock: kvm_clock_data,
}

const IRQCHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

impl VmState {
    pub fn save(vm: &VmFd, irqchip: bool) -> Result<VmState, VmError> {
        let mut irqchips = Vec::new();
        let mut pit = None;
        if irqchip {
            for chip_id in IRQCHIPS {
                let mut chip = kvm_irqchip {
                    chip_id,
                    ..Default::default()
                };
                vm.get_irqchip(&mut chip)
                    .map_err(VmError::kvm("read the interrupt controllers"))?;
                irqchips.push(chip);
            }
            pit = Some(vm.get_pit2().map_err(VmError::kvm("read the PIT"))?);
        }
        let clock = vm.get_clock().map_err(VmError::kvm("read the KVM clock"))?;
        Ok(VmState {
            irqchips,
            pit,
            clock,
        })
    }

    /// Restores the state into a VM whose irqchip and PIT (if any) exist;
    /// the KVM clock moves on by `waited`, the snapshot's age.
    pub fn restore(&self, vm: &VmFd, waited: std::time::Duration) -> Result<(), VmError> {
        for chip in &self.irqchips {
            if !IRQCHIPS.contains(&chip.chip_id) {
                return Err(VmError::Snapshot(format!(
                    "unknown irqchip {}",
                    chip.chip_id
                )));
            }
            vm.set_irqchip(chip)
                .map_err(VmError::kvm("restore the interrupt controllers"))?;
        }
        if let Some(pit) = &self.pit {
            vm.set_pit2(pit).map_err(VmError::kvm("restore the PIT"))?;
        }
        // Not KVM_CLOCK_REALTIME: hosts whose clocksource is not the TSC
        // (nested ones) do not report it, and `waited` says the same.
        let mut clock = self.clock;
        clock.clock = clock
            .clock
            .saturating_add(u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX));
        clock.flags = 0;
        vm.set_clock(&clock)
            .map_err(VmError::kvm("restore the KVM clock"))
    }
}
