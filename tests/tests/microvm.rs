//! `MicroVmExecutor` end to end: where KVM can run the Linux guest, the same
//! cells as the namespace backend with the same results; where it cannot
//! (no /dev/kvm, or PVM as on our CI machines), a fast, clear refusal.

use std::time::{Duration, Instant};

use base64::Engine as _;
use cellbox::{Error, Executor, MicroVmConfig, MicroVmExecutor};

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
            let plot = vm
                .run("import matplotlib.pyplot as plt; plt.plot([1, 2, 3]); plt.show()")
                .await
                .unwrap();
            let png = plot
                .results
                .iter()
                .find_map(|r| r.png.as_deref())
                .expect("a PNG result");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(png)
                .unwrap();
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
            vm.close().await.unwrap();
        }
    }
}
