//! The warm template (a "zygote", [`SCRIPT`]): one Python with IPython, numpy,
//! pandas and matplotlib imported, from which namespace sandboxes' Python
//! kernels are forked instead of started. Here: its launcher
//! (`guest-init --zygote DIR`, run by the host as root) and a sandbox's side
//! of asking it for a kernel (`--zygote-fd N`).
//!
//! The template runs on the host, in its own mount namespace (the guest's
//! read-only root file system, so that paths are the sandbox's) and network
//! namespace (loopback only), with only the two capabilities joining a
//! sandbox's namespaces takes, and `no_new_privs`. It runs no user code: a
//! kernel it forks joins the sandbox's control group and namespaces and
//! drops every privilege before it reads the request's folder or environment
//! (see the script). It imports only the default guest's packages; a custom
//! template's kernels start cold, since its files are a user's.

use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use nix::mount::MsFlags;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use crate::pid1::{SetupError, io, mount_dev_nodes, mount_fs, step};

/// The template's script in the guest.
pub const SCRIPT: &str = "/usr/lib/cellbox/cellbox_zygote.py";
/// The capabilities the template keeps: `setns` into a sandbox's namespaces
/// takes `CAP_SYS_ADMIN` (and `CAP_SYS_CHROOT` for its mount namespace).
const KEPT_CAPABILITIES: [i32; 2] = [18, 21];
/// The template's descriptors: the host's control socket, then its filter.
const CONTROL_FD: i32 = 3;
const SECCOMP_FD: i32 = 4;

/// Becomes the warm template: the guest's `lowers` (top first) mounted
/// read-only on `root`, entered; returns only on failure.
pub fn exec_template(root: &str, lowers: &[String], control: i32) -> SetupError {
    match prepare(root, lowers, control) {
        Ok(()) => {}
        Err(e) => return e,
    }
    let python = c"/usr/bin/python3";
    let script = std::ffi::CString::new(SCRIPT).expect("no NUL in the path");
    let env = [
        c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        c"LANG=C.UTF-8",
        c"HOME=/home/user",
        c"MPLBACKEND=Agg",
        c"MPLCONFIGDIR=/var/cache/cellbox/matplotlib",
        c"PYTHONUNBUFFERED=1",
    ];
    let error = nix::unistd::execve(python, &[python, script.as_c_str()], &env);
    step(format!("running {SCRIPT}"), error.map(|_| ())).unwrap_err()
}

fn prepare(root: &str, lowers: &[String], control: i32) -> Result<(), SetupError> {
    crate::pid1::isolate_mounts_and_network()?;
    let quiet = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    let layers = format!("lowerdir={}", lowers.join(":"));
    mount_fs("overlay", root, quiet | MsFlags::MS_RDONLY, Some(&layers))?;
    for (dir, options) in [
        ("home/user", "mode=755,size=64m"),
        ("tmp", "mode=1777,size=64m"),
    ] {
        mount_fs("tmpfs", &format!("{root}/{dir}"), quiet, Some(options))?;
    }
    mount_dev_nodes(&format!("{root}/dev"))?;
    mount_fs(
        "proc",
        &format!("{root}/proc"),
        quiet | MsFlags::MS_NOEXEC,
        None,
    )?;
    step("entering the guest", nix::unistd::chroot(root))?;
    step("entering /", nix::unistd::chdir("/"))?;
    let filter = seccomp_programs()?.into_raw_fd();
    for (fd, target) in [(control, CONTROL_FD), (filter, SECCOMP_FD)] {
        // SAFETY: dup2 onto the numbers the script expects (which clears
        // close-on-exec there), then the original closed; both are ours.
        // The host passes `control` below 4, so neither clobbers the other.
        let placed = unsafe {
            if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                let placed = libc::dup2(fd, target);
                libc::close(fd);
                placed
            }
        };
        if placed < 0 {
            return step("placing the descriptors", Err(nix::errno::Errno::last()));
        }
    }
    for cap in 0..64 {
        if !KEPT_CAPABILITIES.contains(&cap) {
            // SAFETY: prctl with plain integers (EINVAL past the last capability).
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        }
    }
    // SAFETY: prctl with plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return step("setting no_new_privs", Err(nix::errno::Errno::last()));
    }
    Ok(())
}

/// The guest's seccomp filter for the script, in a memory file: each program
/// as its length in bytes (u32, little-endian) and its instructions.
fn seccomp_programs() -> Result<OwnedFd, SetupError> {
    let programs = crate::seccomp::programs().map_err(|e| {
        eprintln!("guest-init: {e}");
        step::<()>(
            "compiling the seccomp filter",
            Err(nix::errno::Errno::EINVAL),
        )
        .unwrap_err()
    })?;
    let fd = step(
        "making a memory file",
        nix::sys::memfd::memfd_create(c"seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC),
    )?;
    let mut file = File::from(fd);
    for program in programs {
        let mut bytes = Vec::with_capacity(program.len() * 8);
        for op in &program {
            bytes.extend_from_slice(&op.code.to_le_bytes());
            bytes.push(op.jt);
            bytes.push(op.jf);
            bytes.extend_from_slice(&op.k.to_le_bytes());
        }
        let length = (bytes.len() as u32).to_le_bytes();
        step(
            "writing the seccomp filter",
            io(file
                .write_all(&length)
                .and_then(|()| file.write_all(&bytes))),
        )?;
    }
    step("rewinding the seccomp filter", io(file.rewind()))?;
    Ok(file.into())
}

/// How long the template may take to answer (it may still be importing).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A sandbox's connection to the warm template (a `SOCK_SEQPACKET` socket
/// the host registered with it for this sandbox's namespaces).
#[derive(Debug)]
pub struct Zygote {
    socket: Mutex<OwnedFd>,
}

/// What a forked kernel is given.
#[derive(Debug)]
pub struct KernelRequest<'a> {
    pub cwd: &'a str,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    /// Its requests (read end), events, stdout and stderr (write ends).
    pub fds: [BorrowedFd<'a>; 4],
}

impl Zygote {
    pub fn new(socket: OwnedFd) -> Zygote {
        Zygote {
            socket: Mutex::new(socket),
        }
    }

    /// Asks for a kernel; once it says `forked`, the kernel announces itself
    /// on the events pipe like a started one.
    pub fn fork_kernel(&self, request: &KernelRequest) -> Result<(), String> {
        let env: serde_json::Map<String, serde_json::Value> = request
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let message = serde_json::json!({
            "cwd": request.cwd, "env": env, "uid": request.uid, "gid": request.gid,
        })
        .to_string();
        let fds = request.fds.map(|fd| fd.as_raw_fd());
        let socket = crate::lock(&self.socket);
        let sent = sendmsg::<()>(
            socket.as_raw_fd(),
            &[std::io::IoSlice::new(message.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        sent.map_err(|e| format!("the warm template is gone: {e}"))?;
        let mut poll = [nix::poll::PollFd::new(
            socket.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let timeout =
            nix::poll::PollTimeout::try_from(ANSWER_TIMEOUT).unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut poll, timeout) {
            Ok(1) => {}
            _ => return Err("the warm template did not answer".into()),
        }
        let mut answer = [0u8; 4096];
        let n = nix::sys::socket::recv(socket.as_raw_fd(), &mut answer, MsgFlags::empty())
            .map_err(|e| format!("the warm template is gone: {e}"))?;
        match &answer[..n] {
            b"forked" => Ok(()),
            b"" => Err("the warm template is gone".into()),
            other => Err(String::from_utf8_lossy(other).into_owned()),
        }
    }
}
