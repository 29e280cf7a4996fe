//! The warm template on the host: one per cellbox process and guest build,
//! started with the first warm namespace sandbox; every later sandbox's
//! Python kernel is forked from it with the data stack already imported
//! (`guest-init/src/zygote.rs` says how, `guest-init/kernel/cellbox_zygote.py`
//! what the fork makes fresh).
//!
//! A sandbox gets one end of a socket pair (guest-init's `--zygote-fd`); the
//! host registers the other end with the template together with a pidfd of
//! the sandbox's PID 1 (whose namespaces the kernels join) and its user
//! control group. So a sandbox can only ask for kernels in itself.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};

use crate::error::{Error, Result};
use crate::guest::GuestArtifacts;

/// The namespaces of a sandbox's PID 1 its kernels join.
const NAMESPACES: [&str; 7] = ["net", "user", "mnt", "ipc", "uts", "cgroup", "pid"];

/// A running warm template.
#[derive(Debug)]
pub struct Zygote {
    control: Mutex<OwnedFd>,
    process: Mutex<std::process::Child>,
}

/// The templates of this process, by guest-init layer and root file system.
static TEMPLATES: Mutex<Option<Templates>> = Mutex::new(None);
type Templates = HashMap<(PathBuf, PathBuf), Arc<Zygote>>;

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        backend: crate::executor::Backend::Namespace,
        reason: reason.into(),
    }
}

/// A connected `SOCK_SEQPACKET` pair (close-on-exec).
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::io("creating a socket pair", e.into()))
}

impl Zygote {
    /// The warm template of this guest, started if none runs (it answers
    /// once its imports are done, a second or two later; requests wait).
    pub fn for_guest(artifacts: &GuestArtifacts) -> Result<Arc<Zygote>> {
        let key = (artifacts.layer.clone(), artifacts.tree.clone());
        let mut templates = crate::lock(&TEMPLATES);
        let templates = templates.get_or_insert_with(HashMap::new);
        if let Some(zygote) = templates.get(&key)
            && zygote.is_running()
        {
            return Ok(zygote.clone());
        }
        let zygote = Arc::new(Zygote::start(artifacts)?);
        templates.insert(key, zygote.clone());
        Ok(zygote)
    }

    fn start(artifacts: &GuestArtifacts) -> Result<Zygote> {
        let (host_end, template_end) = seqpacket_pair()?;
        let mut command = std::process::Command::new(artifacts.layer.join("sbin/init"));
        command
            .arg("--zygote")
            // Mounted over in the template's own mount namespace only.
            .arg(&artifacts.tree)
            .arg("--lower")
            .arg(&artifacts.layer)
            .arg("--lower")
            .arg(&artifacts.tree)
            .args(["--fd", "3"])
            .env_clear()
            .stdin(std::process::Stdio::null())
            // A failing template shows in guest-init's reason for a cold start.
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        super::network::pass_fds(&mut command, [(template_end.as_raw_fd(), 3)]);
        let process = command
            .spawn()
            .map_err(|e| unavailable(format!("cannot start the warm template: {e}")))?;
        drop(template_end);
        Ok(Zygote {
            control: Mutex::new(host_end),
            process: Mutex::new(process),
        })
    }

    fn is_running(&self) -> bool {
        matches!(crate::lock(&self.process).try_wait(), Ok(None))
    }

    /// Registers the sandbox whose PID 1 is `pid1`, whose kernels join the
    /// control groups behind `user_cgroup` and may use `cpu` seconds each:
    /// its guest-init asks for kernels on the other end of `connection`.
    pub fn register(
        &self,
        pid1: u32,
        user_cgroup: Vec<OwnedFd>,
        cpu: Duration,
        connection: OwnedFd,
    ) -> Result<()> {
        let namespaces = NAMESPACES
            .iter()
            .map(|name| {
                let path = format!("/proc/{pid1}/ns/{name}");
                std::fs::File::open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| Error::io(path, e))
            })
            .collect::<Result<Vec<_>>>()?;
        let message = serde_json::json!({
            "cpu_seconds": cpu.as_secs().max(1),
            "namespaces": NAMESPACES,
        })
        .to_string();
        let fds: Vec<i32> = std::iter::once(&connection)
            .chain(&namespaces)
            .chain(&user_cgroup)
            .map(|fd| fd.as_raw_fd())
            .collect();
        let control = crate::lock(&self.control);
        sendmsg::<()>(
            control.as_raw_fd(),
            &[std::io::IoSlice::new(message.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(|e| unavailable(format!("the warm template is gone: {e}")))?;
        Ok(())
    }
}

/// The pid of the only child of `pid` (the launcher's keeper, the keeper's
/// PID 1).
pub fn only_child(pid: u32) -> Result<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let children = std::fs::read_to_string(&path).map_err(|e| Error::io(path.clone(), e))?;
    match children.split_whitespace().collect::<Vec<_>>()[..] {
        [child] => child
            .parse()
            .map_err(|_| unavailable(format!("{path} says {children:?}"))),
        _ => Err(unavailable(format!(
            "expected one child in {path}, found {children:?}"
        ))),
    }
}
