//! The proxy's sockets, made inside the sandbox's network namespace (so
//! that only the sandbox reaches them, and the kernel there keeps each
//! redirected connection's original destination) but held by this process:
//! a TCP listener and a UDP socket (DNS). A short-lived child enters the
//! namespaces, makes them and hands them back over a socket pair; it then
//! runs `true`.

use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// A TCP listener and a UDP socket on `127.0.0.1` (ports the kernel
/// picks) in the network namespace of process `pid`; `rootless`: entering
/// the user namespace that owns it first. Blocking.
pub fn listen_in(pid: u32, rootless: bool) -> Result<(TcpListener, UdpSocket)> {
    let open = |ns: &str| {
        std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))
            .map_err(|e| Error::io(format!("opening the sandbox's {ns} namespace"), e))
    };
    let netns = open("net")?;
    let userns = if rootless { Some(open("user")?) } else { None };
    let (ours, theirs) = UnixStream::pair().map_err(|e| Error::io("making a socket pair", e))?;
    let (net_fd, user_fd) = (netns.as_raw_fd(), userns.as_ref().map(|f| f.as_raw_fd()));
    let sender = theirs.as_raw_fd();
    let mut command = Command::new("true");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (setns, socket, bind, listen,
    // sendmsg, close) on descriptors this process keeps open until `status`
    // returns; the buffers live on the child's stack.
    unsafe {
        command.pre_exec(move || {
            if let Some(user_fd) = user_fd
                && libc::setns(user_fd, libc::CLONE_NEWUSER) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::setns(net_fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            let tcp = make_socket(libc::SOCK_STREAM)?;
            let udp = make_socket(libc::SOCK_DGRAM).inspect_err(|_| {
                libc::close(tcp);
            })?;
            let sent = send_fds(sender, [tcp, udp]);
            libc::close(tcp);
            libc::close(udp);
            sent
        });
    }
    let status = command
        .status()
        .map_err(|e| Error::io("making the egress proxy's socket in the sandbox", e))?;
    drop(theirs);
    if !status.success() {
        return Err(Error::io(
            "making the egress proxy's socket in the sandbox",
            io::Error::other(format!("its helper ended with {status}")),
        ));
    }
    let [tcp, udp] =
        receive_fds(&ours).map_err(|e| Error::io("receiving the egress proxy's sockets", e))?;
    Ok((TcpListener::from(tcp), UdpSocket::from(udp)))
}

/// A TCP socket listening, or a UDP socket bound, on 127.0.0.1, any port.
/// Async-signal-safe.
unsafe fn make_socket(kind: libc::c_int) -> io::Result<RawFd> {
    // SAFETY: plain system calls on a socket this function owns until it
    // returns it; the address is a local value of the right size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut address: libc::sockaddr_in = std::mem::zeroed();
        address.sin_family = libc::AF_INET as libc::sa_family_t;
        address.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // Bound first: listen would bind it to some address of its own.
        let bound = libc::bind(fd, (&raw const address).cast(), size) == 0;
        if !bound || (kind == libc::SOCK_STREAM && libc::listen(fd, 128) != 0) {
            let error = io::Error::last_os_error();
            libc::close(fd);
            return Err(error);
        }
        Ok(fd)
    }
}

/// Room for two descriptors' control message (`CMSG_SPACE(2 * sizeof(int))`),
/// aligned for `cmsghdr`.
#[repr(C, align(8))]
struct FdMessage([u8; 24]);

/// Sends `fds` over the Unix socket `socket`. Async-signal-safe.
unsafe fn send_fds(socket: RawFd, fds: [RawFd; 2]) -> io::Result<()> {
    // SAFETY: every pointer is to a local that outlives the sendmsg call;
    // the control buffer is big and aligned enough for one descriptor.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = FdMessage([0; 24]);
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &raw mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.0.as_mut_ptr().cast();
        let size = std::mem::size_of::<[RawFd; 2]>() as u32;
        message.msg_controllen = libc::CMSG_SPACE(size) as usize;
        let header = libc::CMSG_FIRSTHDR(&raw const message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(size) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<[RawFd; 2]>(), fds);
        if libc::sendmsg(socket, &raw const message, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The two descriptors the helper sent over `socket`.
fn receive_fds(socket: &UnixStream) -> io::Result<[OwnedFd; 2]> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            // SAFETY: the kernel just gave this process these descriptors;
            // no one else owns them.
            let mut owned = fds.iter().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) });
            if let (Some(tcp), Some(udp)) = (owned.next(), owned.next()) {
                return Ok([tcp, udp]);
            }
        }
    }
    Err(io::Error::other("the helper sent no sockets"))
}
