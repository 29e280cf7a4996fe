//! Entry points for the cargo-fuzz targets and their smoke test.
//!
//! [`blk_request`] and [`vsock_packets`] turn arbitrary bytes into a hostile
//! guest driving one device through split virtqueues it laid out itself:
//! descriptor tables (addresses anywhere, huge lengths, loops, indirect
//! tables, wrong directions), available rings (out-of-range heads, indices
//! running ahead of the ring) and the guest memory the requests live in.
//! Neither function may panic or hang for any input. The cargo-fuzz crate in
//! `vmm/fuzz` runs them under libFuzzer; the smoke test at the bottom runs them
//! over a few thousand pseudo-random inputs in every `cargo test`.
//!
//! # Input format
//!
//! Little-endian; bytes past the end of the input read as zero.
//!
//! - A *queue* is 178 bytes: `cfg` (size `1 << (cfg % 5)`), the avail-ring
//!   flags byte (bit 0: `VRING_AVAIL_F_NO_INTERRUPT`), 16 avail-ring heads
//!   (bit 7 set: `b & 0x7f`, often beyond the ring; else `b % size`), then 16
//!   descriptors of 10 bytes: `control`, `next % 32`, `a` (u32), `l` (u32).
//!   `control` bit 0 is NEXT, bit 1 WRITE, bits 2+3 together INDIRECT; bits
//!   4–5 pick the address (one of 16 64-byte slots at the start of the data
//!   area, any offset in the data area, anywhere in or just past guest
//!   memory, or just below `u64::MAX`), bits 6–7 the length (`l % 65`, 0–8
//!   sectors plus 0 or 1 byte, `l % 128 KiB`, or `l` itself).
//! - A *round* byte moves a queue's avail index: bit 7 set jumps
//!   `(b & 0x7f) * 257` ahead (usually an invalid index), else `b % (size + 1)`.
//! - *Fixup* bytes, one per slot, patch the header at the start of that slot
//!   so random inputs still reach deep paths (valid request types and
//!   sectors; valid addresses, ports and ops for vsock).
//! - Whatever remains is copied to the data area (64 KiB at `0x1_0000`).
//!
//! Guest memory is two regions with a hole between them, like a real VM's
//! MMIO gap: `[0, 1 MiB)` and `[1 MiB + 64 KiB, 1 MiB + 128 KiB)`.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::channel;
use std::sync::{Arc, OnceLock};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::block::{BlockDevice, CowDisk};
use crate::devices::virtio::vsock::header::{HOST_CID, TYPE_STREAM};
use crate::devices::virtio::vsock::muxer::FIRST_HOST_PORT;
use crate::devices::virtio::vsock::{ConnectRequest, VsockDevice};
use crate::devices::virtio::{IrqTrigger, VirtioDevice};

/// The first guest memory region: `[0, 1 MiB)`.
const REGION0: (u64, usize) = (0, 0x10_0000);
/// The second region, after a 64 KiB hole.
const REGION1: (u64, usize) = (0x11_0000, 0x1_0000);
/// The end of guest memory.
const MEM_END: u64 = 0x12_0000;
/// The data area: request headers, payloads, indirect tables.
const DATA: u64 = 0x1_0000;
const DATA_SIZE: u64 = 0x1_0000;
/// Descriptors can point exactly at the start of one of `SLOTS` slots of
/// this size at the start of the data area (where fixups apply).
const SLOT: u64 = 64;
const SLOTS: usize = 16;
/// Largest queue size used (the devices allow 256).
const MAX_QUEUE: u16 = 16;
/// The virtio-blk queue (descriptor table; avail ring +0x400, used ring +0x800).
const BLK_QUEUE: u64 = 0x1000;
/// The vsock RX and TX queues.
const RX_QUEUE: u64 = 0x2000;
const TX_QUEUE: u64 = 0x3000;
/// Size of the base image of the fuzzed disk, in sectors.
const DISK_SECTORS: u64 = 16;
const GUEST_CID: u64 = 3;
const GUEST_PORT: u32 = 1234;
/// The vsock packet header size.
const VSOCK_HDR: u32 = 44;

/// Runs one fuzz input against a virtio-blk device over a 16-sector disk.
///
/// Layout: `cfg` (bit 0: writable disk), a queue, 3 round bytes (the first
/// is processed on activation), 16 fixup bytes (bit 7: set the request type
/// from bits 4–6; bit 6: bring the sector near the disk), then the data area.
pub fn blk_request(data: &[u8]) {
    let _ = blk_run(data);
}

/// Runs one fuzz input against a virtio-vsock device with two host
/// connections open (the host end of the first has data waiting).
///
/// Layout: an RX queue, a TX queue, 3 rounds of 3 bytes (TX step, RX step,
/// host actions), the host's data length (u16 % 4096), 16 fixup bytes (bit
/// 7: addresses, type and ports of connection `b & 1`; bit 6: op `(b >> 1) &
/// 7`; bit 5: small `len`), then the data area. Host action bits, applied
/// before the round's TX/RX processing: 0 the host writes 100 (bit 7: 3000)
/// more bytes to connection 0; 1 and 2 close the host's end of connection 0
/// and 1; 3 and 4 deliver an epoll event for them; 5 fills RX before TX is
/// processed too; 6 opens another connection.
pub fn vsock_packets(data: &[u8]) {
    let _ = vsock_run(data);
}

/// What one blk input did (for the smoke test's "the harness reaches the
/// device" checks).
#[derive(Debug, Default, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code, reason = "read by the smoke test"))]
struct BlkOutcome {
    /// Chains the device returned.
    completed: u64,
    /// Of those, chains with more than the status byte written.
    with_data: u64,
}

fn blk_run(data: &[u8]) -> Option<BlkOutcome> {
    let mut input = Input(data);
    let cfg = input.u8();
    let spec = QueueSpec::decode(&mut input);
    let rounds: [u8; 3] = input.take();
    let fixups: [u8; SLOTS] = input.take();
    let mem = memory(input.rest())?;
    for (slot, fix) in fixups.into_iter().enumerate() {
        fix_blk_header(&mem, slot_addr(slot), fix)?;
    }

    let disk = CowDisk::open(base_image()?, cfg & 1 != 0).ok()?;
    let mut dev = BlockDevice::new(disk, "cellbox-fuzz").ok()?;
    let mut idx = next_idx(0, rounds[0], spec.size);
    let queue = place_queue(&mem, BLK_QUEUE, &spec, idx)?;
    dev.activate(mem.clone(), vec![queue], irq()?).ok()?;
    for step in &rounds[1..] {
        idx = next_idx(idx, *step, spec.size);
        set_avail_idx(&mem, BLK_QUEUE, idx)?;
        dev.process_queue();
    }
    let (completed, with_data) = used_summary(&mem, BLK_QUEUE, spec.size, 1)?;
    Some(BlkOutcome {
        completed,
        with_data,
    })
}

/// What one vsock input did.
#[derive(Debug, Default, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code, reason = "read by the smoke test"))]
struct VsockOutcome {
    /// TX chains the device consumed.
    tx_used: u64,
    /// RX buffers the device filled (or returned as unusable).
    rx_used: u64,
    /// RX buffers that received payload (an established connection's data).
    rx_data: u64,
}

fn vsock_run(data: &[u8]) -> Option<VsockOutcome> {
    let mut input = Input(data);
    let rx = QueueSpec::decode(&mut input);
    let tx = QueueSpec::decode(&mut input);
    let rounds: [[u8; 3]; 3] = std::array::from_fn(|_| input.take());
    let host_len = usize::from(input.u16() % 4096);
    let fixups: [u8; SLOTS] = input.take();
    let mem = memory(input.rest())?;
    for (slot, fix) in fixups.into_iter().enumerate() {
        fix_vsock_header(&mem, slot_addr(slot), fix)?;
    }

    let (mut dev, _connector) = VsockDevice::new(GUEST_CID).ok()?;
    // Host ports FIRST_HOST_PORT (+1): REQUESTs wait for the first RX buffers.
    let (waiter, _answers) = channel();
    let mut users = Vec::new();
    for announce in [false, true] {
        let (user, host) = UnixStream::pair().ok()?;
        user.set_nonblocking(true).ok()?;
        dev.muxer.connect(ConnectRequest {
            stream: host,
            port: GUEST_PORT + users.len() as u32,
            waiter: Some(waiter.clone()),
            announce,
        });
        users.push(Some(user));
    }
    host_send(&mut users[0], host_len);

    let queues = vec![
        place_queue(&mem, RX_QUEUE, &rx, 0)?,
        place_queue(&mem, TX_QUEUE, &tx, 0)?,
        // The event queue: never used by the device.
        Queue::new(MAX_QUEUE).ok()?,
    ];
    dev.activate(mem.clone(), queues, irq()?).ok()?;

    let (mut tx_idx, mut rx_idx) = (0, 0);
    for [tx_step, rx_step, actions] in rounds {
        if actions & 1 != 0 {
            let len = if actions & 0x80 != 0 { 3000 } else { 100 };
            host_send(&mut users[0], len);
        }
        if actions & 2 != 0 {
            users[0] = None; // end of stream on the host side
        }
        if actions & 4 != 0 {
            users[1] = None;
        }
        if actions & 8 != 0 {
            dev.muxer.host_event(FIRST_HOST_PORT, true, true);
        }
        if actions & 0x10 != 0 {
            dev.muxer.host_event(FIRST_HOST_PORT + 1, true, false);
        }
        if actions & 0x40 != 0 {
            let (user, host) = UnixStream::pair().ok()?;
            dev.muxer.connect(ConnectRequest {
                stream: host,
                port: GUEST_PORT + users.len() as u32,
                waiter: None,
                announce: false,
            });
            users.push(Some(user));
        }
        tx_idx = next_idx(tx_idx, tx_step, tx.size);
        rx_idx = next_idx(rx_idx, rx_step, rx.size);
        set_avail_idx(&mem, TX_QUEUE, tx_idx)?;
        set_avail_idx(&mem, RX_QUEUE, rx_idx)?;
        if actions & 0x20 != 0 {
            dev.fill_rx();
        }
        dev.process_tx();
        dev.fill_rx();
    }
    let (tx_used, _) = used_summary(&mem, TX_QUEUE, tx.size, 0)?;
    let (rx_used, rx_data) = used_summary(&mem, RX_QUEUE, rx.size, VSOCK_HDR)?;
    dev.reset();
    Some(VsockOutcome {
        tx_used,
        rx_used,
        rx_data,
    })
}

/// Reads the input front to back; past its end every byte is zero.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.u8())
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// One split queue as the guest driver set it up.
struct QueueSpec {
    size: u16,
    avail_flags: u16,
    heads: [u16; MAX_QUEUE as usize],
    /// Raw descriptors (addr, len, flags, next).
    descs: [[u8; 16]; MAX_QUEUE as usize],
}

impl QueueSpec {
    fn decode(input: &mut Input<'_>) -> QueueSpec {
        let cfg = input.u8();
        let size = 1u16 << (cfg % 5);
        let avail_flags = u16::from(input.u8() & 1);
        let heads = std::array::from_fn(|_| {
            let b = input.u8();
            if b & 0x80 != 0 {
                u16::from(b & 0x7f)
            } else {
                u16::from(b) % size
            }
        });
        let descs = std::array::from_fn(|_| decode_desc(input));
        QueueSpec {
            size,
            avail_flags,
            heads,
            descs,
        }
    }
}

fn decode_desc(input: &mut Input<'_>) -> [u8; 16] {
    let control = input.u8();
    let next = u16::from(input.u8() % 32);
    let a = input.u32();
    let l = input.u32();
    let addr = match (control >> 4) & 3 {
        0 => DATA + u64::from(a % SLOTS as u32) * SLOT,
        1 => DATA + u64::from(a) % DATA_SIZE,
        2 => u64::from(a) % (MEM_END + 0x1000),
        _ => u64::MAX - u64::from(a & 0xffff),
    };
    let len = match control >> 6 {
        0 => l % 65,
        1 => 512 * (l % 9) + ((l >> 16) & 1),
        2 => l % 0x2_0000,
        _ => l,
    };
    let mut flags = 0u16;
    if control & 1 != 0 {
        flags |= VRING_DESC_F_NEXT as u16;
    }
    if control & 2 != 0 {
        flags |= VRING_DESC_F_WRITE as u16;
    }
    if control & 0xc == 0xc {
        flags |= VRING_DESC_F_INDIRECT as u16;
    }
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    raw
}

/// Fresh guest memory with `contents` (truncated to 64 KiB) in the data area.
fn memory(contents: &[u8]) -> Option<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(REGION0.0), REGION0.1),
        (GuestAddress(REGION1.0), REGION1.1),
    ])
    .ok()?;
    let n = contents.len().min(DATA_SIZE as usize);
    mem.write_slice(&contents[..n], GuestAddress(DATA)).ok()?;
    Some(mem)
}

fn slot_addr(slot: usize) -> u64 {
    DATA + slot as u64 * SLOT
}

fn write_le(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> Option<()> {
    mem.write_slice(bytes, GuestAddress(addr)).ok()
}

fn read_u16(mem: &GuestMemoryMmap, addr: u64) -> Option<u16> {
    let mut b = [0u8; 2];
    mem.read_slice(&mut b, GuestAddress(addr)).ok()?;
    Some(u16::from_le_bytes(b))
}

fn read_u32(mem: &GuestMemoryMmap, addr: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    mem.read_slice(&mut b, GuestAddress(addr)).ok()?;
    Some(u32::from_le_bytes(b))
}

/// Writes the descriptor table and avail ring at `base` and returns the
/// ready queue (avail index `idx`).
fn place_queue(mem: &GuestMemoryMmap, base: u64, spec: &QueueSpec, idx: u16) -> Option<Queue> {
    let (desc, avail, used) = (base, base + 0x400, base + 0x800);
    for (i, raw) in spec.descs.iter().enumerate() {
        write_le(mem, desc + 16 * i as u64, raw)?;
    }
    write_le(mem, avail, &spec.avail_flags.to_le_bytes())?;
    write_le(mem, avail + 2, &idx.to_le_bytes())?;
    for (i, head) in spec.heads.iter().take(spec.size.into()).enumerate() {
        write_le(mem, avail + 4 + 2 * i as u64, &head.to_le_bytes())?;
    }

    let mut queue = Queue::new(256).ok()?;
    queue.set_size(spec.size);
    queue.set_desc_table_address(Some(desc as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(used as u32), Some(0));
    // No device offers VIRTIO_F_EVENT_IDX, so the transport never enables it.
    queue.set_ready(true);
    // The transport refuses queues that do not fit in guest memory.
    queue.is_valid(mem).then_some(queue)
}

fn set_avail_idx(mem: &GuestMemoryMmap, base: u64, idx: u16) -> Option<()> {
    write_le(mem, base + 0x400 + 2, &idx.to_le_bytes())
}

/// The avail index after the driver's next step.
fn next_idx(prev: u16, step: u8, size: u16) -> u16 {
    if step & 0x80 != 0 {
        prev.wrapping_add(u16::from(step & 0x7f) * 257)
    } else {
        prev.wrapping_add(u16::from(step) % (size + 1))
    }
}

/// (used index, used entries still in the ring with `len > threshold`).
fn used_summary(mem: &GuestMemoryMmap, base: u64, size: u16, threshold: u32) -> Option<(u64, u64)> {
    let used = base + 0x800;
    let idx = read_u16(mem, used + 2)?;
    let mut over = 0;
    for i in 0..u64::from(idx.min(size)) {
        if read_u32(mem, used + 4 + 8 * i + 4)? > threshold {
            over += 1;
        }
    }
    Some((u64::from(idx), over))
}

fn fix_blk_header(mem: &GuestMemoryMmap, at: u64, fix: u8) -> Option<()> {
    if fix & 0x80 != 0 {
        let kind = match (fix >> 4) & 7 {
            0 | 4 => VIRTIO_BLK_T_IN,
            1 | 5 => VIRTIO_BLK_T_OUT,
            2 => VIRTIO_BLK_T_FLUSH,
            3 => VIRTIO_BLK_T_GET_ID,
            _ => read_u32(mem, at)?,
        };
        write_le(mem, at, &kind.to_le_bytes())?;
    }
    if fix & 0x40 != 0 {
        let mut b = [0u8; 8];
        mem.read_slice(&mut b, GuestAddress(at + 8)).ok()?;
        let sector = u64::from_le_bytes(b) % (DISK_SECTORS + 4);
        write_le(mem, at + 8, &sector.to_le_bytes())?;
    }
    Some(())
}

fn fix_vsock_header(mem: &GuestMemoryMmap, at: u64, fix: u8) -> Option<()> {
    if fix & 0x80 != 0 {
        let conn = u32::from(fix & 1);
        write_le(mem, at, &GUEST_CID.to_le_bytes())?;
        write_le(mem, at + 8, &HOST_CID.to_le_bytes())?;
        write_le(mem, at + 16, &(GUEST_PORT + conn).to_le_bytes())?;
        write_le(mem, at + 20, &(FIRST_HOST_PORT + conn).to_le_bytes())?;
        write_le(mem, at + 28, &TYPE_STREAM.to_le_bytes())?;
    }
    if fix & 0x40 != 0 {
        let op = u16::from((fix >> 1) & 7);
        write_le(mem, at + 30, &op.to_le_bytes())?;
    }
    if fix & 0x20 != 0 {
        let len = read_u32(mem, at + 24)? % 64;
        write_le(mem, at + 24, &len.to_le_bytes())?;
    }
    Some(())
}

/// The host writes `len` bytes into its end of a connection (if still open).
fn host_send(user: &mut Option<UnixStream>, len: usize) {
    if let Some(user) = user {
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        // Non-blocking: a full socket buffer just drops the rest.
        let _ = user.write(&bytes);
    }
}

fn irq() -> Option<Arc<IrqTrigger>> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).ok()?;
    Some(Arc::new(IrqTrigger::new(evt)))
}

/// The base image of the fuzzed disk: an unlinked temporary file, made once
/// per process and reopened through `/proc/self/fd`, so every input starts
/// from the same disk and nothing is left behind.
fn base_image() -> Option<&'static Path> {
    static BASE: OnceLock<Option<(File, PathBuf)>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut file = tempfile::tempfile().ok()?;
        let bytes: Vec<u8> = (0..DISK_SECTORS * 512)
            .map(|i| (i / 512) as u8 ^ i as u8)
            .collect();
        file.write_all(&bytes).ok()?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Some((file, path))
    })
    .as_ref()
    .map(|(_, path)| path.as_path())
}

#[cfg(test)]
mod tests;
