//! virtio-blk: hostile descriptor chains, avail rings and request headers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cellbox_vmm::fuzzing::blk_request(data);
});
