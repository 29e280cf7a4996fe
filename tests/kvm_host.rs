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
    /// The emulated machine locked up (its kernel reported a CPU stuck for
    /// [`LOCKED_UP_AFTER`], or nothing came from it, not even its heartbeat,
    /// for [`STALLED_AFTER`]), and it was stopped.
    pub locked_up: bool,
    /// The test that ran past [`TEST_BUDGET`], for which the machine was
    /// stopped (the machine was alive: the test hung).
    pub over_budget: Option<String>,
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
    let running: Arc<Mutex<Option<(String, Instant)>>> = Arc::new(Mutex::new(None));
    let over_budget = Arc::new(Mutex::new(None));
    let stop = move || kill_group(group);
    let watchdog = {
        let (last_line, finished, locked_up) =
            (last_line.clone(), finished.clone(), locked_up.clone());
        let (running, over_budget) = (running.clone(), over_budget.clone());
        std::thread::spawn(move || {
            while !finished.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(1));
                let silent = lock(&last_line).elapsed();
                if silent >= STALLED_AFTER && !locked_up.swap(true, Ordering::SeqCst) {
                    let _ = writeln!(
                        std::io::stderr(),
                        "| (nothing from the emulated machine for {silent:?}, not even its heartbeat: stopping it)"
                    );
                    stop();
                }
                let late = lock(&running)
                    .as_ref()
                    .filter(|(_, since)| since.elapsed() >= TEST_BUDGET)
                    .map(|(name, _)| name.clone());
                if let Some(name) = late
                    && lock(&over_budget).replace(name.clone()).is_none()
                {
                    let _ = writeln!(
                        std::io::stderr(),
                        "| ({name} has run for {TEST_BUDGET:?}, its most: stopping the machine)"
                    );
                    stop();
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
        let running = running.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                *lock(&last_line) = Instant::now();
                if stuck_for(&line).is_some_and(|stuck| stuck >= LOCKED_UP_AFTER)
                    && !locked_up.swap(true, Ordering::SeqCst)
                {
                    let _ = writeln!(
                        std::io::stderr(),
                        "| (the emulated machine's kernel has locked up: stopping it)"
                    );
                    stop();
                }
                // Straight to the real stderr: the harness captures only
                // `print!`-style output.
                let _ = writeln!(std::io::stderr(), "| {line}");
                if let Some(event) = TestEvent::read(&line) {
                    let mut running = lock(&running);
                    if let Some((name, since)) = running.take() {
                        let _ = writeln!(std::io::stderr(), "| ({name}: {:?})", since.elapsed());
                    }
                    if let TestEvent::Started(name) = event {
                        *running = Some((name, Instant::now()));
                    }
                }
                let mut all = lock(&output);
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
    let output = std::mem::take(&mut *lock(&output));
    let locked_up = locked_up.load(Ordering::SeqCst);
    let over_budget = lock(&over_budget).take();
    Run {
        status,
        locked_up,
        over_budget,
        output,
    }
}

/// Stops the whole run: the machine, or the program, and what it started.
fn kill_group(group: i32) {
    // SAFETY: kill(2) on the process group made for this run, whose leader
    // is our unreaped child (so the group id cannot have been reused).
    unsafe { libc::kill(-group, libc::SIGKILL) };
}

/// The lock, also when a thread panicked holding it (what it guards stays usable).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// This long without a line from the emulated machine means it has locked
/// up: `run.sh` has it print a heartbeat every 30 seconds whatever the tests
/// do. Stopped, the suite resumes in a new machine instead of waiting for
/// the whole run's timeout.
pub const STALLED_AFTER: Duration = Duration::from_secs(180);

/// The longest one test of the suite may run in the emulated machine: past
/// it the test hangs (the longest, the E2B SDK's, takes about two minutes
/// there), and the machine is stopped; the test counts as failed.
pub const TEST_BUDGET: Duration = Duration::from_secs(900);

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

/// What a line of libtest's output says of a test.
#[derive(Debug, PartialEq, Eq)]
enum TestEvent {
    /// `test NAME ... ` with the result still to come (the test's own
    /// lines, written to the real stderr while it runs, come first).
    Started(String),
    /// `test NAME ... ok`, or a line that is just `ok` after `Started`.
    Passed(Option<String>),
    /// `test NAME ... FAILED` or `ignored`, or a line that is just `FAILED`.
    Ended(Option<String>),
}

impl TestEvent {
    fn read(line: &str) -> Option<TestEvent> {
        let line = line.trim_end();
        if let Some((name, result)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ..."))
        {
            return Some(match result.trim() {
                "ok" => TestEvent::Passed(Some(name.to_string())),
                "FAILED" => TestEvent::Ended(Some(name.to_string())),
                "ignored" => TestEvent::Ended(None),
                _ => TestEvent::Started(name.to_string()),
            });
        }
        match line {
            "ok" => Some(TestEvent::Passed(None)),
            "FAILED" => Some(TestEvent::Ended(None)),
            _ => None,
        }
    }
}

/// The tests a libtest run reported as passed: `test NAME ... ok`, or, when
/// a test wrote to the real stderr while it ran (its lines then follow
/// `test NAME ... ` on the console), a later line that is just `ok`.
pub fn passed_tests(output: &str) -> Vec<String> {
    let mut passed = Vec::new();
    let mut running = None;
    for event in output.lines().filter_map(TestEvent::read) {
        match event {
            TestEvent::Started(name) => running = Some(name),
            TestEvent::Passed(name) => {
                let started = running.take();
                passed.extend(name.or(started));
            }
            TestEvent::Ended(_) => running = None,
        }
    }
    passed
}

/// Most emulated machines one suite runs in (a local `.ci/run` needed four:
/// three locked up, both CPUs stuck, each costing two or three minutes).
const MACHINES: u32 = 8;

/// `run.sh`'s exit status when the emulated machine stopped before the
/// command ended (its kernel crashed: the console says why).
pub const MACHINE_DIED: i32 = 125;

/// `run.sh`'s exit status when the emulated machine ran past its time (its
/// kernel locked up: the console shows a soft lockup).
pub const MACHINE_TIMED_OUT: i32 = 124;

/// The user the microVM suite runs as, when started by root: an ordinary
/// member of the group `kvm`, set up by [`prepare_suite_user`].
pub const SUITE_USER: &str = "cellbox-kvm";

/// Makes [`SUITE_USER`] (this process being root) as a user of the microVM
/// would be: created if missing, then `cellbox setup --user` (the group
/// `kvm`, the guest's kernel, image, root file system and layer shared in
/// `/var/cache/cellbox`), then, as the user, their own cache under their
/// home: the E2B SDK and the WebAssembly interpreter (built here: the
/// emulated machine has no network and builds slowly). `cellbox` is the
/// command to set up with; the user runs a copy of it.
pub fn prepare_suite_user(cellbox: &Path) {
    let user = SUITE_USER;
    let exists = Command::new("id")
        .arg(user)
        .output()
        .expect("id")
        .status
        .success();
    if !exists {
        check(Command::new("useradd").args(["--create-home", "--shell", "/bin/sh", user]));
    }
    check(Command::new(cellbox).args(["setup", "--user", user]));
    let copy = tempfile::Builder::new()
        .prefix("cellbox-kvm-user")
        .tempdir()
        .expect("a temporary folder");
    let binary = copy.path().join("cellbox");
    std::fs::copy(cellbox, &binary).expect("copying cellbox");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(copy.path(), std::fs::Permissions::from_mode(0o755))
        .expect("opening the copy's folder");
    let sdk_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2b/install_sdk.sh");
    check(
        as_user(user, Path::new("sh"))
            .args(["-s", "python"])
            .stdin(std::fs::File::open(sdk_script).expect("install_sdk.sh")),
    );
    check(as_user(user, &binary).args(["run", "--backend", "wasm", "-c", "1 + 1"]));
}

/// `program` run as `user` by `runuser` (from root), with their home and
/// their cache under it.
fn as_user(user: &str, program: &Path) -> Command {
    let mut command = Command::new("sh");
    command.args(as_user_args(user, program)).current_dir("/");
    command
}

/// `sh`'s arguments that run `program` (the arguments after them too) as
/// `user`: [`AS_USER_SCRIPT`].
fn as_user_args(user: &str, program: &Path) -> Vec<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace");
    let program = program.to_string_lossy().into_owned();
    [
        "-c",
        AS_USER_SCRIPT,
        "sh",
        user,
        &program,
        &workspace.to_string_lossy(),
        &program,
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `command`, its output passed on; panics unless it succeeds.
fn check(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(status.success(), "{command:?} failed ({status})");
}

/// Who runs a suite's tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAs<'a> {
    /// This process's user.
    Me,
    /// Another user, this process being root (see [`prepare_suite_user`]).
    User(&'a str),
}

/// The script that runs `$4 ...` as the user `$1` (this being root), with
/// their home, their cache under it and their groups, in the emulated
/// machine or here: there it first makes the folders down to the program (`$2`) and
/// to this workspace (`$3`) traversable by all (the machine's copy of them:
/// the host's folders are not changed), as a checkout in root's home would
/// not be.
const AS_USER_SCRIPT: &str = r#"
user=$1 home=/home/$1
if [ -n "${CELLBOX_EMULATED_KVM:-}" ]; then
    for path in "$2" "$3"; do
        while [ "$path" != / ]; do path=$(dirname "$path"); chmod o+x "$path"; done
    done
fi
shift 3
echo "running as: $(runuser -u "$user" -- id)"
exec runuser -u "$user" -- env HOME="$home" CELLBOX_CACHE_DIR="$home/.cache/cellbox" \
    PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "$@"
"#;

/// Runs the `#[ignore]`d tests of the test binary `program` one at a time
/// where KVM runs Linux guests (see [`run`]). If the emulated machine itself
/// dies or locks up (its kernel, not the tests, as its console then shows),
/// the run resumes in a fresh machine without the tests that passed. There,
/// each test may also fail once (QEMU's emulated SVM now and then makes a
/// guest's boot triple-fault, or stalls for many seconds: once an SDK read
/// timed out after 60 silent seconds) and runs again in a fresh machine; a
/// test that fails twice fails the suite. [`MACHINES`] machines at most.
/// `selection` goes on the command line too (`--skip NAME`, or names).
/// Returns the names of the tests that passed and the last run.
pub fn run_ignored_tests(program: &Path, run_as: RunAs, selection: &[&str]) -> (Vec<String>, Run) {
    let emulated = matches!(KvmHost::detect(), KvmHost::Emulated(_));
    let mut passed: Vec<String> = Vec::new();
    let mut failed_once: Vec<String> = Vec::new();
    for attempt in 1.. {
        let mut args = vec!["--ignored", "--test-threads=1", "--color=never", "--exact"];
        args.extend(selection);
        for name in &passed {
            args.extend(["--skip", name.as_str()]);
        }
        let run = match run_as {
            RunAs::Me => run(program, &args),
            RunAs::User(user) => {
                let mut all = as_user_args(user, program);
                all.extend(args.iter().map(|arg| arg.to_string()));
                let all: Vec<&str> = all.iter().map(String::as_str).collect();
                run(Path::new("sh"), &all)
            }
        };
        let now_passed = passed_tests(&run.output);
        let failed: Vec<String> = started_tests(&run.output)
            .into_iter()
            .filter(|name| !now_passed.contains(name))
            .collect();
        passed.extend(now_passed);
        let machine_failed =
            run.locked_up || matches!(run.status.code(), Some(MACHINE_DIED | MACHINE_TIMED_OUT));
        let why = if run.status.success() || !emulated || attempt == MACHINES {
            return (passed, run);
        } else if machine_failed {
            "the emulated machine died or locked up (its console is above): resuming in a fresh one"
        } else if !failed.is_empty() && failed.iter().all(|name| !failed_once.contains(name)) {
            failed_once.extend(failed);
            "tests failed in the emulated machine (their output is above): running them once more in a fresh one"
        } else {
            return (passed, run); // a second failure, or one outside any test
        };
        let _ = writeln!(
            std::io::stderr(),
            "{why} (attempt {attempt}), without the {} tests that passed",
            passed.len()
        );
    }
    unreachable!("the attempts end at MACHINES")
}

/// The tests a libtest run started (whatever their result).
fn started_tests(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(TestEvent::read)
        .filter_map(|event| match event {
            TestEvent::Started(name)
            | TestEvent::Passed(Some(name))
            | TestEvent::Ended(Some(name)) => Some(name),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{passed_tests, started_tests, stuck_for};

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
    fn a_running_test_is_told_from_its_result() {
        use super::TestEvent::{self, *};
        let read = |line| TestEvent::read(line);
        assert_eq!(read("test a ... "), Some(Started("a".into())));
        assert_eq!(read("test a ... ok   a check\r"), Some(Started("a".into())));
        assert_eq!(read("test a ... ok"), Some(Passed(Some("a".into()))));
        assert_eq!(read("ok"), Some(Passed(None)));
        assert_eq!(read("test a ... FAILED"), Some(Ended(Some("a".into()))));
        assert_eq!(read("FAILED"), Some(Ended(None)));
        assert_eq!(read("ok   a check"), None);
        assert_eq!(read("[ 1.0] test e ... ok then"), None);
    }

    #[test]
    fn passed_tests_are_read_from_libtest_output() {
        let output = "running 3 tests\ntest a ... ok\ntest b::c ... FAILED\ntest d ... ok\n[ 1.0] test e ... ok then\n";
        assert_eq!(passed_tests(output), ["a", "d"]);
        // A test that streams its own lines to stderr splits libtest's line.
        let streamed = "test f ... first check\nsecond check\nok\ntest g ... \nok\ntest h ... line\nFAILED\nok\ntest result: ok. 2 passed\n";
        assert_eq!(passed_tests(streamed), ["f", "g"]);
        assert_eq!(started_tests(streamed), ["f", "g", "h"]);
        assert_eq!(started_tests(output), ["a", "b::c", "d"]);
    }
}
