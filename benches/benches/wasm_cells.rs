//! The WebAssembly fast path: warm cells and new sessions, against a native
//! `python3 -c 'print(1+1)'` process measured in the same run.
//!
//!     cargo bench -p cellbox-benches --bench wasm_cells

#![allow(clippy::print_stdout)] // the report is this program's output

use std::process::Command;

use cellbox::{Executor, WasmConfig, WasmEngine, WasmExecutor};
use cellbox_benches::{measure, table};

#[tokio::main]
async fn main() {
    let snapshot = WasmEngine::load(WasmConfig::default())
        .await
        .expect("loading the wasm backend");
    let cold = WasmEngine::load(WasmConfig {
        preinitialize: false,
        ..Default::default()
    })
    .await
    .expect("loading the wasm backend without snapshot");

    let mut session = WasmExecutor::start(&snapshot, Default::default())
        .await
        .unwrap();
    session.run("x = 0").await.unwrap();
    let warm = measure("warm cell `x += 1; x`", 50, 1000, async || {
        let execution = session.run("x += 1; x").await.unwrap();
        assert!(execution.text().is_some());
    })
    .await;

    let new_session = |engine: WasmEngine| {
        async move || {
            let mut session = WasmExecutor::start(&engine, Default::default())
                .await
                .unwrap();
            let execution = session.run("1 + 1").await.unwrap();
            assert_eq!(execution.text(), Some("2"));
        }
    };
    let with_snapshot = measure(
        "new session → `1 + 1` (Wizer snapshot)",
        5,
        100,
        new_session(snapshot.clone()),
    )
    .await;
    let without_snapshot = measure(
        "new session → `1 + 1` (no snapshot)",
        3,
        30,
        new_session(cold.clone()),
    )
    .await;

    // The interpreter itself, not a launcher shim (pyenv puts a shell script first on PATH).
    let python = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .expect("python3 on PATH");
    let peer = measure(
        "peer: native `python3 -c 'print(1+1)'`",
        3,
        30,
        async || {
            let output = Command::new(&python)
                .args(["-c", "print(1+1)"])
                .output()
                .unwrap();
            assert_eq!(output.stdout, b"2\n");
        },
    )
    .await;

    println!(
        "{}",
        table(&[&warm, &with_snapshot, &without_snapshot], &peer)
    );
}
