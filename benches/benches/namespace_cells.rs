//! The namespace sandbox: a new sandbox to its first result (`1 + 1`, and
//! the import of numpy, pandas and matplotlib), warm (the kernel forked from
//! the warm template, the default) and cold (a Python started and importing),
//! against a local Jupyter kernel started with jupyter_client in the same
//! run; the same from a [`NamespacePool`] whose spare is ready; a warm cell round trip; the memory each extra idle sandbox costs the
//! host; 50 sandboxes started at once.
//!
//!     cargo bench -p cellbox-benches --bench namespace_cells
//!
//! Needs root. The peer's ipykernel and jupyter_client are installed from PyPI
//! into a virtualenv in the cache on first run.

#![allow(clippy::print_stdout)] // the report is this program's output

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cellbox::{Executor, NamespaceConfig, NamespaceExecutor, NamespacePool};

use cellbox_benches::{Sample, measure, measure_part, table};

const DATA_STACK: &str = "import numpy, pandas, matplotlib.pyplot";

fn config(warm: bool) -> NamespaceConfig {
    NamespaceConfig {
        warm,
        ..Default::default()
    }
}

/// Timed from the call to start until the first result; closing is not counted.
async fn first_result(warm: bool, code: &str) -> Duration {
    let started = Instant::now();
    let mut sandbox = NamespaceExecutor::start(config(warm)).await.unwrap();
    let execution = sandbox.run(code).await.unwrap();
    let elapsed = started.elapsed();
    assert!(execution.error.is_none(), "{execution:?}");
    sandbox.close().await.unwrap();
    elapsed
}

#[tokio::main]
async fn main() {
    // Builds the guest artefacts and starts the warm template, outside the measurements.
    let mut warmup = NamespaceExecutor::start(config(true))
        .await
        .expect("namespace sandbox");
    warmup.run("x = 0").await.unwrap();
    let warm = measure("warm cell `x += 1; x` (namespace)", 20, 300, async || {
        assert!(warmup.run("x += 1; x").await.unwrap().text().is_some());
    })
    .await;
    warmup.close().await.unwrap();

    let mut starts = Vec::new();
    for (warm, how) in [(true, "warm"), (false, "cold")] {
        for (code, what) in [
            ("1 + 1", "`1 + 1`"),
            (DATA_STACK, "numpy, pandas, matplotlib imported"),
        ] {
            let name = format!("new sandbox ({how}) → {what}");
            starts.push(measure_part(&name, 2, 20, async || first_result(warm, code).await).await);
        }
    }
    let pool = NamespacePool::new(config(true), 1);
    for (code, what) in [
        ("1 + 1", "`1 + 1`"),
        (DATA_STACK, "numpy, pandas, matplotlib imported"),
    ] {
        let name = format!("new sandbox (pool, a spare ready) → {what}");
        starts.push(
            measure_part(&name, 2, 20, async || {
                pool.ready().await.expect("the pool's spare");
                let started = Instant::now();
                let mut sandbox = pool.start().await.unwrap();
                let execution = sandbox.run(code).await.unwrap();
                let elapsed = started.elapsed();
                assert!(execution.error.is_none(), "{execution:?}");
                sandbox.close().await.unwrap();
                elapsed
            })
            .await,
        );
    }
    drop(pool);
    let (peer_first, peer_warm) = jupyter_peer(10, 300);
    println!("{}", table(&starts.iter().collect::<Vec<_>>(), &peer_first));
    println!("{}", table(&[&warm], &peer_warm));

    println!(
        "| idle sandboxes with the data stack imported | host memory per extra sandbox |\n|---|---|"
    );
    for (warm, how) in [(true, "warm"), (false, "cold")] {
        let mib = memory_per_idle_sandbox(warm, 10).await;
        println!("| 10 ({how}) | {mib:.1} MiB |");
    }
    println!("\n| sandboxes started at once, each to `1 + 1` | all answered after |\n|---|---|");
    for (warm, how) in [(true, "warm"), (false, "cold")] {
        let took = started_at_once(warm, 50).await;
        println!("| 50 ({how}) | {} |", cellbox_benches::human(took));
    }
}

/// The host's available memory, in bytes.
fn available_memory() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// How much less memory the host has per sandbox with `count` more idle
/// sandboxes, each with the data stack imported.
async fn memory_per_idle_sandbox(warm: bool, count: usize) -> f64 {
    // One first, so that a template or page cache is not counted.
    let mut sandboxes = vec![NamespaceExecutor::start(config(warm)).await.unwrap()];
    sandboxes[0].run(DATA_STACK).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = available_memory();
    for _ in 0..count {
        let mut sandbox = NamespaceExecutor::start(config(warm)).await.unwrap();
        assert!(sandbox.run(DATA_STACK).await.unwrap().error.is_none());
        sandboxes.push(sandbox);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = available_memory();
    for mut sandbox in sandboxes {
        sandbox.close().await.unwrap();
    }
    before.saturating_sub(after) as f64 / count as f64 / f64::from(1 << 20)
}

/// Starts `count` sandboxes at once, each running `1 + 1`: the time until
/// the last answered.
async fn started_at_once(warm: bool, count: usize) -> Duration {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        tasks.spawn(async move {
            let mut sandbox = NamespaceExecutor::start(config(warm)).await.unwrap();
            assert_eq!(sandbox.run("1 + 1").await.unwrap().text(), Some("2"));
            sandbox
        });
    }
    let sandboxes = tasks.join_all().await;
    let took = started.elapsed();
    for mut sandbox in sandboxes {
        sandbox.close().await.unwrap();
    }
    took
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
