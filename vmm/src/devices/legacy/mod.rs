//! Legacy PC devices on port I/O.

pub mod serial;

pub use serial::{ConsoleLog, SerialDevice};
