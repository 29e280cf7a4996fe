//! Smoke test of the fuzz entry points: edge cases, random inputs and
//! mutations of well-formed seeds, with checks that they reach the devices.

use super::*;
use crate::devices::virtio::vsock::header::op;
use std::time::Instant;

/// xorshift64: deterministic inputs without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Mostly short inputs (all structure, little data), some long ones.
    fn input(&mut self) -> Vec<u8> {
        let len = match self.next() % 8 {
            0 => self.next() % 64,
            7 => self.next() % 8192,
            _ => 200 + self.next() % 1200,
        };
        self.bytes(len as usize)
    }
}

const RANDOM_INPUTS: usize = 5000;

fn edge_cases() -> Vec<Vec<u8>> {
    let mut cases = vec![
        Vec::new(),
        vec![0],
        vec![0xff],
        vec![0; 4096],
        vec![0xff; 4096],
        vec![0xff; 70_000],
        vec![0x55; 2048],
        vec![0xaa; 2048],
        (0..=255).collect(),
        (0..=255).rev().collect(),
    ];
    // Every descriptor control byte, everything else zero / 0xff.
    for fill in [0u8, 0xff] {
        for control in (0..=255u8).step_by(5) {
            let mut v = vec![fill; 1024];
            // Descriptors start at offset 18 (vsock) or 19 (blk).
            for at in (0..32).flat_map(|d| [18 + 10 * d, 19 + 10 * d]) {
                v[at] = control;
            }
            cases.push(v);
        }
    }
    cases
}

/// A descriptor in the input encoding.
fn desc(control: u8, next: u8, a: u32, l: u32) -> Vec<u8> {
    let mut v = vec![control, next];
    v.extend_from_slice(&a.to_le_bytes());
    v.extend_from_slice(&l.to_le_bytes());
    v
}

/// A queue of size 16 (`avail_flags`: 1 = no interrupts) with `heads` and `descs`.
fn queue(avail_flags: u8, heads: &[u8], descs: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![SIZE_16, avail_flags];
    v.extend(heads);
    v.resize(18, 0);
    for d in descs {
        v.extend_from_slice(d);
    }
    v.resize(178, 0);
    v
}

const SIZE_16: u8 = 4;
const NO_INTERRUPT: u8 = 1;
const NEXT: u8 = 1;
const WRITE: u8 = 2;
const SLOT_ADDR: u8 = 0;
const ANY_DATA: u8 = 0x10;
const LEN_SMALL: u8 = 0;
const LEN_SECTORS: u8 = 0x40;
const LEN_ANY: u8 = 0x80;

/// The `l` for a [`LEN_SECTORS`] descriptor of `sectors` sectors (+ 1 byte if `plus_one`).
fn sectors(sectors: u32, plus_one: bool) -> u32 {
    let from = if plus_one { 1 << 16 } else { 0 };
    (from..).find(|l| l % 9 == sectors).unwrap()
}

/// The data area with these 16-byte virtio-blk headers in slots 0, 1, ….
fn blk_headers(headers: &[(u32, u64)]) -> Vec<u8> {
    let mut v = vec![0u8; SLOTS * SLOT as usize];
    for (i, (kind, sector)) in headers.iter().enumerate() {
        let at = i * SLOT as usize;
        v[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        v[at + 8..at + 16].copy_from_slice(&sector.to_le_bytes());
    }
    v
}

fn blk_read_input(sector: u64) -> Vec<u8> {
    let mut v = vec![1]; // writable
    v.extend(queue(
        0,
        &[0],
        &[
            desc(SLOT_ADDR | LEN_SMALL | NEXT, 1, 0, 16),
            desc(ANY_DATA | LEN_SECTORS | WRITE, 0, 0x1000, sectors(2, true)),
        ],
    ));
    v.extend([1, 0, 0]); // one chain in round 0
    v.extend([0; SLOTS]); // no fixups
    v.extend(blk_headers(&[(VIRTIO_BLK_T_IN, sector)]));
    v
}

/// Well-formed blk inputs the smoke test mutates.
fn blk_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![blk_read_input(3)];
    // Write sector 5, read it back, ask for the id, flush.
    let descs = [
        desc(SLOT_ADDR | LEN_SMALL | NEXT, 1, 0, 16),
        desc(ANY_DATA | LEN_SECTORS | NEXT, 2, 0x1000, sectors(1, false)),
        desc(ANY_DATA | LEN_SMALL | WRITE, 0, 0x3000, 1),
        desc(SLOT_ADDR | LEN_SMALL | NEXT, 4, 1, 16),
        desc(ANY_DATA | LEN_SECTORS | WRITE, 0, 0x2000, sectors(1, true)),
        desc(SLOT_ADDR | LEN_SMALL | NEXT, 6, 2, 16),
        desc(ANY_DATA | LEN_SMALL | WRITE, 0, 0x3000, 21),
        desc(SLOT_ADDR | LEN_SMALL | NEXT, 2, 3, 16),
    ];
    let headers = blk_headers(&[
        (VIRTIO_BLK_T_OUT, 5),
        (VIRTIO_BLK_T_IN, 5),
        (VIRTIO_BLK_T_GET_ID, 0),
        (VIRTIO_BLK_T_FLUSH, 0),
    ]);
    for (cfg, flags) in [(1, 0), (0, 0), (1, NO_INTERRUPT)] {
        let mut v = vec![cfg];
        v.extend(queue(flags, &[0, 3, 5, 7], &descs));
        v.extend([1, 1, 2]);
        v.extend([0; SLOTS]);
        v.extend(&headers);
        seeds.push(v);
    }
    seeds
}

#[test]
fn the_blk_encoding_reaches_the_device() {
    let ok = blk_run(&blk_read_input(3)).unwrap();
    assert_eq!((ok.completed, ok.with_data), (1, 1), "a 2-sector read");
    let past_end = blk_run(&blk_read_input(DISK_SECTORS)).unwrap();
    assert_eq!((past_end.completed, past_end.with_data), (1, 0));
    let seeds = blk_seeds();
    let writable = blk_run(&seeds[1]).unwrap();
    assert_eq!((writable.completed, writable.with_data), (4, 2));
}

/// 16 single-descriptor RX buffers of 1 KiB in the upper data area.
fn rx_queue() -> Vec<u8> {
    let rx: Vec<Vec<u8>> = (0..16)
        .map(|i| desc(ANY_DATA | LEN_ANY | WRITE, 0, 0x8000 + i * 0x400, 0x400))
        .collect();
    queue(0, &(0..16).collect::<Vec<u8>>(), &rx)
}

/// Fixup for a header of connection `conn` with op `op`; `small_len` clamps `len`.
fn vsock_fixup(conn: u8, op: u16, small_len: bool) -> u8 {
    0x80 | 0x40 | if small_len { 0x20 } else { 0 } | ((op as u8) << 1) | conn
}

/// The data area with vsock headers (len, flags, buf_alloc) in slots 0, 1, ….
fn vsock_headers(headers: &[(u32, u32)]) -> Vec<u8> {
    let mut v = vec![0u8; SLOTS * SLOT as usize];
    for (i, (len, flags)) in headers.iter().enumerate() {
        let at = i * SLOT as usize;
        v[at + 24..at + 28].copy_from_slice(&len.to_le_bytes());
        v[at + 32..at + 36].copy_from_slice(&flags.to_le_bytes());
        v[at + 36..at + 40].copy_from_slice(&(64u32 << 10).to_le_bytes());
    }
    v
}

fn vsock_input() -> Vec<u8> {
    let mut v = rx_queue();
    // One TX packet: a bare header in slot 0.
    v.extend(queue(0, &[0], &[desc(SLOT_ADDR | LEN_SMALL, 0, 0, 44)]));
    v.extend([1, 8, 0, 0, 0, 0, 0, 0, 0]); // round 0: 1 TX chain, 8 RX buffers
    v.extend(100u16.to_le_bytes()); // the host has 100 bytes waiting
    // Slot 0: connection 0's addresses, op RESPONSE, len 0.
    let mut fixups = [0u8; SLOTS];
    fixups[0] = vsock_fixup(0, op::RESPONSE, true);
    v.extend(fixups);
    v.extend(vsock_headers(&[(0, 0)]));
    v
}

/// Well-formed vsock conversations the smoke test mutates.
fn vsock_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![vsock_input()];
    // Accept both connections, data both ways, credit, shutdown, reset.
    let conversation = [
        (0, op::RESPONSE, 0, 0),
        (0, op::RW, 16, 0),
        (0, op::CREDIT_REQUEST, 0, 0),
        (1, op::RESPONSE, 0, 0),
        (0, op::SHUTDOWN, 0, 3),
        (1, op::RST, 0, 0),
    ];
    let mut fixups = [0u8; SLOTS];
    let mut headers = Vec::new();
    let mut tx = Vec::new();
    for (i, (conn, op, len, flags)) in conversation.into_iter().enumerate() {
        fixups[i] = vsock_fixup(conn, op, false);
        headers.push((len, flags));
        tx.push(desc(SLOT_ADDR | LEN_SMALL, 0, i as u32, 44 + len));
    }
    // The same RW packet with its payload in a second descriptor.
    tx[1] = desc(SLOT_ADDR | LEN_SMALL | NEXT, 6, 1, 44);
    tx.push(desc(ANY_DATA | LEN_SMALL, 0, 0x4000, 16));
    for (split, flags) in [(false, 0), (true, NO_INTERRUPT)] {
        let mut v = rx_queue();
        let chains = if split { &tx[..] } else { &tx[..6] };
        let mut chains = chains.to_vec();
        if !split {
            chains[1] = desc(SLOT_ADDR | LEN_SMALL, 0, 1, 60);
        }
        v.extend(queue(flags, &[0, 1, 2, 3, 4, 5], &chains));
        v.extend([2, 8, 1 | 8, 2, 8, 0x10 | 0x40, 2, 0, 2 | 0x20]);
        v.extend(300u16.to_le_bytes());
        v.extend(fixups);
        v.extend(vsock_headers(&headers));
        seeds.push(v);
    }
    seeds
}

#[test]
fn the_vsock_encoding_reaches_the_device() {
    let out = vsock_run(&vsock_input()).unwrap();
    assert_eq!(out.tx_used, 1);
    // Two REQUESTs, then the first connection's 100 bytes.
    assert_eq!(out.rx_used, 3, "{out:?}");
    assert_eq!(out.rx_data, 1, "{out:?}");
    for seed in vsock_seeds() {
        let out = vsock_run(&seed).unwrap();
        assert!(out.tx_used >= 1 && out.rx_data >= 1, "{out:?}");
    }
}

/// Puts the seeds into `vmm/fuzz/corpus/<target>/`, where `cargo fuzz run`
/// starts from: `cargo test -p cellbox-vmm --lib write_seed_corpus -- --ignored`.
#[test]
#[ignore = "writes the cargo-fuzz seed corpus"]
fn write_seed_corpus() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, seeds) in [
        ("blk_request", blk_seeds()),
        ("vsock_packets", vsock_seeds()),
    ] {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
}

/// A few random byte edits, truncations or extensions of `seed`.
fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.next() % 6 {
        let at = (rng.next() % v.len().max(1) as u64) as usize;
        match rng.next() % 8 {
            0 => v.truncate(at),
            1 => {
                let n = 1 + rng.next() % 64;
                v.extend(rng.bytes(n as usize));
            }
            2 => {
                if let Some(b) = v.get_mut(at) {
                    *b ^= 1 << (rng.next() % 8);
                }
            }
            3 => {
                if let Some(b) = v.get_mut(at) {
                    *b = [0, 1, 0x7f, 0x80, 0xff][(rng.next() % 5) as usize];
                }
            }
            _ => {
                if let Some(b) = v.get_mut(at) {
                    *b = rng.next() as u8;
                }
            }
        }
    }
    v
}

/// Half random inputs, half mutations of `seeds`.
fn inputs(seed: u64, seeds: Vec<Vec<u8>>) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = XorShift(seed);
    (0..RANDOM_INPUTS).map(move |i| {
        if i % 2 == 0 {
            rng.input()
        } else {
            mutate(&mut rng, &seeds[i / 2 % seeds.len()])
        }
    })
}

#[test]
fn blk_request_survives_random_and_edge_case_inputs() {
    let start = Instant::now();
    for case in edge_cases() {
        blk_request(&case);
    }
    let mut total = BlkOutcome::default();
    for input in inputs(0x5eed_0b1c_0000_0001, blk_seeds()) {
        if let Some(out) = blk_run(&input) {
            total.completed += out.completed;
            total.with_data += out.with_data;
        }
    }
    eprintln!("blk: {total:?} in {:?}", start.elapsed());
    assert!(total.completed > RANDOM_INPUTS as u64, "{total:?}");
    assert!(total.with_data > RANDOM_INPUTS as u64 / 10, "{total:?}");
}

#[test]
fn vsock_packets_survives_random_and_edge_case_inputs() {
    let start = Instant::now();
    for case in edge_cases() {
        vsock_packets(&case);
    }
    let mut total = VsockOutcome::default();
    for input in inputs(0x5eed_0250_c400_0001, vsock_seeds()) {
        if let Some(out) = vsock_run(&input) {
            total.tx_used += out.tx_used;
            total.rx_used += out.rx_used;
            total.rx_data += out.rx_data;
        }
    }
    eprintln!("vsock: {total:?} in {:?}", start.elapsed());
    assert!(total.tx_used > RANDOM_INPUTS as u64, "{total:?}");
    assert!(total.rx_used > RANDOM_INPUTS as u64, "{total:?}");
    assert!(total.rx_data > RANDOM_INPUTS as u64 / 10, "{total:?}");
}
