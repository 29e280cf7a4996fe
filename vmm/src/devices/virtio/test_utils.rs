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
