//! The boot vCPU's state for the Linux 64-bit boot protocol: a flat GDT,
//! identity-mapped page tables, long mode, `rsi` = zero page.

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{
    BOOT_STACK_POINTER, GDT_START, PD_START, PDPT_START, PML4_START, ZERO_PAGE_START,
};

/// Setting up a vCPU's registers failed.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("KVM refused the vCPU's {what}: {source}")]
    Kvm {
        /// Which registers.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory too small for the boot structures.
    #[error("cannot write the boot page tables/GDT into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

const X86_CR0_PE: u64 = 1;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR0_CD: u64 = 1 << 30;
const X86_CR0_NW: u64 = 1 << 29;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// GDT entries: null, 64-bit code, data, TSS (the flags are access byte + flags nibble).
const GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM segment a GDT entry describes.
fn segment(entry: u64, index: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// Writes the GDT and the identity map of the first 4 GiB (2 MiB pages).
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(PDPT_START | 0x03, GuestAddress(PML4_START))?;
    for dir in 0..4u64 {
        let pd = PD_START + dir * 0x1000;
        mem.write_obj(pd | 0x03, GuestAddress(PDPT_START + dir * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((dir * 512 + i) << 21) | 0x83).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(())
}

/// Puts the boot vCPU in 64-bit mode at `entry` with the zero page in `rsi`.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let kvm = |what| move |source| RegsError::Kvm { what, source };
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    let code = segment(GDT[1], 1);
    let data = segment(GDT[2], 2);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(GDT[3], 3);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    // Caches on (CD/NW clear), protected mode, paging.
    sregs.cr0 = (sregs.cr0 & !(X86_CR0_CD | X86_CR0_NW)) | X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("general registers"))?;
    Ok(())
}

/// x87/SSE control words every vCPU starts with.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| RegsError::Kvm {
        what: "FPU state",
        source,
    })
}

/// The MSRs Linux expects zeroed at boot, fast strings enabled.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const BOOT_MSRS: [(u32, u64); 10] = [
        (0x174, 0),       // IA32_SYSENTER_CS
        (0x175, 0),       // IA32_SYSENTER_ESP
        (0x176, 0),       // IA32_SYSENTER_EIP
        (0xc000_0081, 0), // STAR
        (0xc000_0082, 0), // LSTAR
        (0xc000_0083, 0), // CSTAR
        (0xc000_0084, 0), // SYSCALL_MASK
        (0xc000_0102, 0), // KERNEL_GS_BASE
        (0x10, 0),        // TSC
        (0x1a0, 1),       // IA32_MISC_ENABLE: fast strings
    ];
    let entries: Vec<kvm_msr_entry> = BOOT_MSRS
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).expect("ten entries fit a FAM struct");
    let written = vcpu.set_msrs(&msrs).map_err(|source| RegsError::Kvm {
        what: "MSRs",
        source,
    })?;
    if written != entries.len() {
        tracing::debug!(
            written,
            wanted = entries.len(),
            "KVM accepted only some boot MSRs"
        );
    }
    Ok(())
}

/// Local APIC: LINT0 delivers the PIC's ExtINT, LINT1 NMIs (what an MP-table BIOS does).
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const LVT0: usize = 0x350;
    const LVT1: usize = 0x360;
    const MODE_EXTINT: u32 = 7;
    const MODE_NMI: u32 = 4;
    let kvm = |source| RegsError::Kvm {
        what: "local APIC",
        source,
    };
    let mut lapic = vcpu.get_lapic().map_err(kvm)?;
    for (offset, mode) in [(LVT0, MODE_EXTINT), (LVT1, MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_long_mode_segments() {
        let code = segment(GDT[1], 1);
        assert_eq!((code.base, code.limit, code.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (code.l, code.db, code.present, code.s, code.type_),
            (1, 0, 1, 1, 0xb)
        );
        let data = segment(GDT[2], 2);
        assert_eq!(
            (data.l, data.db, data.type_, data.selector),
            (0, 1, 0x3, 16)
        );
        let tss = segment(GDT[3], 3);
        assert_eq!((tss.s, tss.type_), (0, 0xb));
        assert_eq!(segment(0, 0).unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPT_START | 3);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_START + 24)).unwrap();
        assert_eq!(pdpt3, (PD_START + 0x3000) | 3);
        // The page that maps 0xd000_0000 (the virtio-mmio window).
        let index = 0xd000_0000u64 >> 21;
        let pde: u64 = mem.read_obj(GuestAddress(PD_START + index * 8)).unwrap();
        assert_eq!(pde, 0xd000_0000 | 0x83);
    }
}
