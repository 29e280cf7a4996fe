//! A running VM: KVM setup, guest memory, devices, the device event loop and
//! the vCPU threads, and stopping it all from the host at any moment.

use std::os::unix::thread::JoinHandleExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{boot, cpuid, mptable, regs};
use crate::config::VmConfig;
use crate::devices::bus::{Bus, lock};
use crate::devices::legacy::{ConsoleLog, SerialDevice};
use crate::devices::virtio::block::{BlockDevice, CowDisk};
use crate::devices::virtio::mmio::QUEUE_NOTIFY_OFFSET;
use crate::devices::virtio::net::NetDevice;
use crate::devices::virtio::vsock::{VsockConnector, VsockDevice, unix};
use crate::devices::virtio::{IrqTrigger, MmioTransport, VirtioDevice};
use crate::error::VmError;
use crate::layout::*;
use crate::pause::PauseGate;
use crate::seccomp::{self, ThreadKind};
use crate::snapshot::vcpu_state::{self, VcpuState};
use crate::snapshot::{
    self, MEMORY_FILE, RestoreOptions, SavedConfig, SnapshotState, VmState, memory,
};
use crate::vcpu::{self, ExitReason};

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// State the vCPU threads share with the VM handle.
pub struct Shared {
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    stop: AtomicBool,
    exit: Mutex<Option<ExitReason>>,
    exited: Condvar,
    first_entry: OnceLock<Instant>,
    /// The vCPU threads, while they may be signalled (emptied before they
    /// are joined).
    vcpu_threads: Mutex<Vec<libc::pthread_t>>,
    pub(crate) pause: PauseGate,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("exit", &*lock(&self.exit))
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_first_entry(&self) {
        let _ = self.first_entry.set(Instant::now());
    }

    /// Records the first exit reason and makes every vCPU leave the guest.
    pub(crate) fn finish(&self, reason: ExitReason) {
        {
            let mut exit = lock(&self.exit);
            if exit.is_none() {
                *exit = Some(reason);
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        self.exited.notify_all();
        self.pause.wake();
        for &thread in lock(&self.vcpu_threads).iter() {
            kick(thread);
        }
    }
}

/// The signal that kicks a vCPU out of `KVM_RUN` (its handler does nothing).
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 4
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a vCPU thread we spawned; signalling a thread that
    // already exited but was not joined yet is harmless (the id stays valid until join).
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}

/// Pauses, resumes and measures a running [`Vm`] (see [`Vm::control`]).
#[derive(Debug, Clone)]
pub struct VmControl {
    shared: Arc<Shared>,
}

impl VmControl {
    /// Parks every vCPU outside the guest and returns once all have; the
    /// guest uses no CPU until [`VmControl::resume`].
    pub fn pause(&self) -> Result<(), VmError> {
        let shared = &self.shared;
        shared.pause.request(true);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let threads = lock(&shared.vcpu_threads);
            if shared.stopping() || threads.is_empty() {
                return Err(VmError::Stopped);
            }
            let count = threads.len();
            // A kick can land just before KVM_RUN; repeat until all parked.
            for &thread in threads.iter() {
                kick(thread);
            }
            drop(threads);
            if shared.pause.wait_parked(count, Duration::from_millis(2)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                shared.pause.request(false);
                return Err(VmError::Stopped);
            }
        }
    }

    /// Lets the vCPUs enter the guest again.
    pub fn resume(&self) {
        self.shared.pause.request(false);
    }

    /// CPU time the vCPU threads have used (zero once the VM stopped).
    pub fn cpu_time(&self) -> Duration {
        let threads = lock(&self.shared.vcpu_threads);
        threads.iter().map(|&thread| thread_cpu_time(thread)).sum()
    }
}

/// The CPU time of a thread we spawned and have not joined.
fn thread_cpu_time(thread: libc::pthread_t) -> Duration {
    let mut clock: libc::clockid_t = 0;
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `thread` is a live vCPU thread (the caller holds the lock that
    // `Vm::stop` takes before joining them); both out-pointers are valid.
    let ok = unsafe {
        libc::pthread_getcpuclockid(thread, &mut clock) == 0
            && libc::clock_gettime(clock, &mut time) == 0
    };
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// A running microVM. Dropping it stops it.
pub struct Vm {
    shared: Arc<Shared>,
    vcpus: Vec<JoinHandle<()>>,
    event_loop: Option<(JoinHandle<()>, EventFd)>,
    unix_listener: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
    console: ConsoleLog,
    vsock: Option<VsockConnector>,
    disks: Vec<Arc<Mutex<BlockDevice>>>,
    serial: Arc<Mutex<SerialDevice>>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    saved_config: SavedConfig,
    has_net: bool,
    started: Instant,
    // Fields drop in order: the vCPUs and the VM (and with it KVM's memory
    // slots, which point into guest RAM) go before the RAM is unmapped, and
    // all only after `Drop` stopped and joined the vCPU and device threads.
    vcpu_fds: Vec<Arc<Mutex<VcpuFd>>>,
    vm_fd: VmFd,
    memory: GuestMemoryMmap,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// Everything on the buses, made by [`Devices::build`].
struct Devices {
    pio: Bus,
    mmio: Bus,
    console: ConsoleLog,
    serial: Arc<Mutex<SerialDevice>>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    subscribers: Vec<Subscriber>,
    disks: Vec<Arc<Mutex<BlockDevice>>>,
    vsock: Option<VsockConnector>,
    unix_listener: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
}

impl Vm {
    /// Builds the VM from `config` and starts its vCPUs.
    pub fn start(config: VmConfig) -> Result<Vm, VmError> {
        let started = Instant::now();
        config.validate().map_err(VmError::Config)?;
        let (kvm, vm) = create_vm()?;
        // Memory slots first: on some hosts (PVM) adding a slot after the
        // in-kernel irqchip exists costs milliseconds, before it microseconds.
        let mem_size = u64::from(config.memory_mib) << 20;
        let mem =
            GuestMemoryMmap::from_ranges(&guest_ranges(mem_size)).map_err(|e| VmError::Memory {
                mib: config.memory_mib,
                reason: e.to_string(),
            })?;
        register_memory(&vm, &mem, config.memory_mib)?;
        create_irqchip(&vm, config.irqchip)?;
        regs::write_boot_tables(&mem)?;
        mptable::write(&mem, config.vcpus)?;
        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        // Words after " -- " are init's arguments; device entries join the kernel's part.
        let mut cmdline = Cmdline::try_from(&config.cmdline, CMDLINE_MAX_SIZE)
            .map_err(boot::BootError::Cmdline)?;
        let devices = Devices::build(&vm, &mem, &config, &mut cmdline, None)?;
        boot::write_boot_data(&mem, &kernel, &cmdline, mem_size)?;
        let irqchip = config.irqchip;
        Vm::assemble(kvm, vm, mem, &config, devices, started, |vcpu, id| {
            regs::setup_msrs(vcpu)?;
            regs::setup_fpu(vcpu)?;
            if irqchip {
                regs::setup_lapic(vcpu)?;
            }
            if id == 0 {
                regs::setup_boot_vcpu(vcpu, kernel.entry.0)?;
            }
            Ok(())
        })
    }

    /// Makes a VM from the snapshot in `dir` (see [`Vm::snapshot`]) and lets
    /// it go on from where the snapshotted VM was. Many VMs restored from one
    /// snapshot share its memory file's pages until they write them.
    pub fn restore(dir: &Path, options: RestoreOptions) -> Result<Vm, VmError> {
        let started = Instant::now();
        let state = SnapshotState::read(dir)?;
        let config = state.config.restored(&options)?;
        let (kvm, vm) = create_vm()?;
        vcpu_state::check_xsave_fits(&kvm)?;
        let mem_size = u64::from(config.memory_mib) << 20;
        let mem = memory::map_private(&dir.join(MEMORY_FILE), &guest_ranges(mem_size))?;
        register_memory(&vm, &mem, config.memory_mib)?;
        create_irqchip(&vm, config.irqchip)?;
        let waited = state.waited();
        state.vm.restore(&vm, waited)?;
        // The guest read its command line long ago: device entries go nowhere.
        let mut unused = Cmdline::new(CMDLINE_MAX_SIZE).map_err(boot::BootError::Cmdline)?;
        let devices = Devices::build(&vm, &mem, &config, &mut unused, Some((dir, &state)))?;
        let vm = Vm::assemble(kvm, vm, mem, &config, devices, started, |vcpu, id| {
            state.vcpus[id].restore(vcpu, waited)
        })?;
        for transport in &vm.transports {
            lock(transport).raise_pending();
        }
        Ok(vm)
    }

    /// Writes everything this VM is into the folder `dir` (made if missing;
    /// files of an earlier snapshot there are replaced), so that
    /// [`Vm::restore`] can make VMs that go on from this moment. The VM is
    /// paused meanwhile and then goes on as it was (a paused VM stays paused).
    /// Its open vsock streams stay open; restored VMs do not have them.
    pub fn snapshot(&self, dir: &Path) -> Result<(), VmError> {
        if self.has_net {
            return Err(VmError::Snapshot(
                "VMs with a network card cannot be snapshotted yet".into(),
            ));
        }
        let kvm = Kvm::new().map_err(|e| VmError::KvmUnavailable(format!("/dev/kvm: {e}")))?;
        vcpu_state::check_xsave_fits(&kvm)?;
        let msr_indices = vcpu_state::msr_indices(&kvm)?;
        std::fs::create_dir_all(dir).map_err(VmError::io("make the snapshot folder"))?;
        let control = self.control();
        let was_paused = self.shared.pause.is_paused();
        if !was_paused {
            control.pause()?;
        }
        let result = self.save_paused(dir, &msr_indices);
        if !was_paused {
            control.resume();
        }
        result
    }

    fn save_paused(&self, dir: &Path, msr_indices: &[u32]) -> Result<(), VmError> {
        // The vCPUs are parked; holding every device keeps the device thread
        // off guest memory and the queues while they are saved.
        let transports: Vec<_> = self.transports.iter().map(|t| lock(t)).collect();
        let device_handles: Vec<_> = transports.iter().map(|t| t.device()).collect();
        let devices: Vec<_> = device_handles.iter().map(|d| lock(d)).collect();
        let mut saved_transports = Vec::new();
        for (index, (transport, device)) in transports.iter().zip(&devices).enumerate() {
            let saved = transport
                .save(&**device, dir, &format!("device-{index}"))
                .map_err(VmError::Snapshot)?;
            saved_transports.push(saved);
        }
        let irqchip = self.saved_config.irqchip;
        let vcpus = self
            .vcpu_fds
            .iter()
            .map(|vcpu| VcpuState::save(&lock(vcpu), msr_indices, irqchip))
            .collect::<Result<Vec<_>, _>>()?;
        let state = SnapshotState {
            format: snapshot::FORMAT,
            config: self.saved_config.clone(),
            vcpus,
            vm: VmState::save(&self.vm_fd, irqchip)?,
            taken_at_ns: SnapshotState::now_ns(),
            serial: lock(&self.serial).save(),
            transports: saved_transports,
        };
        memory::save(&self.memory, &dir.join(MEMORY_FILE))
            .map_err(VmError::io("write guest memory"))?;
        state.write(dir)
    }

    /// The VM around built memory and devices: the device thread, then the
    /// vCPUs, each set up by `init(vcpu, index)` after its CPUID.
    fn assemble(
        kvm: Kvm,
        vm: VmFd,
        memory: GuestMemoryMmap,
        config: &VmConfig,
        devices: Devices,
        started: Instant,
        init: impl Fn(&VcpuFd, usize) -> Result<(), VmError>,
    ) -> Result<Vm, VmError> {
        let event_loop = spawn_event_loop(devices.subscribers)?;
        let shared = Arc::new(Shared {
            pio: devices.pio,
            mmio: devices.mmio,
            stop: AtomicBool::new(false),
            exit: Mutex::new(None),
            exited: Condvar::new(),
            first_entry: OnceLock::new(),
            vcpu_threads: Mutex::new(Vec::new()),
            pause: PauseGate::default(),
        });
        let mut vm_handle = Vm {
            shared,
            vcpus: Vec::new(),
            event_loop: Some(event_loop),
            unix_listener: devices.unix_listener,
            console: devices.console,
            vsock: devices.vsock,
            disks: devices.disks,
            serial: devices.serial,
            transports: devices.transports,
            saved_config: SavedConfig::of(config),
            has_net: config.net.is_some(),
            started,
            vcpu_fds: Vec::new(),
            vm_fd: vm,
            memory,
        };
        vm_handle.start_vcpus(&kvm, config, init)?;
        Ok(vm_handle)
    }

    fn start_vcpus(
        &mut self,
        kvm: &Kvm,
        config: &VmConfig,
        init: impl Fn(&VcpuFd, usize) -> Result<(), VmError>,
    ) -> Result<(), VmError> {
        static KICK_HANDLER: Once = Once::new();
        KICK_HANDLER.call_once(|| {
            if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
                tracing::error!("cannot install the vCPU kick signal handler: {e}");
            }
        });
        let supported = cpuid::supported(kvm).map_err(VmError::kvm("report its CPUID"))?;
        let tsc_deadline = config.irqchip && kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        for id in 0..config.vcpus {
            let vcpu = self
                .vm_fd
                .create_vcpu(u64::from(id))
                .map_err(VmError::kvm("create a vCPU"))?;
            let mut vcpu_cpuid = supported.clone();
            cpuid::for_vcpu(&mut vcpu_cpuid, id, config.vcpus, tsc_deadline);
            vcpu.set_cpuid2(&vcpu_cpuid)
                .map_err(VmError::kvm("set CPUID"))?;
            init(&vcpu, usize::from(id))?;
            self.vcpu_fds.push(Arc::new(Mutex::new(vcpu)));
        }
        for (id, vcpu) in self.vcpu_fds.iter().enumerate() {
            let shared = self.shared.clone();
            let vcpu = vcpu.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu::run(vcpu, id as u8, shared))
                .map_err(VmError::io("spawn a vCPU thread"))?;
            lock(&self.shared.vcpu_threads).push(thread.as_pthread_t());
            self.vcpus.push(thread);
        }
        Ok(())
    }

    /// The guest's serial console output.
    pub fn console(&self) -> &ConsoleLog {
        &self.console
    }

    /// Opens streams to guest vsock ports (if the VM has a vsock device).
    pub fn vsock(&self) -> Option<&VsockConnector> {
        self.vsock.as_ref()
    }

    /// The VM's disks, in order (to inspect their copy-on-write layers).
    pub fn disk(&self, index: usize) -> Option<std::sync::MutexGuard<'_, BlockDevice>> {
        self.disks.get(index).map(|d| lock(d))
    }

    /// Guest RAM (for inspection and tests).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Time from [`Vm::start`] to the boot vCPU's first entry into the guest.
    pub fn time_to_first_entry(&self) -> Option<Duration> {
        self.shared
            .first_entry
            .get()
            .map(|t| t.duration_since(self.started))
    }

    /// A handle that pauses, resumes and measures this VM from any thread.
    pub fn control(&self) -> VmControl {
        VmControl {
            shared: self.shared.clone(),
        }
    }

    /// Why the VM stopped, if it did.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        lock(&self.shared.exit).clone()
    }

    /// Waits up to `timeout` for the VM to stop by itself.
    pub fn wait(&self, timeout: Duration) -> Option<ExitReason> {
        let guard = lock(&self.shared.exit);
        let (guard, _) = self
            .shared
            .exited
            .wait_timeout_while(guard, timeout, |exit| exit.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.clone()
    }

    /// Stops the VM now (vCPUs leave the guest wherever they are) and returns
    /// why it ended; [`ExitReason::Stopped`] if it was still running.
    pub fn stop(&mut self) -> ExitReason {
        self.shared.finish(ExitReason::Stopped);
        // From here on only this loop signals the threads it joins.
        lock(&self.shared.vcpu_threads).clear();
        let deadline = Instant::now() + Duration::from_secs(5);
        for thread in self.vcpus.drain(..) {
            // A kick can land just before KVM_RUN; repeat until the thread is out.
            while !thread.is_finished() && Instant::now() < deadline {
                kick(thread.as_pthread_t());
                std::thread::sleep(Duration::from_micros(200));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::error!("a vCPU thread did not stop within 5 s; detached");
            }
        }
        if let Some((thread, stop)) = self.event_loop.take() {
            let _ = stop.write(1);
            let _ = thread.join();
        }
        if let Some((thread, stop)) = self.unix_listener.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        self.exit_reason().unwrap_or(ExitReason::Stopped)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Opens `/dev/kvm` and makes an empty VM.
fn create_vm() -> Result<(Kvm, VmFd), VmError> {
    let kvm = Kvm::new().map_err(|e| VmError::KvmUnavailable(format!("/dev/kvm: {e}")))?;
    let vm = kvm.create_vm().map_err(VmError::kvm("create a VM"))?;
    Ok((kvm, vm))
}

/// Guest RAM's regions for `size` bytes (skipping the MMIO hole).
fn guest_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    ram_ranges(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect()
}

/// Registers every region of `mem` with KVM.
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap, mib: u32) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::Memory {
                mib,
                reason: e.to_string(),
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`; the `Vm` holds it
        // (field `memory`) until its vCPUs have stopped.
        unsafe { vm.set_user_memory_region(region) }.map_err(VmError::kvm("map guest memory"))?;
    }
    Ok(())
}

/// The TSS and, with `irqchip`, the in-kernel interrupt controllers and PIT.
fn create_irqchip(vm: &VmFd, irqchip: bool) -> Result<(), VmError> {
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(VmError::kvm("place the TSS"))?;
    if irqchip {
        vm.create_irq_chip()
            .map_err(VmError::kvm("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(VmError::kvm("create the PIT"))?;
    }
    Ok(())
}

impl Devices {
    /// The serial port and `config`'s virtio devices, attached in a fixed
    /// order (disks, vsock, net) so that a restored VM's devices sit where
    /// the snapshot's were; `restoring` gives their saved state.
    fn build(
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        config: &VmConfig,
        cmdline: &mut Cmdline,
        restoring: Option<(&Path, &SnapshotState)>,
    ) -> Result<Devices, VmError> {
        let console = ConsoleLog::default();
        let mut pio = Bus::default();
        let serial_irq = irq_event(vm, config.irqchip, COM1_IRQ)?;
        let serial = match restoring {
            Some((_, state)) => SerialDevice::restore(serial_irq, console.clone(), &state.serial)
                .map_err(VmError::Snapshot)?,
            None => SerialDevice::new(serial_irq, console.clone()),
        };
        let serial = Arc::new(Mutex::new(serial));
        pio.insert(u64::from(COM1_PORT), 8, serial.clone())
            .map_err(|e| VmError::Devices(e.to_string()))?;

        let mut slots = DeviceSlots::new()?;
        let mut devices = Devices {
            pio,
            mmio: Bus::default(),
            console,
            serial,
            transports: Vec::new(),
            subscribers: Vec::new(),
            disks: Vec::new(),
            vsock: None,
            unix_listener: None,
        };
        for disk in &config.disks {
            let path = disk.path.display().to_string();
            let saved = restoring
                .map(|(dir, _)| dir.join(format!("device-{}", devices.transports.len())))
                .filter(|prefix| prefix.with_extension("written").exists());
            let cow = match &saved {
                Some(prefix) => CowDisk::open_saved(&disk.path, prefix),
                None => CowDisk::open(&disk.path, disk.writable),
            }
            .map_err(|source| VmError::Disk { path, source })?;
            let device = Arc::new(Mutex::new(
                BlockDevice::new(cow, &disk.id).map_err(VmError::io("create a disk's events"))?,
            ));
            devices.attach(&mut slots, vm, mem, config, cmdline, device.clone())?;
            devices.subscribers.push(device.clone());
            devices.disks.push(device);
        }
        if let Some(vsock_config) = &config.vsock {
            let (mut device, connector) = VsockDevice::new(vsock_config.guest_cid)
                .map_err(VmError::io("create the vsock events"))?;
            if let Some((dir, _)) = restoring {
                let prefix = dir.join(format!("device-{}", devices.transports.len()));
                device
                    .reset_saved_connections(&prefix)
                    .map_err(VmError::Snapshot)?;
            }
            let device = Arc::new(Mutex::new(device));
            devices.attach(&mut slots, vm, mem, config, cmdline, device.clone())?;
            devices.subscribers.push(device);
            if let Some(path) = &vsock_config.unix_socket {
                let stop = Arc::new(AtomicBool::new(false));
                let thread = unix::serve(path, connector.clone(), stop.clone())
                    .map_err(VmError::io("serve the vsock Unix socket"))?;
                devices.unix_listener = Some((thread, stop));
            }
            devices.vsock = Some(connector);
        }
        if let Some(net) = &config.net {
            let backend = net
                .backend
                .try_clone()
                .map_err(VmError::io("duplicate the network socket"))?;
            let device = NetDevice::new(net.mac, backend, net.filter.clone())
                .map_err(VmError::io("create the network card's events"))?;
            let device = Arc::new(Mutex::new(device));
            devices.attach(&mut slots, vm, mem, config, cmdline, device.clone())?;
            devices.subscribers.push(device);
        }
        if let Some((_, state)) = restoring {
            if state.transports.len() != devices.transports.len() {
                return Err(VmError::Snapshot(format!(
                    "the snapshot has {} virtio devices, the VM {}",
                    state.transports.len(),
                    devices.transports.len()
                )));
            }
            for (transport, saved) in devices.transports.iter().zip(&state.transports) {
                lock(transport).restore(saved).map_err(VmError::Snapshot)?;
            }
        }
        Ok(devices)
    }

    fn attach(
        &mut self,
        slots: &mut DeviceSlots,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        config: &VmConfig,
        cmdline: &mut Cmdline,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<(), VmError> {
        let transport = slots.attach(vm, mem, config, &mut self.mmio, cmdline, device)?;
        self.transports.push(transport);
        Ok(())
    }
}

/// An event that raises `gsi` (an irqfd when the in-kernel irqchip exists).
fn irq_event(vm: &VmFd, irqchip: bool, gsi: u32) -> Result<EventFd, VmError> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::io("create an IRQ event"))?;
    if irqchip {
        vm.register_irqfd(&evt, gsi)
            .map_err(VmError::kvm("connect an IRQ"))?;
    }
    Ok(evt)
}

/// MMIO windows and IRQ lines for virtio devices.
struct DeviceSlots {
    windows: AddressAllocator,
    irqs: IdAllocator,
}

impl DeviceSlots {
    fn new() -> Result<DeviceSlots, VmError> {
        let err = |e: vm_allocator::Error| VmError::Devices(e.to_string());
        Ok(DeviceSlots {
            windows: AddressAllocator::new(MMIO_DEVICES_START, MMIO_DEVICES_MAX * MMIO_DEVICE_SIZE)
                .map_err(err)?,
            irqs: IdAllocator::new(IRQ_FIRST_VIRTIO, IRQ_LAST).map_err(err)?,
        })
    }

    /// Gives `device` a window, an IRQ and a transport, and tells the kernel about it.
    fn attach(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        config: &VmConfig,
        mmio: &mut Bus,
        cmdline: &mut Cmdline,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Arc<Mutex<MmioTransport>>, VmError> {
        let err = |e: vm_allocator::Error| VmError::Devices(e.to_string());
        let window = self
            .windows
            .allocate(MMIO_DEVICE_SIZE, MMIO_DEVICE_SIZE, AllocPolicy::FirstMatch)
            .map_err(err)?;
        let irq = self.irqs.allocate_id().map_err(err)?;
        let base = window.start();
        let trigger = Arc::new(IrqTrigger::new(irq_event(vm, config.irqchip, irq)?));
        let transport = MmioTransport::new(device, mem.clone(), trigger)
            .map_err(VmError::io("clone a queue event"))?;
        let mut index = 0u32;
        while let Some(evt) = transport.queue_event(index as usize) {
            // With an ioeventfd, QueueNotify writes never leave KVM; without, the
            // transport signals the same event from the MMIO exit.
            let addr = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
            if let Err(e) = vm.register_ioevent(evt, &addr, index) {
                tracing::debug!("no ioeventfd for queue {index}: {e}");
            }
            index += 1;
        }
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(base, MMIO_DEVICE_SIZE, transport.clone())
            .map_err(|e| VmError::Devices(e.to_string()))?;
        cmdline
            .add_virtio_mmio_device(MMIO_DEVICE_SIZE, GuestAddress(base), irq, None)
            .map_err(boot::BootError::Cmdline)?;
        Ok(transport)
    }
}

/// Ends the event loop when its event fires.
struct StopOnEvent {
    evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopOnEvent {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.evt.read();
        self.stop.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("cannot watch the event loop's stop event: {e:?}");
        }
    }
}

/// The device thread: queue notifications and vsock streams, until stopped.
fn spawn_event_loop(subscribers: Vec<Subscriber>) -> Result<(JoinHandle<()>, EventFd), VmError> {
    let stop_evt =
        EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::io("create the stop event"))?;
    let theirs = stop_evt
        .try_clone()
        .map_err(VmError::io("clone the stop event"))?;
    let mut manager = EventManager::<Subscriber>::new().map_err(|e| VmError::Io {
        what: "create the event loop",
        source: std::io::Error::other(format!("{e:?}")),
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    manager.add_subscriber(Arc::new(Mutex::new(StopOnEvent {
        evt: theirs,
        stop: stop.clone(),
    })));
    for subscriber in subscribers {
        manager.add_subscriber(subscriber);
    }
    let thread = seccomp::spawn_filtered("vmm-devices", ThreadKind::Io, move || {
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = manager.run() {
                tracing::error!("device event loop failed: {e:?}");
                break;
            }
        }
    })
    .map_err(VmError::io("spawn the device thread"))?;
    Ok((thread, stop_evt))
}
