//! The microVM backend end to end, on hosts where KVM can run the Linux guest
//! (hardware virtualisation): start → guest-init answering on vsock, start →
//! first cell result, a warm cell; the namespace sandbox (same guest, no VM)
//! measured in the same run as the peer.
//!
//!     sudo cargo bench -p cellbox-benches --bench microvm_cells
//!
//! Where KVM cannot run Linux (no /dev/kvm, or PVM), it prints why and stops.

#![allow(clippy::print_stdout)] // the report is this program's output

use std::time::Instant;

use cellbox::{Executor, MicroVmConfig, MicroVmExecutor, NamespaceConfig, NamespaceExecutor};
use cellbox_benches::{measure, measure_part, table};

#[tokio::main]
async fn main() {
    if let Some(reason) = cellbox_vmm::kvm_support::linux_guest_blocker() {
        println!("microVM benchmark skipped: {reason}");
        return;
    }
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
    println!("{}", table(&[&boot, &first, &warm], &peer));
}
