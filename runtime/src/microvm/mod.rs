//! The microVM backend: the guest kernel, the guest's root file system and
//! `guest-init` in a KVM virtual machine (`cellbox-vmm`), reached over vsock;
//! `network` joins it to passt when asked.

mod boot;
mod executor;
mod network;

pub use boot::BootTimeline;
pub use executor::{MicroVmConfig, MicroVmExecutor, guest_files, kernel_cmdline};
