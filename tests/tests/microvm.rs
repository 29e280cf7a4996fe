//! `MicroVmExecutor` end to end: where KVM can run the Linux guest, the same
//! cells as the namespace backend with the same results; where it cannot
//! (no /dev/kvm, or PVM as on our CI machines), a fast, clear refusal.

use std::time::{Duration, Instant};

use cellbox::{Error, Executor, MicroVmConfig, MicroVmExecutor};
use cellbox_tests::check_plot_is_png;

#[tokio::test]
async fn cells_run_in_the_microvm_or_it_refuses_fast() {
    let started = Instant::now();
    let result = MicroVmExecutor::start(MicroVmConfig::default()).await;
    match cellbox_vmm::kvm_support::linux_guest_blocker() {
        Some(reason) => {
            let Err(Error::Unavailable {
                backend,
                reason: message,
            }) = result
            else {
                panic!("expected Unavailable, got {result:?}");
            };
            assert_eq!(backend.to_string(), "vm");
            assert!(
                message.contains(&reason) && message.contains("--backend namespace"),
                "{message}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "took {:?}",
                started.elapsed()
            );
        }
        None => {
            let mut vm = result.expect("the microVM starts");
            vm.run("x = 1").await.unwrap();
            let execution = vm.run("x += 1; x").await.unwrap();
            assert_eq!(execution.text(), Some("2"));
            check_plot_is_png(&mut vm).await;
            vm.close().await.unwrap();
        }
    }
}
