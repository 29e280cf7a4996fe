//! The microVM backend end to end: the guest kernel booted by cellbox's VMM,
//! guest-init over vsock, the IPython kernel.
//!
//! The suite (every `#[ignore]`d test here) needs KVM that runs a Linux
//! guest. `vm_suite` runs it on every machine: directly where `/dev/kvm`
//! can, otherwise inside the emulated-KVM machine (`tests/emulated-kvm/`),
//! after building on this host what the guest needs (kernel, root image,
//! the E2B SDK). Started by root, it runs as an ordinary member of the group
//! `kvm` (`kvm_host::SUITE_USER`, set up by `cellbox setup --user`), all but
//! the network test, whose servers need root. On such a machine the suite
//! also runs alone: `cargo test -p cellbox-tests --test vm -- --ignored`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cellbox::{
    Backend, BackendPolicy, CommandOptions, Error, Executor, HybridConfig, HybridExecutor,
    Language, MicroVmConfig, MicroVmExecutor, RunCodeOptions, Sandbox, SandboxOptions,
};
use cellbox_tests::kvm_host::{self, IN_EMULATED_KVM, KvmHost, RunAs};
use cellbox_tests::wasm_engine;

cellbox_tests::heavy_backend_tests!(Backend::Vm, #[ignore = "needs KVM that runs Linux guests; run by vm_suite"]);

/// The `cellbox` binary that `cargo test --workspace` built beside the tests.
fn cellbox_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().unwrap().parent().unwrap().join("cellbox");
    assert!(
        binary.exists(),
        "{} is missing: `cargo test --workspace` builds it (or `cargo build -p cellbox`)",
        binary.display()
    );
    binary
}

/// The one test of the suite that needs root: its servers' network namespace.
const NEEDS_ROOT: &str = "network_on_the_microvm";

/// Runs the suite where KVM runs Linux guests, here or emulated, having built
/// on this machine everything the guest needs (the emulated machine has no
/// network and builds slowly).
#[test]
fn vm_suite() {
    if std::env::var_os(IN_EMULATED_KVM).is_some() {
        return; // the suite is what runs in there
    }
    let (kernel, image) =
        cellbox::microvm::guest_files(&cellbox::default_cache_dir(), &Default::default())
            .expect("the guest kernel and image");
    assert!(kernel.vmlinux().exists() && image.exists());
    cellbox_tests::e2b_sdk_python();
    cellbox_binary();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(wasm_engine()); // compiles the fast path's module into the cache

    let exe = std::env::current_exe().unwrap();
    let mut expected = kvm_host::ignored_tests(&exe);
    assert!(expected.len() >= 15, "only {expected:?} in the suite");
    if let KvmHost::Emulated(reason) = KvmHost::detect() {
        eprintln!("{reason}: running the microVM suite in the emulated-KVM machine");
    }
    // The microVM needs no root: started by root, the suite runs as an
    // ordinary member of the group kvm, set up as the README says; only
    // the network test runs as root, for its servers' network namespace.
    let as_root = nix::unistd::geteuid().is_root();
    let (user, root_only) = match as_root {
        true => {
            kvm_host::prepare_suite_user(&cellbox_binary());
            (
                RunAs::User(kvm_host::SUITE_USER),
                &["--skip", NEEDS_ROOT][..],
            )
        }
        false => (RunAs::Me, &[][..]),
    };
    // One test at a time: the emulated machine's two CPUs are slow enough
    // for one guest and its host side.
    let (mut passed, last) = kvm_host::run_ignored_tests(&exe, user, root_only);
    assert!(
        last.status.success(),
        "the microVM suite failed ({}); its output is above",
        last.status
    );
    if let RunAs::User(name) = user {
        let who = last.output.lines().find(|l| l.starts_with("running as: "));
        assert!(
            who.is_some_and(|who| who.contains(&format!("({name})"))
                && who.contains("(kvm)")
                && !who.contains("uid=0(")),
            "the suite ran as {who:?}"
        );
    }
    if as_root {
        let (network, last) = kvm_host::run_ignored_tests(&exe, RunAs::Me, &[NEEDS_ROOT]);
        assert!(
            last.status.success(),
            "{NEEDS_ROOT} failed; its output is above"
        );
        passed.extend(network);
    }
    expected.sort();
    passed.sort();
    assert_eq!(passed, expected, "every test of the suite passed");
}

/// Where KVM cannot run Linux (no `/dev/kvm`, or PVM as on our build
/// machines), the backend refuses at once, naming the reason and the way out.
#[tokio::test]
async fn without_kvm_for_linux_the_microvm_refuses_fast() {
    let Some(reason) = cellbox_vmm::kvm_support::linux_guest_blocker() else {
        return; // the suite covers this machine
    };
    let started = Instant::now();
    let result = MicroVmExecutor::start(MicroVmConfig::default()).await;
    let Err(Error::Unavailable {
        backend,
        reason: message,
    }) = result
    else {
        panic!("expected Unavailable, got {result:?}");
    };
    assert_eq!(backend, Backend::Vm);
    assert!(
        message.contains(&reason) && message.contains("--backend namespace"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
#[ignore = "needs KVM that runs Linux guests; run by vm_suite"]
async fn the_boot_reports_its_milestones_in_order() {
    // The whole boot log, once, in the test's output: where a slow or broken
    // boot is read.
    let config = MicroVmConfig {
        kernel_args: vec!["loglevel=7".into()],
        warm: false,
        ..Default::default()
    };
    let mut vm = MicroVmExecutor::start(config).await.expect("a microVM");
    let console = vm.console();
    eprintln!("--- the guest's console:\n{console}---");
    let boot = vm.boot_timeline().expect("the guest reports its boot");
    eprintln!("boot: {boot}");
    assert!(
        boot.vm_started <= boot.kernel_started
            && boot.kernel_started <= boot.init_started
            && boot.init_started <= boot.listening
            && boot.listening <= boot.connected,
        "{boot:?}"
    );
    for line in ["Run /usr/sbin/init as init process", "crng init done"] {
        assert!(console.contains(line), "no `{line}` on the console");
    }
    assert!(!console.contains("guest-init:"), "guest-init complained");
    // Under emulation (QEMU's SVM in software) the guest's XSETBV does not
    // take, and Linux warns that XSAVE sizes disagree: the one known warning.
    let known = match std::env::var_os(IN_EMULATED_KVM) {
        Some(_) => console.matches("XSAVE consistency problem").count(),
        None => 0,
    };
    assert_eq!(
        console.matches("WARNING:").count(),
        known,
        "kernel warnings"
    );
    let first = Instant::now();
    assert_eq!(vm.run("1 + 1").await.unwrap().text(), Some("2"));
    eprintln!("first result {:?} after connecting", first.elapsed());
    vm.close().await.unwrap();
}

/// By default a new microVM is restored from the warm snapshot (made by the
/// first VM of the run): the data stack is imported before its first cell,
/// the session is fresh, every VM has its own randomness, and its clock has
/// moved on by the snapshot's age.
#[tokio::test]
#[ignore = "needs KVM that runs Linux guests; run by vm_suite"]
async fn new_microvms_start_warm_with_their_own_randomness() {
    let draw = "import os, random, uuid, numpy\n\
                print(random.random(), numpy.random.rand(), os.urandom(8).hex(), uuid.uuid4())";
    let mut draws = Vec::new();
    for round in 0..2 {
        if round == 1 {
            // The snapshot is older now: the next VM's clock must have moved on.
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
        let mut vm = MicroVmExecutor::start(MicroVmConfig::default())
            .await
            .expect("a warm microVM");
        assert!(vm.boot_timeline().is_none(), "restored, not booted");
        let first = vm
            .run("import sys; [m in sys.modules for m in ('numpy', 'pandas', 'matplotlib.pyplot')]")
            .await
            .unwrap();
        assert_eq!(first.text(), Some("[True, True, True]"), "{first:?}");
        assert_eq!(first.execution_count, Some(1), "a fresh session");
        vm.run("x = 41").await.unwrap();
        assert_eq!(vm.run("x + 1").await.unwrap().text(), Some("42"));
        let drawn = vm.run(draw).await.unwrap();
        draws.push(drawn.logs.stdout.concat());
        let guest_time = vm.run("import time; time.time()").await.unwrap();
        let host_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let guest_time: f64 = guest_time.text().unwrap().parse().unwrap();
        assert!(
            (host_time - guest_time).abs() < 5.0,
            "the guest's clock is {:.1} s off the host's",
            host_time - guest_time
        );
        vm.close().await.unwrap();
    }
    // Each of the four values differs between the two VMs.
    let fields: Vec<Vec<&str>> = draws
        .iter()
        .map(|d| d.split_whitespace().collect())
        .collect();
    assert_eq!(fields[0].len(), 4, "{draws:?}");
    for (a, b) in fields[0].iter().zip(&fields[1]) {
        assert_ne!(a, b, "two restored VMs drew the same: {draws:?}");
    }
}

/// A fork is a copy of the whole VM: a generator's position and a thread
/// that keeps running go on in the copy; each side goes on on its own.
#[tokio::test]
#[ignore = "needs KVM that runs Linux guests; run by vm_suite"]
async fn a_fork_copies_the_running_vm() {
    let mut vm = MicroVmExecutor::start(MicroVmConfig::default())
        .await
        .expect("a microVM");
    let setup = "import threading, time\n\
                 ticks = [0]\n\
                 def tick():\n    while True:\n        ticks[0] += 1\n        time.sleep(0.01)\n\
                 threading.Thread(target=tick, daemon=True).start()\n\
                 squares = (i * i for i in range(10))\n\
                 next(squares)";
    assert_eq!(vm.run(setup).await.unwrap().text(), Some("0"));
    let mut fork = vm.fork().await.expect("a fork");
    // The generator does not pickle; both copies resume it where it was.
    assert_eq!(fork.run("next(squares)").await.unwrap().text(), Some("1"));
    assert_eq!(fork.run("next(squares)").await.unwrap().text(), Some("4"));
    assert_eq!(vm.run("next(squares)").await.unwrap().text(), Some("1"));
    // The thread runs on in the fork.
    let count = async |vm: &mut MicroVmExecutor| -> u64 {
        vm.run("ticks[0]")
            .await
            .unwrap()
            .text()
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = count(&mut fork).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(count(&mut fork).await > before, "the fork's thread stopped");
    // Each draws its own random numbers.
    let draw = "import random; random.random()";
    let (a, b) = (vm.run(draw).await.unwrap(), fork.run(draw).await.unwrap());
    assert_ne!(a.text(), b.text());
    fork.close().await.unwrap();
    assert_eq!(
        vm.run("1 + 1").await.unwrap().text(),
        Some("2"),
        "the parent goes on"
    );
    vm.close().await.unwrap();
}

/// A cell leaving an open file `f` (which no pickle keeps) that reads 'kept'.
const OPEN_FILE: &str =
    "f = open('notes.txt', 'w+'); f.write('kept'); f.flush(); f.seek(0); 'ready'";

/// `Sandbox::fork` on the microVM copies the whole VM too: a value that
/// does not pickle (an open file) is there in the fork.
#[tokio::test]
#[ignore = "needs KVM that runs Linux guests; run by vm_suite"]
async fn sandbox_forks_on_the_microvm_keep_what_does_not_pickle() {
    let s = Sandbox::create(SandboxOptions::default().with_backend(BackendPolicy::Vm))
        .await
        .expect("a microVM sandbox");
    assert_eq!(s.run_code(OPEN_FILE).await.unwrap().text(), Some("'ready'"));
    let fork = s.fork().await.expect("a fork");
    assert_eq!(
        fork.run_code("f.read()").await.unwrap().text(),
        Some("'kept'")
    );
    assert_eq!(
        s.run_code("f.read()").await.unwrap().text(),
        Some("'kept'"),
        "the parent's own file"
    );
    fork.close().await.unwrap();
    s.close().await.unwrap();
}

/// `cellbox serve`'s fork route (`Fleet::fork`) copies the whole VM too:
/// each fork has the parent's open file, which no pickle keeps.
#[tokio::test]
#[ignore = "needs KVM that runs Linux guests; run by vm_suite"]
async fn serve_forks_on_the_microvm_are_whole_copies() {
    use cellbox::serve::fleet::{Fleet, OnTimeout, Spec};
    let options = SandboxOptions::default()
        .with_backend(BackendPolicy::Vm)
        .with_inactivity_timeout(None);
    let fleet = Fleet::new(options, 3);
    let spec = Spec {
        template: "code-interpreter-v1".into(),
        timeout: Duration::from_secs(600),
        on_timeout: OnTimeout::Kill,
        auto_resume: false,
        metadata: Default::default(),
        env_vars: Default::default(),
        network: Default::default(),
        public_traffic: true,
        mask_request_host: None,
        volumes: Vec::new(),
        custom_template: None,
        snapshot: None,
    };
    let parent = fleet.create(spec.clone()).await.expect("a microVM sandbox");
    let ready = parent.sandbox.run_code(OPEN_FILE).await.unwrap();
    assert_eq!(ready.text(), Some("'ready'"), "{ready:?}");
    let no_scratch = || panic!("a whole copy needs no snapshot folder");
    let forks = fleet.fork(&parent, spec, 3, no_scratch).await.unwrap();
    assert_eq!(forks.len(), 3);
    let mut made = 0;
    for fork in &forks {
        match fork {
            Ok(fork) => {
                made += 1;
                assert_ne!(fork.id, parent.id);
                let read = fork.sandbox.run_code("f.read()").await.unwrap();
                assert_eq!(read.text(), Some("'kept'"), "{read:?}");
            }
            Err(e) => assert!(e.to_string().contains("maximum of 3"), "{e}"),
        }
    }
    assert_eq!(
        made, 2,
        "the third does not fit in a fleet of three: {forks:?}"
    );
    fleet.kill_all().await;
}

/// A snapshot of a sandbox on the microVM keeps the whole VM: a sandbox
/// started from it (after the original is gone) has the open file, which no
/// pickle keeps, and numbers its cells on.
#[tokio::test]
#[ignore = "needs KVM that runs Linux guests; run by vm_suite"]
async fn snapshots_on_the_microvm_keep_the_whole_vm() {
    let options = || SandboxOptions::default().with_backend(BackendPolicy::Vm);
    let s = Sandbox::create(options()).await.expect("a microVM sandbox");
    assert_eq!(s.run_code(OPEN_FILE).await.unwrap().text(), Some("'ready'"));
    let folder = tempfile::tempdir().unwrap();
    let snapshot = s
        .snapshot(folder.path().join("snap"))
        .await
        .expect("a snapshot");
    assert!(snapshot.dir().join("vm").is_dir(), "the whole VM is kept");
    let dropped = snapshot.dropped();
    assert!(
        dropped.contains(&"f".to_string()),
        "not pickled: {dropped:?}"
    );
    s.close().await.unwrap();

    let copy = Sandbox::from_snapshot(&snapshot, options())
        .await
        .expect("a sandbox from the snapshot");
    let read = copy.run_code("f.read()").await.unwrap();
    assert_eq!(read.text(), Some("'kept'"), "{read:?}");
    assert_eq!(read.execution_count, Some(2), "{read:?}");
    copy.close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs KVM that runs Linux guests; run by vm_suite"]
async fn the_sandbox_api_on_the_microvm() {
    let s = Sandbox::create(SandboxOptions::default().with_backend(BackendPolicy::Vm))
        .await
        .expect("a microVM sandbox");
    // Files both ways.
    s.files().write("data/in.txt", b"40").await.unwrap();
    let sum = s
        .run_code("x = int(open('data/in.txt').read()) + 2\nopen('out.txt', 'w').write(str(x)); x")
        .await
        .unwrap();
    assert_eq!(sum.text(), Some("42"), "{sum:?}");
    assert_eq!(s.files().read_text("out.txt").await.unwrap(), "42");
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    s.files().write("big.bin", &big).await.unwrap();
    assert_eq!(s.files().read("big.bin").await.unwrap(), big);
    // Commands in the foreground and the background.
    let uname = s
        .commands()
        .run("uname -n; echo err >&2; exit 3", &CommandOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (
            uname.stdout.as_str(),
            uname.stderr.as_str(),
            uname.exit_code
        ),
        ("cellbox\n", "err\n", 3)
    );
    let cat = s
        .commands()
        .start("cat", &CommandOptions::default())
        .await
        .unwrap();
    cat.send_stdin(b"through stdin").await.unwrap();
    cat.close_stdin().await.unwrap();
    assert_eq!(cat.wait().await.unwrap().stdout, "through stdin");
    // Contexts keep their names apart; per-run env vars stay in their run.
    let other = s
        .create_context(Some("/tmp"), Language::Python)
        .await
        .unwrap();
    let in_other = RunCodeOptions::default().in_context(&other);
    s.run_code_with("x = 'other'", &in_other, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(s.run_code("x").await.unwrap().text(), Some("42"));
    let env = RunCodeOptions::default().env("FOO", "bar");
    let foo = s
        .run_code_with("import os; os.environ['FOO']", &env, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(foo.text(), Some("'bar'"));
    // Closing ends the VM; the sandbox says so afterwards.
    s.close().await.unwrap();
    assert!(!s.is_running().await);
    assert!(matches!(s.run_code("1").await, Err(Error::Closed)));
}

/// The microVM's network card (`vmm/src/devices/virtio/net/`, passt behind
/// it): absent without options; with them the VMM's filter lets allowed
/// addresses through and refuses denied ones and the host's own.
#[tokio::test]
#[ignore = "needs KVM that runs Linux guests; run by vm_suite"]
async fn network_on_the_microvm() {
    use cellbox_tests::network_rig;
    network_rig::check_nothing_leaves_without_network(BackendPolicy::Vm).await;
    network_rig::check_allowed_reached_denied_refused(BackendPolicy::Vm).await;
}

#[tokio::test]
#[ignore = "needs KVM that runs Linux guests; run by vm_suite"]
async fn the_router_moves_a_session_to_the_microvm() {
    let mut s = HybridExecutor::start(&wasm_engine().await, HybridConfig::default())
        .await
        .unwrap();
    s.run("x = 21\ndef double(v):\n    return 2 * v")
        .await
        .unwrap();
    assert_eq!(s.backend(), Backend::Wasm);
    let moved = s
        .run("import numpy as np; float(np.float64(double(x)))")
        .await
        .unwrap();
    assert_eq!(moved.text(), Some("42.0"), "{moved:?}");
    assert_eq!(s.backend(), Backend::Vm);
    assert_eq!(s.run("double(x) + 1").await.unwrap().text(), Some("43"));
    s.close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs KVM that runs Linux guests; run by vm_suite"]
async fn cellbox_run_with_the_vm_backend() {
    let output = Command::new(cellbox_binary())
        .args(["run", "--backend", "vm", "--json"])
        .args(["-c", "x = 1", "-c", "x += 1; x", "-c", "!uname -s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cells: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(cells.len(), 3, "{stdout}");
    assert!(cells.iter().all(|cell| cell["backend"] == "vm"), "{stdout}");
    assert_eq!(cells[1]["results"][0]["text"], "2");
    assert_eq!(cells[2]["logs"]["stdout"][0], "Linux\n");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs KVM that runs Linux guests; run by vm_suite"]
async fn the_official_e2b_sdk_drives_cellbox_serve_on_the_microvm() {
    let python = cellbox_tests::e2b_sdk_python();
    let config = cellbox::serve::ServeConfig {
        sandbox: SandboxOptions::default()
            .with_backend(BackendPolicy::Vm)
            .with_inactivity_timeout(None),
        snapshot_dir: std::env::temp_dir().join(format!("cellbox-vm-{}", std::process::id())),
        ..cellbox::serve::ServeConfig::new("an-api-key-for-the-vm-test")
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cellbox::serve::serve(config, async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(300);
    let healthy =
        || tokio::task::spawn_blocking(|| cellbox_tests::http_ok("127.0.0.1:49999", "/health"));
    while !healthy().await.unwrap() {
        assert!(
            !server.is_finished(),
            "cellbox serve ended: {:?}",
            server.await
        );
        assert!(Instant::now() < deadline, "cellbox serve did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2b/test_sdk.py");
    // Each check's line goes straight to stderr as it comes (the harness
    // captures only print!-style output): the run takes minutes under
    // emulation, and a machine that prints nothing for long is stopped.
    let (status, text) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(python)
            .arg(script)
            .env("PYTHONUNBUFFERED", "1")
            .env("SKIP_R_AND_JAVA", "1")
            // A hang shows where it is, well within the suite's TEST_BUDGET.
            .env("SDK_TEST_DEADLINE", "600")
            .stdout(Stdio::piped())
            .spawn()
            .expect("running the SDK");
        let mut text = String::new();
        let stdout = child.stdout.take().expect("piped");
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let _ = writeln!(std::io::stderr(), "{line}");
            text.push_str(&line);
            text.push('\n');
        }
        (child.wait().expect("waiting for the SDK"), text)
    })
    .await
    .unwrap();
    assert!(
        status.success() && text.contains(" passed, 0 failed"),
        "{text}"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
