//! The microVM backend end to end: a new VM restored from the warm snapshot
//! (the default) → first result and → the data stack imported, against a
//! booted one (`warm: false`, the peer, with its boot's milestones), a fork
//! of a busy VM, and a warm cell; outside the emulated machine also the
//! namespace sandbox.
//!
//!     sudo cargo bench -p cellbox-benches --bench microvm_cells
//!
//! Where KVM cannot run Linux (no /dev/kvm, or PVM) it runs itself inside the
//! emulated-KVM machine (`tests/emulated-kvm/run.sh`), where everything is
//! emulated in software: there only the ratios to the peer mean something.

#![allow(clippy::print_stdout)] // the report is this program's output

use std::path::Path;
use std::time::{Duration, Instant};

use cellbox::{
    BootTimeline, Executor, MicroVmConfig, MicroVmExecutor, NamespaceConfig, NamespaceExecutor,
};
use cellbox_benches::{Sample, measure, measure_part, table};

/// Set inside the emulated machine by its `run.sh`.
const IN_EMULATED_KVM: &str = "CELLBOX_EMULATED_KVM";

fn main() {
    if let Some(reason) = cellbox_vmm::kvm_support::linux_guest_blocker() {
        if std::env::var_os(IN_EMULATED_KVM).is_none() {
            println!("{reason}: running this benchmark in the emulated-KVM machine");
            run_emulated();
            return;
        }
        panic!("in the emulated-KVM machine, KVM still cannot run Linux: {reason}");
    }
    tokio::runtime::Runtime::new().unwrap().block_on(bench());
}

/// Builds the guest here (fast, with network), then runs this benchmark
/// inside the emulated machine.
fn run_emulated() {
    cellbox::microvm::guest_files(&cellbox::default_cache_dir(), &Default::default())
        .expect("the guest kernel and image");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/emulated-kvm/run.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(std::env::current_exe().unwrap())
        .status()
        .expect("running tests/emulated-kvm/run.sh");
    assert!(status.success(), "the emulated run failed: {status}");
}

const DATA_STACK: &str = "import numpy, pandas, matplotlib.pyplot";
/// A cell that leaves a thread counting in the background.
const BUSY: &str = "import threading, time\nticks = [0]\n\
                    def tick():\n    while True:\n        ticks[0] += 1\n        time.sleep(0.01)\n\
                    threading.Thread(target=tick, daemon=True).start()";

/// A new microVM (`warm` or booted) → `code` answered; closing not counted.
async fn new_vm_to(warm: bool, code: &str) -> Duration {
    let started = Instant::now();
    let config = MicroVmConfig {
        warm,
        ..Default::default()
    };
    let mut vm = MicroVmExecutor::start(config).await.unwrap();
    let execution = vm.run(code).await.unwrap();
    assert!(execution.error.is_none(), "{execution:?}");
    let elapsed = started.elapsed();
    vm.close().await.unwrap();
    elapsed
}

async fn bench() {
    // Builds the guest artefacts and the warm snapshot if needed, outside
    // the measurements.
    let mut warm_vm = MicroVmExecutor::start(MicroVmConfig::default())
        .await
        .expect("microVM");
    warm_vm.run("x = 0").await.unwrap();
    let warm_cell = measure("warm cell `x += 1; x` (microVM)", 20, 300, async || {
        assert!(warm_vm.run("x += 1; x").await.unwrap().text().is_some());
    })
    .await;
    warm_vm.close().await.unwrap();

    let mut timelines = Vec::new();
    let boot = measure_part(
        "booted microVM (`warm: false`): start → guest-init answers",
        1,
        5,
        async || {
            let started = Instant::now();
            let config = MicroVmConfig {
                warm: false,
                ..Default::default()
            };
            let mut vm = MicroVmExecutor::start(config).await.unwrap();
            let elapsed = started.elapsed();
            timelines.extend(vm.boot_timeline());
            vm.close().await.unwrap();
            elapsed
        },
    )
    .await;
    let warm_first = measure_part("new microVM (warm) → `1 + 1`", 1, 10, async || {
        new_vm_to(true, "1 + 1").await
    })
    .await;
    let warm_stack = measure_part(
        "new microVM (warm) → numpy, pandas, matplotlib imported",
        1,
        10,
        async || new_vm_to(true, DATA_STACK).await,
    )
    .await;
    // A busy VM: a thread keeps counting while it is copied.
    let mut busy = MicroVmExecutor::start(MicroVmConfig::default())
        .await
        .unwrap();
    busy.run(BUSY).await.unwrap();
    let fork = measure_part(
        "fork of a busy microVM → the copy answers `ticks[0]`",
        0,
        3,
        async || {
            let started = Instant::now();
            let mut copy = busy.fork().await.unwrap();
            assert!(copy.run("ticks[0]").await.unwrap().text().is_some());
            let elapsed = started.elapsed();
            copy.close().await.unwrap();
            elapsed
        },
    )
    .await;
    busy.close().await.unwrap();
    let cold_first = measure_part("new microVM (booted) → `1 + 1`", 0, 3, async || {
        new_vm_to(false, "1 + 1").await
    })
    .await;
    let peer = measure_part(
        "peer: new microVM (booted) → numpy, pandas, matplotlib imported",
        0,
        3,
        async || new_vm_to(false, DATA_STACK).await,
    )
    .await;
    let milestone = |name: &str, at: fn(&BootTimeline) -> Duration| {
        let secs: Vec<f64> = timelines.iter().map(|t| at(t).as_secs_f64()).collect();
        Sample::from_secs(&format!("boot milestone: {name}"), &secs)
    };
    let milestones = [
        milestone("VM started (first vCPU entry)", |t| t.vm_started),
        milestone("guest kernel started", |t| t.kernel_started),
        milestone("guest-init started", |t| t.init_started),
        milestone("guest-init listening", |t| t.listening),
        milestone("host connected", |t| t.connected),
    ];
    let mut rows: Vec<&Sample> = milestones.iter().collect();
    rows.extend([
        &boot,
        &cold_first,
        &warm_first,
        &warm_stack,
        &fork,
        &warm_cell,
    ]);
    if std::env::var_os(IN_EMULATED_KVM).is_some() {
        println!("(emulated in software: absolute times mean little, ratios something)");
    }
    println!("{}", table(&rows, &peer));
    // The same guest without a VM, where it starts (not in the emulated machine).
    if std::env::var_os(IN_EMULATED_KVM).is_none() {
        let namespace = measure_part("namespace sandbox (warm) → `1 + 1`", 1, 10, async || {
            let started = Instant::now();
            let mut sandbox = NamespaceExecutor::start(NamespaceConfig::default())
                .await
                .unwrap();
            assert_eq!(sandbox.run("1 + 1").await.unwrap().text(), Some("2"));
            let elapsed = started.elapsed();
            sandbox.close().await.unwrap();
            elapsed
        })
        .await;
        println!("{}", table(&[&namespace], &peer));
    }
}
