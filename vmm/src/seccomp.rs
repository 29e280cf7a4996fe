//! seccomp filters for the VMM's own threads (vCPUs, device I/O). Each thread
//! installs its filter before touching guest-controlled data; a syscall
//! outside the list fails with EPERM (the host process, which embeds the VMM,
//! is never killed by a filter of ours).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: KVM_RUN and device emulation.
    Vcpu,
    /// The device event loop and the vsock Unix listener.
    Io,
}

/// Building or installing a filter failed.
#[derive(Debug, thiserror::Error)]
#[error("seccomp filter: {0}")]
pub struct SeccompError(String);

/// Syscalls every VMM thread needs (memory, locks, time, I/O on fds it already holds).
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
];

/// Extra syscalls of the I/O threads: epoll, sockets.
const IO: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_setsockopt,
];

const fn kvm_ior(nr: u64, size: u64) -> u64 {
    (2 << 30) | (size << 16) | (0xae << 8) | nr
}
const fn kvm_iow(nr: u64, size: u64) -> u64 {
    (1 << 30) | (size << 16) | (0xae << 8) | nr
}
/// `KVM_RUN`.
const KVM_RUN: u64 = 0xae80;
const REGS_SIZE: u64 = std::mem::size_of::<kvm_bindings::kvm_regs>() as u64;
const EVENTS_SIZE: u64 = std::mem::size_of::<kvm_bindings::kvm_vcpu_events>() as u64;
/// `KVM_GET_REGS`.
const KVM_GET_REGS: u64 = kvm_ior(0x81, REGS_SIZE);
/// `KVM_SET_REGS`.
const KVM_SET_REGS: u64 = kvm_iow(0x82, REGS_SIZE);
/// `KVM_GET_VCPU_EVENTS`.
const KVM_GET_VCPU_EVENTS: u64 = kvm_ior(0x9f, EVENTS_SIZE);
/// `KVM_SET_VCPU_EVENTS`.
const KVM_SET_VCPU_EVENTS: u64 = kvm_iow(0xa0, EVENTS_SIZE);
/// `FIONBIO` (std's set_nonblocking).
const FIONBIO: u64 = 0x5421;

fn ioctl_rule(request: u64) -> Result<SeccompRule, SeccompError> {
    let condition = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
        .map_err(|e| SeccompError(e.to_string()))?;
    SeccompRule::new(vec![condition]).map_err(|e| SeccompError(e.to_string()))
}

/// The compiled filter for `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().map(|&nr| (nr, Vec::new())).collect();
    let ioctls = match kind {
        // Registers and events: the run loop finishes an `int3` KVM could not emulate.
        ThreadKind::Vcpu => vec![
            KVM_RUN,
            KVM_GET_REGS,
            KVM_SET_REGS,
            KVM_GET_VCPU_EVENTS,
            KVM_SET_VCPU_EVENTS,
        ],
        ThreadKind::Io => {
            rules.extend(IO.iter().map(|&nr| (nr, Vec::new())));
            vec![FIONBIO]
        }
    };
    let ioctl_rules = ioctls
        .into_iter()
        .map(ioctl_rule)
        .collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError(e.to_string()))
}

/// Installs `kind`'s filter on the calling thread.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    seccompiler::apply_filter(&filter(kind)?).map_err(|e| SeccompError(e.to_string()))
}

/// Spawns a thread named `name` that installs `kind`'s filter and then runs
/// `body`; fails, without running `body`, if the filter cannot be
/// installed (no VMM thread runs unfiltered).
pub fn spawn_filtered(
    name: &str,
    kind: ThreadKind,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (installed_tx, installed) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let result = apply(kind);
            let ok = result.is_ok();
            let _ = installed_tx.send(result);
            if ok {
                body();
            }
        })?;
    let outcome = installed.recv();
    match outcome {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(std::io::Error::other(format!("thread {name}: {e}")))
        }
        Err(_) => {
            let _ = thread.join();
            Err(std::io::Error::other(format!(
                "thread {name} ended before its filter"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Runs `probe` on a fresh thread under `kind`'s filter.
    fn filtered<T: Send + 'static>(
        kind: ThreadKind,
        probe: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            apply(kind).unwrap();
            probe()
        })
        .join()
        .unwrap()
    }

    fn errno<T>(result: std::io::Result<T>) -> Option<i32> {
        result.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn filtered_threads_cannot_open_files_or_make_sockets() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Io] {
            let (open, socket) = filtered(kind, || {
                (
                    errno(std::fs::File::open("/etc/hostname")),
                    errno(std::os::unix::net::UnixStream::pair()),
                )
            });
            assert_eq!(
                (open, socket),
                (Some(libc::EPERM), Some(libc::EPERM)),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn allowed_calls_still_work() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let wrote = filtered(ThreadKind::Io, move || {
            b.set_nonblocking(true).unwrap();
            b.write_all(b"x").is_ok()
        });
        assert!(wrote);
        drop(a);
        // The vCPU filter refuses FIONBIO (only KVM ioctls pass).
        let (_a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let refused = filtered(ThreadKind::Vcpu, move || errno(b.set_nonblocking(true)));
        assert_eq!(refused, Some(libc::EPERM));
    }
}
