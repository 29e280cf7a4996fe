//! How guest-init reaches the host: a descriptor the launcher passed in (the
//! namespace sandbox's Unix socket) or, in the microVM, the first connection
//! to a vsock port.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, VsockAddr, accept, bind, listen, socket,
};

/// Any CID: accept the host's connection whatever our own CID is.
const VMADDR_CID_ANY: u32 = u32::MAX;

/// Takes ownership of descriptor `fd` passed in by the launcher.
///
/// # Safety
/// `fd` must be an open descriptor nobody else owns.
pub unsafe fn from_fd(fd: i32) -> File {
    // SAFETY: the caller guarantees exclusive ownership of `fd`.
    unsafe { File::from_raw_fd(fd) }
}

/// Listens on vsock `port` and returns the first connection (the host).
pub fn accept_vsock(port: u32) -> io::Result<File> {
    let listener = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&listener),
        &VsockAddr::new(VMADDR_CID_ANY, port),
    )?;
    listen(&listener, Backlog::new(1)?)?;
    let fd = accept(std::os::fd::AsRawFd::as_raw_fd(&listener))?;
    // SAFETY: accept returned a fresh descriptor that only we hold.
    let connection = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(File::from(connection))
}
