//! The microVM backend: the guest kernel, the guest's root file system and
//! `guest-init` in a KVM virtual machine (`cellbox-vmm`), reached over vsock.

mod boot;
mod executor;

pub use boot::BootTimeline;
pub use executor::{MicroVmConfig, MicroVmExecutor, guest_files, kernel_cmdline};
