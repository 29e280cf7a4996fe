//! vCPU threads. [`handle_exit`] decides what one VM exit means, as a free
//! function tests call directly; [`run`] is the loop around `KVM_RUN`.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::Bus;
use crate::devices::bus::lock;
use crate::layout::I8042_COMMAND_PORT;
use crate::machine::Shared;
use crate::seccomp::{self, ThreadKind};

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 0xfe, or KVM's reset event): Linux's reboot/power-off.
    Reset,
    /// The guest asked KVM for shutdown (a system event).
    Shutdown,
    /// Triple fault: the guest crashed beyond recovery.
    TripleFault,
    /// HLT with nothing to wake the vCPU (no in-kernel irqchip).
    Halted,
    /// The host stopped the VM.
    Stopped,
    /// KVM reported an error it cannot continue from.
    Failed(String),
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Enter the guest again.
    Continue,
    /// Stop the VM.
    Stop(ExitReason),
}

/// Handles one exit: port I/O and MMIO go to the buses; resets, triple
/// faults and halts stop the VM.
pub fn handle_exit(exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus) -> Action {
    match exit {
        VcpuExit::IoOut(I8042_COMMAND_PORT, [0xfe]) => Action::Stop(ExitReason::Reset),
        VcpuExit::IoOut(port, data) => {
            pio.write(u64::from(port), data);
            Action::Continue
        }
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) && (port == 0x60 || port == I8042_COMMAND_PORT) {
                // i8042 status/data: empty, so keyboard probes give up quickly.
                data.fill(0);
            }
            Action::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            mmio.read(addr, data);
            Action::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            mmio.write(addr, data);
            Action::Continue
        }
        VcpuExit::Hlt => Action::Stop(ExitReason::Halted),
        VcpuExit::Shutdown => Action::Stop(ExitReason::TripleFault),
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => Action::Stop(ExitReason::Reset),
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Action::Stop(ExitReason::Shutdown),
            other => Action::Stop(ExitReason::Failed(format!("KVM system event {other}"))),
        },
        VcpuExit::FailEntry(reason, cpu) => Action::Stop(ExitReason::Failed(format!(
            "KVM could not enter the guest on CPU {cpu} (hardware reason {reason:#x})"
        ))),
        VcpuExit::InternalError => Action::Stop(ExitReason::Failed(
            "KVM internal error (emulation failed)".into(),
        )),
        VcpuExit::IrqWindowOpen | VcpuExit::Intr => Action::Continue,
        other => Action::Stop(ExitReason::Failed(format!("unexpected VM exit {other:?}"))),
    }
}

/// The vCPU thread's body: runs until an exit stops the VM or the host does.
pub fn run(vcpu: Arc<Mutex<VcpuFd>>, index: u8, shared: Arc<Shared>) {
    // A vCPU never runs the guest unfiltered: no filter, no VM.
    if let Err(e) = seccomp::apply(ThreadKind::Vcpu) {
        shared.finish(ExitReason::Failed(format!("vCPU {index}: {e}")));
        return;
    }
    if index == 0 {
        shared.mark_first_entry();
    }
    while !shared.stopping() {
        shared.pause.park_while_paused(|| shared.stopping());
        if shared.stopping() {
            break;
        }
        // Held only while in the guest: a paused vCPU's state can be read.
        let mut vcpu = lock(&vcpu);
        let action = match vcpu.run() {
            Ok(VcpuExit::InternalError) => emulation_failure(&mut vcpu),
            Ok(exit) => handle_exit(exit, &shared.pio, &shared.mmio),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Action::Continue,
            Err(e) => Action::Stop(ExitReason::Failed(format!("KVM_RUN failed: {e}"))),
        };
        if let Action::Stop(reason) = action {
            let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or_default();
            tracing::debug!(
                vcpu = index,
                ?reason,
                rip = format_args!("{rip:#x}"),
                "vCPU stopped"
            );
            shared.finish(reason);
            break;
        }
    }
}

/// KVM could not emulate an instruction (on PVM every guest-kernel
/// instruction goes through KVM's emulator). One case is ours to finish: an
/// `int3` (which the emulator only knows in real mode, and Linux runs once at
/// boot in its self-test) — step over it and deliver the #BP it raises.
/// Anything else stops the VM with the instruction bytes in the reason.
fn emulation_failure(vcpu: &mut VcpuFd) -> Action {
    let failure = {
        let run = vcpu.get_kvm_run();
        // SAFETY: KVM_RUN returned with exit reason KVM_EXIT_INTERNAL_ERROR
        // (that is what VcpuExit::InternalError means), for which KVM fills
        // the `emulation_failure`/`internal` member of the exit union.
        unsafe { run.__bindgen_anon_1.emulation_failure }
    };
    let has_bytes = failure.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
        && failure.flags
            & u64::from(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
            != 0;
    let bytes: Vec<u8> = if has_bytes {
        // SAFETY: the flag above says the instruction-bytes variant is filled in.
        let insn = unsafe { failure.__bindgen_anon_1.__bindgen_anon_1 };
        insn.insn_bytes[..usize::from(insn.insn_size).min(15)].to_vec()
    } else {
        Vec::new()
    };
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or_default();
    if bytes.first() == Some(&0xcc) && deliver_breakpoint(vcpu).is_ok() {
        tracing::debug!(
            rip = format_args!("{rip:#x}"),
            "delivered an int3 KVM could not emulate"
        );
        return Action::Continue;
    }
    Action::Stop(ExitReason::Failed(format!(
        "KVM could not emulate the instruction at {rip:#x} (suberror {}, bytes {bytes:02x?}); \
         on PVM hosts hide the CPU feature behind it with clearcpuid=",
        failure.suberror
    )))
}

/// Advances past a one-byte `int3` and injects the breakpoint exception.
fn deliver_breakpoint(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut regs = vcpu.get_regs()?;
    regs.rip += 1;
    vcpu.set_regs(&regs)?;
    let mut events = vcpu.get_vcpu_events()?;
    events.exception.injected = 1;
    events.exception.nr = 3; // #BP, a trap: RIP already points after the int3
    events.exception.has_error_code = 0;
    vcpu.set_vcpu_events(&events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::BusDevice;

    struct Echo(Vec<u8>);
    impl BusDevice for Echo {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(0x42);
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    #[test]
    fn port_and_mmio_exits_reach_devices() {
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        let mut pio = Bus::default();
        pio.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut mmio = Bus::default();
        mmio.insert(0xd000_0000, 0x1000, dev.clone()).unwrap();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, b"a"), &pio, &mmio),
            Action::Continue
        );
        let mut data = [0u8; 4];
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0xd000_0004, &mut data), &pio, &mmio),
            Action::Continue
        );
        assert_eq!(data, [0x42; 4]);
        handle_exit(VcpuExit::MmioWrite(0xd000_0070, b"bc"), &pio, &mmio);
        assert_eq!(dev.lock().unwrap().0, b"abc");
        // Nothing mapped: reads float high, writes vanish.
        let mut byte = [0u8];
        handle_exit(VcpuExit::IoIn(0x80, &mut byte), &pio, &mmio);
        assert_eq!(byte, [0xff]);
        handle_exit(VcpuExit::IoIn(0x64, &mut byte), &pio, &mmio);
        assert_eq!(byte, [0], "i8042 status reads as empty");
    }

    #[test]
    fn resets_faults_and_halts_stop_the_vm() {
        let (pio, mmio) = (Bus::default(), Bus::default());
        let stop = |reason| Action::Stop(reason);
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x64, &[0xfe]), &pio, &mmio),
            stop(ExitReason::Reset)
        );
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x64, &[0xfd]), &pio, &mmio),
            Action::Continue
        );
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &pio, &mmio),
            stop(ExitReason::TripleFault)
        );
        assert_eq!(
            handle_exit(VcpuExit::Hlt, &pio, &mmio),
            stop(ExitReason::Halted)
        );
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(0x21, 0), &pio, &mmio),
            Action::Stop(ExitReason::Failed(m)) if m.contains("0x21")
        ));
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &pio, &mmio),
            Action::Stop(ExitReason::Failed(_))
        ));
    }
}
