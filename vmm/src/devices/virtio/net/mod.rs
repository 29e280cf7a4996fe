//! virtio-net: the guest's network card, joined to a user-mode network
//! (passt) over a stream socket. Frames travel on that socket as in QEMU's
//! `-netdev stream`: a 32-bit big-endian length, then the Ethernet frame.
//! Every frame the guest sends passes the [`FrameFilter`] first; the rest
//! are dropped, and a refused TCP connection attempt is answered with a
//! reset at once (the guest's program sees "connection refused"). Buffers on both sides are bounded: a guest that sends faster
//! than the network takes waits (its TX queue is left alone), and frames for
//! the guest wait in the socket until it offers RX buffers.

pub mod egress;

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

pub use egress::{EgressRules, FrameFilter};

use super::{ActivateError, INT_VRING, IrqTrigger, TYPE_NET, VIRTIO_F_VERSION_1, VirtioDevice};

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// `struct virtio_net_hdr_v1` (with `num_buffers`): before every frame.
const HEADER_LEN: usize = 12;
/// The largest frame either side may send: 1500-byte MTU (the guest has
/// no offloads) plus the Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 1522;
const MIN_FRAME: usize = 14;
/// Frames for the network held while its socket is full (bytes).
const OUTBOUND_LIMIT: usize = 256 << 10;
/// The event-loop tokens of the backend socket and the queues.
const BACKEND_TOKEN: u32 = 2;

/// The network device.
#[derive(Debug)]
pub struct NetDevice {
    mac: [u8; 6],
    filter: FrameFilter,
    backend: Option<UnixStream>,
    /// Bytes read from the backend, not yet given to the guest.
    inbound: Vec<u8>,
    /// Length-prefixed frames for the backend, not yet written.
    outbound: VecDeque<u8>,
    /// Frames the device itself answers the guest with (resets for refused
    /// connections), delivered before the network's; bounded.
    replies: VecDeque<Vec<u8>>,
    queue_events: [EventFd; 2],
    active: Option<Active>,
}

#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    queues: [Queue; 2],
    irq: Arc<IrqTrigger>,
}

impl NetDevice {
    /// A card with address `mac` on the network behind `backend` (a
    /// connected stream socket), sending only what `filter` admits.
    pub fn new(mac: [u8; 6], backend: UnixStream, filter: FrameFilter) -> std::io::Result<Self> {
        backend.set_nonblocking(true)?;
        Ok(NetDevice {
            mac,
            filter,
            backend: Some(backend),
            inbound: Vec::new(),
            outbound: VecDeque::new(),
            replies: VecDeque::new(),
            queue_events: [
                EventFd::new(libc::EFD_NONBLOCK)?,
                EventFd::new(libc::EFD_NONBLOCK)?,
            ],
            active: None,
        })
    }

    /// Sends the guest's frames on (those the filter admits), while the
    /// outbound buffer has room.
    pub(crate) fn process_tx(&mut self) {
        let Some(active) = &mut self.active else {
            return;
        };
        let mut used_any = false;
        while self.outbound.len() < OUTBOUND_LIMIT {
            let Some(chain) = active.queues[TX].pop_descriptor_chain(&active.mem) else {
                break;
            };
            let head = chain.head_index();
            match read_frame(chain, &active.mem) {
                Some(frame) if self.filter.admits(&frame) && self.backend.is_some() => {
                    self.outbound
                        .extend((frame.len() as u32).to_be_bytes().iter().chain(&frame));
                }
                Some(frame) => {
                    if let Some(reset) = egress::tcp_reset_for(&frame)
                        && self.replies.len() < QUEUE_SIZE.into()
                    {
                        self.replies.push_back(reset);
                    }
                }
                None => tracing::debug!("a malformed virtio-net TX chain was dropped"),
            }
            if let Err(e) = active.queues[TX].add_used(&active.mem, head, 0) {
                tracing::warn!("virtio-net TX used ring is broken: {e}");
                break;
            }
            used_any = true;
        }
        if used_any
            && active.queues[TX]
                .needs_notification(&active.mem)
                .unwrap_or(true)
        {
            active.irq.trigger(INT_VRING);
        }
        self.flush();
    }

    /// Writes what the backend takes now.
    fn flush(&mut self) {
        let Some(stream) = &mut self.backend else {
            self.outbound.clear();
            return;
        };
        while !self.outbound.is_empty() {
            let (front, _) = self.outbound.as_slices();
            match stream.write(front) {
                Ok(n) => {
                    self.outbound.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.disconnect(&format!("writing failed: {e}")),
            }
        }
    }

    /// Gives the guest the frames the backend sent, while it has RX buffers.
    pub(crate) fn fill_rx(&mut self) {
        let mut delivered = false;
        while let Some(reply) = self.replies.pop_front() {
            if !self.deliver(&reply) {
                self.replies.push_front(reply);
                return self.notify_rx(delivered);
            }
            delivered = true;
        }
        loop {
            match self.next_inbound_frame() {
                Ok(Some(len)) => {
                    let frame = self.inbound[4..4 + len].to_vec();
                    if !self.deliver(&frame) {
                        break;
                    }
                    self.inbound.drain(..4 + len);
                    delivered = true;
                }
                Ok(None) => {
                    if !self.read_backend() {
                        break;
                    }
                }
                Err(why) => {
                    self.disconnect(&why);
                    break;
                }
            }
        }
        self.notify_rx(delivered);
    }

    /// Raises the interrupt if frames were delivered and the guest wants it.
    fn notify_rx(&mut self, delivered: bool) {
        if let Some(active) = &mut self.active
            && delivered
            && active.queues[RX]
                .needs_notification(&active.mem)
                .unwrap_or(true)
        {
            active.irq.trigger(INT_VRING);
        }
    }

    /// The length of the complete frame at the start of `inbound`, if any.
    fn next_inbound_frame(&self) -> Result<Option<usize>, String> {
        let Some(prefix) = self.inbound.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            return Err(format!("it sent a {len}-byte frame"));
        }
        Ok((self.inbound.len() >= 4 + len).then_some(len))
    }

    /// Puts `frame` into an RX buffer (dropping it if it does not fit);
    /// false when the guest offers none (the frame waits).
    fn deliver(&mut self, frame: &[u8]) -> bool {
        let Some(active) = &mut self.active else {
            return false;
        };
        let Some(chain) = active.queues[RX].pop_descriptor_chain(&active.mem) else {
            return false;
        };
        let head = chain.head_index();
        let len = frame.len();
        let written = match chain.writer(&active.mem) {
            Ok(mut writer) if writer.available_bytes() >= HEADER_LEN + len => {
                let mut header = [0u8; HEADER_LEN];
                header[10] = 1; // num_buffers
                writer
                    .write_all(&header)
                    .and_then(|()| writer.write_all(frame))
                    .map(|()| (HEADER_LEN + len) as u32)
                    .unwrap_or(0)
            }
            _ => {
                tracing::debug!("a frame did not fit the guest's RX buffer; dropped");
                0
            }
        };
        if let Err(e) = active.queues[RX].add_used(&active.mem, head, written) {
            tracing::warn!("virtio-net RX used ring is broken: {e}");
            return false;
        }
        true
    }

    /// Reads more from the backend; false when nothing more is there now.
    fn read_backend(&mut self) -> bool {
        let Some(stream) = &mut self.backend else {
            return false;
        };
        let mut buf = [0u8; 16 << 10];
        match stream.read(&mut buf) {
            Ok(0) => {
                self.disconnect("it closed the connection");
                false
            }
            Ok(n) => {
                self.inbound.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => {
                self.disconnect(&format!("reading failed: {e}"));
                false
            }
        }
    }

    /// Leaves the guest without a network (its card stays, silent).
    fn disconnect(&mut self, why: &str) {
        if self.backend.take().is_some() {
            tracing::warn!("the VM's network is gone: {why}");
        }
        self.inbound.clear();
        self.outbound.clear();
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config starts with `mac`.
        super::read_config_bytes(&self.mac, offset, data);
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
        let queues = super::ready_queues::<2>(queues)?;
        self.active = Some(Active { mem, queues, irq });
        // Activation runs on a vCPU thread, whose seccomp filter has no
        // socket calls: the device thread moves the frames already waiting.
        for evt in &self.queue_events {
            if let Err(e) = evt.write(1) {
                tracing::warn!("cannot wake the virtio-net device: {e}");
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl MutEventSubscriber for NetDevice {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some(evt) = self.queue_events.get(events.data() as usize) {
            let _ = evt.read();
        }
        // Whatever the event (a queue kick, the socket readable, writable
        // or hung up: a hang-up reads as 0 bytes), both directions move on.
        self.flush();
        self.process_tx();
        self.fill_rx();
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("cannot watch virtio-net queue {i}: {e:?}");
            }
        }
        if let Some(stream) = &self.backend {
            // Edge-triggered: every event makes the device read and write
            // until the socket would block, or until the guest's buffers end.
            let set = EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED;
            if let Err(e) = ops.add(Events::with_data_raw(
                stream.as_raw_fd(),
                BACKEND_TOKEN,
                set,
            )) {
                tracing::error!("cannot watch the network socket: {e:?}");
            }
        }
    }
}

/// The Ethernet frame in a TX chain (after the virtio-net header); `None`
/// for chains too short, too long or unreadable.
fn read_frame(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> Option<Vec<u8>> {
    let mut reader = chain.reader(mem).ok()?;
    let len = reader.available_bytes();
    if !(HEADER_LEN + MIN_FRAME..=HEADER_LEN + MAX_FRAME).contains(&len) {
        return None;
    }
    let mut bytes = vec![0u8; len];
    reader.read_exact(&mut bytes).ok()?;
    bytes.drain(..HEADER_LEN);
    Some(bytes)
}

#[cfg(test)]
mod tests;
