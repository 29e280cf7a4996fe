//! One virtio-blk request: parsing and validating a descriptor chain from the
//! guest, and executing it against the disk. Nothing in a chain is trusted.

use std::io::{Read, Write};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::disk::{CowDisk, SECTOR_SIZE};

/// Status values (virtio spec 5.2.6).
pub const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
/// The request failed.
pub const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
/// The request type is not supported.
pub const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// Length of the device id string.
pub const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Data moves through a bounce buffer of this size.
const CHUNK: usize = 64 << 10;

/// A chain too broken to even carry a status byte back.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Descriptors point outside guest memory, or lengths overflow.
    #[error("descriptor chain points outside guest memory: {0}")]
    Chain(#[from] virtio_queue::Error),
    /// No room for the 16-byte header or the status byte.
    #[error("request too short: {0}")]
    TooShort(&'static str),
    /// Guest memory refused an access mid-request.
    #[error("guest memory access failed: {0}")]
    Memory(#[from] std::io::Error),
}

/// Executes the request in `chain`; returns the bytes written to the guest
/// (the value for the used ring).
pub fn handle(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    disk: &mut CowDisk,
    id: &[u8; ID_LEN],
) -> Result<u32, RequestError> {
    let mut reader = chain.clone().reader(mem)?;
    let mut writer = chain.writer(mem)?;
    let mut header = [0u8; 16];
    reader
        .read_exact(&mut header)
        .map_err(|_| RequestError::TooShort("no 16-byte header"))?;
    let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let data_len = writer
        .available_bytes()
        .checked_sub(1)
        .ok_or(RequestError::TooShort("no status byte"))?;
    let mut status_writer = writer.split_at(data_len)?;

    let status = match kind {
        VIRTIO_BLK_T_IN => read_sectors(disk, sector, data_len, &mut writer)?,
        VIRTIO_BLK_T_OUT => write_sectors(disk, sector, &mut reader)?,
        VIRTIO_BLK_T_FLUSH => S_OK,
        VIRTIO_BLK_T_GET_ID => {
            let n = data_len.min(ID_LEN);
            writer.write_all(&id[..n])?;
            S_OK
        }
        _ => S_UNSUPP,
    };
    status_writer.write_all(&[status])?;
    Ok((writer.bytes_written() + 1) as u32)
}

fn read_sectors(
    disk: &CowDisk,
    sector: u64,
    len: usize,
    writer: &mut Writer<'_>,
) -> Result<u8, RequestError> {
    if !disk.in_range(sector, len as u64) {
        return Ok(S_IOERR);
    }
    let mut buf = vec![0u8; len.min(CHUNK)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        let at = sector + (done as u64) / SECTOR_SIZE;
        if disk.read_at(&mut buf[..n], at).is_err() {
            return Ok(S_IOERR);
        }
        writer.write_all(&buf[..n])?;
        done += n;
    }
    Ok(S_OK)
}

fn write_sectors(
    disk: &mut CowDisk,
    sector: u64,
    reader: &mut Reader<'_>,
) -> Result<u8, RequestError> {
    let len = reader.available_bytes();
    if disk.is_read_only() || !disk.in_range(sector, len as u64) {
        return Ok(S_IOERR);
    }
    let mut buf = vec![0u8; len.min(CHUNK)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        reader.read_exact(&mut buf[..n])?;
        if disk
            .write_at(&buf[..n], sector + (done as u64) / SECTOR_SIZE)
            .is_err()
        {
            return Ok(S_IOERR);
        }
        done += n;
    }
    Ok(S_OK)
}
