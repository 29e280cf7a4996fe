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
/// With `anonymous` (RAM that is not a file's mapping) pages the guest never
/// touched are known to be zero and are not even read.
pub fn save(mem: &GuestMemoryMmap, path: &Path, anonymous: bool) -> io::Result<u64> {
    let file = File::create(path)?;
    let mut buf = vec![0u8; CHUNK];
    let mut file_offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
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
            let touched = if anonymous {
                resident_pages(part.ptr_guard().as_ptr(), n)?
            } else {
                vec![1; n / PAGE]
            };
            if touched.iter().all(|&t| t & 1 == 0) {
                at += n;
                continue;
            }
            part.copy_to(&mut buf[..n]);
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if touched[i] & 1 != 0 && page.iter().any(|&b| b != 0) {
                    file.write_all_at(page, file_offset + (at + i * PAGE) as u64)?;
                    written += page.len() as u64;
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
