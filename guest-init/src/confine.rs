//! What confines user code: every process guest-init starts for a cell or a
//! command (kernels, shells) joins the *user* control group, whose memory and
//! process limits sit below the sandbox's own, and holds no capabilities
//! (none now, none after `exec`, not even as root: the bounding set is
//! emptied) and `no_new_privs`. guest-init itself stays outside the group, so
//! a fork bomb or a memory hog cannot starve the server that reports on it;
//! and since guest-init keeps its capabilities, user code cannot trace it,
//! read its `/proc/PID/fd` or take its descriptors.
//!
//! The group is reached through open `cgroup.procs` descriptors: in a microVM
//! PID 1 creates the group and opens it; in a namespace sandbox the host
//! does both and passes the descriptors in (`--user-cgroup-fd`), since the
//! sandbox cannot see the host's control groups.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::OnceLock;

/// Name of the control group user code runs in, under the sandbox's.
pub const USER_CGROUP: &str = "user";
/// Name of the control group guest-init runs in, beside [`USER_CGROUP`]
/// (cgroup v2 keeps processes out of a group whose children have limits).
pub const INIT_CGROUP: &str = "init";
/// Processes and threads kept for guest-init beyond the user's limit.
pub const INIT_PROCESSES: u32 = 64;

/// Memory kept out of user code's reach for guest-init (and, in a microVM,
/// the guest kernel): an eighth of `total`, at least 64 MiB, never more than
/// half.
pub fn memory_reserve(total: u64) -> u64 {
    (total / 8).max(64 << 20).min(total / 2)
}

static USER_GROUP: OnceLock<Vec<OwnedFd>> = OnceLock::new();

/// Sets, once, the `cgroup.procs` descriptors of the user control group that
/// [`apply`] makes every user process join. They are marked close-on-exec,
/// so user code never holds them.
pub fn set_user_cgroup(procs: Vec<OwnedFd>) -> std::io::Result<()> {
    for fd in &procs {
        // SAFETY: F_SETFD on a descriptor we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    USER_GROUP
        .set(procs)
        .map_err(|_| std::io::Error::other("the user control group is already set"))
}

/// Makes the process `command` starts join the user control group (when one
/// was set) and give up every capability and any gain of privileges, before
/// it runs anything.
pub fn apply(command: &mut Command) {
    let fds: Vec<i32> = USER_GROUP
        .get()
        .map(|fds| fds.iter().map(AsRawFd::as_raw_fd).collect())
        .unwrap_or_default();
    // SAFETY: between fork and exec the closure only makes async-signal-safe
    // system calls (write, prctl, capset) on descriptors held open by the
    // static above and on stack data; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            drop_privileges()
        });
    }
}

/// Empties the bounding set (so that `exec` as root grants nothing), then
/// every capability set, and sets `no_new_privs`. Async-signal-safe.
fn drop_privileges() -> std::io::Result<()> {
    // SAFETY: prctl and capset with plain integers and a stack array of the
    // size `_LINUX_CAPABILITY_VERSION_3` expects.
    unsafe {
        for cap in 0..64 {
            // EINVAL past the kernel's last capability; EPERM without
            // CAP_SETPCAP (not root: then exec grants nothing anyway).
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        let header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let data = [0u32; 6]; // two of {effective, permitted, inheritable}
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{apply, memory_reserve};

    #[test]
    fn a_confined_process_holds_no_capabilities_and_cannot_gain_any() {
        let mut command = std::process::Command::new("/bin/sh");
        command.args([
            "-c",
            "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status",
        ]);
        apply(&mut command);
        let output = command.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let status = String::from_utf8(output.stdout).unwrap();
        for line in status.lines() {
            let value = line.split_whitespace().nth(1).unwrap();
            let expected = if line.starts_with("NoNewPrivs") {
                "1"
            } else {
                "0000000000000000"
            };
            assert_eq!(value, expected, "{line}");
        }
        assert_eq!(status.lines().count(), 6, "{status}");
    }

    #[test]
    fn the_reserve_is_an_eighth_at_least_64_mib_at_most_half() {
        assert_eq!(memory_reserve(1 << 30), 128 << 20);
        assert_eq!(memory_reserve(256 << 20), 64 << 20);
        assert_eq!(memory_reserve(100 << 20), 50 << 20);
        assert_eq!(memory_reserve(0), 0);
    }
}
