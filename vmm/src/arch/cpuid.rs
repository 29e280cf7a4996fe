//! CPUID for each vCPU: what KVM supports, with this vCPU's APIC id and the
//! topology filled in, the hypervisor bit set, and the TSC-deadline timer
//! offered where KVM emulates it.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// KVM's supported CPUID (asked once per VM).
pub fn supported(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
}

/// Adjusts `cpuid` (a copy of the supported set) for vCPU `id` of `count`.
/// `tsc_deadline`: the in-kernel LAPIC emulates the TSC-deadline timer
/// (`KVM_CAP_TSC_DEADLINE_TIMER`, not part of the supported set): with it a
/// Linux guest skips calibrating the LAPIC timer against the PIT (100 ms of
/// its boot) and takes the TSC frequency from kvm-clock.
pub fn for_vcpu(cpuid: &mut CpuId, id: u8, count: u8, tsc_deadline: bool) {
    const HYPERVISOR: u32 = 1 << 31;
    const HTT: u32 = 1 << 28;
    const TSC_DEADLINE: u32 = 1 << 24;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                // EBX: initial APIC id (31:24), logical processors (23:16), CLFLUSH size (15:8).
                entry.ebx = (u32::from(id) << 24) | (u32::from(count) << 16) | (8 << 8);
                entry.ecx |= HYPERVISOR;
                if tsc_deadline {
                    entry.ecx |= TSC_DEADLINE;
                } else {
                    entry.ecx &= !TSC_DEADLINE;
                }
                if count > 1 {
                    entry.edx |= HTT;
                } else {
                    entry.edx &= !HTT;
                }
            }
            0x4 => {
                // Cores per package (31:26) minus one; one thread per cache (25:14).
                entry.eax = (entry.eax & 0x3fff) | (u32::from(count.saturating_sub(1)) << 26);
            }
            0xb => {
                // Extended topology: one thread per core, `count` cores; EDX is the x2APIC id.
                entry.edx = u32::from(id);
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 0x100;
                    }
                    1 => {
                        entry.eax = count.next_power_of_two().trailing_zeros();
                        entry.ebx = u32::from(count);
                        entry.ecx = 0x201;
                    }
                    n => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = n;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entries() -> CpuId {
        let make = |function, index| kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        };
        CpuId::from_entries(&[make(1, 0), make(0xb, 0), make(0xb, 1), make(4, 0)]).unwrap()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_hypervisor_bit() {
        let mut cpuid = entries();
        for_vcpu(&mut cpuid, 3, 4, true);
        let e = cpuid.as_slice();
        assert_ne!(e[0].ecx & (1 << 24), 0, "TSC-deadline timer offered");
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_ne!(e[0].edx & (1 << 28), 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!((e[2].ebx, e[2].eax), (4, 2));
        assert_eq!(e[3].eax >> 26, 3);
    }

    #[test]
    fn one_vcpu_has_no_hyperthreading_bit() {
        let mut cpuid = entries();
        cpuid.as_mut_slice()[0].edx = 1 << 28;
        cpuid.as_mut_slice()[0].ecx = 1 << 24;
        for_vcpu(&mut cpuid, 0, 1, false);
        assert_eq!(cpuid.as_slice()[0].edx & (1 << 28), 0);
        assert_eq!(
            cpuid.as_slice()[0].ecx & (1 << 24),
            0,
            "no TSC-deadline timer"
        );
    }
}
