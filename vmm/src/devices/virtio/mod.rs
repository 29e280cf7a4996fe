//! Virtio: the device trait, the interrupt a device raises, the virtio-mmio
//! transport, and the devices (block, net, vsock).

pub mod block;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use mmio::MmioTransport;

/// `VIRTIO_F_VERSION_1` as a feature bit: every cellbox device is a modern (1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Device id of virtio-blk.
pub const TYPE_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// Device id of virtio-net.
pub const TYPE_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// Device id of virtio-vsock.
pub const TYPE_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

/// The interrupt status bit for "used buffers in a queue".
pub const INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;

/// Activation was refused (the driver configured the device wrongly).
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// Wrong number of queues, or a queue not ready/valid.
    #[error("the driver set up the device's queues wrongly: {0}")]
    BadQueues(String),
}

/// What a device exposes to its transport.
pub trait VirtioDevice: Send {
    /// The virtio device id.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue (also the number of queues).
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered (including [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// One event per queue, signalled when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd];
    /// Starts serving the configured queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError>;
    /// Stops serving and forgets the queues (driver reset).
    fn reset(&mut self);
    /// For a snapshot: the active queues' state (positions included), after
    /// writing anything else the device needs into `dir`, in files whose
    /// names start with `name`. Devices that cannot be snapshotted say why.
    fn save(&self, _dir: &std::path::Path, _name: &str) -> Result<Vec<QueueState>, String> {
        Err(format!(
            "virtio device type {} cannot be snapshotted",
            self.device_type()
        ))
    }
}

/// The interrupt status register plus the irqfd that raises the device's IRQ.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    /// A trigger raising the IRQ behind `evt` (an irqfd).
    pub fn new(evt: EventFd) -> IrqTrigger {
        IrqTrigger {
            status: AtomicU32::new(0),
            evt,
        }
    }

    /// Sets `bit` in the interrupt status and raises the IRQ.
    pub fn trigger(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!("cannot raise a virtio interrupt: {e}");
        }
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Sets the interrupt status register (restoring a snapshot).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// The driver acknowledged `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// The `N` queues a device was activated with, every one ready.
pub fn ready_queues<const N: usize>(queues: Vec<Queue>) -> Result<[Queue; N], ActivateError> {
    let queues: [Queue; N] = queues.try_into().map_err(|q: Vec<Queue>| {
        ActivateError::BadQueues(format!("{} queues, wanted {N}", q.len()))
    })?;
    if let Some(i) = queues.iter().position(|q| !q.ready()) {
        return Err(ActivateError::BadQueues(format!("queue {i} is not ready")));
    }
    Ok(queues)
}

/// Reads `data` from a little-endian config struct `config` at `offset`
/// (out-of-range bytes read as zero).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(offset..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
pub(crate) mod test_utils;
