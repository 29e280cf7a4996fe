//! cellbox's Python package in process against E2B's official Python SDK
//! through `cellbox serve` (in this process, on its API port): `Sandbox.create()`
//! → first result, on the fast path and on the heavy guest, both measured by
//! one Python script (`peers/python_in_process.py`) in the same run.
//!
//!     cargo bench -p cellbox-benches --bench python_package
//!
//! Builds the wheel (release) with `runtime/python/build-wheel.sh` and installs
//! it beside the SDK (installed from PyPI into the cache on first use); needs
//! root (the heavy guest is the namespace sandbox here) and port 49980 free.

#![allow(clippy::print_stdout)] // the report is this program's output

use std::path::Path;
use std::process::Command;

use cellbox_benches::{Sample, table};

const RUNS: usize = 20;
const API_KEY: &str = "e2b_a-key-for-the-python-package-benchmark";

/// Builds the release wheel and installs it into `python`'s environment.
fn install_wheel(python: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wheels = root.join("target/wheels-bench");
    let _ = std::fs::remove_dir_all(&wheels);
    let bin = python.parent().expect("the SDK's bin folder");
    let pip = |args: &[&str]| {
        let status = Command::new(python)
            .args(["-m", "pip", "install", "-q"])
            .args(args)
            .status()
            .expect("pip");
        assert!(status.success(), "pip install {args:?} failed");
    };
    pip(&["maturin==1.16.0"]);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let status = Command::new("bash")
        .arg(root.join("runtime/python/build-wheel.sh"))
        .arg("--release")
        .arg(&wheels)
        .env("PATH", path)
        .status()
        .expect("bash");
    assert!(status.success(), "building the wheel failed");
    let wheel = std::fs::read_dir(&wheels)
        .expect("the wheel folder")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .expect("a wheel");
    pip(&["--force-reinstall", "--no-deps", &wheel.to_string_lossy()]);
}

#[tokio::main]
async fn main() {
    let python = cellbox_benches::e2b_sdk_python();
    install_wheel(&python);

    let timings = cellbox_benches::run_peer_against_serve(
        &python,
        "python_in_process.py",
        &[RUNS.to_string()],
        API_KEY,
    )
    .await;

    let sample = |key: &str, name: &str| Sample::from_secs(name, &timings[key]);
    for (path, cell) in [("fast", "1 + 1"), ("heavy", "import numpy; 1 + 1")] {
        let in_process = sample(
            &format!("in_process_{path}"),
            &format!("cellbox (Python, in process): `Sandbox.create()` → `run_code({cell:?})`"),
        );
        let sdk = sample(
            &format!("sdk_{path}"),
            &format!("peer: E2B SDK → `cellbox serve`: `Sandbox.create()` → `run_code({cell:?})`"),
        );
        println!("{}", table(&[&in_process], &sdk));
    }
}
