//! virtio-vsock: hostile TX packets and RX buffers with host connections open.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cellbox_vmm::fuzzing::vsock_packets(data);
});
