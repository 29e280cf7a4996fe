//! The virtio-mmio transport (version 2, "modern"): the register window the
//! guest driver uses to negotiate features, set up queues and notify them.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{IrqTrigger, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::devices::bus::{BusDevice, lock};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x5842_4c43; // "CLBX"

/// Offset of the device-specific configuration space.
pub const CONFIG_OFFSET: u64 = reg::VIRTIO_MMIO_CONFIG as u64;
/// Offset of the QueueNotify register (where ioeventfds attach).
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::VIRTIO_MMIO_QUEUE_NOTIFY as u64;

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

/// A transport's registers and its queues, for a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransportState {
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    status: u32,
    activated: bool,
    interrupt_status: u32,
    queues: Vec<SavedQueue>,
}

/// `QueueState` with serde (its fields are all public).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SavedQueue(#[serde(with = "QueueStateDef")] QueueState);

#[derive(Serialize, Deserialize)]
#[serde(remote = "QueueState")]
struct QueueStateDef {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
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

    /// The device behind this transport.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    /// The registers and queues, for a snapshot; `device` is this
    /// transport's device, locked by the caller (it saves its files into
    /// `dir` under `name`).
    pub fn save(
        &self,
        device: &dyn VirtioDevice,
        dir: &std::path::Path,
        name: &str,
    ) -> Result<TransportState, String> {
        let queues = if self.activated {
            device.save(dir, name)?
        } else {
            self.queues.iter().map(Queue::state).collect()
        };
        Ok(TransportState {
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            status: self.status,
            activated: self.activated,
            interrupt_status: self.irq.status(),
            queues: queues.into_iter().map(SavedQueue).collect(),
        })
    }

    /// Puts a fresh transport into a snapshot's `state`, activating its
    /// device with the saved queue positions if it was active.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), String> {
        if state.queues.len() != self.queues.len() {
            return Err(format!(
                "the snapshot has {} queues for a device with {}",
                state.queues.len(),
                self.queues.len()
            ));
        }
        if let Some((i, _)) = (state.queues.iter().zip(&self.queues))
            .enumerate()
            .find(|(_, (saved, ours))| saved.0.max_size != ours.max_size())
        {
            return Err(format!("queue {i} has another size in the snapshot"));
        }
        let queues = state
            .queues
            .iter()
            .map(|q| Queue::try_from(q.0).map_err(|e| format!("bad queue: {e}")))
            .collect::<Result<Vec<Queue>, String>>()?;
        self.device_features_select = state.device_features_select;
        self.driver_features_select = state.driver_features_select;
        self.driver_features = state.driver_features;
        self.queue_select = state.queue_select;
        self.status = state.status;
        self.irq.set_status(state.interrupt_status);
        self.queues = queues.iter().map(copy_queue).collect();
        if state.activated {
            if !queues.iter().all(|q| !q.ready() || q.is_valid(&self.mem)) {
                return Err("a saved queue lies outside guest memory".into());
            }
            lock(&self.device)
                .activate(self.mem.clone(), queues, self.irq.clone())
                .map_err(|e| e.to_string())?;
            self.activated = true;
        }
        Ok(())
    }

    /// Raises the interrupt again if its status has bits set: in a VM
    /// restored from a snapshot, once its vCPUs exist to take it.
    pub fn raise_pending(&self) {
        if self.irq.status() != 0 {
            self.irq.trigger(0);
        }
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
        match u32::try_from(offset).unwrap_or(u32::MAX) {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            reg::VIRTIO_MMIO_VERSION => VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => lock(&self.device).device_type(),
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = lock(&self.device).features();
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.irq.status(),
            reg::VIRTIO_MMIO_STATUS => self.status,
            reg::VIRTIO_MMIO_CONFIG_GENERATION => 0, // config generation: the config never changes under the driver
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let register = u32::try_from(offset).unwrap_or(u32::MAX);
        match register {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => {
                if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
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
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            reg::VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value as u16);
                }
            }
            reg::VIRTIO_MMIO_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => {
                if let Some(evt) = self.queue_events.get(value as usize)
                    && let Err(e) = evt.write(1)
                {
                    tracing::warn!("cannot signal a queue notification: {e}");
                }
            }
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.irq.ack(value),
            reg::VIRTIO_MMIO_STATUS => self.set_status(value),
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW
            | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | reg::VIRTIO_MMIO_QUEUE_USED_LOW
            | reg::VIRTIO_MMIO_QUEUE_USED_HIGH => {
                let (low, high) = if register & 4 == 0 {
                    (Some(value), None)
                } else {
                    (None, Some(value))
                };
                if let Some(q) = self.selected_queue() {
                    match register & !4 {
                        reg::VIRTIO_MMIO_QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                        reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.set_avail_ring_address(low, high),
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
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = lock(&self.device).features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !acceptable {
                // Leaving FEATURES_OK clear tells the driver we refuse.
                self.status = value & !VIRTIO_CONFIG_S_FEATURES_OK;
                return;
            }
        }
        self.status = value;
        let ready = VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK;
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 && value & ready == ready && !self.activated {
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
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        let queues: Vec<Queue> = self.queues.iter().map(copy_queue).collect();
        let result = lock(&self.device).activate(self.mem.clone(), queues, self.irq.clone());
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::warn!("virtio device activation failed: {e}");
                self.status |= VIRTIO_CONFIG_S_FAILED;
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
