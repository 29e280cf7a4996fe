//! The guest protocol from a hostile guest (and host): framed replies and
//! requests, read until the stream ends or breaks, must never panic or
//! allocate past a frame.
#![no_main]

use cellbox_guest_init::frame;
use cellbox_guest_init::protocol::{Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut replies = data;
    while let Ok(Some(reply)) = frame::read::<Reply>(&mut replies) {
        let _ = reply.body.is_final();
    }
    let mut requests = data;
    while let Ok(Some(_)) = frame::read::<Request>(&mut requests) {}
});
