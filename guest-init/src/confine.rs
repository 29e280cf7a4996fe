//! What confines user code: every process guest-init starts for a cell or a
//! command (kernels, shells) runs as an account of the guest (by default
//! [`DEFAULT_USER`], uid 1000, as in E2B), joins the *user* control group,
//! whose memory and process limits sit below the sandbox's own, and holds no
//! capabilities (none now, none after `exec`, not even as root: the bounding
//! set is emptied) and `no_new_privs`. guest-init itself stays outside the
//! group, so a fork bomb or a memory hog cannot starve the server that
//! reports on it; and since guest-init keeps its capabilities and its
//! server's real uid is one no user code has ([`shield_server`]), user code
//! cannot trace it, signal it, read its `/proc/PID/fd` or take its
//! descriptors.
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

/// The account cells and commands run as unless a command asks for another.
pub const DEFAULT_USER: &str = "user";

/// An account of the guest that user code runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl User {
    /// The account running the tests (so that no identity changes).
    #[cfg(test)]
    pub fn current() -> User {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        User {
            name: "me".into(),
            uid,
            gid: uid,
            home: "/".into(),
        }
    }

    /// Looks `name` up in the guest's `/etc/passwd`; `root` and `user`
    /// (uid 1000, home `/home/user`) exist even where that file lacks them.
    pub fn lookup(name: &str) -> Result<User, String> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        User::find(&passwd, name)
    }

    fn find(passwd: &str, name: &str) -> Result<User, String> {
        let listed = passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields[..] {
                [n, _, uid, gid, _, home, ..] if n == name => Some(User {
                    name: name.to_string(),
                    uid: uid.parse().ok()?,
                    gid: gid.parse().ok()?,
                    home: home.to_string(),
                }),
                _ => None,
            }
        });
        let builtin = |uid, home: &str| User {
            name: name.to_string(),
            uid,
            gid: uid,
            home: home.to_string(),
        };
        listed
            .or_else(|| match name {
                "root" => Some(builtin(0, "/root")),
                DEFAULT_USER => Some(builtin(1000, "/home/user")),
                _ => None,
            })
            .ok_or_else(|| format!("there is no user {name:?} in the sandbox"))
    }

    /// [`DEFAULT_USER`], looked up once.
    pub fn default_user() -> &'static User {
        static DEFAULT: OnceLock<User> = OnceLock::new();
        DEFAULT
            .get_or_init(|| User::lookup(DEFAULT_USER).expect("the default user always resolves"))
    }
}

/// Runs `f` with this thread's file-system identity (`fsuid`, `fsgid`) that
/// of `user`: files it makes are theirs, and it may open only what they may
/// (root's file-system capabilities are off meanwhile). The identity is per
/// thread, so other requests are untouched; the previous one comes back
/// after. Without root, `f` just runs.
pub fn as_user<T>(user: &User, f: impl FnOnce() -> T) -> T {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return f();
    }
    // SAFETY: setfsgid/setfsuid change only this thread's credentials and
    // return the previous ids, restored below.
    let (gid, uid) = unsafe { (libc::setfsgid(user.gid), libc::setfsuid(user.uid)) };
    let result = f();
    // SAFETY: as above, back to the previous ids.
    unsafe {
        libc::setfsuid(uid as libc::uid_t);
        libc::setfsgid(gid as libc::gid_t);
    }
    result
}

/// The real (and saved) uid of guest-init's server, whose effective uid
/// stays root: no account has it, so no user code — not even a root
/// command, which holds no `CAP_KILL` — may signal or trace the server.
pub const SERVER_UID: u32 = 65533;

/// Makes this process (guest-init's server) unreachable by signals and
/// `ptrace` from user code of any uid, keeping its root privileges: its real
/// and saved uid become [`SERVER_UID`], its effective uid stays 0 (so its
/// capabilities stay too). Does nothing unless it runs as root.
pub fn shield_server() -> std::io::Result<()> {
    // SAFETY: geteuid and setresuid with plain integers.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(());
        }
        if libc::setresuid(SERVER_UID, 0, SERVER_UID) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
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

/// Makes the process `command` starts run as `user` (its `HOME`, `USER` and
/// `LOGNAME` too, unless set already), join the user control group (when one
/// was set) and give up every capability and any gain of privileges, before
/// it runs anything.
pub fn apply(command: &mut Command, user: &User) {
    for (key, value) in [
        ("HOME", &user.home),
        ("USER", &user.name),
        ("LOGNAME", &user.name),
    ] {
        if !command.get_envs().any(|(k, _)| k == key) {
            command.env(key, value);
        }
    }
    let fds: Vec<i32> = USER_GROUP
        .get()
        .map(|fds| fds.iter().map(AsRawFd::as_raw_fd).collect())
        .unwrap_or_default();
    let (uid, gid) = (user.uid, user.gid);
    // SAFETY: between fork and exec the closure only makes async-signal-safe
    // system calls (write, prctl, setgroups, setresgid, setresuid, capset) on
    // descriptors held open by the static above and on stack data; it
    // allocates nothing. The child has one thread, so the C library's
    // set*id calls need no broadcast to others.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            drop_privileges(uid, gid)
        });
    }
}

/// Empties the bounding set (so that `exec` as root grants nothing), becomes
/// `uid`/`gid` with no supplementary groups, clears every capability set and
/// sets `no_new_privs`. Async-signal-safe.
fn drop_privileges(uid: u32, gid: u32) -> std::io::Result<()> {
    let check = |result: libc::c_int| {
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: prctl, set*id and capset with plain integers, a null group
    // list of length 0 and a stack array of the size
    // `_LINUX_CAPABILITY_VERSION_3` expects.
    unsafe {
        for cap in 0..64 {
            // EINVAL past the kernel's last capability; EPERM without
            // CAP_SETPCAP (not root: then exec grants nothing anyway).
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        // Only root may change its identity; anyone else stays who they are.
        if libc::geteuid() == 0 {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(gid, gid, gid))?;
            check(libc::setresuid(uid, uid, uid))?;
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
        check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int)?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{User, apply, memory_reserve};

    #[test]
    fn a_confined_process_holds_no_capabilities_and_cannot_gain_any() {
        for user in [
            User::find("", "root").unwrap(),
            User::find("", "user").unwrap(),
        ] {
            let mut command = std::process::Command::new("/bin/sh");
            command.args([
                "-c",
                "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; \
                 echo \"$(id -u) $(id -g) $HOME\"",
            ]);
            apply(&mut command, &user);
            let output = command.output().unwrap();
            assert!(output.status.success(), "{output:?}");
            let status = String::from_utf8(output.stdout).unwrap();
            let mut lines = status.lines().collect::<Vec<_>>();
            let identity = lines.pop().unwrap();
            for line in &lines {
                let value = line.split_whitespace().nth(1).unwrap();
                let expected = if line.starts_with("NoNewPrivs") {
                    "1"
                } else {
                    "0000000000000000"
                };
                assert_eq!(value, expected, "{line}");
            }
            assert_eq!(lines.len(), 6, "{status}");
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                let expected = format!("{} {} {}", user.uid, user.gid, user.home);
                assert_eq!(identity, expected);
            }
        }
    }

    #[test]
    fn users_come_from_passwd_and_root_and_user_always_exist() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n\
                      app:x:1001:1002:App:/srv/app:/bin/sh\nbroken:x:abc:1::/:/bin/sh\n";
        let app = User::find(passwd, "app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1001, 1002, "/srv/app")
        );
        let user = User::find("", "user").unwrap();
        assert_eq!(
            (user.uid, user.gid, user.home.as_str()),
            (1000, 1000, "/home/user")
        );
        assert_eq!(User::find("", "root").unwrap().uid, 0);
        assert!(User::find(passwd, "broken").is_err());
        let missing = User::find(passwd, "nobody-here").unwrap_err();
        assert!(missing.contains("no user \"nobody-here\""), "{missing}");
    }

    #[test]
    fn the_reserve_is_an_eighth_at_least_64_mib_at_most_half() {
        assert_eq!(memory_reserve(1 << 30), 128 << 20);
        assert_eq!(memory_reserve(256 << 20), 64 << 20);
        assert_eq!(memory_reserve(100 << 20), 50 << 20);
        assert_eq!(memory_reserve(0), 0);
    }
}
