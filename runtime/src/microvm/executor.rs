//! `MicroVmExecutor`: boots the guest in a microVM and runs cells in it with
//! the same guest protocol (and so the same results) as the namespace backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cellbox_guest_init::protocol::VSOCK_PORT;
use cellbox_vmm::{RestoreOptions, Vm, VmConfig};

use crate::error::{Error, Result};
use crate::executor::Backend;
use crate::guest::{
    GuestArtifacts, GuestBackend, GuestClient, GuestControl, GuestKernel, GuestSession, Usage,
};
use crate::namespace::NetworkPolicy;
use crate::progress::Progress;

use super::BootTimeline;
use super::network::VmNetwork;

/// The guest's context id on vsock.
const GUEST_CID: u64 = 3;

/// How to start a microVM.
#[derive(Debug, Clone)]
pub struct MicroVmConfig {
    /// The artefact cache; `None` means [`crate::default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Receives progress lines while artefacts are built.
    pub progress: Progress,
    /// Virtual CPUs.
    pub vcpus: u8,
    /// Guest memory in MiB: the limit for everything in the sandbox.
    pub memory_mib: u32,
    /// Timeout for cells whose [`RunOptions`](crate::RunOptions) set none.
    pub default_timeout: Duration,
    /// How long the guest may take to boot and answer.
    pub boot_timeout: Duration,
    /// Extra guest kernel parameters, e.g. `loglevel=7` for the whole boot
    /// log in [`MicroVmExecutor::console`].
    pub kernel_args: Vec<String>,
    /// What one cell or command may print; past it, output is cut with a marker.
    pub output_limit: usize,
    /// What the VM may reach on the network; by default it has no network
    /// card at all.
    pub network: NetworkPolicy,
    /// Start from a snapshot of a booted guest with numpy, pandas and
    /// matplotlib imported (made once, then kept in the cache) instead of
    /// booting. VMs with a network always boot.
    pub warm: bool,
}

impl Default for MicroVmConfig {
    fn default() -> Self {
        MicroVmConfig {
            cache_dir: None,
            progress: Progress::default(),
            vcpus: 1,
            memory_mib: 1024,
            default_timeout: Duration::from_secs(60),
            boot_timeout: Duration::from_secs(30),
            kernel_args: Vec::new(),
            output_limit: cellbox_guest_init::output::DEFAULT_LIMIT,
            network: NetworkPolicy::default(),
            warm: true,
        }
    }
}

/// The kernel command line: serial console, the ext4 root on `vda` (written
/// only to the VM's copy-on-write layer), guest-init as init on vsock with
/// its output limit; `extra` parameters go before guest-init's (later ones
/// win), `init_extra` after guest-init's own.
pub fn kernel_cmdline(extra: &[String], init_extra: &[String], output_limit: usize) -> String {
    let words = |words: &[String]| -> String { words.iter().map(|w| format!(" {w}")).collect() };
    let (extra, init_extra) = (words(extra), words(init_extra));
    format!(
        "console=ttyS0 reboot=k panic=-1 quiet root=/dev/vda rw rootfstype=ext4 \
         init=/usr/sbin/init{extra} -- --vsock {VSOCK_PORT} --output-limit {output_limit}{init_extra}"
    )
}

/// What a microVM boots: the guest kernel and the root file system image,
/// built into `cache_root` first where missing (minutes, once). Blocking.
pub fn guest_files(cache_root: &Path, progress: &Progress) -> Result<(GuestKernel, PathBuf)> {
    let kernel = GuestKernel::ensure(cache_root, progress)?;
    let image = GuestArtifacts::ensure(cache_root, progress)?.ext4_image(progress)?;
    Ok((kernel, image))
}

/// A stateful Python session in a KVM microVM: its own kernel, no host
/// files but the read-only root image, memory and vCPUs as configured, and
/// a network card only when [`MicroVmConfig::network`] asks for one.
#[derive(Debug)]
pub struct MicroVmExecutor {
    session: GuestSession,
    control: Arc<MicroVmControl>,
    vm: Option<Vm>,
    boot: Option<BootTimeline>,
    boot_timeout: Duration,
    default_timeout: Duration,
    /// Dropped after the VM (field order): passt outlives its card.
    network: Option<VmNetwork>,
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        backend: Backend::Vm,
        reason: reason.into(),
    }
}

impl MicroVmExecutor {
    /// Boots a microVM (building the guest artefacts first if needed). Fails
    /// fast, naming the reason, where KVM cannot run a Linux guest.
    pub async fn start(config: MicroVmConfig) -> Result<MicroVmExecutor> {
        if let Some(reason) = cellbox_vmm::kvm_support::linux_guest_blocker() {
            // SAFETY: geteuid has no preconditions.
            let hint = match unsafe { libc::geteuid() } {
                0 => "Use --backend namespace (the same guest in Linux namespaces) instead".into(),
                _ => format!(
                    "A user needs /dev/kvm for the microVM (`sudo cellbox setup --user {}` \
                     adds them to the group kvm); --backend namespace runs the same guest in \
                     Linux namespaces",
                    crate::namespace::rootless::user_name()
                ),
            };
            return Err(unavailable(format!("{reason}. {hint}")));
        }
        let cache_root = config
            .cache_dir
            .clone()
            .unwrap_or_else(crate::default_cache_dir);
        let progress = config.progress.clone();
        let files_root = cache_root.clone();
        let (kernel, image) =
            tokio::task::spawn_blocking(move || guest_files(&files_root, &progress))
                .await
                .map_err(|e| unavailable(format!("building the guest failed: {e}")))??;

        let (mut network, card) = if config.network.enabled() {
            let policy = config.network.clone();
            let (network, card) = tokio::task::spawn_blocking(move || VmNetwork::start(&policy))
                .await
                .map_err(|e| unavailable(format!("starting the network failed: {e}")))??;
            (Some(network), Some(card))
        } else {
            (None, None)
        };
        let mut kernel_args = config.kernel_args.clone();
        let mut init_args = Vec::new();
        if let Some(card) = &card {
            kernel_args.extend(card.kernel_args.iter().cloned());
            init_args.extend(card.init_args.iter().cloned());
        }
        let warm = config.warm && card.is_none();
        if warm {
            init_args.push("--warm".into());
        }
        let mut vm_config = VmConfig::new(kernel.vmlinux())
            .with_cmdline(kernel_cmdline(
                &kernel_args,
                &init_args,
                config.output_limit,
            ))
            .with_vcpus(config.vcpus)
            .with_memory_mib(config.memory_mib)
            .with_disk(image, true)
            .with_vsock(GUEST_CID);
        if let Some(card) = card {
            vm_config = vm_config.with_net(card.mac, card.socket, card.filter);
        }
        let started = Instant::now();
        let (boot_timeout, progress) = (config.boot_timeout, config.progress.clone());
        let vm = tokio::task::spawn_blocking(move || {
            if !warm {
                return Vm::start(vm_config).map_err(|e| unavailable(e.to_string()));
            }
            let snapshot =
                super::snapshot::ensure(&cache_root, &vm_config, boot_timeout, &progress)?;
            Vm::restore(&snapshot, RestoreOptions::default())
                .map_err(|e| unavailable(e.to_string()))
        })
        .await
        .map_err(|e| unavailable(format!("starting the VM failed: {e}")))??;
        let vm_started = started.elapsed();
        let client = connect(&vm, config.boot_timeout).await?;
        if let Some(network) = &mut network {
            network.check()?;
        }
        // A restored guest's milestones are those of the snapshot's boot.
        let boot = (!warm)
            .then(|| client.boot_clock())
            .flatten()
            .map(|guest| BootTimeline::new(vm_started, started.elapsed(), guest));
        match &boot {
            Some(timeline) => tracing::info!("microVM booted: {timeline}"),
            None if warm => tracing::info!(
                "microVM restored from its warm snapshot and answering after {:?}",
                started.elapsed()
            ),
            None => tracing::warn!("the guest reported no boot milestones"),
        }
        let control = Arc::new(MicroVmControl {
            vm: vm.control(),
            vcpus: u32::from(config.vcpus),
            memory: u64::from(config.memory_mib) << 20,
        });
        Ok(MicroVmExecutor {
            session: GuestSession::new(client, config.default_timeout),
            control,
            vm: Some(vm),
            boot,
            boot_timeout: config.boot_timeout,
            default_timeout: config.default_timeout,
            network,
        })
    }

    /// A copy of this VM made from its whole memory: variables of every
    /// context, values that do not pickle, running threads and processes
    /// all go on in the copy, which gets its own randomness (see
    /// [`MicroVmConfig::warm`]). This VM is paused meanwhile and then goes on
    /// unchanged. Not kept: the copy's host connection (a new one is made)
    /// and commands started through the old one. VMs with a network card
    /// cannot be copied yet.
    pub async fn fork(&mut self) -> Result<MicroVmExecutor> {
        let dir = tempfile::Builder::new()
            .prefix("cellbox-vm-fork-")
            .tempdir()
            .map_err(|e| Error::io("creating the fork's snapshot folder", e))?;
        self.save(dir.path()).await?;
        // The copy maps its memory file and copies its disk: the folder can go.
        let like_this = RestoreWith {
            boot_timeout: self.boot_timeout,
            default_timeout: self.default_timeout,
            vcpus: self.control.vcpus,
            memory: self.control.memory,
        };
        like_this.restore(dir.path()).await
    }

    /// Saves the whole VM (memory, processes, disk writes; see
    /// [`Vm::snapshot`]) into the new folder `dir`; the VM is paused
    /// meanwhile and then goes on. [`MicroVmExecutor::restore`] starts
    /// copies of it. VMs with a network card cannot be saved yet.
    pub async fn save(&mut self, dir: &Path) -> Result<()> {
        if self.network.is_some() {
            return Err(unavailable(
                "a microVM with a network card cannot be snapshotted yet",
            ));
        }
        let vm = self
            .vm
            .take()
            .ok_or_else(|| unavailable("the microVM has stopped"))?;
        let path = dir.to_path_buf();
        let (vm, saved) = tokio::task::spawn_blocking(move || {
            let saved = vm.snapshot(&path);
            (vm, saved)
        })
        .await
        .map_err(|e| unavailable(format!("snapshotting the VM failed: {e}")))?;
        self.vm = Some(vm);
        saved.map_err(|e| unavailable(e.to_string()))
    }

    /// A VM restored from the folder `dir` that [`MicroVmExecutor::save`]
    /// made, its guest reconnected and given fresh randomness. Its vCPUs and
    /// memory are the saved VM's; `config` gives the timeouts (and the CPUs
    /// and memory its usage reports).
    pub async fn restore(dir: &Path, config: &MicroVmConfig) -> Result<MicroVmExecutor> {
        let with = RestoreWith {
            boot_timeout: config.boot_timeout,
            default_timeout: config.default_timeout,
            vcpus: u32::from(config.vcpus),
            memory: u64::from(config.memory_mib) << 20,
        };
        with.restore(dir).await
    }

    /// How this VM's boot went (`None` from a guest that did not say, and
    /// for a VM restored from the warm snapshot).
    pub fn boot_timeline(&self) -> Option<BootTimeline> {
        self.boot
    }

    /// The guest's serial console so far (kernel messages at the kernel's
    /// log level, `quiet` unless [`MicroVmConfig::kernel_args`] say otherwise).
    pub fn console(&self) -> String {
        self.vm
            .as_ref()
            .map(|vm| vm.console().text())
            .unwrap_or_default()
    }
}

/// Waits for guest-init to listen on vsock, then says hello.
async fn connect(vm: &Vm, boot_timeout: Duration) -> Result<GuestClient> {
    let connector = vm.vsock().expect("configured above").clone();
    let deadline = Instant::now() + boot_timeout;
    let died = |vm: &Vm, what: String| {
        let console = vm.console().text();
        let tail: String = console
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        Error::SandboxDied {
            reason: format!("{what}; last console lines:\n{tail}"),
        }
    };
    let stream = loop {
        if let Some(reason) = vm.exit_reason() {
            return Err(died(
                vm,
                format!("the VM stopped while booting ({reason:?})"),
            ));
        }
        if Instant::now() >= deadline {
            return Err(died(
                vm,
                format!("guest-init did not answer on vsock within {boot_timeout:?}"),
            ));
        }
        let attempt = connector.clone();
        let result = tokio::task::spawn_blocking(move || {
            attempt.connect(VSOCK_PORT, Duration::from_secs(1))
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?;
        match result {
            Ok(stream) => break stream,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(died(vm, format!("vsock: {e}"))),
        }
    };
    stream
        .set_nonblocking(true)
        .map_err(|e| Error::io("configuring the guest connection", e))?;
    let stream = tokio::net::UnixStream::from_std(stream)
        .map_err(|e| Error::io("configuring the guest connection", e))?;
    GuestClient::connect(stream, boot_timeout).await
}

#[async_trait]
impl GuestBackend for MicroVmExecutor {
    fn kind(&self) -> Backend {
        Backend::Vm
    }

    fn session(&self) -> &GuestSession {
        &self.session
    }

    fn session_mut(&mut self) -> &mut GuestSession {
        &mut self.session
    }

    fn control(&self) -> Arc<dyn GuestControl> {
        self.control.clone()
    }

    async fn copy_whole(&mut self) -> Result<Option<Box<dyn crate::guest::GuestExecutor>>> {
        if self.network.is_some() {
            return Ok(None); // not yet: pickled state instead
        }
        Ok(Some(Box::new(self.fork().await?)))
    }

    async fn save_whole(&mut self, dir: &Path) -> Result<bool> {
        if self.network.is_some() {
            return Ok(false); // not yet: pickled state instead
        }
        self.save(dir).await.map(|()| true)
    }

    async fn stop_guest(&mut self) -> Result<()> {
        if let Some(mut vm) = self.vm.take() {
            // guest-init powers the VM off after a shutdown; stop it regardless.
            tokio::task::spawn_blocking(move || {
                vm.wait(Duration::from_secs(5));
                vm.stop();
            })
            .await
            .map_err(|e| Error::SandboxDied {
                reason: e.to_string(),
            })?;
        }
        self.network = None;
        Ok(())
    }
}

/// What a VM restored from a snapshot runs with.
struct RestoreWith {
    boot_timeout: Duration,
    default_timeout: Duration,
    vcpus: u32,
    memory: u64,
}

impl RestoreWith {
    async fn restore(&self, dir: &Path) -> Result<MicroVmExecutor> {
        let path = dir.to_path_buf();
        let vm = tokio::task::spawn_blocking(move || Vm::restore(&path, RestoreOptions::default()))
            .await
            .map_err(|e| unavailable(format!("restoring the VM failed: {e}")))?
            .map_err(|e| unavailable(e.to_string()))?;
        let client = connect(&vm, self.boot_timeout).await?;
        let control = Arc::new(MicroVmControl {
            vm: vm.control(),
            vcpus: self.vcpus,
            memory: self.memory,
        });
        Ok(MicroVmExecutor {
            session: GuestSession::new(client, self.default_timeout),
            control,
            vm: Some(vm),
            boot: None,
            boot_timeout: self.boot_timeout,
            default_timeout: self.default_timeout,
            network: None,
        })
    }
}

/// Pauses the VM by parking its vCPUs; measures their CPU time. (What the
/// guest uses inside its memory and disk is not read yet: the totals are.)
#[derive(Debug)]
struct MicroVmControl {
    vm: cellbox_vmm::VmControl,
    vcpus: u32,
    memory: u64,
}

impl GuestControl for MicroVmControl {
    fn pause(&self) -> Result<()> {
        self.vm.pause().map_err(|e| Error::SandboxDied {
            reason: e.to_string(),
        })
    }

    fn resume(&self) -> Result<()> {
        self.vm.resume();
        Ok(())
    }

    fn usage(&self) -> Result<Usage> {
        Ok(Usage {
            cpus: self.vcpus,
            cpu_time: self.vm.cpu_time(),
            memory_total: self.memory,
            ..Usage::default()
        })
    }
}
