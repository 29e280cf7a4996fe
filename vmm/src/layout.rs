//! Where things live in guest physical memory (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_9000  PML4
//! 0x0000_7000  boot_params (zero page)  0x0000_a000  PDPT
//! 0x0000_8ff0  boot stack (grows down)  0x0000_b000  4 page directories (2 MiB pages, first 4 GiB)
//! 0x0002_0000  kernel command line      0x0009_fc00  MP table (EBDA), up to 0xa_0000
//! 0x0002_1000  setup_data (RNG seed)
//! 0x0010_0000  kernel (HIMEM_START)     0xd000_0000  virtio-mmio devices, 4 KiB each
//! ```

/// The GDT the boot vCPU starts with.
pub const GDT_START: u64 = 0x500;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The identity-mapping page tables.
pub const PML4_START: u64 = 0x9000;
/// The page-directory-pointer table (one, covering 512 GiB).
pub const PDPT_START: u64 = 0xa000;
/// Four page directories of 2 MiB pages: the first 4 GiB, MMIO window included.
pub const PD_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// The longest command line we accept (Linux's x86 limit).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The zero page's `setup_data` list (one entry: a random seed for the guest).
pub const SETUP_DATA_START: u64 = 0x2_1000;
/// The Extended BIOS Data Area, where the MP table goes; RAM below it is usable.
pub const EBDA_START: u64 = 0x9_fc00;
/// Kernels load at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO hole: guest RAM skips [MMIO_GAP_START, 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO hole.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// First virtio-mmio device window (inside the hole, under the IOAPIC).
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Each virtio-mmio device gets one 4 KiB window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// Room for this many virtio-mmio devices.
pub const MMIO_DEVICES_MAX: u64 = 32;
/// First IRQ handed to virtio devices (0–4 are legacy: timer, keyboard, cascade, COM2, COM1).
pub const IRQ_FIRST_VIRTIO: u32 = 5;
/// Last IRQ line of the in-kernel IOAPIC.
pub const IRQ_LAST: u32 = 23;
/// The legacy COM1 port and its IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's interrupt line.
pub const COM1_IRQ: u32 = 4;
/// The i8042 controller's command port (a write of 0xfe resets the machine).
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The address KVM needs for its TSS (three pages just under the IOAPIC region).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// The IOAPIC's MMIO base (default Intel address).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;

const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= SETUP_DATA_START);
// The boot stack sits between the zero page and the page tables.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);

/// The guest RAM ranges for `mem_size` bytes: below the MMIO hole, then above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        let big = ram_ranges(4 << 30);
        assert_eq!(
            big,
            vec![(0, MMIO_GAP_START), (1 << 32, (4 << 30) - MMIO_GAP_START)]
        );
        let total: u64 = big.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
    }

    #[test]
    fn fixed_structures_do_not_overlap() {
        let regions = [
            (GDT_START, 0x40),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPT_START, 0x1000),
            (PD_START, 0x4000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, 0xa_0000 - EBDA_START),
        ];
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
            assert!(a.0 + a.1 <= HIMEM_START);
        }
    }
}
