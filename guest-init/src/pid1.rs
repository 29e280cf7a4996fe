//! PID 1 duties: the guest's mounts, entering the root file system in a
//! namespace sandbox, reaping orphans, and shutting down.

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, pivot_root, sethostname};

/// A failed setup step, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct SetupError {
    step: String,
    source: nix::Error,
}

/// An I/O result as a `nix` one (its errno), for [`step`].
pub fn io<T>(result: std::io::Result<T>) -> nix::Result<T> {
    result.map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// `result`, or the error with what was being done.
pub fn step<T>(what: impl Into<String>, result: nix::Result<T>) -> Result<T, SetupError> {
    result.map_err(|source| SetupError {
        step: what.into(),
        source,
    })
}

pub(crate) fn mount_fs(
    fstype: &str,
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), SetupError> {
    let _ = std::fs::create_dir_all(target);
    step(
        format!("mounting {fstype} on {target}"),
        mount(Some(fstype), target, Some(fstype), flags, data),
    )
}

const NODEV_NOSUID: MsFlags = MsFlags::MS_NODEV.union(MsFlags::MS_NOSUID);

/// Mounts `/proc`, `/sys` (with cgroup2), `/dev` (with devpts), `/tmp` and
/// `/run` in a microVM guest, names it and brings up loopback.
pub fn mount_vm_basics() -> Result<(), SetupError> {
    mount_fs("proc", "/proc", NODEV_NOSUID | MsFlags::MS_NOEXEC, None)?;
    mount_fs("sysfs", "/sys", NODEV_NOSUID | MsFlags::MS_NOEXEC, None)?;
    // A kernel with CONFIG_DEVTMPFS_MOUNT (ours) has mounted it already.
    if !is_mounted("/dev", "devtmpfs") {
        mount_fs("devtmpfs", "/dev", MsFlags::MS_NOSUID, None)?;
    }
    mount_fs(
        "devpts",
        "/dev/pts",
        // Not nodev: its nodes are the terminals.
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=620,ptmxmode=666"),
    )?;
    mount_fs(
        "cgroup2",
        "/sys/fs/cgroup",
        NODEV_NOSUID | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_common()?;
    let _ = sethostname("cellbox");
    loopback_up();
    Ok(())
}

/// Whether `/proc/self/mounts` lists a `fstype` mount on `target`.
fn is_mounted(target: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| listed(&mounts, target, fstype))
}

/// Whether a `/proc/self/mounts` text has a `fstype` mount on `target`.
fn listed(mounts: &str, target: &str, fstype: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(target) && fields.next() == Some(fstype)
    })
}

fn mount_common() -> Result<(), SetupError> {
    mount_fs("tmpfs", "/tmp", NODEV_NOSUID, Some("mode=1777"))?;
    mount_fs("tmpfs", "/run", NODEV_NOSUID, Some("mode=755"))?;
    mount_fs("tmpfs", "/dev/shm", NODEV_NOSUID, Some("mode=1777"))?;
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    Ok(())
}

/// Makes every mount of this (new) mount namespace private: nothing mounted
/// here shows elsewhere, nor the other way.
pub fn make_mounts_private() -> Result<(), SetupError> {
    step(
        "making mounts private",
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )
}

/// In the sandbox's fresh mount and PID namespaces (see [`crate::launch`]),
/// with the root file system mounted on `root`: gives it a minimal `/dev`
/// (bind mounts of the host's harmless devices), pivots into it and mounts
/// the rest. Nothing of the host stays visible.
/// Enters new mount (its mounts private) and network (loopback up)
/// namespaces: the namespace launcher's and the warm template's first step.
pub fn isolate_mounts_and_network() -> Result<(), SetupError> {
    step(
        "entering mount and network namespaces",
        nix::sched::unshare(
            nix::sched::CloneFlags::CLONE_NEWNS | nix::sched::CloneFlags::CLONE_NEWNET,
        ),
    )?;
    make_mounts_private()?;
    loopback_up();
    Ok(())
}

/// A tmpfs on `dev` with the host's harmless device nodes bound into it.
pub fn mount_dev_nodes(dev: &str) -> Result<(), SetupError> {
    mount_fs(
        "tmpfs",
        dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = format!("{dev}/{node}");
        let _ = std::fs::File::create(&target);
        step(
            format!("binding /dev/{node}"),
            mount(
                Some(format!("/dev/{node}").as_str()),
                target.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ),
        )?;
    }
    Ok(())
}

pub fn enter_namespace_root(root: &str) -> Result<(), SetupError> {
    make_mounts_private()?;
    // The launcher's overlay came into this namespace locked to its parent,
    // and a locked mount cannot be pivoted into: a bind of it can.
    step(
        format!("binding {root} onto itself"),
        mount(
            Some(root),
            root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    )?;
    let dev = format!("{root}/dev");
    mount_dev_nodes(&dev)?;
    // The sandbox's own terminals: a private devpts instance (no host
    // terminal is visible in it), with `/dev/ptmx` pointing into it.
    let pts = format!("{dev}/pts");
    let _ = std::fs::create_dir(&pts);
    let terminals = mount_fs(
        "devpts",
        &pts,
        // Not nodev: its nodes are the terminals.
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,mode=620,ptmxmode=666"),
    )
    .and_then(|()| {
        step(
            "linking /dev/ptmx",
            io(std::os::unix::fs::symlink(
                "pts/ptmx",
                format!("{dev}/ptmx"),
            )),
        )
    });
    if let Err(e) = terminals {
        eprintln!("guest-init: no terminals in this sandbox: {e}");
    }
    // A user namespace may mount proc only while a full proc is visible, so
    // before the host's file system is detached.
    mount_fs(
        "proc",
        &format!("{root}/proc"),
        NODEV_NOSUID | MsFlags::MS_NOEXEC,
        None,
    )?;
    let old = format!("{root}/.host");
    let _ = std::fs::create_dir_all(&old);
    step("pivoting into the root", pivot_root(root, old.as_str()))?;
    step("entering /", nix::unistd::chdir("/"))?;
    step(
        "detaching the host's file system",
        umount2("/.host", MntFlags::MNT_DETACH),
    )?;
    let _ = std::fs::remove_dir("/.host");
    mount_common()?;
    let _ = sethostname("cellbox");
    Ok(())
}

/// In a microVM: makes the control group that confines user code (see
/// [`crate::confine`]) — a memory limit under the VM's memory (so an
/// out-of-memory cell is killed there, not the guest or guest-init), and
/// `max_processes` (a fork bomb stops there). Returns its `cgroup.procs`,
/// open for writing.
pub fn make_user_cgroup(max_processes: u32) -> Result<std::os::fd::OwnedFd, SetupError> {
    let meminfo = step(
        "reading /proc/meminfo",
        io(std::fs::read_to_string("/proc/meminfo")),
    )?;
    let total = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib << 10);
    let total = step("reading MemTotal", total.ok_or(nix::errno::Errno::EINVAL))?;
    step(
        "enabling the memory and pids controllers",
        io(std::fs::write(
            "/sys/fs/cgroup/cgroup.subtree_control",
            "+memory +pids",
        )),
    )?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(crate::confine::USER_CGROUP);
    step(
        "creating the user cgroup",
        io(std::fs::create_dir_all(&dir)),
    )?;
    let limit = total.saturating_sub(crate::confine::memory_reserve(total));
    for (file, value) in [
        ("memory.max", limit.to_string()),
        ("memory.swap.max", "0".to_string()),
        ("pids.max", max_processes.to_string()),
    ] {
        step(
            format!("writing {file}"),
            io(std::fs::write(dir.join(file), value)),
        )?;
    }
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"));
    step("opening the user cgroup", io(procs)).map(Into::into)
}

/// Points the resolver at `address` (replacing whatever `/etc/resolv.conf`
/// was, a symbolic link included).
pub fn set_nameserver(address: std::net::IpAddr) -> std::io::Result<()> {
    let path = std::path::Path::new("/etc/resolv.conf");
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::write(path, format!("nameserver {address}\n"))
}

/// Brings up `lo` (a new network namespace starts with it down).
pub fn loopback_up() {
    // SAFETY: plain ioctls on a socket we own, with a zeroed `ifreq` whose
    // name is a NUL-terminated "lo"; failure only leaves loopback down.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return;
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        request.ifr_name[0] = b'l' as libc::c_char;
        request.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut request) == 0 {
            request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &request);
        }
        libc::close(sock);
    }
}

/// Reaps every child until `main` exits; returns its exit code.
pub fn reap_until(main: Pid) -> i32 {
    loop {
        match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => return code,
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == main => return 128 + signal as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 1,
        }
    }
}

/// Ends every other process in this PID namespace.
pub fn kill_everything() {
    let _ = nix::sys::signal::kill(Pid::from_raw(-1), nix::sys::signal::Signal::SIGKILL);
}

/// Ends the microVM (PID 1 must never just exit there). The guest kernel has
/// no ACPI, so a power-off would only halt the vCPUs: it restarts instead,
/// which the VMM sees (i8042 reset or triple fault) and takes as the end.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::listed;

    #[test]
    fn a_mount_is_found_by_target_and_type() {
        let mounts = "/dev/root / ext4 rw 0 0\nproc /proc proc rw 0 0\ndevtmpfs /dev devtmpfs rw,size=1k 0 0\n";
        assert!(listed(mounts, "/dev", "devtmpfs"));
        assert!(!listed(mounts, "/dev", "tmpfs"));
        assert!(!listed(mounts, "/dev/pts", "devpts"));
        assert!(!listed("", "/dev", "devtmpfs"));
    }
}
