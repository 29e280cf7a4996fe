//! Copy-on-write at the block layer: a shared base image that is only ever
//! read, plus a private, sparse overlay file that holds every sector the
//! guest wrote. The base is never copied and never written.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes per virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;

/// A base image plus this VM's writes.
#[derive(Debug)]
pub struct CowDisk {
    base: File,
    overlay: Option<Overlay>,
    sectors: u64,
}

#[derive(Debug)]
struct Overlay {
    file: File,
    /// One bit per sector: set once the guest wrote it.
    written: Vec<u64>,
}

impl Overlay {
    fn is_written(&self, sector: u64) -> bool {
        self.written[(sector / 64) as usize] & (1 << (sector % 64)) != 0
    }

    fn mark_written(&mut self, sector: u64) {
        self.written[(sector / 64) as usize] |= 1 << (sector % 64);
    }

    /// Calls `f(first sector, count)` for each run of written sectors.
    fn for_each_run(&self, mut f: impl FnMut(u64, u64) -> io::Result<()>) -> io::Result<()> {
        let sectors = self.written.len() as u64 * 64;
        let mut sector = 0;
        while sector < sectors {
            if self.written[(sector / 64) as usize] == 0 {
                sector += 64 - sector % 64;
                continue;
            }
            if !self.is_written(sector) {
                sector += 1;
                continue;
            }
            let start = sector;
            while sector < sectors && self.is_written(sector) {
                sector += 1;
            }
            f(start, sector - start)?;
        }
        Ok(())
    }
}

/// Copies `len` bytes at `offset` from `from` to the same offset in `to`.
fn copy_range(from: &File, to: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; (1 << 20).min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = buf.len().min((len - done) as usize);
        from.read_exact_at(&mut buf[..n], offset + done)?;
        to.write_all_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

impl CowDisk {
    /// Opens `base` read-only; `writable` adds an overlay (an unlinked temporary
    /// file, gone when the VM is) so the guest can write.
    pub fn open(base: &Path, writable: bool) -> io::Result<CowDisk> {
        let file = File::open(base)?;
        let sectors = file.metadata()?.len() / SECTOR_SIZE;
        let overlay = if writable {
            let file = tempfile::tempfile()?;
            file.set_len(sectors * SECTOR_SIZE)?;
            Some(Overlay {
                file,
                written: vec![0; sectors.div_ceil(64) as usize],
            })
        } else {
            None
        };
        Ok(CowDisk {
            base: file,
            overlay,
            sectors,
        })
    }

    /// Saves the overlay (if any) as `<prefix>.overlay` (the written
    /// sectors, the rest a hole) and `<prefix>.written` (its bitmap).
    pub fn save_overlay(&self, prefix: &Path) -> io::Result<()> {
        let Some(overlay) = &self.overlay else {
            return Ok(());
        };
        let copy = File::create(prefix.with_extension("overlay"))?;
        copy.set_len(self.sectors * SECTOR_SIZE)?;
        overlay.for_each_run(|start, count| {
            copy_range(
                &overlay.file,
                &copy,
                start * SECTOR_SIZE,
                count * SECTOR_SIZE,
            )
        })?;
        let bitmap: Vec<u8> = overlay
            .written
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        std::fs::write(prefix.with_extension("written"), bitmap)
    }

    /// Opens `base` with a private overlay holding what `save_overlay` saved
    /// under `prefix` (the saved files are only read).
    pub fn open_saved(base: &Path, prefix: &Path) -> io::Result<CowDisk> {
        let mut disk = CowDisk::open(base, true)?;
        let sectors = disk.sectors;
        let overlay = disk.overlay.as_mut().expect("opened writable");
        let bitmap = std::fs::read(prefix.with_extension("written"))?;
        if bitmap.len() != overlay.written.len() * 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the saved overlay is not for a disk of {sectors} sectors"),
            ));
        }
        for (word, bytes) in overlay.written.iter_mut().zip(bitmap.chunks_exact(8)) {
            *word = u64::from_le_bytes(bytes.try_into().expect("chunks of 8"));
        }
        let saved = File::open(prefix.with_extension("overlay"))?;
        let overlay = disk.overlay.as_ref().expect("opened writable");
        overlay.for_each_run(|start, count| {
            copy_range(
                &saved,
                &overlay.file,
                start * SECTOR_SIZE,
                count * SECTOR_SIZE,
            )
        })?;
        Ok(disk)
    }

    /// Size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether guest writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.overlay.is_none()
    }

    /// Whether `[sector, sector + len bytes)` lies on the disk (and `len` is whole sectors).
    pub fn in_range(&self, sector: u64, len: u64) -> bool {
        len.is_multiple_of(SECTOR_SIZE)
            && sector
                .checked_add(len / SECTOR_SIZE)
                .is_some_and(|end| end <= self.sectors)
    }

    /// Reads `buf.len()` bytes (whole sectors) from `sector`; each run of
    /// sectors comes from the overlay if written there, else from the base.
    pub fn read_at(&self, buf: &mut [u8], sector: u64) -> io::Result<()> {
        self.check(sector, buf.len())?;
        let count = buf.len() as u64 / SECTOR_SIZE;
        let mut i = 0;
        while i < count {
            let from_overlay = self
                .overlay
                .as_ref()
                .is_some_and(|o| o.is_written(sector + i));
            let mut run = 1;
            while i + run < count
                && self
                    .overlay
                    .as_ref()
                    .is_some_and(|o| o.is_written(sector + i + run))
                    == from_overlay
            {
                run += 1;
            }
            let file = match (&self.overlay, from_overlay) {
                (Some(o), true) => &o.file,
                _ => &self.base,
            };
            let bytes = &mut buf[(i * SECTOR_SIZE) as usize..((i + run) * SECTOR_SIZE) as usize];
            file.read_exact_at(bytes, (sector + i) * SECTOR_SIZE)?;
            i += run;
        }
        Ok(())
    }

    /// Writes whole sectors at `sector` into the overlay.
    pub fn write_at(&mut self, buf: &[u8], sector: u64) -> io::Result<()> {
        self.check(sector, buf.len())?;
        let overlay = self
            .overlay
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "read-only disk"))?;
        overlay.file.write_all_at(buf, sector * SECTOR_SIZE)?;
        for s in sector..sector + buf.len() as u64 / SECTOR_SIZE {
            overlay.mark_written(s);
        }
        Ok(())
    }

    fn check(&self, sector: u64, len: usize) -> io::Result<()> {
        if self.in_range(sector, len as u64) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "request outside the disk",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_image(sectors: u64) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i / SECTOR_SIZE) as u8)
            .collect();
        std::fs::write(file.path(), bytes).unwrap();
        file
    }

    #[test]
    fn writes_land_in_the_overlay_and_the_base_stays_untouched() {
        let base = base_image(8);
        let before = std::fs::read(base.path()).unwrap();
        let mut disk = CowDisk::open(base.path(), true).unwrap();
        assert_eq!(disk.sectors(), 8);
        disk.write_at(&[0xaa; 1024], 3).unwrap();
        let mut all = vec![0u8; 8 * 512];
        disk.read_at(&mut all, 0).unwrap();
        for s in 0..8u64 {
            let expected = if s == 3 || s == 4 { 0xaa } else { s as u8 };
            assert!(
                all[(s * 512) as usize..][..512]
                    .iter()
                    .all(|b| *b == expected),
                "sector {s}"
            );
        }
        assert_eq!(std::fs::read(base.path()).unwrap(), before);
    }

    #[test]
    fn read_only_disks_refuse_writes_and_bounds_are_checked() {
        let base = base_image(4);
        let mut disk = CowDisk::open(base.path(), false).unwrap();
        assert!(disk.is_read_only());
        assert!(disk.write_at(&[0; 512], 0).is_err());
        let mut buf = [0u8; 512];
        assert!(disk.read_at(&mut buf, 4).is_err());
        assert!(disk.read_at(&mut buf, u64::MAX).is_err());
        assert!(disk.read_at(&mut buf[..100], 0).is_err());
        assert!(!disk.in_range(u64::MAX, 512));
        disk.read_at(&mut buf, 3).unwrap();
        assert_eq!(buf[0], 3);
    }
}
