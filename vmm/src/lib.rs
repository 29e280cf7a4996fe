//! `cellbox-vmm`: a minimal KVM virtual machine monitor on the rust-vmm
//! crates. It boots a Linux kernel (ELF `vmlinux` or `bzImage`, 64-bit boot
//! protocol) with a serial console, virtio-blk disks (a shared read-only
//! image plus a private copy-on-write layer), virtio-vsock and virtio-net
//! (frames filtered on the way out), and stops it cleanly.
//!
//! - [`VmConfig`] → [`Vm::start`] → [`Vm`] (console, vsock, wait, stop)
//! - [`Vm::snapshot`] → a folder → [`Vm::restore`] ([`snapshot`]: its files and state)
//! - [`vcpu`]: the run loop and [`vcpu::handle_exit`]
//! - [`devices`]: `legacy/serial`, `virtio/mmio`, `virtio/block`, `virtio/net`, `virtio/vsock`
//! - [`arch`]: kernel loading, registers, CPUID, MP table; [`layout`]: the memory map
//! - [`seccomp`]: the filters every VMM thread runs under
//! - [`kvm_support`]: whether KVM here can run a Linux guest at all
//! - [`fuzzing`]: entry points for the cargo-fuzz targets and their smoke test

pub mod arch;
pub mod config;
pub mod devices;
pub mod error;
pub mod fuzzing;
pub mod kvm_support;
pub mod layout;
mod machine;
mod pause;
pub mod seccomp;
pub mod snapshot;
pub mod test_guest;
pub mod vcpu;

pub use config::{DiskConfig, NetConfig, VmConfig, VsockConfig};
pub use devices::legacy::ConsoleLog;
pub use devices::virtio::net::{EgressRules, FrameFilter};
pub use devices::virtio::vsock::VsockConnector;
pub use error::VmError;
pub use machine::{Vm, VmControl};
pub use snapshot::RestoreOptions;
pub use vcpu::ExitReason;
