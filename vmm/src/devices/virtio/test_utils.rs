//! Test helpers: guest memory with mock split queues.

use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// 16 MiB of guest memory.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

/// A descriptor: `write` means device-writable.
pub fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write {
        virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16
    } else {
        0
    };
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

/// `descs` as one chain placed at table index `start` (NEXT flags and indices filled in).
pub fn link(descs: &[RawDescriptor], start: u16) -> Vec<RawDescriptor> {
    let next_flag = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = Descriptor::from(*d);
            let flags = if i + 1 == descs.len() {
                d.flags()
            } else {
                d.flags() | next_flag
            };
            RawDescriptor::from(Descriptor::new(
                d.addr().0,
                d.len(),
                flags,
                start + i as u16 + 1,
            ))
        })
        .collect()
}
