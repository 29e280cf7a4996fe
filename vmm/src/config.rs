//! What a VM is made of: a kernel, vCPUs, memory, disks, an optional vsock
//! and an optional network card.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use crate::devices::virtio::net::FrameFilter;

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = crate::arch::mptable::MAX_CPUS;
/// Least guest memory accepted (MiB).
pub const MIN_MEMORY_MIB: u32 = 16;
/// Most guest memory accepted (MiB).
pub const MAX_MEMORY_MIB: u32 = 64 << 10;

/// One virtio-blk disk.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// The image; opened read-only and never written.
    pub path: PathBuf,
    /// Give the guest a private copy-on-write layer (writes vanish with the VM).
    pub writable: bool,
    /// The id the guest reads (`VIRTIO_BLK_T_GET_ID`, `/sys/block/vda/serial`).
    pub id: String,
}

/// The virtio-vsock device.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// Also serve `CONNECT <port>` clients on this Unix socket path.
    pub unix_socket: Option<PathBuf>,
}

/// The virtio-net card.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The card's MAC address.
    pub mac: [u8; 6],
    /// A connected stream socket to the user-mode network (QEMU's stream
    /// framing, e.g. `passt --fd`); the VM uses a duplicate of it.
    pub backend: Arc<UnixStream>,
    /// What the guest's frames must pass to leave.
    pub filter: FrameFilter,
}

/// A VM's configuration; build it with the `with_*` methods.
///
/// ```no_run
/// use cellbox_vmm::{Vm, VmConfig};
/// let config = VmConfig::new("/path/to/vmlinux")
///     .with_vcpus(1)
///     .with_memory_mib(256)
///     .with_cmdline("console=ttyS0 root=/dev/vda")
///     .with_disk("/path/to/rootfs.ext4", true)
///     .with_vsock(3);
/// let vm = Vm::start(config)?;
/// # Ok::<(), cellbox_vmm::VmError>(())
/// ```
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// ELF `vmlinux` or `bzImage`.
    pub kernel: PathBuf,
    /// Kernel command line (the virtio-mmio devices are appended).
    pub cmdline: String,
    /// vCPUs (1–32).
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// virtio-blk disks, `vda` first.
    pub disks: Vec<DiskConfig>,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// The network card, if any.
    pub net: Option<NetConfig>,
    /// Use KVM's in-kernel interrupt controllers and PIT (needed by Linux).
    /// Without them a `hlt` exits to the VMM and stops the VM; freestanding
    /// test guests use that to signal the end.
    pub irqchip: bool,
}

impl VmConfig {
    /// One vCPU, 256 MiB, no devices but the serial console.
    pub fn new(kernel: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            kernel: kernel.into(),
            cmdline: "console=ttyS0".into(),
            vcpus: 1,
            memory_mib: 256,
            disks: Vec::new(),
            vsock: None,
            net: None,
            irqchip: true,
        }
    }

    /// Sets the kernel command line.
    pub fn with_cmdline(mut self, cmdline: impl Into<String>) -> VmConfig {
        self.cmdline = cmdline.into();
        self
    }

    /// Sets the number of vCPUs.
    pub fn with_vcpus(mut self, vcpus: u8) -> VmConfig {
        self.vcpus = vcpus;
        self
    }

    /// Sets guest memory in MiB.
    pub fn with_memory_mib(mut self, mib: u32) -> VmConfig {
        self.memory_mib = mib;
        self
    }

    /// Adds a disk (`vda`, `vdb`, … in order).
    pub fn with_disk(mut self, path: impl Into<PathBuf>, writable: bool) -> VmConfig {
        let id = format!("cellbox-vd{}", (b'a' + self.disks.len() as u8) as char);
        self.disks.push(DiskConfig {
            path: path.into(),
            writable,
            id,
        });
        self
    }

    /// Adds the vsock device with guest context id `cid`.
    pub fn with_vsock(mut self, cid: u64) -> VmConfig {
        self.vsock = Some(VsockConfig {
            guest_cid: cid,
            unix_socket: None,
        });
        self
    }

    /// Adds a network card on `backend` that sends only what `filter` admits.
    pub fn with_net(mut self, mac: [u8; 6], backend: UnixStream, filter: FrameFilter) -> VmConfig {
        self.net = Some(NetConfig {
            mac,
            backend: Arc::new(backend),
            filter,
        });
        self
    }

    /// Also serves the vsock Unix-socket convention at `path`.
    pub fn with_vsock_unix_socket(mut self, path: impl Into<PathBuf>) -> VmConfig {
        if let Some(vsock) = &mut self.vsock {
            vsock.unix_socket = Some(path.into());
        }
        self
    }

    /// Without the in-kernel irqchip (see [`VmConfig::irqchip`]).
    pub fn without_irqchip(mut self) -> VmConfig {
        self.irqchip = false;
        self
    }

    /// Checks the limits; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(format!("vcpus must be 1..={MAX_VCPUS}, not {}", self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(format!(
                "memory must be {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB, not {}",
                self.memory_mib
            ));
        }
        if let Some(vsock) = &self.vsock
            && (vsock.guest_cid < 3 || vsock.guest_cid > u64::from(u32::MAX))
        {
            return Err(format!(
                "the guest vsock CID must be 3..=2^32-1, not {}",
                vsock.guest_cid
            ));
        }
        if self.disks.len() + usize::from(self.vsock.is_some()) + usize::from(self.net.is_some())
            > crate::layout::MMIO_DEVICES_MAX as usize
        {
            return Err("too many devices".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_with_helpful_messages() {
        let ok = VmConfig::new("k");
        assert!(ok.validate().is_ok());
        assert!(
            ok.clone()
                .with_vcpus(0)
                .validate()
                .unwrap_err()
                .contains("vcpus")
        );
        assert!(ok.clone().with_vcpus(33).validate().is_err());
        assert!(
            ok.clone()
                .with_memory_mib(8)
                .validate()
                .unwrap_err()
                .contains("MiB")
        );
        assert!(
            ok.clone()
                .with_vsock(2)
                .validate()
                .unwrap_err()
                .contains("CID")
        );
        let disks = ok.with_disk("a", false).with_disk("b", true);
        assert_eq!(disks.disks[1].id, "cellbox-vdb");
    }
}
