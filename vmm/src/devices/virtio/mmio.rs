//! The virtio-mmio transport (version 2, "modern"): the register window the
//! guest driver uses to negotiate features, set up queues and notify them.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{IrqTrigger, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::devices::bus::{BusDevice, lock};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x5842_4c43; // "CLBX"

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 0x80;

/// Offset of the device-specific configuration space.
pub const CONFIG_OFFSET: u64 = 0x100;
/// Offset of the QueueNotify register (where ioeventfds attach).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

/// One device's 4 KiB register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    queue_events: Vec<EventFd>,
    queues: Vec<Queue>,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    status: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device`; `irq` raises its interrupt line.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
    ) -> std::io::Result<MmioTransport> {
        let (queues, queue_events) = {
            let dev = lock(&device);
            let queues = dev
                .queue_max_sizes()
                .iter()
                .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
                .collect();
            let events = dev
                .queue_events()
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<_, _>>()?;
            (queues, events)
        };
        Ok(MmioTransport {
            device,
            mem,
            irq,
            queue_events,
            queues,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            status: 0,
            activated: false,
        })
    }

    /// The event signalled when the driver notifies queue `index`.
    pub fn queue_event(&self, index: usize) -> Option<&EventFd> {
        self.queue_events.get(index)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queues cannot change once the device runs.
        if self.activated {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => lock(&self.device).device_type(),
            0x0c => VENDOR,
            0x10 => {
                let features = lock(&self.device).features();
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => queue.map_or(0, |q| u32::from(q.max_size())),
            0x44 => queue.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.irq.status(),
            0x70 => self.status,
            0xfc => 0, // config generation: the config never changes under the driver
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x14 => self.device_features_select = value,
            0x20 => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    let shift = match self.driver_features_select {
                        0 => 0,
                        1 => 32,
                        _ => return,
                    };
                    let mask = 0xffff_ffffu64 << shift;
                    self.driver_features =
                        (self.driver_features & !mask) | (u64::from(value) << shift);
                }
            }
            0x24 => self.driver_features_select = value,
            0x30 => self.queue_select = value,
            0x38 => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value as u16);
                }
            }
            0x44 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            QUEUE_NOTIFY_OFFSET => {
                if let Some(evt) = self.queue_events.get(value as usize)
                    && let Err(e) = evt.write(1)
                {
                    tracing::warn!("cannot signal a queue notification: {e}");
                }
            }
            0x64 => self.irq.ack(value),
            0x70 => self.set_status(value),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                let (low, high) = if offset & 4 == 0 {
                    (Some(value), None)
                } else {
                    (None, Some(value))
                };
                if let Some(q) = self.selected_queue() {
                    match offset & !4 {
                        0x80 => q.set_desc_table_address(low, high),
                        0x90 => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            _ => tracing::debug!(
                offset,
                "write to a read-only or unknown virtio-mmio register"
            ),
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Status bits only ever get added (the spec's driver sequence).
        if value & self.status != self.status {
            tracing::debug!(
                value,
                status = self.status,
                "driver cleared status bits; ignored"
            );
            return;
        }
        let added = value & !self.status;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = lock(&self.device).features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !acceptable {
                // Leaving FEATURES_OK clear tells the driver we refuse.
                self.status = value & !STATUS_FEATURES_OK;
                return;
            }
        }
        self.status = value;
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        if added & STATUS_DRIVER_OK != 0 && value & ready == ready && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let valid = self
            .queues
            .iter()
            .all(|q| !q.ready() || q.is_valid(&self.mem));
        if !valid {
            tracing::warn!("virtio driver set up a queue outside guest memory; device failed");
            self.status |= STATUS_FAILED;
            return;
        }
        let queues: Vec<Queue> = self.queues.iter().map(copy_queue).collect();
        let result = lock(&self.device).activate(self.mem.clone(), queues, self.irq.clone());
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::warn!("virtio device activation failed: {e}");
                self.status |= STATUS_FAILED;
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            lock(&self.device).reset();
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.irq.ack(u32::MAX);
        for q in &mut self.queues {
            q.reset();
        }
    }
}

/// A fresh queue with `q`'s configuration (`Queue` is not `Clone`).
fn copy_queue(q: &Queue) -> Queue {
    let mut copy = Queue::new(q.max_size()).expect("the original had a valid size");
    copy.set_size(q.size());
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(q.desc_table());
    copy.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    copy.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    copy.set_used_ring_address(lo, hi);
    copy.set_ready(q.ready());
    copy
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            tracing::debug!(offset, "config space writes are ignored");
        } else if let (Ok(bytes), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests;
