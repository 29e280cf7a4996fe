//! virtio-net against mock queues and a socket pair standing in for passt:
//! frames both ways, the filter, a full socket, and a hostile driver or
//! backend.

use std::io::{Read, Write};
use std::net::Ipv4Addr;

use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::{desc, link, memory};

const RX_BUF: u64 = 0x10_0000;
const TX_BUF: u64 = 0x20_0000;

struct Rig<'m> {
    mem: &'m GuestMemoryMmap,
    rx: MockSplitQueue<'m, GuestMemoryMmap>,
    tx: MockSplitQueue<'m, GuestMemoryMmap>,
    dev: NetDevice,
    network: UnixStream,
    tx_next: u16,
    rx_next: u16,
}

fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
    let rx = MockSplitQueue::create(mem, GuestAddress(0), 16);
    let tx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 256);
    let (ours, network) = UnixStream::pair().unwrap();
    let small: libc::c_int = 4096;
    // SAFETY: setsockopt reads an int from a live local for a socket we own.
    let set = unsafe {
        libc::setsockopt(
            ours.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const small).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "a small send buffer, so that it fills soon");
    network
        .set_read_timeout(Some(std::time::Duration::from_millis(20)))
        .unwrap();
    let rules = EgressRules {
        allow: vec!["198.51.100.1/32".parse().unwrap()],
        deny: Vec::new(),
        allow_rest: false,
    };
    let filter = FrameFilter::new(rules, Some(Ipv4Addr::new(10, 0, 2, 3)));
    let mut dev = NetDevice::new([2, 0, 0, 0, 0, 1], ours, filter).unwrap();
    let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let queues = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
    dev.activate(mem.clone(), queues, irq).unwrap();
    Rig {
        mem,
        rx,
        tx,
        dev,
        network,
        tx_next: 0,
        rx_next: 0,
    }
}

/// A 60-byte IPv4/TCP frame to `dst`, tagged with `tag` in its payload.
fn frame_to(dst: [u8; 4], tag: u8) -> Vec<u8> {
    let mut frame = vec![0u8; 60];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    frame[14] = 0x45;
    frame[14 + 9] = 6;
    frame[14 + 16..14 + 20].copy_from_slice(&dst);
    frame[59] = tag;
    frame
}

impl Rig<'_> {
    /// The guest sends `frame` (after a virtio-net header) in one descriptor.
    fn send(&mut self, frame: &[u8]) {
        let at = TX_BUF + u64::from(self.tx_next) * 0x1000;
        self.mem
            .write_slice(&[0u8; HEADER_LEN], GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(frame, GuestAddress(at + HEADER_LEN as u64))
            .unwrap();
        let len = (HEADER_LEN + frame.len()) as u32;
        self.send_chain(&[desc(at, len, false)]);
    }

    fn send_chain(&mut self, descs: &[RawDescriptor]) {
        self.tx
            .add_desc_chains(&link(descs, self.tx_next), self.tx_next)
            .unwrap();
        self.tx_next += descs.len() as u16;
        self.dev.process_tx();
    }

    /// The guest offers an RX buffer of `len` bytes.
    fn offer_rx(&mut self, len: u32) {
        let at = RX_BUF + u64::from(self.rx_next) * 0x1000;
        self.rx
            .add_desc_chains(&[desc(at, len, true)], self.rx_next)
            .unwrap();
        self.rx_next += 1;
    }

    fn rx_used(&self) -> u16 {
        self.rx.used().idx().load()
    }

    /// The frame the device wrote into RX buffer `n`, by the used ring's length.
    fn received(&self, n: u16) -> Vec<u8> {
        let used = self.rx.used().ring().ref_at(usize::from(n)).unwrap().load();
        let mut bytes = vec![0u8; used.len() as usize];
        let at = RX_BUF + u64::from(n) * 0x1000;
        self.mem.read_slice(&mut bytes, GuestAddress(at)).unwrap();
        assert_eq!(bytes[10], 1, "num_buffers");
        bytes.split_off(HEADER_LEN)
    }

    /// The bytes the network has received so far.
    fn network_bytes(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.network.read(&mut buf) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        bytes
    }

    /// What the network received, as frames.
    fn network_frames(&mut self) -> Vec<Vec<u8>> {
        frames(&self.network_bytes())
    }
}

/// Length-prefixed frames split up (whole frames only).
fn frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        frames.push(bytes[4..4 + len].to_vec());
        bytes = &bytes[4 + len..];
    }
    assert!(bytes.is_empty(), "a partial frame on the socket");
    frames
}

fn length_prefixed(frame: &[u8]) -> Vec<u8> {
    let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(frame);
    bytes
}

#[test]
fn allowed_frames_leave_and_refused_ones_do_not() {
    let mem = memory();
    let mut r = rig(&mem);
    r.send(&frame_to([198, 51, 100, 1], 1));
    r.send(&frame_to([198, 51, 100, 2], 2));
    r.send(&frame_to([127, 0, 0, 1], 3));
    r.send(&frame_to([198, 51, 100, 1], 4));
    assert_eq!(r.tx.used().idx().load(), 4, "every chain is given back");
    let frames = r.network_frames();
    let tags: Vec<u8> = frames.iter().map(|f| f[59]).collect();
    assert_eq!(tags, [1, 4]);
    assert_eq!(frames[0], frame_to([198, 51, 100, 1], 1));
}

#[test]
fn a_refused_connection_is_reset_at_once() {
    let mem = memory();
    let mut r = rig(&mem);
    let mut syn = frame_to([198, 51, 100, 2], 0);
    syn[14 + 2..14 + 4].copy_from_slice(&40u16.to_be_bytes());
    syn[14 + 32] = 5 << 4;
    syn[14 + 33] = 0x02; // SYN
    r.offer_rx(0x1000);
    r.send(&syn);
    r.dev.fill_rx();
    assert!(r.network_frames().is_empty(), "nothing reached the network");
    assert_eq!(r.rx_used(), 1);
    let reset = r.received(0);
    assert_eq!(&reset[14 + 12..14 + 16], &[198, 51, 100, 2]);
    assert_eq!(reset[14 + 20 + 13], 0x14, "RST|ACK");
}

#[test]
fn network_frames_wait_for_rx_buffers() {
    let mem = memory();
    let mut r = rig(&mem);
    let first = frame_to([10, 0, 2, 15], 7);
    let second = frame_to([10, 0, 2, 15], 8);
    let mut bytes = length_prefixed(&first);
    bytes.extend(length_prefixed(&second));
    // Split mid-frame: the device must reassemble across reads.
    r.network.write_all(&bytes[..30]).unwrap();
    r.dev.fill_rx();
    r.network.write_all(&bytes[30..]).unwrap();
    r.dev.fill_rx();
    assert_eq!(r.rx_used(), 0, "no RX buffer yet");
    r.offer_rx(0x1000);
    r.dev.fill_rx();
    assert_eq!(r.rx_used(), 1);
    assert_eq!(r.received(0), first);
    r.offer_rx(0x1000);
    r.dev.fill_rx();
    assert_eq!(r.rx_used(), 2);
    assert_eq!(r.received(1), second);
}

#[test]
fn a_frame_larger_than_the_rx_buffer_is_dropped_and_the_next_arrives() {
    let mem = memory();
    let mut r = rig(&mem);
    let big = vec![0xabu8; MAX_FRAME];
    let small = frame_to([10, 0, 2, 15], 9);
    r.network.write_all(&length_prefixed(&big)).unwrap();
    r.network.write_all(&length_prefixed(&small)).unwrap();
    r.offer_rx(100);
    r.offer_rx(0x1000);
    r.dev.fill_rx();
    assert_eq!(r.rx_used(), 2);
    assert_eq!(r.rx.used().ring().ref_at(0).unwrap().load().len(), 0);
    assert_eq!(r.received(1), small);
}

#[test]
fn a_full_socket_holds_the_guest_back_without_losing_frames() {
    let mem = memory();
    let mut r = rig(&mem);
    let mut frame = vec![0u8; MAX_FRAME];
    frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP passes
    r.mem
        .write_slice(&frame, GuestAddress(TX_BUF + HEADER_LEN as u64))
        .unwrap();
    let chain = [desc(TX_BUF, (HEADER_LEN + MAX_FRAME) as u32, false)];
    // The guest sends until the device stops taking its frames.
    let mut sent: u16 = 0;
    loop {
        // (The mock's available ring does not wrap: stay below 256 chains.)
        r.tx.add_desc_chains(&link(&chain, sent), sent).unwrap();
        sent += 1;
        r.dev.process_tx();
        if r.tx.used().idx().load() < sent {
            break;
        }
        assert!(sent < 250, "the socket never filled");
    }
    assert!(r.dev.outbound.len() >= OUTBOUND_LIMIT);
    assert!(r.dev.outbound.len() < OUTBOUND_LIMIT + 4 + MAX_FRAME);
    // The network reads; the held-back frame goes too, and nothing is lost.
    let mut received = Vec::new();
    while r.tx.used().idx().load() < sent || !r.dev.outbound.is_empty() {
        received.extend(r.network_bytes());
        r.dev.flush();
        r.dev.process_tx();
    }
    received.extend(r.network_bytes());
    assert_eq!(frames(&received).len(), usize::from(sent));
}

#[test]
fn garbage_from_the_driver_or_the_network_is_survived() {
    let mem = memory();
    let mut r = rig(&mem);
    let bad: Vec<Vec<RawDescriptor>> = vec![
        vec![desc(TX_BUF, 4, false)],            // shorter than the header
        vec![desc(TX_BUF, 0x1000, true)],        // device-writable
        vec![desc(0xffff_ffff_0000, 60, false)], // outside guest memory
        vec![desc(TX_BUF, 0x8000, false)],       // longer than any frame
        vec![desc(TX_BUF, 12, false), desc(0xffff_ffff_0000, 60, false)],
    ];
    for chain in &bad {
        r.send_chain(chain);
    }
    assert_eq!(r.tx.used().idx().load(), bad.len() as u16);
    assert!(r.network_frames().is_empty());
    // An impossible length from the network: the card goes silent, the VMM goes on.
    r.network.write_all(&u32::MAX.to_be_bytes()).unwrap();
    r.offer_rx(0x1000);
    r.dev.fill_rx();
    assert_eq!(r.rx_used(), 0);
    assert!(r.dev.backend.is_none());
    r.send(&frame_to([198, 51, 100, 1], 1));
    assert_eq!(r.tx.used().idx().load(), bad.len() as u16 + 1);
}

#[test]
fn config_space_holds_the_mac() {
    let mem = memory();
    let r = rig(&mem);
    let mut mac = [0u8; 6];
    r.dev.read_config(0, &mut mac);
    assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
    assert_ne!(r.dev.features() & (1 << VIRTIO_NET_F_MAC), 0);
}
