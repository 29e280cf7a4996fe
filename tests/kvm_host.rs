//! Where the microVM tests run: on this machine when its KVM can run a Linux
//! guest (hardware virtualisation), otherwise inside the emulated-KVM machine
//! of `tests/emulated-kvm/` (QEMU emulating an AMD CPU with SVM, whose
//! `kvm_amd` gives a real `/dev/kvm`; see its README).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

/// Set (to 1) inside the emulated machine by `tests/emulated-kvm/run.sh`.
pub const IN_EMULATED_KVM: &str = "CELLBOX_EMULATED_KVM";

/// Where a program that needs KVM for a Linux guest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmHost {
    /// Here: `/dev/kvm` runs Linux guests.
    Here,
    /// In the emulated-KVM machine, because of the reason given.
    Emulated(String),
}

impl KvmHost {
    /// Where programs needing KVM for Linux run on this machine.
    pub fn detect() -> KvmHost {
        match cellbox_vmm::kvm_support::linux_guest_blocker() {
            None => KvmHost::Here,
            Some(reason) => KvmHost::Emulated(reason),
        }
    }
}

/// `tests/emulated-kvm/run.sh`.
pub fn emulated_kvm_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("emulated-kvm/run.sh")
}

/// What a run printed (stdout and stderr, line by line) and how it ended.
#[derive(Debug)]
pub struct Run {
    /// How the program (or the emulated machine) exited.
    pub status: ExitStatus,
    /// Everything printed, the machine's console included.
    pub output: String,
}

/// Runs `program args` where KVM runs Linux guests (see [`KvmHost`]), with
/// this process's environment. Each line it prints is also written to this
/// process's stderr as it comes (prefixed with `| `), so a long run shows
/// progress even under the test harness's output capture.
pub fn run(program: &Path, args: &[&str]) -> Run {
    let mut command = match KvmHost::detect() {
        KvmHost::Here => Command::new(program),
        KvmHost::Emulated(_) => {
            let mut command = Command::new("bash");
            command.arg(emulated_kvm_script()).arg(program);
            command
        }
    };
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let output = Arc::new(Mutex::new(String::new()));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                // Straight to the real stderr: the harness captures only
                // `print!`-style output.
                let _ = writeln!(std::io::stderr(), "| {line}");
                let mut all = output.lock().unwrap_or_else(|p| p.into_inner());
                all.push_str(&line);
                all.push('\n');
            }
        })
    })
    .collect();
    let status = child.wait().expect("waiting for the run");
    for reader in readers {
        let _ = reader.join();
    }
    let output = std::mem::take(&mut *output.lock().unwrap_or_else(|p| p.into_inner()));
    Run { status, output }
}

/// The number of tests `--ignored` selects in the test binary `program`.
pub fn ignored_test_count(program: &Path) -> usize {
    let list = Command::new(program)
        .args(["--list", "--ignored"])
        .output()
        .expect("listing the tests");
    String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|line| line.ends_with(": test"))
        .count()
}
