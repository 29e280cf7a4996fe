//! virtio-blk: one request queue over a [`CowDisk`] (shared read-only base
//! image + private overlay).

pub mod disk;
pub mod request;

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

pub use disk::CowDisk;

use super::{ActivateError, INT_VRING, IrqTrigger, TYPE_BLOCK, VIRTIO_F_VERSION_1, VirtioDevice};

const QUEUE_SIZE: u16 = 256;
const F_RO: u64 = 1 << VIRTIO_BLK_F_RO;
const F_FLUSH: u64 = 1 << VIRTIO_BLK_F_FLUSH;

/// The block device.
#[derive(Debug)]
pub struct BlockDevice {
    disk: CowDisk,
    id: [u8; request::ID_LEN],
    queue_events: [EventFd; 1],
    active: Option<Active>,
}

#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    irq: Arc<IrqTrigger>,
}

impl BlockDevice {
    /// A device serving `disk`, identifying itself as `id` (truncated to 20 bytes).
    pub fn new(disk: CowDisk, id: &str) -> std::io::Result<BlockDevice> {
        let mut id_bytes = [0u8; request::ID_LEN];
        let n = id.len().min(request::ID_LEN);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(BlockDevice {
            disk,
            id: id_bytes,
            queue_events: [EventFd::new(libc::EFD_NONBLOCK)?],
            active: None,
        })
    }

    /// The disk (for tests and inspection).
    pub fn disk(&self) -> &CowDisk {
        &self.disk
    }

    /// Serves every available request; raises the interrupt if any completed.
    pub fn process_queue(&mut self) {
        let Some(active) = &mut self.active else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let len = match request::handle(chain, &active.mem, &mut self.disk, &self.id) {
                Ok(len) => len,
                Err(e) => {
                    tracing::debug!("bad virtio-blk request: {e}");
                    0
                }
            };
            if let Err(e) = active.queue.add_used(&active.mem, head, len) {
                tracing::warn!("virtio-blk used ring is broken: {e}");
                break;
            }
            used_any = true;
        }
        if used_any && active.queue.needs_notification(&active.mem).unwrap_or(true) {
            active.irq.trigger(INT_VRING);
        }
    }
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.disk.is_read_only() { F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config starts with `capacity` (le64, in sectors).
        super::read_config_bytes(&self.disk.sectors().to_le_bytes(), offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        let [queue] = super::ready_queues::<1>(queues)?;
        self.active = Some(Active { mem, queue, irq });
        // Requests may already be waiting.
        self.process_queue();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn save(&self, dir: &std::path::Path, name: &str) -> Result<Vec<QueueState>, String> {
        self.disk
            .save_overlay(&dir.join(name))
            .map_err(|e| format!("cannot save a disk's writes: {e}"))?;
        Ok(self.active.iter().map(|a| a.queue.state()).collect())
    }
}

impl MutEventSubscriber for BlockDevice {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            let _ = self.queue_events[0].read();
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_events[0], EventSet::IN)) {
            tracing::error!("cannot watch the virtio-blk queue: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests;
