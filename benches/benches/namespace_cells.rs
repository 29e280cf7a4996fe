//! The namespace sandbox: new sandbox to first result (`1 + 1`, and the
//! import of numpy, pandas and matplotlib), and a warm cell round trip,
//! against a local Jupyter kernel started with jupyter_client in the same run.
//!
//!     cargo bench -p cellbox-benches --bench namespace_cells
//!
//! Needs root. The peer's ipykernel and jupyter_client are installed from PyPI
//! into a virtualenv in the cache on first run.

#![allow(clippy::print_stdout)] // the report is this program's output

use std::path::PathBuf;
use std::process::Command;

use cellbox::{Executor, NamespaceConfig, NamespaceExecutor};
use std::time::Instant;

use cellbox_benches::{Sample, measure, measure_part, table};

#[tokio::main]
async fn main() {
    // Builds the guest artefacts if needed, outside the measurements.
    let mut warmup = NamespaceExecutor::start(NamespaceConfig::default())
        .await
        .expect("namespace sandbox");
    warmup.run("x = 0").await.unwrap();
    let warm = measure("warm cell `x += 1; x` (namespace)", 20, 300, async || {
        assert!(warmup.run("x += 1; x").await.unwrap().text().is_some());
    })
    .await;
    warmup.close().await.unwrap();

    // Timed from the call to start until the first result; closing is not counted.
    let first_result = async |code: &str| {
        let started = Instant::now();
        let mut sandbox = NamespaceExecutor::start(NamespaceConfig::default())
            .await
            .unwrap();
        let execution = sandbox.run(code).await.unwrap();
        let elapsed = started.elapsed();
        assert!(execution.error.is_none(), "{execution:?}");
        sandbox.close().await.unwrap();
        elapsed
    };
    let first = measure_part("new sandbox → `1 + 1`", 1, 10, async || {
        first_result("1 + 1").await
    })
    .await;
    let heavy = measure_part(
        "new sandbox → `import numpy, pandas, matplotlib`",
        1,
        10,
        async || first_result("import numpy, pandas, matplotlib.pyplot").await,
    )
    .await;

    let (peer_first, peer_warm) = jupyter_peer(10, 300);
    println!("{}", table(&[&first, &heavy], &peer_first));
    println!("{}", table(&[&warm], &peer_warm));
}

/// Runs the jupyter_client peer in a virtualenv with ipykernel from PyPI.
fn jupyter_peer(runs: usize, warm_runs: usize) -> (Sample, Sample) {
    let venv = cellbox::default_cache_dir().join("bench-jupyter-venv");
    let python = venv.join("bin/python3");
    if !python.exists() {
        let ok = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "ipykernel",
                    "jupyter_client",
                ])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "could not install the jupyter peer into {}",
            venv.display()
        );
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/jupyter_first_result.py");
    let output = Command::new(&python)
        .arg(script)
        .args([runs.to_string(), warm_runs.to_string()])
        .output()
        .expect("running the jupyter peer");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("peer JSON");
    let secs = |key: &str| -> Vec<f64> {
        report[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_f64())
            .collect()
    };
    (
        Sample::from_secs(
            "peer: Jupyter kernel (jupyter_client) → `1 + 1`",
            &secs("first_result_s"),
        ),
        Sample::from_secs("peer: Jupyter warm cell `x += 1; x`", &secs("warm_s")),
    )
}
