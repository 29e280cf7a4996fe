//! An Intel MultiProcessor Specification 1.4 table in the EBDA: how a Linux
//! guest without ACPI finds its CPUs, the IOAPIC and the IRQ routing.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{APIC_START, EBDA_START, IOAPIC_START, IRQ_LAST};

/// The table does not fit, or guest memory refused it.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// More vCPUs than the EBDA has room for.
    #[error("the MP table supports at most {max} vCPUs, {wanted} were asked for")]
    TooManyCpus {
        /// The limit.
        max: u8,
        /// The request.
        wanted: u8,
    },
    /// Guest memory too small.
    #[error("cannot write the MP table into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Most vCPUs the table (and cellbox) supports.
pub const MAX_CPUS: u8 = 32;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

/// The table bytes for `cpus` CPUs, to be placed at `EBDA_START`.
pub fn build(cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus {
            max: MAX_CPUS,
            wanted: cpus,
        });
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for cpu in 0..cpus {
        // Processor: type 0, APIC id, version, flags (enabled, bootstrap), signature, features.
        let flags = 1 | if cpu == 0 { 2 } else { 0 };
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]); // bus 0 is ISA
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 2;
    for irq in 0..=IRQ_LAST as u8 {
        // I/O interrupt: INT, conforming polarity/trigger, ISA bus irq → IOAPIC pin.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: ExtINT to LINT0 of every APIC, NMI to LINT1.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = EBDA_START as u32 + 16;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.extend_from_slice(&[4, 0]); // spec revision, checksum (below)
    header.extend_from_slice(b"CELLBOX ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&[0; 4]); // OEM table pointer
    header.extend_from_slice(&[0; 2]); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    header.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes, rev 1.4, no default config
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// Writes the table for `cpus` CPUs into the EBDA.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(cpus)?;
    debug_assert!(EBDA_START + bytes.len() as u64 <= 0xa_0000);
    mem.write_slice(&bytes, GuestAddress(EBDA_START))?;
    Ok(())
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_entry_counts_are_right() {
        for cpus in [1, 2, MAX_CPUS] {
            let bytes = build(cpus).unwrap();
            assert_eq!(&bytes[..4], b"_MP_");
            assert_eq!(sum(&bytes[..16]), 0);
            let table = &bytes[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count, u16::from(cpus) + 2 + 24 + 2);
            assert!(
                EBDA_START as usize + bytes.len() <= 0xa_0000,
                "{cpus} CPUs overflow the EBDA"
            );
            // The first processor is the bootstrap processor.
            assert_eq!(table[44 + 3], 3);
        }
    }

    #[test]
    fn refuses_zero_or_too_many_cpus() {
        assert!(build(0).is_err());
        assert!(matches!(
            build(MAX_CPUS + 1),
            Err(MpTableError::TooManyCpus { .. })
        ));
    }
}
