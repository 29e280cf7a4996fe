//! The microVM backend end to end: start → guest-init answering on vsock
//! (with the boot's milestones), start → first cell result, a warm cell; the
//! namespace sandbox (same guest, no VM) measured in the same run as the peer.
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

async fn bench() {
    // Builds the guest artefacts if needed, outside the measurements.
    let mut warm_vm = MicroVmExecutor::start(MicroVmConfig::default())
        .await
        .expect("microVM");
    warm_vm.run("x = 0").await.unwrap();
    let warm = measure("warm cell `x += 1; x` (microVM)", 20, 300, async || {
        assert!(warm_vm.run("x += 1; x").await.unwrap().text().is_some());
    })
    .await;
    warm_vm.close().await.unwrap();

    let mut timelines = Vec::new();
    let boot = measure_part(
        "`MicroVmExecutor::start` → guest-init answers",
        1,
        10,
        async || {
            let started = Instant::now();
            let mut vm = MicroVmExecutor::start(MicroVmConfig::default())
                .await
                .unwrap();
            let elapsed = started.elapsed();
            timelines.extend(vm.boot_timeline());
            vm.close().await.unwrap();
            elapsed
        },
    )
    .await;
    let first = measure_part("new microVM → `1 + 1`", 1, 10, async || {
        let started = Instant::now();
        let mut vm = MicroVmExecutor::start(MicroVmConfig::default())
            .await
            .unwrap();
        assert_eq!(vm.run("1 + 1").await.unwrap().text(), Some("2"));
        let elapsed = started.elapsed();
        vm.close().await.unwrap();
        elapsed
    })
    .await;
    let peer = measure_part(
        "peer: new namespace sandbox → `1 + 1`",
        1,
        10,
        async || {
            let started = Instant::now();
            let mut sandbox = NamespaceExecutor::start(NamespaceConfig::default())
                .await
                .unwrap();
            assert_eq!(sandbox.run("1 + 1").await.unwrap().text(), Some("2"));
            let elapsed = started.elapsed();
            sandbox.close().await.unwrap();
            elapsed
        },
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
    rows.extend([&boot, &first, &warm]);
    if std::env::var_os(IN_EMULATED_KVM).is_some() {
        println!("(emulated in software: absolute times mean little, ratios something)");
    }
    println!("{}", table(&rows, &peer));
}
