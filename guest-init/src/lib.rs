//! The cellbox guest's PID 1 (binary `guest-init`) and the protocol the host
//! speaks to it. The host side (`runtime/`) uses [`protocol`] and [`frame`].
//!
//! - [`protocol`], [`frame`]: the messages and how they are framed
//! - [`server`]: answers requests; [`contexts`] and [`kernel`] run Python,
//!   [`files`] and [`commands`] the rest, [`ports`] tunnels to servers in
//!   the sandbox; [`output`] bounds what they print
//! - [`transport`]: the host connection (a passed-in fd, or vsock in a VM)
//! - [`pid1`]: mounts, reaping and shutdown when running as PID 1;
//!   [`seccomp`]: the system-call filter everything after setup runs under;
//!   [`confine`]: the control group user code runs in
//! - [`zygote`]: the warm template Python kernels are forked from;
//!   [`reseed`]: fresh randomness for a microVM restored from a snapshot

pub mod commands;
pub mod confine;
pub mod contexts;
pub mod files;
pub mod frame;
pub mod kernel;
pub mod launch;
pub mod metadata;
pub mod output;
pub mod pid1;
pub mod ports;
pub mod protocol;
pub mod reseed;
pub mod seccomp;
pub mod server;
pub mod transport;
pub mod watch;
pub mod zygote;

/// Where this crate's sources are, so that the host can build `guest-init`
/// for the guest image on first use.
pub const SOURCE_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Locks `mutex`, also after a panic elsewhere (the tables it guards stay valid).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
