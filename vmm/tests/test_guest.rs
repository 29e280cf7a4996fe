//! The real devices under real KVM, driven by the freestanding test guest
//! (`vmm/test-guest/`): boot, serial, virtio-blk, virtio-vsock, and every way
//! a VM ends. Runs on any host with a usable /dev/kvm, PVM included.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use cellbox_vmm::{ExitReason, Vm, VmConfig};

mod common;
use common::{WAIT, base_image, echo, finished, guest, lines};

#[test]
fn boots_through_the_linux_entry_path_and_prints_on_serial() {
    let vm = Vm::start(VmConfig::new(guest()).with_cmdline("tg.only=serial")).unwrap();
    assert_eq!(
        finished(&vm),
        ExitReason::Reset,
        "the i8042 reset ends the VM"
    );
    assert_eq!(
        lines(&vm),
        ["tg: hello", "tg: cmdline tg.only=serial", "tg: done"]
    );
    assert!(vm.time_to_first_entry().is_some());
}

#[test]
fn halt_with_interrupts_off_and_triple_faults_stop_the_vm() {
    let config = VmConfig::new(guest())
        .with_cmdline("tg.only=serial tg.exit=hlt")
        .without_irqchip();
    assert_eq!(finished(&Vm::start(config).unwrap()), ExitReason::Halted);
    let config = VmConfig::new(guest()).with_cmdline("tg.only=serial tg.exit=triple");
    assert_eq!(
        finished(&Vm::start(config).unwrap()),
        ExitReason::TripleFault
    );
}

#[test]
fn the_host_stops_a_spinning_guest_at_once() {
    let config = VmConfig::new(guest())
        .with_cmdline("tg.only=serial tg.exit=spin")
        .with_vcpus(2);
    let mut vm = Vm::start(config).unwrap();
    assert!(
        vm.console().wait_for("tg: spinning", WAIT),
        "{}",
        vm.console().text()
    );
    assert_eq!(vm.exit_reason(), None);
    let t = Instant::now();
    assert_eq!(vm.stop(), ExitReason::Stopped);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn virtio_blk_reads_the_base_and_writes_only_the_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let image = base_image(dir.path());
    let before = std::fs::read(&image).unwrap();
    let config = VmConfig::new(guest())
        .with_cmdline("tg.exit=reset")
        .with_disk(&image, true);
    let vm = Vm::start(config).unwrap();
    assert_eq!(finished(&vm), ExitReason::Reset);
    let out = lines(&vm);
    for expected in [
        "tg: mmio 0xd0000000 device 2",
        "tg: blk capacity 2048",
        "tg: blk sector0 CELLBOX BASE IMG",
        "tg: blk read status 0",
        "tg: blk write status 0",
        "tg: blk sector1 written by the test guest",
        "tg: blk id cellbox-vda",
        "tg: blk past-end status 1",
    ] {
        assert!(
            out.iter().any(|l| l == expected),
            "missing {expected:?} in {out:#?}"
        );
    }
    // The write is in this VM's overlay, the base image is byte-for-byte unchanged.
    let mut sector = [0u8; 512];
    vm.disk(0).unwrap().disk().read_at(&mut sector, 1).unwrap();
    assert!(sector.starts_with(b"written by the test guest"));
    assert_eq!(std::fs::read(&image).unwrap(), before);
}

#[test]
fn read_only_disks_refuse_guest_writes() {
    let dir = tempfile::tempdir().unwrap();
    let image = base_image(dir.path());
    let vm = Vm::start(VmConfig::new(guest()).with_disk(&image, false)).unwrap();
    assert_eq!(finished(&vm), ExitReason::Reset);
    let out = lines(&vm);
    assert!(out.contains(&"tg: blk read-only".to_string()), "{out:#?}");
    assert!(
        out.contains(&"tg: blk write status 1".to_string()),
        "{out:#?}"
    );
}

fn vsock_vm(extra: impl FnOnce(VmConfig) -> VmConfig) -> Vm {
    let vm = Vm::start(extra(VmConfig::new(guest()).with_vsock(7))).unwrap();
    assert!(
        vm.console().wait_for("tg: vsock listening 1234", WAIT),
        "{}",
        vm.console().text()
    );
    vm
}

#[test]
fn vsock_carries_data_both_ways_and_refuses_closed_ports() {
    let vm = vsock_vm(|c| c);
    assert!(lines(&vm).contains(&"tg: vsock cid 7".to_string()));
    let connector = vm.vsock().unwrap();
    let refused = connector.connect(4321, WAIT).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    let mut stream = connector.connect(1234, WAIT).unwrap();
    let payload: Vec<u8> = (0..64u8).collect();
    assert_eq!(echo(&mut stream, &payload), payload);
    assert_eq!(echo(&mut stream, b"second packet"), b"second packet");
    drop(stream); // SHUTDOWN to the guest, which answers RST and ends
    assert_eq!(finished(&vm), ExitReason::Reset);
    let out = lines(&vm);
    assert!(
        out.contains(&"tg: vsock refused 4321".to_string()),
        "{out:#?}"
    );
    assert!(out.contains(&"tg: vsock closed".to_string()), "{out:#?}");
}

#[test]
fn vsock_unix_socket_speaks_connect_ok() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vsock.sock");
    let vm = vsock_vm(|c| c.with_vsock_unix_socket(&socket));
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream.write_all(b"CONNECT 1234\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK ") && line.ends_with('\n'), "{line:?}");
    stream.write_all(b"through the unix socket").unwrap();
    let mut back = [0u8; 23];
    reader.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"through the unix socket");
    drop((stream, reader));
    assert_eq!(finished(&vm), ExitReason::Reset);
}

#[test]
fn a_missing_kernel_or_disk_is_a_clear_error() {
    let err = Vm::start(VmConfig::new("/nonexistent/vmlinux")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    let err = Vm::start(VmConfig::new(guest()).with_disk("/nonexistent.img", true)).unwrap_err();
    assert!(err.to_string().contains("/nonexistent.img"), "{err}");
    let err = Vm::start(VmConfig::new(guest()).with_vcpus(0)).unwrap_err();
    assert!(err.to_string().contains("vcpus"), "{err}");
}

#[test]
fn init_arguments_stay_after_the_device_entries() {
    let dir = tempfile::tempdir().unwrap();
    let image = base_image(dir.path());
    let config = VmConfig::new(guest())
        .with_cmdline("tg.only=serial -- --vsock 1024")
        .with_disk(&image, true);
    let vm = Vm::start(config).unwrap();
    assert_eq!(finished(&vm), ExitReason::Reset);
    let expected = "tg: cmdline tg.only=serial virtio_mmio.device=4K@0xd0000000:5 -- --vsock 1024";
    assert!(
        lines(&vm).contains(&expected.to_string()),
        "{:#?}",
        lines(&vm)
    );
}
