//! The VMM on its own, with the freestanding test guest (so it runs on any
//! KVM host, PVM included): start-up time, its own memory, and device round
//! trips; peers measured in the same run: QEMU (microvm machine, a 9-byte
//! firmware that writes one serial byte), and the same I/O done on the host;
//! VMs restored from snapshots, against booting one.
//!
//!     cargo bench -p cellbox-benches --bench vmm

#![allow(clippy::print_stdout)] // the report is this program's output

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cellbox_benches::{Sample, table};
use cellbox_vmm::{RestoreOptions, Vm, VmConfig, test_guest};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

const WAIT: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--rss-probe") {
        return rss_probe(Path::new(&args[2]));
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = test_guest::build(dir.path()).expect("building the test guest (needs gcc)");
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0x5au8; 8 << 20]).unwrap();

    println!("## Start-up (1 vCPU, 256 MiB)\n");
    let serial_only = || VmConfig::new(&guest).with_cmdline("tg.only=serial");
    let mut entry = Vec::new();
    let mut first_byte = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let vm = Vm::start(serial_only()).unwrap();
        assert!(vm.console().wait_for("tg: hello", WAIT));
        first_byte.push(started.elapsed().as_secs_f64());
        vm.wait(WAIT);
        entry.push(vm.time_to_first_entry().unwrap().as_secs_f64());
    }
    let entry = Sample::from_secs("`Vm::start` → first vCPU entry", &entry);
    let first_byte = Sample::from_secs("`Vm::start` → first guest serial byte", &first_byte);
    match qemu_first_byte(20) {
        Some(peer) => println!("{}", table(&[&entry, &first_byte], &peer)),
        None => println!(
            "{}\n(QEMU not installed: no peer)\n",
            table(&[&entry], &first_byte)
        ),
    }

    restore(&guest, dir.path(), &first_byte);

    println!("## Memory of the VMM itself (idle 1 vCPU / 256 MiB VM, guest RAM excluded)\n");
    let probe = Command::new(std::env::current_exe().unwrap())
        .arg("--rss-probe")
        .arg(&guest)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&probe.stdout);
    let field = |name: &str| kib_field(&report, name);
    println!("| measurement | KiB |\n|---|---|");
    println!(
        "| whole process RSS minus guest RAM (a fresh process running one idle VM) | {} |",
        field("process:")
    );
    println!(
        "| of which the VM added (RSS growth from `Vm::start`, guest RAM excluded) | {} |",
        field("growth:")
    );
    println!(
        "| guest RAM resident (test guest, boot data) | {} |",
        field("guest:")
    );
    if let Some(qemu) = qemu_idle_rss() {
        println!("| peer: QEMU microvm process RSS, idle, same 256 MiB | {qemu} |");
    }
    println!();

    println!("## Device round trips with the test guest\n");
    let mut per_read = Vec::new();
    for _ in 0..10 {
        let config = VmConfig::new(&guest)
            .with_cmdline("tg.bench")
            .with_disk(&image, false);
        let vm = Vm::start(config).unwrap();
        assert!(
            vm.console().wait_for("tg: blk bench start", WAIT),
            "{}",
            vm.console().text()
        );
        let started = Instant::now();
        assert!(
            vm.console().wait_for("tg: blk bench end", WAIT),
            "{}",
            vm.console().text()
        );
        per_read.push(started.elapsed().as_secs_f64() / 256.0);
    }
    let blk = Sample::from_secs(
        "virtio-blk 4 KiB read (guest request → completion)",
        &per_read,
    );
    let host_read = host_pread(&image, 2000);
    println!("{}", table(&[&blk], &host_read));

    let vm = Vm::start(VmConfig::new(&guest).with_vsock(3)).unwrap();
    assert!(vm.console().wait_for("tg: vsock listening 1234", WAIT));
    let mut stream = vm.vsock().unwrap().connect(1234, WAIT).unwrap();
    let payload = [7u8; 64];
    let echo = Sample::from_secs(
        "vsock echo of 64 bytes (host → guest → host)",
        &round_trips(&mut stream, &payload, 1000),
    );
    let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let echo_thread = std::thread::spawn(move || echo_forever(b));
    let peer = Sample::from_secs(
        "peer: Unix socket echo by a host thread",
        &round_trips(&mut a, &payload, 1000),
    );
    drop(a);
    let _ = echo_thread.join();
    println!("{}", table(&[&echo], &peer));
}

/// VMs restored from snapshots of the test guest: one taken in its printing
/// loop (→ first serial byte) and one in its vsock loop (→ first answer),
/// against a fresh boot to its first byte and, the peer, QEMU loading a
/// saved printing VM (`-incoming` from a migration file), in this run.
fn restore(guest: &Path, dir: &Path, boot_first_byte: &Sample) {
    println!("## Restore from a snapshot (1 vCPU, 256 MiB)\n");
    let ticking = dir.join("ticking");
    let vm = Vm::start(VmConfig::new(guest).with_cmdline("tg.only=serial tg.exit=tick")).unwrap();
    assert!(vm.console().wait_for("tg: ticking", WAIT));
    let started = Instant::now();
    vm.snapshot(&ticking).unwrap();
    let took = started.elapsed();
    drop(vm);
    let listening = dir.join("listening");
    let vm = Vm::start(VmConfig::new(guest).with_vsock(3)).unwrap();
    assert!(vm.console().wait_for("tg: vsock listening 1234", WAIT));
    vm.snapshot(&listening).unwrap();
    drop(vm);

    let (mut returned, mut first_byte, mut answer) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..50 {
        let started = Instant::now();
        let vm = Vm::restore(&ticking, RestoreOptions::default()).unwrap();
        returned.push(started.elapsed().as_secs_f64());
        assert!(vm.console().wait_for(".", WAIT));
        first_byte.push(started.elapsed().as_secs_f64());
        drop(vm);

        let started = Instant::now();
        let vm = Vm::restore(&listening, RestoreOptions::default()).unwrap();
        let mut stream = vm.vsock().unwrap().connect(1234, WAIT).unwrap();
        stream.write_all(b"1 + 1").unwrap();
        let mut back = [0u8; 5];
        stream.read_exact(&mut back).unwrap();
        answer.push(started.elapsed().as_secs_f64());
    }
    let returned = Sample::from_secs("`Vm::restore` returns (vCPU running)", &returned);
    let first_byte = Sample::from_secs("`Vm::restore` → first guest serial byte", &first_byte);
    let answer = Sample::from_secs("`Vm::restore` → first vsock answer (echo)", &answer);
    let rows = [&returned, &first_byte, &answer, boot_first_byte];
    match qemu_restore_first_byte(dir, 20) {
        Some(peer) => println!("{}", table(&rows, &peer)),
        None => println!(
            "{}\n(QEMU not installed or its migration failed: no QEMU peer)\n",
            table(&rows[..3], boot_first_byte)
        ),
    }
    println!(
        "(`Vm::snapshot` of that VM: {:.2} ms)\n",
        took.as_secs_f64() * 1e3
    );
}

/// In a fresh process: RSS with one idle VM, guest RAM subtracted.
fn rss_probe(guest: &Path) {
    let before = rss_kib(std::process::id());
    let vm = Vm::start(VmConfig::new(guest).with_cmdline("tg.only=serial tg.exit=hlt")).unwrap();
    assert!(vm.console().wait_for("tg: done", WAIT));
    std::thread::sleep(Duration::from_millis(200));
    let guest_resident: u64 = vm
        .memory()
        .iter()
        .filter_map(|r| r.get_host_address(MemoryRegionAddress(0)).ok())
        .map(|host| mapping_rss_kib(host as usize))
        .sum();
    let total = rss_kib(std::process::id()).saturating_sub(guest_resident);
    println!(
        "process: {total}\ngrowth: {}\nguest: {guest_resident}",
        total.saturating_sub(before)
    );
}

fn round_trips(stream: &mut (impl Read + Write), payload: &[u8], runs: usize) -> Vec<f64> {
    let mut back = vec![0u8; payload.len()];
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            stream.write_all(payload).unwrap();
            stream.read_exact(&mut back).unwrap();
            started.elapsed().as_secs_f64()
        })
        .collect()
}

fn echo_forever(mut stream: std::os::unix::net::UnixStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

fn host_pread(image: &Path, runs: usize) -> Sample {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(image).unwrap();
    let mut buf = vec![0u8; 4096];
    let times: Vec<f64> = (0..runs)
        .map(|i| {
            let started = Instant::now();
            file.read_exact_at(&mut buf, (i as u64 * 4096) % (8 << 20))
                .unwrap();
            started.elapsed().as_secs_f64()
        })
        .collect();
    Sample::from_secs("peer: the same 4 KiB `pread` on the host", &times)
}

/// A 64 KiB firmware image whose reset vector writes 'x' to COM1 and halts.
fn tiny_firmware(dir: &Path) -> std::path::PathBuf {
    let mut image = vec![0xffu8; 64 << 10];
    // mov dx, 0x3f8; mov al, 'x'; out dx, al; cli; hlt
    image[0xfff0..0xfff8].copy_from_slice(&[0xba, 0xf8, 0x03, 0xb0, b'x', 0xee, 0xfa, 0xf4]);
    let path = dir.join("tiny-firmware.bin");
    std::fs::write(&path, image).unwrap();
    path
}

/// A 64 KiB firmware image whose reset vector prints '.' to COM1 forever.
fn printing_firmware(dir: &Path) -> std::path::PathBuf {
    let mut image = vec![0xffu8; 64 << 10];
    // mov dx, 0x3f8; mov al, '.'; again: out dx, al; loop $ (a pause); jmp again
    image[0xfff0..0xfffa]
        .copy_from_slice(&[0xba, 0xf8, 0x03, 0xb0, b'.', 0xee, 0xe2, 0xfe, 0xeb, 0xfb]);
    let path = dir.join("printing-firmware.bin");
    std::fs::write(&path, image).unwrap();
    path
}

/// QEMU saving a VM of the printing firmware to a migration file (its
/// monitor's `migrate "exec:cat > FILE"`), then loading it (`-incoming
/// "exec:cat FILE"`): process start → first serial byte after the load.
fn qemu_restore_first_byte(dir: &Path, runs: usize) -> Option<Sample> {
    let firmware = printing_firmware(dir);
    let (monitor, state) = (dir.join("qemu-monitor.sock"), dir.join("qemu-state"));
    let mut source = qemu_command(&firmware, "null")
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", monitor.display()))
        .spawn()
        .ok()?;
    let saved = (|| {
        let deadline = Instant::now() + WAIT;
        let mut control = loop {
            match std::os::unix::net::UnixStream::connect(&monitor) {
                Ok(control) => break control,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => return None,
            }
        };
        // HMP's migrate returns once the state is written; quit then ends QEMU.
        control.set_read_timeout(Some(WAIT)).ok()?;
        let commands = format!("migrate \"exec:cat > {}\"\nquit\n", state.display());
        control.write_all(commands.as_bytes()).ok()?;
        let mut ignored = Vec::new();
        let _ = control.read_to_end(&mut ignored);
        Some(())
    })();
    if saved.is_none() {
        let _ = source.kill();
    }
    let _ = source.wait();
    if std::fs::metadata(&state).map_or(0, |m| m.len()) == 0 {
        return None;
    }
    let times = first_byte_times(runs, || {
        let mut command = qemu_command(&firmware, "stdio");
        command
            .arg("-incoming")
            .arg(format!("exec:cat {}", state.display()));
        command
    })?;
    Some(Sample::from_secs(
        "peer: QEMU microvm loading a saved VM (`-incoming`) → first serial byte",
        &times,
    ))
}

fn qemu(firmware: &Path) -> Option<std::process::Child> {
    qemu_command(firmware, "stdio").spawn().ok()
}

/// QEMU's microvm machine with KVM, 256 MiB, `firmware`, its serial port on `serial`.
fn qemu_command(firmware: &Path, serial: &str) -> Command {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-M",
            "microvm,x-option-roms=off,rtc=off",
            "-accel",
            "kvm",
            "-cpu",
            // Without it QEMU aborts on PVM hosts, which refuse its
            // IA32_ARCH_CAPABILITIES value.
            "host,-arch-capabilities",
            "-m",
            "256",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            serial,
            "-bios",
        ])
        .arg(firmware)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

/// QEMU process start → the firmware's first serial byte.
fn qemu_first_byte(runs: usize) -> Option<Sample> {
    let dir = tempfile::tempdir().ok()?;
    let firmware = tiny_firmware(dir.path());
    let times = first_byte_times(runs, || qemu_command(&firmware, "stdio"))?;
    Some(Sample::from_secs(
        "peer: QEMU microvm start → first serial byte",
        &times,
    ))
}

/// `runs` times: start `command`'s process, time its first byte on stdout, kill it.
fn first_byte_times(runs: usize, command: impl Fn() -> Command) -> Option<Vec<f64>> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut child = command().spawn().ok()?;
        let mut byte = [0u8];
        child.stdout.as_mut()?.read_exact(&mut byte).ok()?;
        times.push(started.elapsed().as_secs_f64());
        let _ = child.kill();
        let _ = child.wait();
    }
    Some(times)
}

fn qemu_idle_rss() -> Option<u64> {
    let dir = tempfile::tempdir().ok()?;
    let mut child = qemu(&tiny_firmware(dir.path()))?;
    let mut byte = [0u8];
    child.stdout.as_mut()?.read_exact(&mut byte).ok()?;
    std::thread::sleep(Duration::from_millis(200));
    let rss = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    Some(rss)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    kib_field(&status, "VmRSS:")
}

/// Resident KiB of the mapping that starts at `start` in this process.
fn mapping_rss_kib(start: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let header = format!("{start:x}-");
    let mut lines = smaps
        .lines()
        .skip_while(|l| !l.starts_with(&header))
        .skip(1);
    lines
        .by_ref()
        .take_while(|l| !l.contains('-') || l.contains(':'))
        .find(|l| l.starts_with("Rss:"))
        .map(|l| kib_field(l, "Rss:"))
        .unwrap_or(0)
}

fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
