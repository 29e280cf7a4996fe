//! The scratch folder's size limit. The interpreter fills the folder only
//! through WASI's `fd_write` and `fd_pwrite` (data) and `path_open` with
//! `O_CREAT`, `path_create_directory` and `path_symlink` (entries, a block
//! each); all are wrapped here so that one that would take the folder past
//! its limit fails with `ENOSPC` (Python raises `OSError: [Errno 28] No
//! space left on device`) and the host never holds more than the limit.
//!
//! The folder's use is measured (blocks on disk, by walking it) when the
//! session starts and again only when the running estimate — the last
//! measure plus every byte written since — would pass the limit, so deleted
//! and overwritten data frees room without a walk per write.

use std::path::{Path, PathBuf};

use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as p1, WasiSnapshotPreview1 as _};
use wiggle::GuestMemory;

use super::host::HostState;

/// WASI's `errno::nospc`.
const ENOSPC: i32 = 51;
/// Descriptors 0–2 are stdio, never files of the folder.
const FIRST_FILE_FD: i32 = 3;
/// What a new file, folder or link is counted as (the walk counts the same).
const ENTRY: u64 = 4096;
/// WASI's `oflags::creat`.
const O_CREAT: i32 = 1;
/// More I/O vectors than this in one call are not counted (WASI's own cap is 1024).
const MAX_IOVECS: u32 = 1024;

/// What one session may keep in its scratch folder.
#[derive(Debug)]
pub(crate) struct DiskBudget {
    root: PathBuf,
    limit: u64,
    /// The last measure plus the bytes written since.
    estimate: u64,
}

impl DiskBudget {
    pub fn new(root: &Path, limit: u64) -> DiskBudget {
        DiskBudget {
            root: root.to_path_buf(),
            limit,
            estimate: usage(root),
        }
    }

    /// Whether `bytes` more fit; counts them if so.
    fn admit(&mut self, bytes: u64) -> bool {
        if self.estimate.saturating_add(bytes) > self.limit {
            self.estimate = usage(&self.root);
        }
        let fits = self.estimate.saturating_add(bytes) <= self.limit;
        if fits {
            self.estimate += bytes;
        }
        fits
    }
}

/// Bytes on disk under `root` (not following links), each entry at least a block.
fn usage(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total = total.saturating_add((meta.blocks() * 512).max(ENTRY));
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

/// Shadows the WASI imports already in `linker` that fill the folder with
/// versions that ask the store's [`DiskBudget`] first, then do what WASI's
/// own do.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        "wasi_snapshot_preview1",
        "fd_write",
        |mut caller: Caller<'_, HostState>, (fd, iovs, count, written): (i32, i32, i32, i32)| {
            Box::new(async move {
                if !admitted(&mut caller, fd, iovs, count) {
                    return Ok(ENOSPC);
                }
                let (mut memory, wasi) = guest_memory(&mut caller)?;
                p1::fd_write(wasi, &mut memory, fd, iovs, count, written).await
            })
        },
    )?;
    linker.func_wrap_async(
        "wasi_snapshot_preview1",
        "fd_pwrite",
        |mut caller: Caller<'_, HostState>,
         (fd, iovs, count, offset, written): (i32, i32, i32, i64, i32)| {
            Box::new(async move {
                if !admitted(&mut caller, fd, iovs, count) {
                    return Ok(ENOSPC);
                }
                let (mut memory, wasi) = guest_memory(&mut caller)?;
                p1::fd_pwrite(wasi, &mut memory, fd, iovs, count, offset, written).await
            })
        },
    )?;
    linker.func_wrap_async(
        "wasi_snapshot_preview1",
        "path_open",
        |mut caller: Caller<'_, HostState>,
         (fd, lookup, path, len, oflags, base, inheriting, fdflags, opened): (
            i32,
            i32,
            i32,
            i32,
            i32,
            i64,
            i64,
            i32,
            i32,
        )| {
            Box::new(async move {
                if oflags & O_CREAT != 0 && !admit(&mut caller, ENTRY) {
                    return Ok(ENOSPC);
                }
                let (mut memory, wasi) = guest_memory(&mut caller)?;
                p1::path_open(
                    wasi,
                    &mut memory,
                    fd,
                    lookup,
                    path,
                    len,
                    oflags,
                    base,
                    inheriting,
                    fdflags,
                    opened,
                )
                .await
            })
        },
    )?;
    linker.func_wrap_async(
        "wasi_snapshot_preview1",
        "path_create_directory",
        |mut caller: Caller<'_, HostState>, (fd, path, len): (i32, i32, i32)| {
            Box::new(async move {
                if !admit(&mut caller, ENTRY) {
                    return Ok(ENOSPC);
                }
                let (mut memory, wasi) = guest_memory(&mut caller)?;
                p1::path_create_directory(wasi, &mut memory, fd, path, len).await
            })
        },
    )?;
    linker.func_wrap_async(
        "wasi_snapshot_preview1",
        "path_symlink",
        |mut caller: Caller<'_, HostState>,
         (target, target_len, fd, path, len): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                if !admit(&mut caller, ENTRY) {
                    return Ok(ENOSPC);
                }
                let (mut memory, wasi) = guest_memory(&mut caller)?;
                p1::path_symlink(wasi, &mut memory, target, target_len, fd, path, len).await
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The calling instance's memory and the store's WASI context, as WASI's
/// own functions take them (with the store's host-call fuel handed over).
fn guest_memory<'a>(
    caller: &'a mut Caller<'_, HostState>,
) -> wasmtime::Result<(GuestMemory<'a>, &'a mut WasiP1Ctx)> {
    let fuel = caller.as_context_mut().hostcall_fuel();
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        wasmtime::bail!("the interpreter exports no memory");
    };
    let (data, state) = memory.data_and_store_mut(caller);
    state.wasi.set_hostcall_fuel(fuel);
    Ok((GuestMemory::Unshared(data), &mut state.wasi))
}

/// Whether the write of the I/O vectors at `iovs` to `fd` fits the budget
/// (always, for stdio, or when the vectors cannot be read: WASI then
/// refuses the call itself).
fn admitted(caller: &mut Caller<'_, HostState>, fd: i32, iovs: i32, count: i32) -> bool {
    if fd < FIRST_FILE_FD {
        return true;
    }
    let Some(memory) = caller
        .get_export("memory")
        .and_then(|export| export.into_memory())
    else {
        return true;
    };
    let data = memory.data(&*caller);
    let mut bytes = 0u64;
    for index in 0..(count as u32).min(MAX_IOVECS) {
        // Each vector is { buf: u32, buf_len: u32 }, little-endian.
        let at = (iovs as u32 as usize).saturating_add(index as usize * 8 + 4);
        let Some(len) = data.get(at..at + 4) else {
            return true;
        };
        bytes += u64::from(u32::from_le_bytes(len.try_into().unwrap_or_default()));
    }
    admit(caller, bytes)
}

/// Whether `bytes` more fit the store's budget (always, without one).
fn admit(caller: &mut Caller<'_, HostState>, bytes: u64) -> bool {
    caller
        .data_mut()
        .disk
        .as_mut()
        .is_none_or(|disk| disk.admit(bytes))
}

#[cfg(test)]
mod tests {
    use super::DiskBudget;

    #[test]
    fn the_budget_remeasures_before_it_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let mut budget = DiskBudget::new(dir.path(), 64 << 10);
        assert!(budget.admit(40 << 10));
        std::fs::write(dir.path().join("a"), vec![1u8; 40 << 10]).unwrap();
        assert!(!budget.admit(40 << 10), "80 KiB do not fit in 64");
        std::fs::remove_file(dir.path().join("a")).unwrap();
        assert!(budget.admit(40 << 10), "room again once the file is gone");
    }
}
