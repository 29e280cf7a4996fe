//! The namespace sandbox's launcher: started by the host as root, it builds
//! the sandbox's root file system and its namespaces, then becomes its PID 1.
//!
//! The sandbox's ids 0–65535 are host ids `id_base`… (an unprivileged range
//! no host account uses), so the sandbox's root is not the host's root and
//! its `user` (uid 1000) is host uid `id_base + 1000`. The guest's root file
//! system (owned by host ids 0…, as built) is shown to the sandbox through
//! idmapped mounts, so that its files keep their owners inside (root's are
//! root's, `/home/user` is `user`'s); the overlay is mounted by the launcher
//! as host root, outside the sandbox's user namespace, so the sandbox finds
//! it mounted and locked.
//!
//! The network namespace is the launcher's, made before the user namespace,
//! so it belongs to the host's: the sandbox's root cannot change its
//! interfaces, routes or firewall rules, which is where the host puts the
//! sandbox's network and its egress rules (`runtime/src/namespace/network.rs`)
//! when the caller asks for them. Without them it has loopback only.
//!
//! ```text
//! launcher (host root, own mount and network namespaces: idmapped layers,
//!  │        the overlay, loopback up)
//!  └ keeper (new user namespace; maps written by the launcher; then new
//!    │       mount, PID, IPC, UTS and cgroup namespaces)
//!    └ PID 1 (guest-init, which pivots into the overlay and runs the server)
//! ```
//! Each waits for the one below and exits with its status; each below dies
//! with the one above (`PR_SET_PDEATHSIG`), so killing the launcher ends the
//! sandbox.
//!
//! Started by an ordinary user ([`Privilege::Rootless`]), the launcher
//! first makes a user namespace of its own, mapped with `newuidmap` and
//! `newgidmap` (the user's id as its root, 65,536 subordinate ids from
//! `/etc/subuid` and `/etc/subgid` after it), and becomes its root; from
//! there it goes on as above with the sandbox's ids from its id 1 on (the
//! first subordinate one: the sandbox's root is not the user; no idmapped
//! layers: the system files show as owned by whoever the map says,
//! `nobody` for a tree built by host root), and the writable layer on a
//! size-limited tmpfs instead of the host's disk. The mounts and the network
//! namespace belong to that outer namespace, so the sandbox's root cannot
//! undo them, as before.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, setgroups, setresgid, setresuid};

use crate::pid1::{SetupError, io, reap_until, step};

/// How many ids the sandbox has (0 to 65535, as a Debian system expects).
pub const ID_COUNT: u32 = 65536;
/// Where the sandbox's ids start on the host unless the host says otherwise.
pub const DEFAULT_ID_BASE: u32 = 1_000_000_000;
/// Rootless: where they start in the launcher's own user namespace (whose
/// map must then cover ids 0 to `ID_COUNT`).
pub const ROOTLESS_ID_BASE: u32 = 1;

/// The sandbox's root file system: read-only `lowers` (top first) under a
/// writable `upper`, mounted on `root`, with host folders (`volumes`) shown
/// in it.
#[derive(Debug, Clone)]
pub struct Layers {
    pub root: String,
    pub lowers: Vec<String>,
    pub upper: String,
    pub work: String,
    pub volumes: Vec<Volume>,
}

/// A host folder shown in the sandbox at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    source: String,
    target: String,
}

impl Volume {
    /// Checks `target`: absolute, plain names only, outside the kernel's
    /// own file systems (`/proc`, `/sys`, `/dev`) and not `/` itself.
    pub fn new(source: String, target: String) -> Result<Volume, String> {
        let steps: Vec<&str> = target.split('/').skip(1).collect();
        let plain = target.starts_with('/')
            && !steps.is_empty()
            && steps
                .iter()
                .all(|s| !s.is_empty() && *s != "." && *s != "..");
        let kernel = matches!(steps.first(), Some(&("proc" | "sys" | "dev")));
        if !plain || kernel {
            return Err(format!(
                "a volume's path must be an absolute path of plain names outside /proc, /sys and /dev, not {target:?}"
            ));
        }
        Ok(Volume { source, target })
    }
}

/// Who starts the sandbox, which decides how its ids map to the host's.
#[derive(Debug, Clone)]
pub enum Privilege {
    /// Host root: the sandbox's ids 0–65535 are host ids `id_base`….
    Root { id_base: u32 },
    /// An ordinary user (see the module's documentation).
    Rootless(Rootless),
}

/// What a sandbox started by an ordinary user needs.
#[derive(Debug, Clone)]
pub struct Rootless {
    /// `newuidmap`'s arguments after the pid (`inside outside count`…).
    pub uid_map: String,
    /// `newgidmap`'s, likewise.
    pub gid_map: String,
    /// Size of the tmpfs under `upper` and `work` (everything the sandbox writes).
    pub disk_size: u64,
}

/// Builds the sandbox and returns in its PID 1; the processes above never
/// return (they exit with PID 1's status).
pub fn enter_sandbox(layers: &Layers, privilege: &Privilege) -> Result<(), SetupError> {
    let (id_base, idmap_layers) = match privilege {
        Privilege::Root { id_base } => (*id_base, true),
        Privilege::Rootless(rootless) => {
            become_root_of_own_namespace(rootless)?;
            // The sandbox's root is our id 1, not our 0 (the user): the
            // kernel lets a namespace's root map only to others than its
            // owner, and the sandbox's root is then not the user either.
            (ROOTLESS_ID_BASE, false)
        }
    };
    crate::pid1::isolate_mounts_and_network()?;
    if let Privilege::Rootless(rootless) = privilege {
        mount_writable_layer(layers, rootless.disk_size)?;
    }
    let (ready_read, ready_write) = step("making a pipe", nix::unistd::pipe())?;
    let (go_read, go_write) = step("making a pipe", nix::unistd::pipe())?;
    // SAFETY: guest-init is single-threaded here.
    match step("forking", unsafe { fork() })? {
        ForkResult::Child => {
            drop((ready_read, go_write));
            become_keeper(ready_write, go_read)
        }
        ForkResult::Parent { child } => {
            drop((ready_write, go_read));
            let prepared = wait_byte(ready_read)
                .and_then(|()| prepare(child, layers, id_base, idmap_layers))
                .and_then(|()| send_byte(go_write));
            if let Err(e) = prepared {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                return Err(e);
            }
            std::process::exit(reap_until(child));
        }
    }
}

/// The launcher's part, once the keeper is in its user namespace: the id
/// maps, the idmapped layers (if `idmap_layers`) and the overlay.
fn prepare(
    keeper: Pid,
    layers: &Layers,
    id_base: u32,
    idmap_layers: bool,
) -> Result<(), SetupError> {
    let map = format!("0 {id_base} {ID_COUNT}\n");
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{keeper}/{file}");
        step(format!("writing {path}"), io(std::fs::write(&path, &map)))?;
    }
    let userns = step(
        "opening the sandbox's user namespace",
        io(File::open(format!("/proc/{keeper}/ns/user"))),
    )?;
    // Rootless, the layers show as our own namespace's map says: an
    // unprivileged user cannot idmap the host's file systems.
    let mut idmapped = idmap_layers;
    for lower in layers.lowers.iter().filter(|_| idmap_layers) {
        if let Err(e) = idmap(lower, &userns) {
            // Without idmapped mounts (an old kernel, a file system without
            // them) the layers' files show as owned by nobody: the sandbox
            // still runs, but its root cannot change the system's files.
            eprintln!(
                "guest-init: {lower} cannot be idmapped ({e}); \
                 the sandbox sees its system files as owned by nobody"
            );
            idmapped = false;
            break;
        }
    }
    let owned = |path: &str, id: u32| {
        step(
            format!("giving {path} to the sandbox"),
            io(std::os::unix::fs::chown(path, Some(id), Some(id))),
        )
    };
    owned(&layers.upper, id_base)?;
    if !idmapped {
        // What the sandbox's user must be able to write, made in the upper
        // layer (owners: 0 is the sandbox's root, 1000 its user); /etc for
        // guest-init's resolv.conf, /root for commands run as root.
        for (dir, owner) in [
            ("etc", 0),
            ("root", 0),
            ("home", 0),
            ("home/user", 1000),
            ("var", 0),
            ("var/cache", 0),
            ("var/cache/cellbox", 0),
            ("var/cache/cellbox/matplotlib", 1000),
        ] {
            let path = format!("{}/{dir}", layers.upper);
            let _ = std::fs::create_dir(&path);
            owned(&path, id_base + owner)?;
            if dir == "root" {
                use std::os::unix::fs::PermissionsExt;
                let private = std::fs::set_permissions(&path, PermissionsExt::from_mode(0o700));
                step(format!("making {path} root's only"), io(private))?;
            }
        }
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        layers.lowers.join(":"),
        layers.upper,
        layers.work
    );
    step(
        format!("mounting the root overlay on {}", layers.root),
        mount(
            Some("overlay"),
            layers.root.as_str(),
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        ),
    )?;
    layers
        .volumes
        .iter()
        .try_for_each(|volume| mount_volume(&layers.root, volume))
}

/// Binds `volume`'s folder on its path under `root` (the folders on the way
/// made if missing, no link followed: a template cannot aim the mount
/// elsewhere), without set-uid programs or devices.
fn mount_volume(root: &str, volume: &Volume) -> Result<(), SetupError> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    let what = format!("mounting the volume {} on {}", volume.source, volume.target);
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut parent = step(&what, nix::fcntl::open(root, flags, Mode::empty()))?;
    let mut steps = volume.target.split('/').skip(1).peekable();
    while let Some(name) = steps.next() {
        match nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return step(&what, Err(e)),
        }
        let folder = step(&what, openat(&parent, name, flags, Mode::empty()))?;
        if steps.peek().is_none() {
            let at = format!("/proc/self/fd/{}", folder.as_raw_fd());
            let source = volume.source.as_str();
            step(
                &what,
                mount(
                    Some(source),
                    at.as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                ),
            )?;
            // The new mount, opened afresh, to lock down.
            let mounted = step(&what, openat(&parent, name, flags, Mode::empty()))?;
            let at = format!("/proc/self/fd/{}", mounted.as_raw_fd());
            let locked =
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            return step(
                &what,
                mount(
                    None::<&str>,
                    at.as_str(),
                    None::<&str>,
                    locked,
                    None::<&str>,
                ),
            );
        }
        parent = folder;
    }
    Ok(())
}

/// Mounts over `dir` (in the launcher's own mount namespace) a copy of it
/// whose owners are shifted into the user namespace `userns`.
fn idmap(dir: &str, userns: &File) -> std::io::Result<()> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let path = CString::new(dir).map_err(std::io::Error::other)?;
    let check = |result: libc::c_long| {
        if result < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(result)
        }
    };
    // SAFETY: open_tree with a NUL-terminated path returns a new descriptor
    // (a detached copy of the mount tree at `dir`), which we own from here.
    let tree = unsafe {
        let fd = check(libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        ))?;
        OwnedFd::from_raw_fd(fd as i32)
    };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr and move_mount on the descriptor we own, with an
    // empty NUL-terminated path, a `mount_attr` of the size we pass and the
    // NUL-terminated target path; neither keeps a pointer.
    unsafe {
        check(libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ))?;
        check(libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ))?;
    }
    Ok(())
}

/// Rootless: forks a child that enters a new user namespace, maps it with
/// `newuidmap` and `newgidmap`, and returns in the child, its root; this
/// process waits and exits with the child's status.
fn become_root_of_own_namespace(rootless: &Rootless) -> Result<(), SetupError> {
    let (ready_read, ready_write) = step("making a pipe", nix::unistd::pipe())?;
    let (go_read, go_write) = step("making a pipe", nix::unistd::pipe())?;
    // SAFETY: guest-init is single-threaded here.
    match step("forking", unsafe { fork() })? {
        ForkResult::Child => {
            drop((ready_read, go_write));
            die_with_parent()?;
            step(
                "entering a user namespace of our own",
                unshare(CloneFlags::CLONE_NEWUSER),
            )?;
            send_byte(ready_write)?;
            wait_byte(go_read)?;
            become_root("becoming root of our own user namespace")?;
            // Credentials changed: ask again.
            die_with_parent()
        }
        ForkResult::Parent { child } => {
            drop((ready_write, go_read));
            let mapped = wait_byte(ready_read)
                .and_then(|()| map_ids(child, rootless))
                .and_then(|()| send_byte(go_write));
            if let Err(e) = mapped {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                return Err(e);
            }
            std::process::exit(reap_until(child));
        }
    }
}

/// Writes `child`'s id maps with the set-user-id helpers that check them
/// against `/etc/subuid` and `/etc/subgid`.
fn map_ids(child: Pid, rootless: &Rootless) -> Result<(), SetupError> {
    for (helper, map) in [
        ("newuidmap", &rootless.uid_map),
        ("newgidmap", &rootless.gid_map),
    ] {
        let what = format!("{helper} {child} {map}");
        let status = std::process::Command::new(helper)
            .arg(child.to_string())
            .args(map.split_whitespace())
            .stdin(std::process::Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => {
                eprintln!("guest-init: {what} failed ({status})");
                return step(what, Err(nix::errno::Errno::EPERM));
            }
            Err(e) => return step(format!("running {what}"), io(Err(e))),
        }
    }
    Ok(())
}

/// Rootless: a size-limited tmpfs where `upper` and `work` go (both in one
/// folder), made with them; charged to the memory of whoever writes.
fn mount_writable_layer(layers: &Layers, bytes: u64) -> Result<(), SetupError> {
    let folder = std::path::Path::new(&layers.upper).parent();
    let same = folder.is_some() && folder == std::path::Path::new(&layers.work).parent();
    let folder = step(
        "finding the writable layer's folder (--upper and --work side by side)",
        folder.filter(|_| same).ok_or(nix::errno::Errno::EINVAL),
    )?;
    let options = format!(
        "size={bytes},nr_inodes={},mode=755",
        (bytes / 4096).max(16384)
    );
    step(
        format!("mounting a tmpfs of {bytes} bytes on {}", folder.display()),
        mount(
            Some("tmpfs"),
            folder,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        ),
    )?;
    for dir in [&layers.upper, &layers.work] {
        step(format!("creating {dir}"), io(std::fs::create_dir(dir)))?;
    }
    Ok(())
}

/// Rootless, in the sandbox's PID 1 before it leaves the host's file system:
/// opens the user control groups' `cgroup.procs` files (which the host lets
/// anyone open meanwhile). cgroup v1 lets a process be moved only through a
/// file opened by its own uid, and user processes are started by the
/// server, whose real uid is [`SERVER_UID`](crate::confine::SERVER_UID): so
/// they are opened as that uid (root's otherwise, as the host's are).
pub fn open_user_cgroups(paths: &[String]) -> Result<Vec<OwnedFd>, SetupError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let as_server = |uid: u32| {
        // SAFETY: seteuid with a plain integer; root may take any effective
        // uid and, its real and saved uids staying 0, take 0 back.
        let done = unsafe { libc::seteuid(uid) };
        step(
            format!("taking the effective uid {uid} to open the user control groups"),
            nix::errno::Errno::result(done).map(drop),
        )
    };
    as_server(crate::confine::SERVER_UID)?;
    let opened = paths
        .iter()
        .map(|path| {
            let file = std::fs::OpenOptions::new().write(true).open(path);
            step(format!("opening {path}"), io(file)).map(OwnedFd::from)
        })
        .collect();
    as_server(0)?;
    // Credentials changed: ask again to die with the keeper.
    die_with_parent()?;
    opened
}

/// Takes root's ids (0) in the user namespace just entered, with no
/// supplementary groups.
fn become_root(what: &str) -> Result<(), SetupError> {
    let root = (Uid::from_raw(0), Gid::from_raw(0));
    step(
        what,
        setgroups(&[])
            .and_then(|()| setresgid(root.1, root.1, root.1))
            .and_then(|()| setresuid(root.0, root.0, root.0)),
    )
}

/// The keeper: enters a user namespace, waits for its maps, becomes its
/// root, enters the other namespaces and forks PID 1, which returns.
fn become_keeper(ready: OwnedFd, go: OwnedFd) -> Result<(), SetupError> {
    die_with_parent()?;
    step(
        "entering a user namespace",
        unshare(CloneFlags::CLONE_NEWUSER),
    )?;
    send_byte(ready)?;
    wait_byte(go)?;
    become_root("becoming the sandbox's root")?;
    // The kernel forgets the request when credentials change.
    die_with_parent()?;
    step(
        "entering the sandbox's namespaces",
        unshare(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWCGROUP,
        ),
    )?;
    // SAFETY: still single-threaded.
    match step("forking PID 1", unsafe { fork() })? {
        ForkResult::Child => die_with_parent(),
        ForkResult::Parent { child } => std::process::exit(reap_until(child)),
    }
}

fn die_with_parent() -> Result<(), SetupError> {
    step(
        "asking to die with the launcher",
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL),
    )
}

fn send_byte(fd: OwnedFd) -> Result<(), SetupError> {
    step(
        "signalling across the launch",
        io(File::from(fd).write_all(b"1")),
    )
}

/// Waits for the other side's byte; its end (it died) is an error.
fn wait_byte(fd: OwnedFd) -> Result<(), SetupError> {
    let mut byte = [0u8];
    step(
        "waiting across the launch",
        io(File::from(fd).read_exact(&mut byte)),
    )
}
