//! The vsock device against mock queues: packets in and out of guest memory,
//! and malformed chains from a hostile driver.

use std::os::unix::net::UnixStream;
use std::sync::mpsc::channel;

use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::header::{HOST_CID, op};
use super::*;
use crate::devices::virtio::test_utils::{desc, link, memory};

const RX_BUF: u64 = 0x10_0000;
const TX_BUF: u64 = 0x20_0000;

struct Rig<'m> {
    mem: &'m GuestMemoryMmap,
    rx: MockSplitQueue<'m, GuestMemoryMmap>,
    tx: MockSplitQueue<'m, GuestMemoryMmap>,
    dev: VsockDevice,
    tx_next: u16,
    rx_next: u16,
}

fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
    let rx = MockSplitQueue::create(mem, GuestAddress(0), 16);
    let tx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
    let ev = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 16);
    let (mut dev, _connector) = VsockDevice::new(3).unwrap();
    let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let queues = vec![
        rx.create_queue().unwrap(),
        tx.create_queue().unwrap(),
        ev.create_queue().unwrap(),
    ];
    dev.activate(mem.clone(), queues, irq).unwrap();
    Rig {
        mem,
        rx,
        tx,
        dev,
        tx_next: 0,
        rx_next: 0,
    }
}

fn header_bytes(src_port: u32, dst_port: u32, op: u16, len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(&3u64.to_le_bytes());
    h.extend_from_slice(&HOST_CID.to_le_bytes());
    h.extend_from_slice(&src_port.to_le_bytes());
    h.extend_from_slice(&dst_port.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&op.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&(1u32 << 20).to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

impl Rig<'_> {
    fn offer_rx(&mut self, descs: &[RawDescriptor]) {
        self.rx.add_desc_chains(descs, self.rx_next).unwrap();
        self.rx_next += descs.len() as u16;
    }

    fn send_tx(&mut self, descs: &[RawDescriptor]) {
        self.tx
            .add_desc_chains(&link(descs, self.tx_next), self.tx_next)
            .unwrap();
        self.tx_next += descs.len() as u16;
        self.dev.process_tx();
        self.dev.fill_rx();
    }

    fn rx_used(&self) -> u16 {
        self.rx.used().idx().load()
    }

    /// The header the device wrote into RX buffer `n` (at RX_BUF + n * 0x1000).
    fn rx_op(&self, n: u64) -> (u16, u32) {
        let base = GuestAddress(RX_BUF + n * 0x1000);
        let op: u16 = self.mem.read_obj(base.unchecked_add(30)).unwrap();
        let src_port: u32 = self.mem.read_obj(base.unchecked_add(16)).unwrap();
        (op, src_port)
    }
}

#[test]
fn a_host_connection_reaches_the_guest_and_its_answer_comes_back() {
    let mem = memory();
    let mut r = rig(&mem);
    let (_user, host_end) = UnixStream::pair().unwrap();
    let (waiter, answer) = channel();
    r.dev.muxer.connect(ConnectRequest {
        stream: host_end,
        port: 1234,
        waiter: Some(waiter),
        announce: false,
    });
    r.dev.fill_rx();
    assert_eq!(r.rx_used(), 0, "no RX buffer yet: the REQUEST waits");
    r.offer_rx(&[desc(RX_BUF, 0x1000, true)]);
    r.dev.fill_rx();
    assert_eq!(r.rx_used(), 1);
    let (request, host_port) = r.rx_op(0);
    assert_eq!(request, op::REQUEST);
    mem.write_slice(
        &header_bytes(1234, host_port, op::RESPONSE, 0),
        GuestAddress(TX_BUF),
    )
    .unwrap();
    r.send_tx(&[desc(TX_BUF, 44, false)]);
    answer.recv().unwrap().unwrap();
    assert_eq!(r.tx.used().idx().load(), 1);
}

#[test]
fn malformed_tx_chains_are_consumed_without_harm() {
    let mem = memory();
    let mut r = rig(&mem);
    mem.write_slice(&header_bytes(1, 2, op::RW, 8), GuestAddress(TX_BUF))
        .unwrap();
    let bad: Vec<Vec<RawDescriptor>> = vec![
        vec![desc(TX_BUF, 44, true)],            // device-writable header
        vec![desc(TX_BUF, 10, false)],           // header too short
        vec![desc(0xffff_ffff_0000, 44, false)], // outside guest memory
        vec![desc(TX_BUF, 0, false)],            // zero length
        vec![desc(TX_BUF, 44, false), desc(0xffff_ffff_0000, 8, false)], // data outside memory
    ];
    for chain in &bad {
        r.send_tx(chain);
    }
    // A header claiming more data than allowed.
    mem.write_slice(&header_bytes(1, 2, op::RW, u32::MAX), GuestAddress(TX_BUF))
        .unwrap();
    r.send_tx(&[desc(TX_BUF, 44, false), desc(TX_BUF + 0x100, 8, false)]);
    assert_eq!(
        r.tx.used().idx().load(),
        bad.len() as u16 + 1,
        "every chain was returned"
    );
    // Well-formed packets for unknown connections still get their RST.
    mem.write_slice(&header_bytes(5, 6, op::RW, 0), GuestAddress(TX_BUF))
        .unwrap();
    r.send_tx(&[desc(TX_BUF, 44, false)]);
    r.offer_rx(&[desc(RX_BUF, 0x1000, true)]);
    r.dev.fill_rx();
    assert_eq!(r.rx_op(0), (op::RST, 6));
}

#[test]
fn malformed_rx_buffers_are_skipped() {
    let mem = memory();
    let mut r = rig(&mem);
    let (_user, host_end) = UnixStream::pair().unwrap();
    r.dev.muxer.connect(ConnectRequest {
        stream: host_end,
        port: 9,
        waiter: None,
        announce: false,
    });
    r.offer_rx(&[desc(RX_BUF + 0x5000, 0x1000, false)]); // device-readable
    r.offer_rx(&[desc(RX_BUF + 0x6000, 20, true)]); // too small for a header
    r.offer_rx(&[desc(0xffff_ffff_0000, 0x1000, true)]); // outside memory
    r.offer_rx(&[desc(RX_BUF, 0x1000, true)]);
    r.dev.fill_rx();
    assert_eq!(r.rx_used(), 4);
    assert_eq!(r.rx_op(0).0, op::REQUEST, "the good buffer got the packet");
}

#[test]
fn a_huge_rx_buffer_gets_at_most_one_packet_of_data() {
    use std::io::Write;
    let mem = memory();
    let mut r = rig(&mem);
    let (mut user, host_end) = UnixStream::pair().unwrap();
    r.dev.muxer.connect(ConnectRequest {
        stream: host_end,
        port: 1234,
        waiter: None,
        announce: false,
    });
    r.offer_rx(&[desc(RX_BUF, 0x1000, true)]);
    r.dev.fill_rx();
    let (_, host_port) = r.rx_op(0);
    // The guest accepts and grants a huge credit.
    mem.write_slice(
        &header_bytes(1234, host_port, op::RESPONSE, 0),
        GuestAddress(TX_BUF),
    )
    .unwrap();
    r.send_tx(&[desc(TX_BUF, 44, false)]);
    user.write_all(&vec![1u8; 200 << 10]).unwrap();
    r.dev.muxer.host_event(host_port, true, false);
    // One 4 MiB device-writable descriptor.
    r.offer_rx(&[desc(0x40_0000, 4 << 20, true)]);
    r.dev.fill_rx();
    let len: u32 = mem.read_obj(GuestAddress(0x40_0000 + 24)).unwrap();
    assert_eq!(len, MAX_PKT_DATA);
}

#[test]
fn a_guest_that_posts_no_rx_buffers_cannot_grow_the_control_queue() {
    let mut muxer = super::muxer::Muxer::new(3);
    let garbage = super::header::Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 7,
        dst_port: 99,
        type_: 1,
        op: op::RW,
        ..Default::default()
    };
    for _ in 0..10_000 {
        muxer.from_guest(&garbage, &[]);
    }
    assert!(muxer.control_full());
    let mut owed = 0;
    while let Some((hdr, _)) = muxer.to_guest(4096) {
        assert_eq!(hdr.op, op::RST);
        owed += 1;
    }
    assert_eq!(
        owed,
        super::muxer::MAX_CONTROL,
        "resets past the bound were dropped"
    );
}
