//! Address → device dispatch for port I/O and MMIO exits.

use std::sync::{Arc, Mutex};

/// A device that answers reads and writes in its address range.
pub trait BusDevice: Send {
    /// Fills `data` from register `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` to register `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Non-overlapping ranges `[start, start + len)` mapped to devices.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.ranges.iter().map(|(s, l, _)| (*s, *l)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

/// A range that overlaps one already on the bus.
#[derive(Debug, thiserror::Error)]
#[error("bus range {start:#x}+{len:#x} overlaps another device")]
pub struct Overlap {
    /// Start of the refused range.
    pub start: u64,
    /// Its length.
    pub len: u64,
}

impl Bus {
    /// Adds `device` at `[start, start + len)`.
    pub fn insert(&mut self, start: u64, len: u64, device: SharedDevice) -> Result<(), Overlap> {
        let end = start.checked_add(len).ok_or(Overlap { start, len })?;
        if len == 0
            || self
                .ranges
                .iter()
                .any(|(s, l, _)| start < s + l && *s < end)
        {
            return Err(Overlap { start, len });
        }
        self.ranges.push((start, len, device));
        self.ranges.sort_by_key(|r| r.0);
        Ok(())
    }

    /// The device at `addr` and the offset into it.
    fn find(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let i = self
            .ranges
            .partition_point(|(s, _, _)| *s <= addr)
            .checked_sub(1)?;
        let (start, len, device) = &self.ranges[i];
        (addr - start < *len).then_some((device, addr - start))
    }

    /// Reads `data` at `addr`; `false` (and `data` all ones) if nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes `data` at `addr`; `false` if nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((device, offset)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device; a device whose lock was poisoned by a panic stays usable.
pub fn lock<T: ?Sized>(device: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Register(Vec<(u64, Vec<u8>)>);

    impl BusDevice for Register {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_offset() {
        let a = Arc::new(Mutex::new(Register::default()));
        let mut bus = Bus::default();
        bus.insert(0x1000, 0x100, a.clone()).unwrap();
        bus.insert(0x2000, 0x100, Arc::new(Mutex::new(Register::default())))
            .unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(0x1010, &mut data));
        assert_eq!(data, [0x10, 0x10]);
        assert!(bus.write(0x10ff, &[7]));
        assert_eq!(a.lock().unwrap().0, vec![(0xff, vec![7])]);
        assert!(!bus.read(0x1100, &mut data));
        assert_eq!(data, [0xff, 0xff]);
        assert!(!bus.write(0x0fff, &[1]));
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let mut bus = Bus::default();
        let dev = || Arc::new(Mutex::new(Register::default())) as SharedDevice;
        bus.insert(0x1000, 0x100, dev()).unwrap();
        assert!(bus.insert(0x10ff, 1, dev()).is_err());
        assert!(bus.insert(0xf00, 0x101, dev()).is_err());
        assert!(bus.insert(0x3000, 0, dev()).is_err());
        assert!(bus.insert(u64::MAX, 2, dev()).is_err());
        bus.insert(0x1100, 1, dev()).unwrap();
    }
}
