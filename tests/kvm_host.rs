//! Where the microVM tests run: on this machine when its KVM can run a Linux
//! guest (hardware virtualisation), otherwise inside the emulated-KVM machine
//! of `tests/emulated-kvm/` (QEMU emulating an AMD CPU with SVM, whose
//! `kvm_amd` gives a real `/dev/kvm`; see its README).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The emulated machine's kernel reported a CPU stuck for
    /// [`LOCKED_UP_AFTER`] or longer, and the machine was stopped.
    pub locked_up: bool,
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
            // The whole suite takes 20 to 30 minutes there. A machine that
            // hangs is stopped after STALLED_AFTER without output; this is
            // only the backstop (after which the suite resumes in a new one).
            if std::env::var_os("EMULATED_KVM_TIMEOUT").is_none() {
                command.env("EMULATED_KVM_TIMEOUT", "3000");
            }
            command
        }
    };
    let mut child = command
        .args(args)
        // Its own process group: a machine that locks up is stopped whole.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let output = Arc::new(Mutex::new(String::new()));
    let locked_up = Arc::new(AtomicBool::new(false));
    let group = child.id() as i32;
    let last_line = Arc::new(Mutex::new(Instant::now()));
    let finished = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (last_line, finished, locked_up) =
            (last_line.clone(), finished.clone(), locked_up.clone());
        std::thread::spawn(move || {
            while !finished.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(1));
                let silent = last_line
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .elapsed();
                if silent >= STALLED_AFTER && !locked_up.swap(true, Ordering::SeqCst) {
                    let _ = writeln!(
                        std::io::stderr(),
                        "| (nothing from the emulated machine for {silent:?}: stopping it)"
                    );
                    // SAFETY: as below, the process group made for this run.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                }
            }
        })
    };
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
        let locked_up = locked_up.clone();
        let last_line = last_line.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                *last_line.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                if stuck_for(&line).is_some_and(|stuck| stuck >= LOCKED_UP_AFTER)
                    && !locked_up.swap(true, Ordering::SeqCst)
                {
                    let _ = writeln!(
                        std::io::stderr(),
                        "| (the emulated machine's kernel has locked up: stopping it)"
                    );
                    // SAFETY: kill(2) on the process group made for this run,
                    // whose leader is our unreaped child.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                }
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
    finished.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    let output = std::mem::take(&mut *output.lock().unwrap_or_else(|p| p.into_inner()));
    let locked_up = locked_up.load(Ordering::SeqCst);
    Run {
        status,
        locked_up,
        output,
    }
}

/// This long without a line from the emulated machine (its console or the
/// tests) means it hangs. The E2B SDK test can stay silent for over six
/// minutes there (starting `cellbox serve` and its first microVM, its check
/// lines arriving late on the console). Stopped, the suite resumes in a new
/// machine instead of waiting for the whole run's timeout.
pub const STALLED_AFTER: Duration = Duration::from_secs(900);

/// A kernel soft lockup this long means the emulated machine will not
/// recover (seen under QEMU's emulated SVM: both CPUs stuck for good).
pub const LOCKED_UP_AFTER: u32 = 120;

/// The seconds of a kernel's `soft lockup - CPU#N stuck for Ns!` line.
fn stuck_for(line: &str) -> Option<u32> {
    let rest = line.split("soft lockup - CPU#").nth(1)?;
    let seconds = rest.split("stuck for ").nth(1)?;
    seconds.split('s').next()?.parse().ok()
}

/// The names of the tests `--ignored` selects in the test binary `program`.
pub fn ignored_tests(program: &Path) -> Vec<String> {
    let list = Command::new(program)
        .args(["--list", "--ignored"])
        .output()
        .expect("listing the tests");
    String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .map(str::to_string)
        .collect()
}

/// The tests a libtest run reported as passed: `test NAME ... ok`, or, when
/// a test wrote to the real stderr while it ran (its lines then follow
/// `test NAME ... ` on the console), a later line that is just `ok`.
pub fn passed_tests(output: &str) -> Vec<String> {
    let mut passed = Vec::new();
    let mut running = None;
    for line in output.lines().map(str::trim_end) {
        if let Some((name, result)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ..."))
        {
            running = None;
            match result.trim() {
                "ok" => passed.push(name.to_string()),
                "FAILED" | "ignored" => {}
                _ => running = Some(name),
            }
        } else if line == "ok" {
            passed.extend(running.take().map(str::to_string));
        } else if line == "FAILED" {
            running = None;
        }
    }
    passed
}

/// Most emulated machines one suite runs in.
const MACHINES: u32 = 4;

/// `run.sh`'s exit status when the emulated machine stopped before the
/// command ended (its kernel crashed: the console says why).
pub const MACHINE_DIED: i32 = 125;

/// `run.sh`'s exit status when the emulated machine ran past its time (its
/// kernel locked up: the console shows a soft lockup).
pub const MACHINE_TIMED_OUT: i32 = 124;

/// Runs the `#[ignore]`d tests of the test binary `program` one at a time
/// where KVM runs Linux guests (see [`run`]). If the emulated machine itself
/// dies (its kernel, not the tests, as its console then shows), the run
/// resumes in a fresh machine without the tests that passed, three times at most.
/// In the emulated machine, tests that failed get one more run in a fresh
/// machine (it stalls for many seconds at times: once an SDK read timed out
/// after 60 silent seconds); a failure that comes back fails the suite.
/// Returns the names of the tests that passed and the last run.
pub fn run_ignored_tests(program: &Path) -> (Vec<String>, Run) {
    let mut passed: Vec<String> = Vec::new();
    let mut attempt = 1;
    let mut failures_retried = !matches!(KvmHost::detect(), KvmHost::Emulated(_));
    loop {
        let mut args = vec!["--ignored", "--test-threads=1", "--color=never", "--exact"];
        for name in &passed {
            args.extend(["--skip", name.as_str()]);
        }
        let run = run(program, &args);
        passed.extend(passed_tests(&run.output));
        let machine_failed =
            run.locked_up || matches!(run.status.code(), Some(MACHINE_DIED | MACHINE_TIMED_OUT));
        let tests_failed = !machine_failed && !run.status.success();
        let retry_failures = tests_failed && !failures_retried;
        if (!machine_failed && !retry_failures) || attempt == MACHINES {
            return (passed, run);
        }
        let why = if retry_failures {
            failures_retried = true;
            "tests failed in the emulated machine (their output is above): running them once more in a fresh one"
        } else {
            "the emulated machine died or locked up (its console is above): resuming in a fresh one"
        };
        let _ = writeln!(
            std::io::stderr(),
            "{why} (attempt {attempt}), without the {} tests that passed",
            passed.len()
        );
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::{passed_tests, stuck_for};

    #[test]
    fn soft_lockups_are_read_from_the_console() {
        let line =
            "| [  485.066321] watchdog: BUG: soft lockup - CPU#1 stuck for 417s! [vcpu0:136]";
        assert_eq!(stuck_for(line), Some(417));
        assert_eq!(
            stuck_for("watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [kworker/0:1:17]"),
            Some(26)
        );
        assert_eq!(stuck_for("test a ... ok"), None);
    }

    #[test]
    fn passed_tests_are_read_from_libtest_output() {
        let output = "running 3 tests\ntest a ... ok\ntest b::c ... FAILED\ntest d ... ok\n[ 1.0] test e ... ok then\n";
        assert_eq!(passed_tests(output), ["a", "d"]);
        // A test that streams its own lines to stderr splits libtest's line.
        let streamed = "test f ... first check\nsecond check\nok\ntest g ... \nok\ntest h ... line\nFAILED\nok\ntest result: ok. 2 passed\n";
        assert_eq!(passed_tests(streamed), ["f", "g"]);
    }
}
