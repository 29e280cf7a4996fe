//! Sandbox lifecycles through E2B's official Python SDK against
//! `cellbox serve` as E2B's cloud (in this process, on its API port):
//! create → first result (fast path) with the Rust API's
//! `Sandbox::create` + `run_code` measured in the same run as the peer;
//! create → first command (heavy guest); pause → resume; eight sandboxes
//! at once against eight in turn; fork → first result (fast path and heavy
//! guest) and snapshot → new sandbox → first result, with the Rust API's
//! `fork` + `run_code` as their peer.
//!
//!     cargo bench -p cellbox-benches --bench e2b_sandboxes
//!
//! Installs the SDK from PyPI into the cache on first use; needs root (the
//! heavy guest is the namespace sandbox here) and port 49980 free.

#![allow(clippy::print_stdout)] // the report is this program's output

use cellbox::{Sandbox, SandboxOptions};
use cellbox_benches::{Sample, measure, table};

const RUNS: usize = 15;
const API_KEY: &str = "e2b_a-key-for-the-sandboxes-benchmark";

#[tokio::main]
async fn main() {
    let python = cellbox_benches::e2b_sdk_python();
    // Closed after the measurement, as the SDK's are killed outside theirs.
    let mut made = Vec::new();
    let direct = measure(
        "Rust API: `Sandbox::create` → `run_code(\"1 + 1\")`",
        1,
        RUNS,
        async || {
            let sandbox = Sandbox::create(SandboxOptions::default()).await.unwrap();
            assert_eq!(sandbox.run_code("1 + 1").await.unwrap().text(), Some("2"));
            made.push(sandbox);
        },
    )
    .await;
    let parent = Sandbox::create(SandboxOptions::default()).await.unwrap();
    parent.run_code("kept = 42").await.unwrap();
    let direct_fork = measure(
        "Rust API: `fork()` → `run_code` (fast path)",
        1,
        RUNS,
        async || {
            let fork = parent.fork().await.unwrap();
            assert_eq!(fork.run_code("kept").await.unwrap().text(), Some("42"));
            made.push(fork);
        },
    )
    .await;
    made.push(parent);
    for sandbox in made {
        sandbox.close().await.unwrap();
    }

    let timings = cellbox_benches::run_peer_against_serve(
        &python,
        "e2b_sdk_sandboxes.py",
        &[RUNS.to_string()],
        API_KEY,
    )
    .await;

    let sample = |key: &str, name: &str| Sample::from_secs(name, &timings[key]);
    let first_result = sample(
        "create_first_result",
        "E2B SDK: `Sandbox.create()` → `run_code(\"1 + 1\")`",
    );
    let first_command = sample(
        "create_first_command",
        "E2B SDK: `Sandbox.create()` → `commands.run(\"true\")` (heavy guest)",
    );
    let pause_resume = sample(
        "pause_resume",
        "E2B SDK: `pause()` → `Sandbox.connect()` → `run_code` (heavy guest)",
    );
    println!(
        "{}",
        table(&[&first_result, &first_command, &pause_resume], &direct)
    );
    let sequential = sample("sequential_8", "8 × create → run_code → kill, in turn");
    let parallel = sample(
        "parallel_8",
        "8 × create → run_code → kill, at once (8 threads)",
    );
    println!("{}", table(&[&parallel], &sequential));
    let fork_fast = sample(
        "fork_fast",
        "E2B SDK: `fork()` → `run_code` on the fork (fast path)",
    );
    let fork_heavy = sample(
        "fork_heavy",
        "E2B SDK: `fork()` → `run_code` on the fork (heavy guest)",
    );
    let snapshot_start = sample(
        "snapshot_start",
        "E2B SDK: `create_snapshot()` → `Sandbox.create(it)` → `run_code` (heavy guest)",
    );
    println!(
        "{}",
        table(&[&fork_fast, &fork_heavy, &snapshot_start], &direct_fork)
    );
}
