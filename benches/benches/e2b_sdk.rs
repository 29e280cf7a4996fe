//! `run_code("1 + 1")` through E2B's official Python SDK against
//! `cellbox serve` (in this process, on the SDK's debug ports), warm, and the
//! same cell through the Rust API directly, in the same run: the p50 overhead
//! of the HTTP server, the SDK and its Python process.
//!
//!     cargo bench -p cellbox-benches --bench e2b_sdk
//!
//! Installs the SDK from PyPI into the cache on first use
//! (`tests/e2b/install_sdk.sh`); needs ports 49999 and 49983 free.

#![allow(clippy::print_stdout)] // the report is this program's output

use std::path::Path;

use cellbox::serve::{ServeConfig, serve};
use cellbox::{Sandbox, SandboxOptions};
use cellbox_benches::{Sample, human, measure, table};

const WARMUP: usize = 20;
const RUNS: usize = 300;

#[tokio::main]
async fn main() {
    let python = cellbox_benches::e2b_sdk_python();

    let sandbox = Sandbox::create(SandboxOptions::default()).await.unwrap();
    let direct = measure(
        "Rust API: `sandbox.run_code(\"1 + 1\")`",
        WARMUP,
        RUNS,
        async || {
            let execution = sandbox.run_code("1 + 1").await.unwrap();
            assert_eq!(execution.text(), Some("2"));
        },
    )
    .await;
    sandbox.close().await.unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        ServeConfig::new("an-api-key-for-the-benchmark"),
        async {
            let _ = stopped.await;
        },
    ));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/e2b_sdk_run_code.py");
    let printed = cellbox_benches::run_sdk_peer(
        tokio::process::Command::new(&python)
            .arg(script)
            .args([WARMUP.to_string(), RUNS.to_string()]),
    )
    .await;
    let secs: Vec<f64> = serde_json::from_value(printed).expect("timings");
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    let through_sdk = Sample::from_secs(
        "E2B Python SDK → `cellbox serve`: `sbx.run_code(\"1 + 1\")`",
        &secs,
    );
    println!("{}", table(&[&through_sdk], &direct));
    let overhead = through_sdk.p50().saturating_sub(direct.p50());
    println!("overhead of the SDK path at p50: {}", human(overhead));
}
