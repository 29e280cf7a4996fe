//! Devices, one folder each: the legacy port-I/O devices (serial, i8042) and
//! the virtio devices behind the virtio-mmio transport.

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice};
