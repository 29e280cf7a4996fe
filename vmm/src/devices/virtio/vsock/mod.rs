//! virtio-vsock: the host↔guest stream channel. Host code opens streams to
//! guest ports through a [`VsockConnector`] (in process) or, optionally, a
//! Unix socket speaking `CONNECT <port>\n` → `OK <host port>\n`.

pub mod connection;
pub mod connector;
pub mod header;
pub mod muxer;
pub mod unix;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

pub use connector::VsockConnector;
pub use header::Header;
pub use muxer::{ConnectRequest, Muxer};

use super::{ActivateError, INT_VRING, IrqTrigger, TYPE_VSOCK, VIRTIO_F_VERSION_1, VirtioDevice};

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Most connections a snapshot's list may name (the muxer's own bound is lower).
const MAX_SAVED_CONNECTIONS: usize = 1 << 16;
/// Largest payload of one packet.
pub const MAX_PKT_DATA: u32 = 64 << 10;
/// Event data for the connector's wake-up event (queues are 0–2, host ports ≥ 2^30).
const CONNECT_TOKEN: u32 = 3;

/// The vsock device.
#[derive(Debug)]
pub struct VsockDevice {
    cid: u64,
    queue_events: [EventFd; 3],
    wake: Arc<EventFd>,
    requests: Receiver<ConnectRequest>,
    pub(crate) muxer: Muxer,
    active: Option<Active>,
}

#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    irq: Arc<IrqTrigger>,
}

impl VsockDevice {
    /// A device for guest context id `cid`, and the connector that opens streams to it.
    pub fn new(cid: u64) -> std::io::Result<(VsockDevice, VsockConnector)> {
        let event = || EventFd::new(libc::EFD_NONBLOCK);
        let wake = Arc::new(event()?);
        let (sender, requests) = channel();
        let device = VsockDevice {
            cid,
            queue_events: [event()?, event()?, event()?],
            wake: wake.clone(),
            requests,
            muxer: Muxer::new(cid),
            active: None,
        };
        Ok((device, VsockConnector::new(sender, wake)))
    }

    /// Guest packets on the TX queue → the muxer.
    pub(crate) fn process_tx(&mut self) {
        let Some(Active { mem, queues, irq }) = &mut self.active else {
            return;
        };
        let mut used = false;
        // Back-pressure: packets wait in the queue while replies are owed.
        while !self.muxer.control_full()
            && let Some(mut chain) = queues[TX].pop_descriptor_chain(&*mem)
        {
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(&*mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let mut data = vec![0u8; pkt.data_slice().map_or(0, |d| d.len())];
                    if let Some(slice) = pkt.data_slice() {
                        slice.copy_to(&mut data[..]);
                    }
                    self.muxer.from_guest(&header_of(&pkt), &data);
                }
                Err(e) => tracing::debug!("bad vsock TX chain: {e}"),
            }
            if queues[TX].add_used(&*mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        if used {
            irq.trigger(INT_VRING);
        }
    }

    /// Muxer packets → the guest's RX buffers, while both last.
    pub(crate) fn fill_rx(&mut self) {
        let Some(Active { mem, queues, irq }) = &mut self.active else {
            return;
        };
        let mut used = false;
        while let Some(mut chain) = queues[RX].pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(&*mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => {
                    // One descriptor may span a whole memory region: never read more
                    // than a packet's worth from the host for it.
                    let room = pkt
                        .data_slice()
                        .map_or(0, |d| d.len())
                        .min(MAX_PKT_DATA as usize);
                    let Some((hdr, data)) = self.muxer.to_guest(room) else {
                        queues[RX].go_to_previous_position();
                        break;
                    };
                    write_header(&mut pkt, &hdr);
                    if let Some(slice) = pkt.data_slice() {
                        slice.copy_from(&data[..]);
                    }
                    (PKT_HEADER_SIZE + data.len()) as u32
                }
                Err(e) => {
                    tracing::debug!("bad vsock RX chain: {e}");
                    0
                }
            };
            if queues[RX].add_used(&*mem, head, len).is_err() {
                break;
            }
            used = true;
        }
        if used {
            irq.trigger(INT_VRING);
        }
    }

    /// In a VM restored from a snapshot: the connections the snapshot's
    /// guest had (saved by `save` under `prefix`) are reset, in order,
    /// before any new one reaches the guest.
    pub fn reset_saved_connections(&mut self, prefix: &std::path::Path) -> Result<(), String> {
        let path = prefix.with_extension("vsock");
        let ports: Vec<(u32, u32)> = match std::fs::read(&path) {
            Ok(json) => serde_json::from_slice(&json)
                .map_err(|e| format!("{} is not a connection list: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if ports.len() > MAX_SAVED_CONNECTIONS {
            return Err(format!("{} lists too many connections", path.display()));
        }
        self.muxer.reset_saved(&ports);
        Ok(())
    }

    fn sync_watches(&mut self, ops: &mut EventOps) {
        for stream in self.muxer.take_closed() {
            let _ = ops.remove(Events::empty(&stream));
        }
        for (fd, port) in self.muxer.take_new_streams() {
            let set =
                EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP;
            if let Err(e) = ops.add(Events::with_data_raw(fd, port, set)) {
                tracing::warn!("cannot watch a vsock stream: {e:?}");
            }
        }
    }
}

fn header_of<B: vm_memory::bitmap::BitmapSlice>(pkt: &VsockPacket<'_, B>) -> Header {
    Header {
        src_cid: pkt.src_cid(),
        dst_cid: pkt.dst_cid(),
        src_port: pkt.src_port(),
        dst_port: pkt.dst_port(),
        len: pkt.len(),
        type_: pkt.type_(),
        op: pkt.op(),
        flags: pkt.flags(),
        buf_alloc: pkt.buf_alloc(),
        fwd_cnt: pkt.fwd_cnt(),
    }
}

fn write_header<B: vm_memory::bitmap::BitmapSlice>(pkt: &mut VsockPacket<'_, B>, h: &Header) {
    pkt.set_src_cid(h.src_cid)
        .set_dst_cid(h.dst_cid)
        .set_src_port(h.src_port)
        .set_dst_port(h.dst_port)
        .set_len(h.len)
        .set_type(h.type_)
        .set_op(h.op)
        .set_flags(h.flags)
        .set_buf_alloc(h.buf_alloc)
        .set_fwd_cnt(h.fwd_cnt);
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
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
        if queues.len() != 3 || !queues[RX].ready() || !queues[TX].ready() {
            return Err(ActivateError::BadQueues(
                "vsock needs ready RX and TX queues".into(),
            ));
        }
        self.active = Some(Active { mem, queues, irq });
        self.fill_rx();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.clear();
    }

    /// Open streams are not saved, only their ports: a restored guest is
    /// told they are gone (see `reset_saved_connections`).
    fn save(&self, dir: &std::path::Path, name: &str) -> Result<Vec<QueueState>, String> {
        let ports = self.muxer.open_ports();
        if !ports.is_empty() {
            let path = dir.join(name).with_extension("vsock");
            let json = serde_json::to_vec(&ports).map_err(|e| e.to_string())?;
            std::fs::write(&path, json)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(self
            .active
            .iter()
            .flat_map(|a| a.queues.iter().map(Queue::state))
            .collect())
    }
}

impl MutEventSubscriber for VsockDevice {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        match events.data() {
            0..=2 => {
                let index = events.data() as usize;
                let _ = self.queue_events[index].read();
                if index == TX {
                    self.process_tx();
                }
            }
            CONNECT_TOKEN => {
                let _ = self.wake.read();
                while let Ok(request) = self.requests.try_recv() {
                    self.muxer.connect(request);
                }
            }
            port => {
                let readable = set.intersects(
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
                );
                self.muxer
                    .host_event(port, readable, set.contains(EventSet::OUT));
            }
        }
        self.fill_rx();
        // RX buffers drained the control queue: guest packets held back go on.
        if !self.muxer.control_full() {
            self.process_tx();
            self.fill_rx();
        }
        self.sync_watches(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("cannot watch vsock queue {i}: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::with_data_raw(
            self.wake.as_raw_fd(),
            CONNECT_TOKEN,
            EventSet::IN,
        )) {
            tracing::error!("cannot watch the vsock connector: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests;
