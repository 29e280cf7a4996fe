//! The microVM backend: the guest kernel, the guest's root file system and
//! `guest-init` in a KVM virtual machine (`cellbox-vmm`), reached over vsock;
//! `network` joins it to passt when asked; `snapshot` is the warm start
//! new VMs are restored from.

mod boot;
mod executor;
mod network;
mod snapshot;

pub use boot::BootTimeline;
pub use executor::{MicroVmConfig, MicroVmExecutor, guest_files, kernel_cmdline};
