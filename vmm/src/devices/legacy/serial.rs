//! COM1: a 16550 UART (`vm-superio`) whose output is captured in a
//! [`ConsoleLog`] the caller can read while the VM runs.

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::{BusDevice, lock};

/// Keep at most this much console output (the first bytes; the rest is counted).
pub const CONSOLE_LOG_LIMIT: usize = 4 << 20;

/// Raises the UART's interrupt line through an irqfd.
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

#[derive(Debug, Default)]
struct LogState {
    bytes: Vec<u8>,
    dropped: u64,
}

/// The guest's console output, shared between the VMM and its caller.
#[derive(Debug, Clone, Default)]
pub struct ConsoleLog {
    inner: Arc<(Mutex<LogState>, Condvar)>,
}

impl ConsoleLog {
    /// Everything captured so far, as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.inner.0).bytes).into_owned()
    }

    /// Bytes dropped because the log was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.inner.0).dropped
    }

    /// Waits until the log contains `needle`; `false` on timeout.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (state, changed) = &*self.inner;
        let mut state = lock(state);
        loop {
            if memmem(&state.bytes, needle.as_bytes()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn append(&self, data: &[u8]) {
        let (state, changed) = &*self.inner;
        let mut state = lock(state);
        let room = CONSOLE_LOG_LIMIT.saturating_sub(state.bytes.len());
        let kept = data.len().min(room);
        state.bytes.extend_from_slice(&data[..kept]);
        state.dropped += (data.len() - kept) as u64;
        changed.notify_all();
    }
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

impl io::Write for ConsoleLog {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.append(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The UART on the port bus (8 registers).
pub struct SerialDevice {
    uart: Serial<IrqLine, NoEvents, ConsoleLog>,
}

/// The UART's registers and unread input, for a snapshot (`SerialState`
/// with serde: its fields are all public).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedSerial(#[serde(with = "SerialStateDef")] SerialState);

#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
struct SerialStateDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART that raises `irq` and writes to `log`.
    pub fn new(irq: EventFd, log: ConsoleLog) -> SerialDevice {
        SerialDevice {
            uart: Serial::new(IrqLine(irq), log),
        }
    }

    /// A UART in a snapshot's `saved` state.
    pub fn restore(
        irq: EventFd,
        log: ConsoleLog,
        saved: &SavedSerial,
    ) -> Result<SerialDevice, String> {
        let uart = Serial::from_state(&saved.0, IrqLine(irq), NoEvents, log)
            .map_err(|e| format!("bad serial state: {e:?}"))?;
        Ok(SerialDevice { uart })
    }

    /// The UART's state, for a snapshot.
    pub fn save(&self) -> SavedSerial {
        SavedSerial(self.uart.state())
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), &mut *data) {
            *byte = self.uart.read(offset);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data)
            && let Err(e) = self.uart.write(offset, *byte)
        {
            tracing::debug!("serial write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_to_the_data_register_reach_the_log() {
        let log = ConsoleLog::default();
        let mut uart = SerialDevice::new(EventFd::new(0).unwrap(), log.clone());
        for b in b"hi\n" {
            uart.write(0, &[*b]);
        }
        assert_eq!(log.text(), "hi\n");
        assert!(log.wait_for("hi", Duration::from_millis(1)));
        assert!(!log.wait_for("bye", Duration::from_millis(1)));
        // Line status register: transmitter empty.
        let mut lsr = [0u8];
        uart.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Wide or out-of-range accesses are ignored, not fatal.
        uart.write(0, &[1, 2]);
        uart.write(300, &[1]);
        assert_eq!(log.text(), "hi\n");
    }

    #[test]
    fn the_log_is_capped() {
        let mut log = ConsoleLog::default();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..5 {
            io::Write::write_all(&mut log, &chunk).unwrap();
        }
        assert_eq!(log.text().len(), CONSOLE_LOG_LIMIT);
        assert_eq!(log.dropped(), (5 << 20) - CONSOLE_LOG_LIMIT as u64);
    }
}
