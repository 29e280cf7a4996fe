//! The router against always-heavy: the representative 20-cell notebook in
//! `benches/notebook/representative.py` (split at `# %%`), end to end, in the
//! same run: time to the first result and to the last.
//!
//!     cargo bench -p cellbox-benches --bench notebook
//!
//! Needs the heavy backend: root for the namespace sandbox (or a KVM host
//! that runs the microVM).

#![allow(clippy::print_stdout)] // the report is this program's output

use std::time::{Duration, Instant};

use cellbox::{
    Executor, HybridConfig, HybridExecutor, NamespaceConfig, NamespaceExecutor, WasmEngine,
};
use cellbox_benches::{Sample, table};

const NOTEBOOK: &str = include_str!("../notebook/representative.py");

fn cells() -> Vec<String> {
    NOTEBOOK
        .split("# %%")
        .skip(1)
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

/// The notebook's 14 plain-Python cells (no numpy, pandas, matplotlib).
fn plain_cells() -> Vec<String> {
    let all = cells();
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 19]
        .iter()
        .map(|&i| all[i].clone())
        .collect()
}

/// Runs `cells`; returns (first result, last result) measured from `started`.
async fn run_all(
    session: &mut dyn Executor,
    cells: &[String],
    started: Instant,
) -> (Duration, Duration) {
    let mut first = None;
    for cell in cells {
        let execution = session.run(cell).await.unwrap();
        assert!(execution.error.is_none(), "{cell}: {execution:?}");
        first.get_or_insert(started.elapsed());
    }
    (first.unwrap(), started.elapsed())
}

#[tokio::main]
async fn main() {
    assert_eq!(cells().len(), 20);
    let engine = WasmEngine::load(Default::default()).await.unwrap();
    // Warm the caches (guest artefacts, page cache) outside the measurements.
    let mut warm = NamespaceExecutor::start(NamespaceConfig::default())
        .await
        .expect("namespace sandbox (root)");
    warm.run("import numpy, pandas, matplotlib.pyplot")
        .await
        .unwrap();
    warm.close().await.unwrap();

    for (name, cells) in [
        ("the 20-cell notebook", cells()),
        ("its 14 plain cells", plain_cells()),
    ] {
        let runs = 5;
        let (mut auto_first, mut auto_last, mut heavy_first, mut heavy_last) =
            (vec![], vec![], vec![], vec![]);
        for _ in 0..runs {
            let started = Instant::now();
            let mut auto = HybridExecutor::start(&engine, HybridConfig::default())
                .await
                .unwrap();
            let (first, last) = run_all(&mut auto, &cells, started).await;
            auto.close().await.unwrap();
            auto_first.push(first.as_secs_f64());
            auto_last.push(last.as_secs_f64());

            let started = Instant::now();
            let mut heavy = NamespaceExecutor::start(NamespaceConfig::default())
                .await
                .unwrap();
            let (first, last) = run_all(&mut heavy, &cells, started).await;
            heavy.close().await.unwrap();
            heavy_first.push(first.as_secs_f64());
            heavy_last.push(last.as_secs_f64());
        }
        println!("### {name}\n");
        let auto_first = Sample::from_secs("auto: new session → first result", &auto_first);
        let heavy_first =
            Sample::from_secs("always heavy: new sandbox → first result", &heavy_first);
        let auto_last = Sample::from_secs("auto: new session → all cells done", &auto_last);
        let heavy_last =
            Sample::from_secs("always heavy: new sandbox → all cells done", &heavy_last);
        println!("{}", table(&[&auto_first], &heavy_first));
        println!("{}", table(&[&auto_last], &heavy_last));
    }
}
