//! Why a VM could not be built or started.

/// Starting a VM failed; each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration is out of range.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// `/dev/kvm` is missing or unusable.
    #[error(
        "KVM is not usable here ({0}); the microVM backend needs /dev/kvm with hardware virtualisation"
    )]
    KvmUnavailable(String),
    /// A KVM call failed while building the VM.
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        /// What was being set up.
        what: &'static str,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be allocated.
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    Memory {
        /// The size asked for.
        mib: u32,
        /// Why.
        reason: String,
    },
    /// The kernel could not be loaded.
    #[error(transparent)]
    Boot(#[from] crate::arch::boot::BootError),
    /// vCPU registers could not be set.
    #[error(transparent)]
    Regs(#[from] crate::arch::regs::RegsError),
    /// The MP table could not be written.
    #[error(transparent)]
    MpTable(#[from] crate::arch::mptable::MpTableError),
    /// A disk image could not be opened.
    #[error("cannot open the disk image {path}: {source}")]
    Disk {
        /// The image path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Out of MMIO slots or IRQs.
    #[error("cannot place a device: {0}")]
    Devices(String),
    /// The VM has stopped (or its vCPUs did not answer a pause).
    #[error("the VM is not running (or its vCPUs did not stop for a pause within 5 s)")]
    Stopped,
    /// A snapshot could not be taken or restored.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A thread, event fd or socket could not be created.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

impl VmError {
    pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
        move |source| VmError::Kvm { what, source }
    }

    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
        move |source| VmError::Io { what, source }
    }
}
