//! The guest's system-call filter, in the spirit of the container runtimes'
//! default profiles (Docker/moby's): only the system calls known when it was
//! written are allowed (anything newer, and the x32 ABI, fail with `ENOSYS`,
//! as Docker answers unknown calls), and of those the ones a Python cell
//! never needs and that widen the attack surface on the kernel fail with
//! `EPERM`. Installed in the server after PID 1's setup, so every kernel and
//! command inherits it.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// The last system call known to this filter (`mseal`, Linux 6.10; x86_64
/// and aarch64 share numbers from 424 on). Later ones are new kernel
/// surface that nothing in the guest uses.
const LAST_KNOWN: u32 = 462;

/// Denied: mounting and namespace games, kernel modules and kexec, BPF and
/// perf, keyrings, tracing and comparing other processes (and taking their
/// descriptors), io_uring, NUMA policy, clocks, swap, reboot, obsolete calls
/// — as in Docker's default profile.
const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_quotactl_fd,
    libc::SYS_fanotify_init,
    libc::SYS_kcmp,
    libc::SYS_mbind,
    libc::SYS_set_mempolicy,
    libc::SYS_get_mempolicy,
    libc::SYS_migrate_pages,
    libc::SYS_move_pages,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_vhangup,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_pidfd_getfd,
    libc::SYS_lookup_dcookie,
    libc::SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS__sysctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_sysfs,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ustat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_nfsservctl,
];

/// `clone` flags that make new namespaces: denied like `unshare`.
const NAMESPACE_FLAGS: &[i32] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;
/// `AUDIT_ARCH_*` of [`ARCH`], as the kernel reports it to filters.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Installs the filter on this process (and so on everything it starts).
pub fn install() -> Result<(), String> {
    for program in programs()? {
        seccompiler::apply_filter_all_threads(&program)
            .map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    Ok(())
}

/// The filter as BPF programs, to be installed in this order (the warm
/// template installs them in each kernel it forks, `kernel/cellbox_zygote.py`).
pub fn programs() -> Result<Vec<BpfProgram>, String> {
    // Filters installed later are consulted first: the known-calls filter
    // goes first so that the denials' EPERM is the answer for their calls.
    let mut programs = vec![known_calls_only()];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, vec![])).collect();
    // x86_64 passes clone's flags first; one rule per flag (rules are or-ed).
    let by_flag = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            let condition = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            );
            condition.and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("building the seccomp filter: {e}"))?;
    rules.insert(libc::SYS_clone, by_flag);
    programs.push(compile(rules, libc::EPERM)?);
    // clone3 passes its flags in memory, out of the filter's sight: ENOSYS,
    // on which the C library falls back to clone (as Docker's profile does).
    programs.push(compile(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        libc::ENOSYS,
    )?);
    Ok(programs)
}

/// Allows system calls numbered up to [`LAST_KNOWN`] of this architecture;
/// others fail with `ENOSYS`, another architecture's are fatal.
fn known_calls_only() -> BpfProgram {
    const LOAD_WORD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JUMP_EQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JUMP_GT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // Offsets in `struct seccomp_data`: nr, then arch.
    const NR: u32 = 0;
    const ARCH_FIELD: u32 = 4;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        op(LOAD_WORD, 0, 0, ARCH_FIELD),
        op(JUMP_EQ, 1, 0, AUDIT_ARCH),
        op(RETURN, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        op(LOAD_WORD, 0, 0, NR),
        // Above the last known (x32's calls carry bit 30, so are too): ENOSYS.
        op(JUMP_GT, 0, 1, LAST_KNOWN),
        op(RETURN, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        op(RETURN, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        ARCH,
    )
    .map_err(|e| format!("building the seccomp filter: {e}"))?;
    filter
        .try_into()
        .map_err(|e| format!("compiling the seccomp filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: &str = "CELLBOX_SECCOMP_PROBE";

    /// Runs itself again in a child process (so the test runner stays
    /// unfiltered), where it installs the filter and tries blocked calls.
    #[test]
    fn blocked_calls_fail_with_eperm_and_others_work() {
        if std::env::var_os(PROBE).is_none() {
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "seccomp::tests::blocked_calls_fail_with_eperm_and_others_work",
                ])
                .env(PROBE, "1")
                .status()
                .unwrap();
            assert!(status.success(), "the filtered probe failed");
            return;
        }
        install().unwrap();
        // SAFETY: unshare(0) and mount with null arguments change nothing; only
        // their results are looked at.
        let results = unsafe {
            [
                libc::unshare(0),
                libc::mount(
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    0,
                    std::ptr::null(),
                ),
            ]
        };
        assert_eq!(results, [-1, -1]);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
        let errno = |result: libc::c_long| {
            (result == -1).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
        };
        // SAFETY: io_uring_setup with no parameters, clone3 with a null
        // argument and clone asking for a new user namespace all fail before
        // doing anything; only their errors are looked at.
        unsafe {
            assert_eq!(
                errno(libc::syscall(libc::SYS_io_uring_setup, 1, 0)),
                Some(libc::EPERM)
            );
            assert_eq!(
                errno(libc::syscall(libc::SYS_pidfd_getfd, 0, 0, 0)),
                Some(libc::EPERM)
            );
            assert_eq!(
                errno(libc::syscall(libc::SYS_clone3, 0, 0)),
                Some(libc::ENOSYS)
            );
            // A call newer than the filter, and an x32 getpid: ENOSYS.
            assert_eq!(errno(libc::syscall(470)), Some(libc::ENOSYS));
            assert_eq!(
                errno(libc::syscall(0x4000_0000 | libc::SYS_getpid)),
                Some(libc::ENOSYS)
            );
            assert_eq!(
                errno(libc::syscall(libc::SYS_kcmp, 0, 0, 0, 0, 0)),
                Some(libc::EPERM)
            );
            let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_long;
            assert_eq!(
                errno(libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0)),
                Some(libc::EPERM)
            );
        }
        let child = std::process::Command::new("true").status();
        assert!(
            child.is_ok_and(|s| s.success()),
            "processes still start (clone without namespaces)"
        );
        assert!(
            std::fs::read_to_string("/proc/self/status").is_ok(),
            "ordinary calls still work"
        );
    }
}
