//! One vCPU's architectural state: what `KVM_GET_*` reads from a paused
//! vCPU and `KVM_SET_*` writes into a fresh one, in the order KVM needs.

use kvm_bindings::{
    Msrs, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use crate::error::VmError;

/// Registers, FPU/XSAVE, MSRs, local APIC and pending events of one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debug_regs: kvm_debugregs,
    lapic: Option<kvm_lapic_state>,
    msrs: Vec<kvm_msr_entry>,
    events: kvm_vcpu_events,
    mp_state: kvm_mp_state,
    /// The guest TSC's rate, to move it on by the time the snapshot waited.
    tsc_khz: Option<u32>,
}

/// `IA32_TSC`: the time-stamp counter.
const MSR_IA32_TSC: u32 = 0x10;

/// The MSRs KVM can save and restore on this host (`KVM_GET_MSR_INDEX_LIST`).
pub fn msr_indices(kvm: &Kvm) -> Result<Vec<u32>, VmError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(VmError::kvm("list its MSRs"))?;
    Ok(list.as_slice().to_vec())
}

/// Refuses hosts whose XSAVE area is larger than `kvm_xsave` (4 KiB, e.g.
/// with AMX): `KVM_SET_XSAVE` would read past the structure there.
pub fn check_xsave_fits(kvm: &Kvm) -> Result<(), VmError> {
    let size = kvm.check_extension_int(kvm_ioctls::Cap::Xsave2);
    if size as usize > std::mem::size_of::<kvm_xsave>() {
        return Err(VmError::Snapshot(format!(
            "this host's XSAVE area is {size} bytes; snapshots support at most 4096"
        )));
    }
    Ok(())
}

impl VcpuState {
    /// Reads the state of a vCPU that is outside `KVM_RUN`.
    pub fn save(vcpu: &VcpuFd, msr_indices: &[u32], lapic: bool) -> Result<VcpuState, VmError> {
        let kvm = VmError::kvm;
        Ok(VcpuState {
            regs: vcpu.get_regs().map_err(kvm("read the registers"))?,
            sregs: vcpu
                .get_sregs()
                .map_err(kvm("read the special registers"))?,
            xsave: vcpu.get_xsave().map_err(kvm("read the XSAVE area"))?,
            xcrs: vcpu.get_xcrs().map_err(kvm("read the XCRs"))?,
            debug_regs: vcpu
                .get_debug_regs()
                .map_err(kvm("read the debug registers"))?,
            lapic: lapic
                .then(|| vcpu.get_lapic())
                .transpose()
                .map_err(kvm("read the local APIC"))?,
            msrs: read_msrs(vcpu, msr_indices)?,
            events: vcpu.get_vcpu_events().map_err(kvm("read pending events"))?,
            mp_state: vcpu.get_mp_state().map_err(kvm("read the MP state"))?,
            tsc_khz: vcpu.get_tsc_khz().ok(),
        })
    }

    /// Writes the state into a vCPU that has its CPUID set and has never
    /// run. Its TSC moves on by `waited` (the time since the snapshot), so
    /// that a guest timing itself by the TSC sees that time pass, as after a
    /// long pause, and its wall clock stays right.
    pub fn restore(&self, vcpu: &VcpuFd, waited: std::time::Duration) -> Result<(), VmError> {
        let kvm = VmError::kvm;
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm("restore the MP state"))?;
        vcpu.set_regs(&self.regs)
            .map_err(kvm("restore the registers"))?;
        // The special registers hold the APIC base: before the local APIC.
        vcpu.set_sregs(&self.sregs)
            .map_err(kvm("restore the special registers"))?;
        // SAFETY: `check_xsave_fits` (called before any vCPU state is saved
        // or restored) made sure KVM reads no more than `kvm_xsave` holds.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm("restore the XSAVE area"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm("restore the XCRs"))?;
        vcpu.set_debug_regs(&self.debug_regs)
            .map_err(kvm("restore the debug registers"))?;
        if let Some(lapic) = &self.lapic {
            vcpu.set_lapic(lapic)
                .map_err(kvm("restore the local APIC"))?;
        }
        let mut entries = self.msrs.clone();
        if let Some(khz) = self.tsc_khz {
            let ticks = waited.as_nanos().saturating_mul(u128::from(khz)) / 1_000_000;
            for entry in entries.iter_mut().filter(|e| e.index == MSR_IA32_TSC) {
                entry.data = entry.data.wrapping_add(ticks as u64);
            }
        }
        let msrs = Msrs::from_entries(&entries)
            .map_err(|e| VmError::Snapshot(format!("too many MSRs in the snapshot: {e:?}")))?;
        let written = vcpu.set_msrs(&msrs).map_err(kvm("restore the MSRs"))?;
        if written != self.msrs.len() {
            let refused = self.msrs[written].index;
            return Err(VmError::Snapshot(format!(
                "KVM refused MSR {refused:#x} ({written} of {} restored)",
                self.msrs.len()
            )));
        }
        // Last: pending exceptions and interrupts go on top of everything else.
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm("restore pending events"))?;
        // Tells a Linux guest's watchdogs that the jump in time was a pause
        // (fails harmlessly for a guest without kvmclock).
        let _ = vcpu.kvmclock_ctrl();
        Ok(())
    }
}

/// Reads every MSR in `indices` that this vCPU can read; `KVM_GET_MSRS`
/// stops at the first it cannot, which is skipped.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VmError> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(kvm_bindings::KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| VmError::Snapshot(format!("cannot list MSRs: {e:?}")))?;
        let read = vcpu
            .get_msrs(&mut msrs)
            .map_err(VmError::kvm("read MSRs"))?;
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        // A short read stopped at an MSR this vCPU cannot read: skip it.
        let skip = if read < chunk.len() { 1 } else { 0 };
        rest = &rest[read + skip..];
    }
    Ok(saved)
}
