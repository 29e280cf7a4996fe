//! The namespace sandbox without root: what an ordinary user's sandboxes
//! need from the machine, and `cellbox setup --user NAME`, which root runs
//! once to provide it (as rootless Docker and Podman ask for theirs).
//!
//! - **Subordinate ids**: the sandbox's ids (its root, its `user` 1000, …)
//!   are 65,536 ids from `/etc/subuid` and `/etc/subgid`, mapped by
//!   `newuidmap`/`newgidmap` (Debian's `uidmap`) after the user's own id,
//!   which only the launcher has; see `guest-init/src/launch.rs`.
//! - **Control groups**: memory, process and CPU limits need a control-group
//!   folder the user owns under each v1 hierarchy (`cellbox-NAME`). Without
//!   one, a sandbox starts only when the caller accepts running without those
//!   limits ([`ALLOW_UNLIMITED_ENV`], [`super::NamespaceConfig::allow_unlimited`]).
//! - **The guest's root file system**: built as root (its files belong to
//!   many users), shared read-only in [`SHARED_CACHE_DIR`](crate::guest::artifacts::SHARED_CACHE_DIR).
//! - **Network** (when asked for): slirp4netns opens `/dev/net/tun`, which
//!   must be usable by all (as udev makes it on Debian); the egress rules
//!   are set by entering the sandbox's outer user namespace.
//!
//! What is weaker than as root: the system files show as owned by `nobody`
//! inside (the sandbox's root cannot change them; `pip install` goes to the
//! user's site), the disk limit is a tmpfs charged to the sandbox's memory
//! (at most half of it), and there is no warm template yet (kernels start
//! cold).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::executor::Backend;

/// Set to `1`, a non-root process's sandboxes start without memory, process
/// and CPU limits when no control group is delegated to its user.
pub const ALLOW_UNLIMITED_ENV: &str = "CELLBOX_ALLOW_UNLIMITED";

/// Subordinate ids a user needs: the sandbox's 65,536 (its root is the
/// first of them; the user's own id is the launcher's, outside the sandbox).
const SUBORDINATE_IDS: u32 = 65536;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The v1 hierarchies a delegated folder is made in: limits need the first
/// two, pause and CPU time the others.
const HIERARCHIES: [&str; 4] = ["memory", "pids", "freezer", "cpuacct"];

/// How a non-root process's sandboxes are launched.
#[derive(Debug, Clone)]
pub struct Rootless {
    /// `newuidmap`'s map (`inside outside count`…).
    pub uid_map: String,
    /// `newgidmap`'s map.
    pub gid_map: String,
    /// The control-group folder delegated to the user (the same name under
    /// each hierarchy), or `None`: no limits, as the caller accepted.
    pub cgroup_parent: Option<String>,
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        backend: Backend::Namespace,
        reason,
    }
}

/// This process's user's name (its uid where it has none).
pub fn user_name() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |user| user.name)
}

/// The control-group folder `cellbox setup` delegates to `user`.
fn delegated_name(user: &str) -> String {
    format!("cellbox-{user}")
}

impl Rootless {
    /// What this process's sandboxes need, or `None` when it runs as root
    /// (the ordinary launch). Fails, saying how to fix it, when the machine
    /// does not provide it.
    pub fn detect(allow_unlimited: bool) -> Result<Option<Rootless>> {
        let uid = nix::unistd::geteuid();
        if uid.is_root() {
            return Ok(None);
        }
        let gid = nix::unistd::getegid();
        let user = user_name();
        let setup = format!("run `sudo cellbox setup --user {user}` once");
        let start = |file: &str| {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            subordinate_start(&text, &user, uid.as_raw())
        };
        let (Some(uids), Some(gids)) = (start("/etc/subuid"), start("/etc/subgid")) else {
            return Err(unavailable(format!(
                "without root it needs {SUBORDINATE_IDS} subordinate ids for {user} in \
                 /etc/subuid and /etc/subgid: {setup}"
            )));
        };
        for helper in ["newuidmap", "newgidmap"] {
            if !Path::new("/usr/bin").join(helper).exists() {
                return Err(unavailable(format!(
                    "without root it needs /usr/bin/{helper} (Debian's uidmap package)"
                )));
            }
        }
        let cgroup_parent = delegated_cgroup(&user, uid.as_raw());
        if cgroup_parent.is_none() && !allow_unlimited {
            return Err(unavailable(format!(
                "without root its memory, process and CPU limits need control groups \
                 delegated to {user}: {setup}, or accept sandboxes without those limits \
                 ({ALLOW_UNLIMITED_ENV}=1, or NamespaceConfig::allow_unlimited)"
            )));
        }
        Ok(Some(Rootless {
            uid_map: format!("0 {uid} 1 1 {uids} {SUBORDINATE_IDS}"),
            gid_map: format!("0 {gid} 1 1 {gids} {SUBORDINATE_IDS}"),
            cgroup_parent,
        }))
    }
}

/// Whether a namespace sandbox can start in this process: as root, or as a
/// user set up for it (see [`Rootless::detect`]).
pub fn can_start(allow_unlimited: bool) -> bool {
    Rootless::detect(allow_unlimited).is_ok()
}

/// The first subordinate id of `user` (or `uid`) in an `/etc/subuid`-style
/// text, from a range of at least [`SUBORDINATE_IDS`].
fn subordinate_start(text: &str, user: &str, uid: u32) -> Option<u32> {
    let uid = uid.to_string();
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let (owner, start, count) = (fields.next()?, fields.next()?, fields.next()?);
        let (start, count) = (start.parse().ok()?, count.parse::<u32>().ok()?);
        ((owner == user || owner == uid) && count >= SUBORDINATE_IDS).then_some(start)
    })
}

/// The folder `cellbox setup` delegated to `user`, where it is theirs under
/// the memory and pids hierarchies (cgroup v1; v2's delegation is not used
/// yet).
fn delegated_cgroup(user: &str, uid: u32) -> Option<String> {
    let name = delegated_name(user);
    let owned = |hierarchy: &str| {
        std::fs::metadata(Path::new(CGROUP_ROOT).join(hierarchy).join(&name))
            .is_ok_and(|meta| meta.is_dir() && meta.uid() == uid)
    };
    (owned("memory") && owned("pids")).then_some(name)
}

/// `cellbox setup --user NAME`, as root: gives `user` subordinate ids (when
/// they have none), a control-group folder under each v1 hierarchy, and the
/// guest's artefacts in [`SHARED_CACHE_DIR`](crate::guest::artifacts::SHARED_CACHE_DIR) (from `cache_root`, built there
/// first if missing); where `/dev/kvm` exists, the microVM too: membership
/// of the group `kvm`, the guest's kernel and ext4 image. Returns what it
/// did, a line each.
pub fn setup(user: &str, cache_root: &Path, progress: &crate::Progress) -> Result<Vec<String>> {
    if !nix::unistd::geteuid().is_root() {
        return Err(unavailable("`cellbox setup` must run as root".into()));
    }
    let account = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| unavailable(format!("there is no user {user}")))?;
    let mut done = Vec::new();
    done.push(subordinate_ids(user, account.uid.as_raw())?);
    done.extend(control_groups(
        user,
        account.uid.as_raw(),
        account.gid.as_raw(),
    )?);
    done.push(tun_device()?);
    let kvm = Path::new(KVM_DEVICE).exists();
    if kvm {
        done.extend(kvm_access(user)?);
    }
    done.extend(share_artifacts(cache_root, kvm, progress)?);
    Ok(done)
}

fn run(command: &mut std::process::Command) -> Result<()> {
    let what = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    if output.status.success() {
        return Ok(());
    }
    Err(unavailable(format!(
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// A range of subordinate ids for `user` unless they have one: the first
/// free 65,536 from 100,000 on, past every range given to anyone.
fn subordinate_ids(user: &str, uid: u32) -> Result<String> {
    let read = |file: &str| std::fs::read_to_string(file).unwrap_or_default();
    let (subuid, subgid) = (read("/etc/subuid"), read("/etc/subgid"));
    if let (Some(u), Some(g)) = (
        subordinate_start(&subuid, user, uid),
        subordinate_start(&subgid, user, uid),
    ) {
        return Ok(format!(
            "{user} has subordinate ids already (uids from {u}, gids from {g})"
        ));
    }
    let end = |text: &str| {
        text.lines()
            .filter_map(|line| {
                let mut fields = line.split(':').skip(1);
                let start: u64 = fields.next()?.trim().parse().ok()?;
                let count: u64 = fields.next()?.trim().parse().ok()?;
                Some(start + count)
            })
            .max()
            .unwrap_or(0)
    };
    let start = end(&subuid).max(end(&subgid)).max(100_000);
    let range = format!("{start}-{}", start + u64::from(SUBORDINATE_IDS) - 1);
    run(std::process::Command::new("usermod").args([
        "--add-subuids",
        &range,
        "--add-subgids",
        &range,
        user,
    ]))?;
    Ok(format!("gave {user} the subordinate ids {range}"))
}

/// Network access connects a sandbox through slirp4netns, which opens
/// `/dev/net/tun` as the user: readable and writable by all, as udev makes it
/// on Debian (a machine without udev may have it root's only).
fn tun_device() -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let tun = Path::new("/dev/net/tun");
    let Ok(meta) = std::fs::metadata(tun) else {
        return Ok("no /dev/net/tun: sandboxes without root get no network".into());
    };
    if meta.mode() & 0o666 == 0o666 {
        return Ok("/dev/net/tun is usable by every user".into());
    }
    std::fs::set_permissions(tun, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| Error::io("making /dev/net/tun usable by every user", e))?;
    Ok("made /dev/net/tun usable by every user (mode 666, as udev makes it on Debian)".into())
}

/// The device through which the microVM runs.
const KVM_DEVICE: &str = "/dev/kvm";
/// The group that may open it (udev's rule on Debian).
const KVM_GROUP: &str = "kvm";

/// The microVM runs for whoever may open `/dev/kvm`: `user` joins the
/// device's group. A device of root's group goes to the group `kvm` (made
/// if missing), as udev's rule on Debian gives it; the group may read and
/// write it (other bits are kept).
fn kvm_access(user: &str) -> Result<Vec<String>> {
    use nix::unistd::{Gid, Group};
    use std::os::unix::fs::PermissionsExt;
    let mut done = Vec::new();
    let device = Path::new(KVM_DEVICE);
    let meta = std::fs::metadata(device).map_err(|e| Error::io(KVM_DEVICE.to_string(), e))?;
    let mut gid = meta.gid();
    if gid == 0 {
        if Group::from_name(KVM_GROUP).ok().flatten().is_none() {
            run(std::process::Command::new("groupadd").args(["--system", KVM_GROUP]))?;
            done.push(format!("made the group {KVM_GROUP}"));
        }
        let kvm = Group::from_name(KVM_GROUP)
            .ok()
            .flatten()
            .ok_or_else(|| unavailable(format!("the group {KVM_GROUP} cannot be read back")))?;
        gid = kvm.gid.as_raw();
        std::os::unix::fs::chown(device, None, Some(gid))
            .map_err(|e| Error::io(format!("giving {KVM_DEVICE} to the group {KVM_GROUP}"), e))?;
        done.push(format!(
            "gave {KVM_DEVICE} to the group {KVM_GROUP} (as udev does on Debian)"
        ));
    }
    if meta.mode() & 0o060 != 0o060 {
        let mode = (meta.mode() & 0o7777) | 0o060;
        std::fs::set_permissions(device, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("letting the group of {KVM_DEVICE} open it"), e))?;
        done.push(format!(
            "made {KVM_DEVICE} mode {mode:o}: its group may open it"
        ));
    }
    let group = Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .ok_or_else(|| unavailable(format!("{KVM_DEVICE}'s group {gid} has no name")))?;
    if group.mem.iter().any(|member| member == user) {
        done.push(format!("{user} is in the group {} already", group.name));
    } else {
        run(std::process::Command::new("usermod").args([
            "--append",
            "--groups",
            &group.name,
            user,
        ]))?;
        done.push(format!(
            "added {user} to the group {}, which may open {KVM_DEVICE} (the microVM; \
             from their next login)",
            group.name
        ));
    }
    Ok(done)
}

/// `cellbox-USER` under each v1 hierarchy, owned by `user`; the kernel gives
/// the groups they make inside to them too.
fn control_groups(user: &str, uid: u32, gid: u32) -> Result<Vec<String>> {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").exists() {
        return Ok(vec![format!(
            "control groups: this machine has cgroup v2, whose delegation cellbox does not use \
             yet; {user}'s sandboxes need {ALLOW_UNLIMITED_ENV}=1 (no memory, process and CPU limits)"
        )]);
    }
    let name = delegated_name(user);
    let mut done = Vec::new();
    for hierarchy in HIERARCHIES {
        let parent = root.join(hierarchy);
        if !parent.is_dir() {
            continue;
        }
        let dir = parent.join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
        }
        // The folder (to make groups in) and the files that move processes.
        for path in [dir.clone(), dir.join("cgroup.procs"), dir.join("tasks")] {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|e| Error::io(format!("giving {} to {user}", path.display()), e))?;
        }
        done.push(format!("delegated {} to {user}", dir.display()));
    }
    Ok(done)
}

/// The guest's root file system and layer (and with `microvm` its kernel
/// and ext4 image), built in `cache_root` when missing, copied into
/// [`SHARED_CACHE_DIR`](crate::guest::artifacts::SHARED_CACHE_DIR) (hard links where it can).
fn share_artifacts(
    cache_root: &Path,
    microvm: bool,
    progress: &crate::Progress,
) -> Result<Vec<String>> {
    let shared_root = crate::guest::artifacts::shared_cache_dir().ok_or_else(|| {
        unavailable(format!(
            "{} is empty: there is no folder to share the guest in",
            crate::guest::artifacts::SHARED_CACHE_DIR_ENV
        ))
    })?;
    let artifacts = crate::guest::GuestArtifacts::ensure(cache_root, progress)?;
    let mut built = vec![
        (
            "root file system",
            artifacts.tree.parent().map(Path::to_path_buf),
        ),
        ("layer", Some(artifacts.layer.clone())),
    ];
    if microvm {
        let kernel = crate::guest::GuestKernel::ensure(cache_root, progress)?;
        artifacts.ext4_image(progress)?;
        built.push(("kernel", Some(kernel.dir().to_path_buf())));
        built.push(("ext4 image", Some(artifacts.image_dir().to_path_buf())));
    }
    let mut done = Vec::new();
    for (what, built) in built {
        let Some(built) = built else { continue };
        let relative = built
            .strip_prefix(cache_root)
            .map_err(|_| unavailable(format!("{} is outside the cache", built.display())))?;
        let shared = shared_root.join(relative);
        if !shared.exists() {
            copy_tree(&built, &shared)?;
        }
        done.push(format!(
            "the guest's {what} is shared in {}",
            shared.display()
        ));
    }
    Ok(done)
}

/// Copies `from` to `to` (hard links on the same file system), through a
/// temporary name, so that `to` is whole or absent.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let parent = to.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)
        .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    let partial = PathBuf::from(format!("{}.partial", to.display()));
    let _ = std::fs::remove_dir_all(&partial);
    let linked = run(std::process::Command::new("cp")
        .arg("-al")
        .arg(from)
        .arg(&partial));
    if linked.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
        run(std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(&partial))?;
    }
    std::fs::rename(&partial, to).map_err(|e| Error::io(format!("finishing {}", to.display()), e))
}

#[cfg(test)]
mod tests {
    use super::subordinate_start;

    #[test]
    fn subordinate_ids_are_found_by_name_or_uid_in_a_range_big_enough() {
        let text = "alice:100000:65536\nbob:165536:65535\n1002:300000:65536\n";
        assert_eq!(subordinate_start(text, "alice", 1000), Some(100000));
        assert_eq!(subordinate_start(text, "bob", 1001), None, "too few");
        assert_eq!(subordinate_start(text, "carol", 1002), Some(300000));
        assert_eq!(subordinate_start(text, "dave", 1003), None);
        assert_eq!(subordinate_start("garbage\n:::\n", "x", 1), None);
    }
}
