//! VM snapshots under real KVM with the test guest: a VM snapshotted in the
//! middle of its vsock polling loop, ten VMs restored from it that each go on
//! from that moment (serial, vsock, the disk's writes), the snapshot folder
//! unchanged, and clear errors for snapshots that cannot be used.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use cellbox_vmm::{ExitReason, RestoreOptions, Vm, VmConfig, VmError};

mod common;
use common::{WAIT, base_image, echo, finished, guest, lines};

/// A VM with a writable disk and vsock, waiting in its echo server's loop.
fn listening_vm(dir: &Path) -> Vm {
    let config = VmConfig::new(guest())
        .with_disk(base_image(dir), true)
        .with_vsock(9);
    let vm = Vm::start(config).unwrap();
    assert!(
        vm.console().wait_for("tg: vsock listening 1234", WAIT),
        "{}",
        vm.console().text()
    );
    vm
}

fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Connects through the VM's Unix socket (`CONNECT 1234`).
fn connect_unix(socket: &Path) -> UnixStream {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(b"CONNECT 1234\n").unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK "), "{line:?}");
    stream
}

#[test]
fn ten_clones_go_on_from_the_snapshot_and_leave_it_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot");
    let vm = listening_vm(dir.path());
    vm.snapshot(&snapshot).unwrap();
    let saved = contents(&snapshot);
    for file in ["vm.json", "memory", "device-0.overlay", "device-0.written"] {
        assert!(saved.contains_key(file), "{:?}", saved.keys());
    }

    // The snapshotted VM goes on as if nothing happened.
    let mut stream = vm.vsock().unwrap().connect(1234, WAIT).unwrap();
    assert_eq!(echo(&mut stream, b"original"), b"original");
    drop(stream);
    assert_eq!(finished(&vm), ExitReason::Reset);

    // Ten clones at once, half reached in process and half through a Unix socket.
    let sockets: Vec<PathBuf> = (0..10)
        .map(|i| dir.path().join(format!("clone-{i}.sock")))
        .collect();
    let clones: Vec<Vm> = sockets
        .iter()
        .enumerate()
        .map(|(i, socket)| {
            let options = RestoreOptions {
                vsock_unix_socket: (i % 2 == 1).then(|| socket.clone()),
            };
            Vm::restore(&snapshot, options).unwrap()
        })
        .collect();
    for (i, clone) in clones.iter().enumerate() {
        let payload = format!("clone {i} answers");
        let mut stream = if i % 2 == 1 {
            connect_unix(&sockets[i])
        } else {
            clone.vsock().unwrap().connect(1234, WAIT).unwrap()
        };
        assert_eq!(echo(&mut stream, payload.as_bytes()), payload.as_bytes());
        drop(stream);
        assert_eq!(finished(clone), ExitReason::Reset);
        let out = lines(clone);
        assert_eq!(
            out.first().map(|l| l.starts_with("tg: vsock connected")),
            Some(true),
            "a clone goes on in the loop, it does not boot again: {out:#?}"
        );
        for expected in [
            format!("tg: vsock echoed {}", payload.len()),
            "tg: vsock closed".into(),
            "tg: done".into(),
        ] {
            assert!(out.contains(&expected), "missing {expected:?} in {out:#?}");
        }
        // The sector the guest wrote before the snapshot is in the clone's disk.
        let mut sector = [0u8; 512];
        clone
            .disk(0)
            .unwrap()
            .disk()
            .read_at(&mut sector, 1)
            .unwrap();
        assert!(sector.starts_with(b"written by the test guest"));
    }
    assert_eq!(
        contents(&snapshot),
        saved,
        "restoring never writes the snapshot"
    );
}

#[test]
fn a_paused_vm_stays_paused_and_a_stopped_one_cannot_be_saved() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = listening_vm(dir.path());
    let control = vm.control();
    control.pause().unwrap();
    vm.snapshot(&dir.path().join("a")).unwrap();
    let cpu = control.cpu_time();
    std::thread::sleep(std::time::Duration::from_millis(100));
    // A parked vCPU thread may wake for a few microseconds (10 µs once in
    // CI), never to run the guest.
    let used = control.cpu_time().saturating_sub(cpu);
    assert!(
        used < std::time::Duration::from_millis(1),
        "a paused vCPU used {used:?} in 100 ms after the snapshot"
    );
    control.resume();
    let mut stream = vm.vsock().unwrap().connect(1234, WAIT).unwrap();
    assert_eq!(echo(&mut stream, b"resumed"), b"resumed");
    vm.stop();
    let err = vm.snapshot(&dir.path().join("b")).unwrap_err();
    assert!(matches!(err, VmError::Stopped), "{err}");
}

#[test]
fn unusable_snapshots_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Vm::restore(&dir.path().join("missing"), RestoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("vm.json"), "{err}");

    let snapshot = dir.path().join("snapshot");
    listening_vm(dir.path()).snapshot(&snapshot).unwrap();
    let memory = std::fs::read(snapshot.join("memory")).unwrap();
    std::fs::write(snapshot.join("memory"), &memory[..4096]).unwrap();
    let err = Vm::restore(&snapshot, RestoreOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("memory file is 4096 bytes"),
        "{err}"
    );

    std::fs::write(snapshot.join("vm.json"), b"{\"format\": 1, \"garbage\"").unwrap();
    let err = Vm::restore(&snapshot, RestoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("is not a VM state"), "{err}");
}

#[test]
fn a_connection_open_at_the_snapshot_stays_in_the_vm_and_is_reset_in_clones() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot");
    let vm = listening_vm(dir.path());
    let mut stream = vm.vsock().unwrap().connect(1234, WAIT).unwrap();
    assert_eq!(echo(&mut stream, b"before"), b"before");
    // The guest prints its line after echoing: let it, so that the clone starts idle.
    assert!(vm.console().wait_for("tg: vsock echoed 6", WAIT));
    vm.snapshot(&snapshot).unwrap();
    assert!(snapshot.join("device-1.vsock").exists());
    assert_eq!(
        echo(&mut stream, b"after"),
        b"after",
        "the original keeps it"
    );

    let clone = Vm::restore(&snapshot, RestoreOptions::default()).unwrap();
    assert_eq!(finished(&clone), ExitReason::Reset);
    let out = lines(&clone);
    assert_eq!(
        out,
        ["tg: vsock closed", "tg: done"],
        "the clone's guest learns at once that the connection is gone"
    );
    drop(stream);
    assert_eq!(finished(&vm), ExitReason::Reset);
}

/// Bytes a file really holds (its holes not counted).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_restored_vm_can_be_snapshotted_without_filling_the_holes_it_maps() {
    // On tmpfs (where there is one), whose files gain pages when their holes
    // are read through a mapping: a full tmpfs then faults the reader.
    let shm = Path::new("/dev/shm");
    let dir = match shm.is_dir() {
        true => tempfile::tempdir_in(shm).unwrap(),
        false => tempfile::tempdir().unwrap(),
    };
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let vm = listening_vm(dir.path());
    vm.snapshot(&first).unwrap();
    drop(vm);
    let base = allocated(&first.join("memory"));

    let clone = Vm::restore(&first, RestoreOptions::default()).unwrap();
    clone.snapshot(&second).unwrap();
    let mut stream = clone.vsock().unwrap().connect(1234, WAIT).unwrap();
    assert_eq!(echo(&mut stream, b"clone"), b"clone", "the clone goes on");
    drop(stream);
    drop(clone);
    // The guest's own reads fill a few; reading every page to save them filled all.
    let grown = allocated(&first.join("memory")) - base;
    assert!(
        grown <= 4 << 20,
        "the first snapshot's holes stay holes: {grown} bytes more"
    );
    let copied = allocated(&second.join("memory"));
    assert!(
        copied <= base + (4 << 20),
        "the second snapshot holds the first's pages and the few written since: {copied} vs {base}"
    );

    let again = Vm::restore(&second, RestoreOptions::default()).unwrap();
    let mut stream = again.vsock().unwrap().connect(1234, WAIT).unwrap();
    assert_eq!(echo(&mut stream, b"again"), b"again");
}
