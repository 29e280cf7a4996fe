//! Guest RAM in a snapshot: one file holding the regions back to back
//! (pages of zeros left as holes), mapped copy-on-write by every VM restored
//! from it, so they share its pages until they write them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::error::VmError;

const PAGE: usize = 4096;
/// Bytes copied out of guest RAM at a time.
const CHUNK: usize = 2 << 20;

/// Writes `mem` to a new file at `path`; returns the bytes of RAM written.
/// Pages the guest never touched are not even read: in anonymous RAM they
/// are zero; in RAM mapped from an earlier snapshot's file they are that
/// file's, read from the file, so its holes stay holes (reading them through
/// the mapping would fill a file on tmpfs, and a full tmpfs then faults).
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> io::Result<u64> {
    let file = File::create(path)?;
    let mut buf = vec![0u8; CHUNK];
    let mut file_offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let base = region.file_offset();
        let len = region.len() as usize;
        let slice = region
            .as_volatile_slice()
            .map_err(|e| io::Error::other(format!("guest RAM: {e}")))?;
        let mut at = 0;
        while at < len {
            let n = CHUNK.min(len - at);
            let part = slice
                .subslice(at, n)
                .map_err(|e| io::Error::other(format!("guest RAM: {e}")))?;
            let ptr = part.ptr_guard().as_ptr();
            // Per page: from guest RAM (written since), from the base file, or zero.
            let sources: Vec<Source> = match base {
                None => resident_pages(ptr, n)?
                    .iter()
                    .map(|&r| {
                        if r & 1 != 0 {
                            Source::Ram
                        } else {
                            Source::Zero
                        }
                    })
                    .collect(),
                Some(base) => {
                    let offset = base.start() + at as u64;
                    let data = has_data(base.file(), offset, n as u64)?;
                    private_pages(ptr, n)?
                        .into_iter()
                        .map(|own| match (own, data) {
                            (true, _) => Source::Ram,
                            (false, true) => Source::Base,
                            (false, false) => Source::Zero,
                        })
                        .collect()
                }
            };
            if sources.iter().all(|s| matches!(s, Source::Zero)) {
                at += n;
                continue;
            }
            if sources.iter().any(|s| matches!(s, Source::Ram)) {
                part.copy_to(&mut buf[..n]);
            }
            for (i, source) in sources.iter().enumerate() {
                let page = &mut buf[i * PAGE..(i + 1) * PAGE];
                match (source, base) {
                    (Source::Base, Some(base)) => base
                        .file()
                        .read_exact_at(page, base.start() + (at + i * PAGE) as u64)?,
                    (Source::Ram, _) => {}
                    _ => continue,
                }
                if page.iter().any(|&b| b != 0) {
                    file.write_all_at(page, file_offset + (at + i * PAGE) as u64)?;
                    written += PAGE as u64;
                }
            }
            at += n;
        }
        file_offset += len as u64;
    }
    // Trailing zero pages are holes too: the file still has RAM's full size.
    file.set_len(file_offset)?;
    Ok(written)
}

/// Where a page of a snapshot comes from.
enum Source {
    /// Guest RAM (touched since boot, or written since the restore).
    Ram,
    /// The file the RAM is mapped from (never written since the restore).
    Base,
    /// Neither: zero, left as a hole.
    Zero,
}

/// Whether `file` has data (not only holes) in `[offset, offset + len)`.
fn has_data(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let at = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: lseek on a descriptor this function borrows; no memory involved.
    let data = unsafe { libc::lseek(file.as_raw_fd(), at, libc::SEEK_DATA) };
    if data < 0 {
        let e = io::Error::last_os_error();
        // ENXIO: only holes from `offset` to the end.
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok((data as u64) < offset + len)
}

/// One flag per page of `[addr, addr + len)` of a private file mapping:
/// whether the page is the mapping's own (copied on write, or swapped out),
/// rather than the file's.
fn private_pages(addr: *const u8, len: usize) -> io::Result<Vec<bool>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE_OR_SHARED: u64 = 1 << 61;
    let pagemap = File::open("/proc/self/pagemap")?;
    let mut entries = vec![0u8; len.div_ceil(PAGE) * 8];
    pagemap.read_exact_at(&mut entries, (addr as usize / PAGE * 8) as u64)?;
    Ok(entries
        .chunks(8)
        .map(|entry| {
            let entry = u64::from_le_bytes(entry.try_into().unwrap_or_default());
            entry & SWAPPED != 0 || (entry & PRESENT != 0 && entry & FILE_OR_SHARED == 0)
        })
        .collect())
}

/// One byte per page of `[addr, addr + len)`: bit 0 set if it is in memory.
fn resident_pages(addr: *const u8, len: usize) -> io::Result<Vec<u8>> {
    let mut pages = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `addr` is the page-aligned start of `len` bytes of a live
    // mapping (guest RAM, held by the caller); `pages` has one byte per page.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, pages.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pages)
}

/// Maps `path` privately as guest RAM laid out as `ranges`.
pub fn map_private(
    path: &Path,
    ranges: &[(GuestAddress, usize)],
) -> Result<GuestMemoryMmap, VmError> {
    let mib = (ranges.iter().map(|r| r.1 as u64).sum::<u64>() >> 20) as u32;
    let fail = |reason: String| VmError::Memory { mib, reason };
    let file = File::open(path).map_err(|e| {
        fail(format!(
            "cannot open the snapshot's memory {}: {e}",
            path.display()
        ))
    })?;
    let size = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    let total: u64 = ranges.iter().map(|r| r.1 as u64).sum();
    if size != total {
        return Err(VmError::Snapshot(format!(
            "the memory file is {size} bytes, the snapshot's VM has {total}"
        )));
    }
    let file = std::sync::Arc::new(file);
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for &(start, len) in ranges {
        let mapping = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| fail(format!("cannot map the snapshot's memory: {e}")))?;
        let region = GuestRegionMmap::new(mapping, start)
            .ok_or_else(|| fail("a memory region wraps the address space".into()))?;
        regions.push(region);
        offset += len as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| fail(e.to_string()))
}
