//! `NamespaceExecutor`: the guest (`guest-init` + IPython kernel on the Debian
//! root file system) run in Linux namespaces on the host's own kernel.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use super::cgroup::{Cgroup, CgroupFiles};
use super::disk::Disk;
use super::network::{DNS_FORWARDER, Network, NetworkPolicy};
use super::rootless::{ALLOW_UNLIMITED_ENV, Rootless};
use super::zygote::{Zygote, only_child, seqpacket_pair};
use crate::error::{Error, Result};
use crate::executor::Backend;
use crate::guest::control::{GuestControl, Usage};
use crate::guest::{GuestArtifacts, GuestBackend, GuestClient, GuestSession};
use crate::progress::Progress;

/// How to start a namespace sandbox.
#[derive(Debug, Clone)]
pub struct NamespaceConfig {
    /// The artefact cache; `None` means [`crate::default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Receives progress lines while artefacts are built.
    pub progress: Progress,
    /// Memory for everything in the sandbox; user code (kernels, commands)
    /// gets this less guest-init's reserve (an eighth, at least 64 MiB).
    pub memory_limit: u64,
    /// Most processes (and threads) user code may have at once; guest-init
    /// has a few of its own beyond these, so that it keeps answering.
    pub max_processes: u32,
    /// CPU seconds each process in the sandbox may use.
    pub cpu_time_limit: Duration,
    /// Timeout for cells whose [`RunOptions`](crate::RunOptions) set none.
    pub default_timeout: Duration,
    /// What one cell or command may print; past it, output is cut with a marker.
    pub output_limit: usize,
    /// Size of the writable layer (everything the sandbox writes to its
    /// files): past it, writes fail with `ENOSPC`.
    pub disk_limit: u64,
    /// What the sandbox may reach on the network (default: nothing).
    pub network: NetworkPolicy,
    /// A template's layers (top first), laid over the guest's root file
    /// system (see [`crate::template`]).
    pub template_layers: Vec<PathBuf>,
    /// Host folders shown in the sandbox (`cellbox serve`'s volumes).
    pub volumes: Vec<VolumeMount>,
    /// Fork Python kernels from the warm template (IPython, numpy, pandas
    /// and matplotlib already imported; [`super::zygote`]) instead of
    /// starting them: the default. The first warm sandbox of a process
    /// starts the template. Custom templates always start cold.
    pub warm: bool,
    /// Without root and without a control group delegated to the user
    /// ([`super::rootless`]), start sandboxes anyway, with no memory,
    /// process and CPU limits (default: refuse, unless
    /// `CELLBOX_ALLOW_UNLIMITED=1`).
    pub allow_unlimited: bool,
}

/// A host folder shown in the sandbox at `target` (an absolute path), as
/// it is: what the sandbox writes there lands in the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub source: PathBuf,
    pub target: String,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            cache_dir: None,
            progress: Progress::default(),
            memory_limit: 2 << 30,
            max_processes: 256,
            cpu_time_limit: Duration::from_secs(3600),
            default_timeout: Duration::from_secs(60),
            output_limit: cellbox_guest_init::output::DEFAULT_LIMIT,
            disk_limit: 4 << 30,
            network: NetworkPolicy::default(),
            template_layers: Vec::new(),
            volumes: Vec::new(),
            warm: true,
            allow_unlimited: std::env::var_os(ALLOW_UNLIMITED_ENV).is_some_and(|v| v == "1"),
        }
    }
}

/// A stateful Python session in a namespace sandbox: new user, mount, PID,
/// network (loopback only unless [`NamespaceConfig::network`] allows more),
/// IPC, UTS and cgroup namespaces; the sandbox's
/// ids are an unprivileged host range (its root is not the host's); the
/// Debian root file system as a read-only lower layer under a private
/// writable layer; memory, process-count, CPU-time and disk limits.
///
/// Its isolation is that of a container: the host kernel is shared, so a
/// kernel exploit escapes it. Use the microVM backend for strong isolation.
#[derive(Debug)]
pub struct NamespaceExecutor {
    session: GuestSession,
    control: std::sync::Arc<NamespaceControl>,
    launcher: tokio::process::Child,
    /// None: started without root and without limits, as the caller accepted.
    _cgroup: Option<Cgroup>,
    // Unmounted after the control group killed everything, before the folder
    // goes. None without root: the launcher's tmpfs goes with the sandbox.
    _disk: Option<Disk>,
    _network: Option<std::sync::Arc<Network>>,
    _dir: tempfile::TempDir,
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        backend: Backend::Namespace,
        reason: reason.into(),
    }
}

impl NamespaceExecutor {
    /// Starts a sandbox (building the guest artefacts first if needed).
    pub async fn start(config: NamespaceConfig) -> Result<NamespaceExecutor> {
        let rootless = Rootless::detect(config.allow_unlimited)?;
        let cache_root = config
            .cache_dir
            .clone()
            .unwrap_or_else(crate::default_cache_dir);
        let progress = config.progress.clone();
        let cache = cache_root.clone();
        let artifacts =
            tokio::task::spawn_blocking(move || GuestArtifacts::ensure(&cache, &progress))
                .await
                .map_err(|e| unavailable(format!("building the guest failed: {e}")))??;
        let rules = if config.network.enabled() {
            let policy = config.network.clone();
            let rules = tokio::task::spawn_blocking(move || policy.resolve())
                .await
                .map_err(|e| unavailable(format!("resolving the network rules failed: {e}")))??;
            Some(rules)
        } else {
            None
        };

        // Files, mounts and control groups: blocking work, off the runtime's threads.
        let (dir, disk, cgroup) = {
            let (config, with_dns, rootless) = (config.clone(), rules.is_some(), rootless.clone());
            tokio::task::spawn_blocking(move || {
                prepare(&cache_root, &config, with_dns, rootless.as_ref())
            })
            .await
            .map_err(|e| unavailable(format!("preparing the sandbox failed: {e}")))??
        };
        let layer = dir.path().join("layer");

        // Without root the template cannot enter the sandbox's namespaces (yet).
        let zygote = match config.warm && config.template_layers.is_empty() && rootless.is_none() {
            // Without it the kernels start cold, as they would anyway.
            true => Zygote::for_guest(&artifacts).ok(),
            false => None,
        };
        let (host_end, guest_end) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::io("creating the guest socket", e))?;
        // guest-init, run as root on the host, is the launcher: it mounts
        // the layers and makes the namespaces (guest-init/src/launch.rs).
        let mut command = std::process::Command::new(artifacts.layer.join("sbin/init"));
        command
            .args(["--fd", "3", "--namespace-root"])
            .arg(dir.path().join("root"))
            .arg("--lower")
            .arg(&artifacts.layer);
        for template in &config.template_layers {
            command.arg("--lower").arg(template);
        }
        command
            .arg("--lower")
            .arg(&artifacts.tree)
            .arg("--upper")
            .arg(layer.join("upper"))
            .arg("--work")
            .arg(layer.join("work"))
            .arg("--output-limit")
            .arg(config.output_limit.to_string());
        for volume in &config.volumes {
            command
                .arg("--volume")
                .arg(&volume.source)
                .arg(&volume.target);
        }
        if let Some(rootless) = &rootless {
            if rules.is_some() {
                // Its writable layer is made inside: guest-init writes it there.
                command.arg("--nameserver").arg(DNS_FORWARDER);
            }
            command
                .arg("--uid-map")
                .arg(&rootless.uid_map)
                .arg("--gid-map")
                .arg(&rootless.gid_map)
                .arg("--disk-size")
                .arg(rootless_disk_size(&config, cgroup.is_some()).to_string());
        }
        command
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .stdin(std::process::Stdio::null());
        // Without root the sandbox opens the user groups' files itself.
        let user_cgroup = match (&cgroup, &rootless) {
            (Some(cgroup), None) => cgroup.open_user_procs()?,
            _ => Vec::new(),
        };
        let shared_procs = match (&cgroup, &rootless) {
            (Some(cgroup), Some(_)) => Some(cgroup.share_user_procs()?),
            _ => None,
        };
        for file in shared_procs.iter().flat_map(|shared| shared.files()) {
            command.arg("--user-cgroup-path").arg(file);
        }
        for fd in 4..4 + user_cgroup.len() {
            command.arg("--user-cgroup-fd").arg(fd.to_string());
        }
        let mut passed: Vec<OwnedFd> = std::iter::once(OwnedFd::from(guest_end))
            .chain(user_cgroup)
            .collect();
        let zygote = match zygote {
            Some(zygote) => {
                let (connection, guest_end) = seqpacket_pair()?;
                command
                    .arg("--zygote-fd")
                    .arg((3 + passed.len()).to_string());
                passed.push(guest_end);
                Some((zygote, connection))
            }
            None => None,
        };
        prepare_child(
            &mut command,
            passed,
            cgroup
                .as_ref()
                .map(Cgroup::init_procs_files)
                .unwrap_or_default(),
            config.cpu_time_limit,
        );
        let mut launcher = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| unavailable(format!("cannot run guest-init: {e}")))?;

        host_end
            .set_nonblocking(true)
            .map_err(|e| Error::io("configuring the guest socket", e))?;
        let stream = tokio::net::UnixStream::from_std(host_end)
            .map_err(|e| Error::io("configuring the guest socket", e))?;
        let client = match GuestClient::connect(stream, Duration::from_secs(30)).await {
            Ok(client) => client,
            Err(e) => {
                let _ = launcher.kill().await;
                return Err(unavailable(format!("the sandbox did not start: {e}")));
            }
        };
        // Opened by the sandbox before it answered: closed to others again.
        drop(shared_procs);
        if let Some((zygote, connection)) = zygote {
            // Failing, the sandbox's kernels start cold (its end finds no peer).
            let _ = launcher
                .id()
                .ok_or_else(|| unavailable("the sandbox ended at once"))
                .and_then(only_child)
                .and_then(only_child)
                .and_then(|pid1| {
                    let procs = match &cgroup {
                        Some(cgroup) => cgroup.open_user_procs()?,
                        None => Vec::new(),
                    };
                    zygote.register(pid1, procs, config.cpu_time_limit, connection)
                });
        }
        // The process whose namespaces hold the network and the writable
        // layer: the launcher, or without root its child (root of their
        // user namespace).
        let launcher_pid = launcher.id().unwrap_or_default();
        let holder = match rootless {
            Some(_) => only_child(launcher_pid)?,
            None => launcher_pid,
        };
        let network = match rules {
            Some(rules) => {
                let pid = holder;
                let log = dir.path().join("slirp4netns.log");
                let rootless = rootless.is_some();
                let (policy, runtime) = (config.network.clone(), tokio::runtime::Handle::current());
                let attached = tokio::task::spawn_blocking(move || {
                    Network::attach(pid, rootless, &policy, rules, &log, &runtime)
                })
                .await
                .map_err(|e| unavailable(format!("connecting the network failed: {e}")))?;
                if let Ok(network) = &attached
                    && let Err(e) = trust_egress_ca(&client, network.ca_pem()).await
                {
                    // Without root the template's files are not the sandbox's
                    // root's to change: hosts whose requests rules change fail
                    // TLS verification there (a known gap).
                    tracing::warn!("the sandbox will not trust its egress CA: {e}");
                }
                match attached {
                    Ok(network) => Some(std::sync::Arc::new(network)),
                    Err(e) => {
                        let _ = launcher.kill().await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        // Without root the writable layer is a tmpfs in the holder's mount
        // namespace, seen through its /proc root.
        let disk_path = match rootless {
            Some(_) => PathBuf::from(format!("/proc/{holder}/root"))
                .join(layer.strip_prefix("/").unwrap_or(&layer)),
            None => layer,
        };
        let control = NamespaceControl {
            cgroup: cgroup.as_ref().map(Cgroup::files),
            disk: disk_path,
            memory_limit: config.memory_limit,
            rootless: rootless.is_some(),
            network: network.as_ref().map(std::sync::Arc::downgrade),
        };
        Ok(NamespaceExecutor {
            session: GuestSession::new(client, config.default_timeout),
            control: std::sync::Arc::new(control),
            launcher,
            _cgroup: cgroup,
            _disk: disk,
            _network: network,
            _dir: dir,
        })
    }
}

impl NamespaceExecutor {
    /// Whether the sandbox still runs (its launcher has not exited).
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.launcher.try_wait(), Ok(None))
    }

    /// The folder of everything the sandbox wrote to its files (overlayfs's
    /// upper layer), on the host; a template build keeps it once closed.
    /// Without root it is a tmpfs that goes with the sandbox.
    pub fn writable_layer(&self) -> Result<PathBuf> {
        if self.control.rootless {
            return Err(unavailable(
                "a sandbox started without root keeps its writes in memory, gone once it \
                 is closed: building templates needs root for now",
            ));
        }
        Ok(self.control.disk.join("upper"))
    }
}

/// The sandbox's folder, its mounted disk (with the overlay's `upper` and
/// `work` folders, and a resolv.conf naming the DNS forwarder if
/// `with_dns`) and its control group. Without root, only the folders: the
/// launcher mounts a tmpfs for the layer, and the control group is the
/// delegated one's child, or none.
fn prepare(
    cache_root: &std::path::Path,
    config: &NamespaceConfig,
    with_dns: bool,
    rootless: Option<&Rootless>,
) -> Result<(tempfile::TempDir, Option<Disk>, Option<Cgroup>)> {
    let dir = tempfile::Builder::new()
        .prefix("cellbox-ns-")
        .tempdir()
        .map_err(|e| Error::io("creating the sandbox folder", e))?;
    let layer = dir.path().join("layer");
    let (disk, folders) = match rootless {
        None => {
            let disk = Disk::create(cache_root, dir.path(), &layer, config.disk_limit)?;
            (Some(disk), vec![layer.join("upper"), layer.join("work")])
        }
        Some(_) => (None, vec![layer.clone()]),
    };
    for sub in folders.into_iter().chain([dir.path().join("root")]) {
        std::fs::create_dir(sub).map_err(|e| Error::io("creating the sandbox folder", e))?;
    }
    if with_dns && rootless.is_none() {
        use_dns_forwarder(&layer.join("upper"))?;
    }
    let name = dir
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cellbox-ns".into());
    let cgroup = match rootless {
        Some(Rootless {
            cgroup_parent: None,
            ..
        }) => None,
        _ => Some(Cgroup::create(
            rootless.and_then(|r| r.cgroup_parent.as_deref()),
            &name,
            config.memory_limit,
            config.max_processes,
        )?),
    };
    Ok((dir, disk, cgroup))
}

/// Without root the writable layer is a tmpfs charged to the sandbox's
/// memory: with limits, at most half of it, so that a full disk leaves its
/// kernels room to run.
fn rootless_disk_size(config: &NamespaceConfig, limited: bool) -> u64 {
    match limited {
        true => config.disk_limit.min(config.memory_limit / 2),
        false => config.disk_limit,
    }
}

/// Puts an `/etc/resolv.conf` naming slirp4netns's DNS forwarder in the
/// writable layer `upper` (owned by the sandbox's root, as the launcher
/// makes `upper` itself).
fn use_dns_forwarder(upper: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, chown};
    let root = Some(cellbox_guest_init::launch::DEFAULT_ID_BASE);
    let etc = upper.join("etc");
    let resolv = etc.join("resolv.conf");
    let write = || -> std::io::Result<()> {
        std::fs::DirBuilder::new().mode(0o755).create(&etc)?;
        chown(&etc, root, root)?;
        std::fs::write(&resolv, format!("nameserver {DNS_FORWARDER}\n"))?;
        chown(&resolv, root, root)
    };
    write().map_err(|e| Error::io("writing the sandbox's /etc/resolv.conf", e))
}

/// Most descriptors [`prepare_child`] passes on.
const MAX_PASSED: usize = 8;

/// Between fork and exec: join the control groups, cap CPU time, and put the
/// `passed` descriptors at fd 3, 4, … in order.
fn prepare_child(
    command: &mut std::process::Command,
    passed: Vec<OwnedFd>,
    procs: Vec<CString>,
    cpu: Duration,
) {
    assert!(passed.len() <= MAX_PASSED, "too many descriptors to pass");
    let cpu_secs = cpu.as_secs().max(1) as libc::rlim_t;
    // SAFETY: the closure uses only async-signal-safe calls (open, write,
    // close, setrlimit, fcntl, dup2) on data prepared before the fork, and
    // allocates nothing; `passed` moves into the closure, so its descriptors
    // stay open until exec.
    unsafe {
        command.pre_exec(move || {
            for path in &procs {
                let file = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                let joined = file >= 0 && libc::write(file, b"0".as_ptr().cast(), 1) == 1;
                if file >= 0 {
                    libc::close(file);
                }
                if !joined {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let limit = libc::rlimit {
                rlim_cur: cpu_secs,
                rlim_max: cpu_secs,
            };
            if libc::setrlimit(libc::RLIMIT_CPU, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Copies above the targets first (close-on-exec), so that placing
            // one never clobbers another; dup2 clears close-on-exec on the target.
            let mut high = [-1; MAX_PASSED];
            for (copy, fd) in high.iter_mut().zip(&passed) {
                *copy = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10);
                if *copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, &copy) in (3..).zip(&high[..passed.len()]) {
                if libc::dup2(copy, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[async_trait]
impl GuestBackend for NamespaceExecutor {
    fn kind(&self) -> Backend {
        Backend::Namespace
    }

    fn session(&self) -> &GuestSession {
        &self.session
    }

    fn session_mut(&mut self) -> &mut GuestSession {
        &mut self.session
    }

    fn control(&self) -> std::sync::Arc<dyn GuestControl> {
        self.control.clone()
    }

    async fn stop_guest(&mut self) -> Result<()> {
        if tokio::time::timeout(Duration::from_secs(5), self.launcher.wait())
            .await
            .is_err()
        {
            let _ = self.launcher.kill().await;
        }
        Ok(())
    }
}

/// Pauses the sandbox with its control group's freezer; reads its usage
/// from the control group and its disk.
/// Debian's bundle of trusted CAs in the sandbox (curl, OpenSSL, Python's
/// `ssl`, Debian's `requests` read it).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Adds the sandbox's egress CA to the sandbox's trusted CAs (as root: a
/// PEM has no quotes to escape).
async fn trust_egress_ca(client: &crate::guest::GuestClient, pem: &str) -> Result<()> {
    let options = crate::guest::CommandOptions {
        user: Some("root".into()),
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let command = format!("printf '%s\\n' '{}' >> {CA_BUNDLE}", pem.trim());
    let done = client
        .run_command(&command, &options, &mut |_, _| {})
        .await?;
    match done.exit_code {
        0 => Ok(()),
        _ => Err(unavailable(format!(
            "adding the egress CA to the sandbox's trusted CAs failed: {}",
            done.stderr.trim()
        ))),
    }
}

#[derive(Debug)]
struct NamespaceControl {
    /// None: a sandbox without limits (started without root, as accepted).
    cgroup: Option<CgroupFiles>,
    /// Where the sandbox's disk is mounted.
    disk: PathBuf,
    memory_limit: u64,
    /// Started without root ([`super::rootless`]).
    rootless: bool,
    /// The sandbox's network, while it runs (none: started without).
    network: Option<std::sync::Weak<Network>>,
}

impl NamespaceControl {
    fn cgroup(&self) -> Result<&CgroupFiles> {
        self.cgroup.as_ref().ok_or_else(|| {
            unavailable("this sandbox runs without control groups (no root, no delegation)")
        })
    }
}

impl GuestControl for NamespaceControl {
    fn update_network(&self, policy: &NetworkPolicy) -> Result<()> {
        let network = self.network.as_ref().and_then(std::sync::Weak::upgrade);
        let network = network.ok_or_else(|| {
            Error::InvalidArgument(
                "the sandbox was started without network access: its rules cannot change \
                 (create it with network access, then narrow it)"
                    .into(),
            )
        })?;
        network.update(policy)
    }

    fn pause(&self) -> Result<()> {
        self.cgroup()?.freeze(true)
    }

    fn resume(&self) -> Result<()> {
        self.cgroup()?.freeze(false)
    }

    fn usage(&self) -> Result<Usage> {
        let (memory_used, memory_cache) = match &self.cgroup {
            Some(cgroup) => cgroup.memory()?,
            None => (0, 0),
        };
        let disk = nix::sys::statvfs::statvfs(&self.disk)
            .map_err(|e| Error::io("measuring the sandbox's disk", e.into()))?;
        let block = disk.fragment_size();
        Ok(Usage {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            cpu_time: match &self.cgroup {
                Some(cgroup) => cgroup.cpu_time()?,
                None => Duration::ZERO,
            },
            memory_used,
            memory_cache,
            memory_total: self.memory_limit,
            disk_used: (disk.blocks() - disk.blocks_free()) * block,
            disk_total: disk.blocks() * block,
        })
    }
}
