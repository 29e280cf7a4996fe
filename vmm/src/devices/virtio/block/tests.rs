//! virtio-blk against mock queues: good requests and malformed chains.

use super::*;
use crate::devices::virtio::test_utils::{desc, link, memory};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_GET_ID as T_GET_ID, VIRTIO_BLK_T_IN as T_IN, VIRTIO_BLK_T_OUT as T_OUT,
};
use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x10_1000;
const STATUS: u64 = 0x11_0000;

struct Rig<'m> {
    mem: &'m GuestMemoryMmap,
    vq: MockSplitQueue<'m, GuestMemoryMmap>,
    dev: BlockDevice,
    irq: Arc<IrqTrigger>,
    next_desc: u16,
    _base: tempfile::NamedTempFile,
}

fn rig(mem: &GuestMemoryMmap, writable: bool) -> Rig<'_> {
    let base = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..16 * 512u32).map(|i| (i / 512) as u8 + b'A').collect();
    std::fs::write(base.path(), bytes).unwrap();
    let disk = CowDisk::open(base.path(), writable).unwrap();
    let mut dev = BlockDevice::new(disk, "cellbox-test-disk").unwrap();
    let vq = MockSplitQueue::new(mem, 16);
    let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    dev.activate(mem.clone(), vec![vq.create_queue().unwrap()], irq.clone())
        .unwrap();
    Rig {
        mem,
        vq,
        dev,
        irq,
        next_desc: 0,
        _base: base,
    }
}

impl Rig<'_> {
    /// Queues one chain (NEXT flags filled in) and processes it; returns (used len, status).
    fn submit(&mut self, descs: &[RawDescriptor]) -> (u32, u8) {
        let start = self.start_for(descs.len());
        let chained = link(descs, start);
        self.submit_raw(&chained)
    }

    /// Where the next chain of `len` descriptors goes (wrapping at the table's end).
    fn start_for(&mut self, len: usize) -> u16 {
        if self.next_desc as usize + len > 16 {
            self.next_desc = 0;
        }
        self.next_desc
    }

    fn submit_raw(&mut self, descs: &[RawDescriptor]) -> (u32, u8) {
        self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        let start = self.start_for(descs.len());
        self.vq.add_desc_chains(descs, start).unwrap();
        self.next_desc = start + descs.len() as u16;
        self.dev.process_queue();
        let used_idx = self.vq.used().idx().load();
        let elem = self
            .vq
            .used()
            .ring()
            .ref_at((used_idx as usize - 1) % 16)
            .unwrap()
            .load();
        assert_eq!(
            elem.id(),
            u32::from(start),
            "the used entry names the chain head"
        );
        (elem.len(), self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }

    fn read(&mut self, sector: u64, len: u32) -> (u32, u8) {
        self.header(T_IN, sector);
        self.submit(&[
            desc(HDR, 16, false),
            desc(DATA, len, true),
            desc(STATUS, 1, true),
        ])
    }

    fn data(&self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        buf
    }
}

use request::{S_IOERR, S_OK, S_UNSUPP};

#[test]
fn reads_writes_and_identifies() {
    let mem = memory();
    let mut r = rig(&mem, true);
    assert_eq!(r.read(2, 1024), (1025, S_OK));
    assert_eq!(r.data(1024), [vec![b'C'; 512], vec![b'D'; 512]].concat());
    assert_ne!(
        r.irq.status() & INT_VRING,
        0,
        "completion raised the interrupt"
    );

    mem.write_slice(&[b'z'; 512], GuestAddress(DATA)).unwrap();
    r.header(T_OUT, 5);
    assert_eq!(
        r.submit(&[
            desc(HDR, 16, false),
            desc(DATA, 512, false),
            desc(STATUS, 1, true)
        ]),
        (1, S_OK)
    );
    mem.write_slice(&[0; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(r.read(5, 512), (513, S_OK));
    assert_eq!(r.data(512), vec![b'z'; 512]);

    r.header(T_GET_ID, 0);
    assert_eq!(
        r.submit(&[
            desc(HDR, 16, false),
            desc(DATA, 20, true),
            desc(STATUS, 1, true)
        ]),
        (21, S_OK)
    );
    assert_eq!(&r.data(17), b"cellbox-test-disk");
}

#[test]
fn data_split_over_many_descriptors_is_one_request() {
    let mem = memory();
    let mut r = rig(&mem, true);
    r.header(T_IN, 0);
    let descs = [
        desc(HDR, 16, false),
        desc(DATA, 100, true),
        desc(DATA + 100, 412, true),
        desc(DATA + 512, 513, true), // 512 data bytes + the status byte
    ];
    let (len, _) = r.submit(&descs);
    assert_eq!(len, 1025);
    assert_eq!(
        r.data(1025)[..1024],
        [vec![b'A'; 512], vec![b'B'; 512]].concat()
    );
    assert_eq!(r.data(1025)[1024], S_OK);
}

#[test]
fn out_of_range_and_unsupported_requests_get_an_error_status() {
    let mem = memory();
    let mut r = rig(&mem, true);
    assert_eq!(r.read(16, 512).1, S_IOERR, "one past the end");
    assert_eq!(r.read(15, 1024).1, S_IOERR, "runs off the end");
    assert_eq!(r.read(u64::MAX, 512).1, S_IOERR, "sector overflow");
    assert_eq!(r.read(0, 100).1, S_IOERR, "not whole sectors");
    r.header(77, 0);
    assert_eq!(
        r.submit(&[desc(HDR, 16, false), desc(STATUS, 1, true)]).1,
        S_UNSUPP
    );
    assert_eq!(r.read(0, 512), (513, S_OK), "the device still works");
}

#[test]
fn read_only_disks_offer_ro_and_refuse_writes() {
    let mem = memory();
    let mut r = rig(&mem, false);
    assert_ne!(r.dev.features() & F_RO, 0);
    r.header(T_OUT, 0);
    assert_eq!(
        r.submit(&[
            desc(HDR, 16, false),
            desc(DATA, 512, false),
            desc(STATUS, 1, true)
        ])
        .1,
        S_IOERR
    );
    assert_eq!(r.read(0, 512), (513, S_OK));
    assert_eq!(r.data(1), vec![b'A']);
}

#[test]
fn malformed_chains_never_panic_and_leave_the_device_usable() {
    let mem = memory();
    let mut r = rig(&mem, true);
    r.header(T_IN, 0);
    // Buffers outside guest memory.
    assert_eq!(
        r.submit(&[
            desc(HDR, 16, false),
            desc(0xffff_ffff_0000, 512, true),
            desc(STATUS, 1, true)
        ])
        .0,
        0
    );
    assert_eq!(
        r.submit(&[desc(u64::MAX - 4, 16, false), desc(STATUS, 1, true)])
            .0,
        0
    );
    // Wrong directions: a device-writable header, a device-readable status.
    assert_eq!(r.submit(&[desc(HDR, 16, true), desc(STATUS, 1, true)]).0, 0);
    assert_eq!(
        r.submit(&[desc(HDR, 16, false), desc(STATUS, 1, false)]).0,
        0
    );
    // Zero lengths and a short header.
    assert_eq!(r.submit(&[desc(HDR, 0, false), desc(STATUS, 0, true)]).0, 0);
    assert_eq!(r.submit(&[desc(HDR, 8, false), desc(STATUS, 1, true)]).0, 0);
    // Oversized: lengths that overflow when summed.
    assert_eq!(
        r.submit(&[
            desc(HDR, 16, false),
            desc(DATA, u32::MAX, true),
            desc(DATA, u32::MAX, true)
        ])
        .0,
        0
    );
    // A loop: the descriptor's `next` points at itself.
    let start = r.start_for(1);
    let looped = RawDescriptor::from(Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, start));
    assert_eq!(r.submit_raw(&[looped]).0, 0);
    // A `next` index beyond the table.
    let wild = RawDescriptor::from(Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 999));
    assert_eq!(r.submit_raw(&[wild]).0, 0);
    assert_eq!(r.read(1, 512), (513, S_OK), "the device still works");
    assert_eq!(r.data(1), vec![b'B']);
}

#[test]
fn config_space_reports_the_capacity() {
    let mem = memory();
    let r = rig(&mem, true);
    let mut cap = [0u8; 8];
    r.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 16);
    let mut beyond = [9u8; 4];
    r.dev.read_config(4096, &mut beyond);
    assert_eq!(beyond, [0; 4]);
}
