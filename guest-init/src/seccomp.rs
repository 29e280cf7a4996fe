//! The guest's system-call filter: calls that a Python cell never needs and
//! that widen the attack surface on the kernel fail with `EPERM`. Installed in
//! the server after PID 1's setup, so every kernel and command inherits it.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Denied: mounting and namespace games, kernel modules and kexec, BPF and
/// perf, keyrings, tracing other processes (and taking their descriptors),
/// io_uring, clocks, swap, reboot — in the spirit of the container runtimes'
/// default profiles.
const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
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

/// Installs the filter on this process (and so on everything it starts).
pub fn install() -> Result<(), String> {
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
    apply(rules, libc::EPERM)?;
    // clone3 passes its flags in memory, out of the filter's sight: ENOSYS,
    // on which the C library falls back to clone (as Docker's profile does).
    apply(BTreeMap::from([(libc::SYS_clone3, vec![])]), libc::ENOSYS)
}

fn apply(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<(), String> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        ARCH,
    )
    .map_err(|e| format!("building the seccomp filter: {e}"))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e| format!("compiling the seccomp filter: {e}"))?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| format!("installing the seccomp filter: {e}"))
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
