//! The router against always-heavy, and a warm start against a cold one:
//! the representative 20-cell notebook in `benches/notebook/representative.py`
//! (split at `# %%`), end to end, in the same run: time to the first result
//! and to the last, from a new session. The peer is the namespace sandbox
//! started cold (its kernel a new Python that imports everything itself).
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
        // auto, always heavy (warm), always heavy (cold): first and last result.
        let mut times = [(); 3].map(|()| (Vec::new(), Vec::new()));
        for _ in 0..runs {
            for (kind, (firsts, lasts)) in times.iter_mut().enumerate() {
                let started = Instant::now();
                let mut session: Box<dyn Executor> = match kind {
                    0 => Box::new(
                        HybridExecutor::start(&engine, HybridConfig::default())
                            .await
                            .unwrap(),
                    ),
                    _ => Box::new(
                        NamespaceExecutor::start(NamespaceConfig {
                            warm: kind == 1,
                            ..Default::default()
                        })
                        .await
                        .unwrap(),
                    ),
                };
                let (first, last) = run_all(session.as_mut(), &cells, started).await;
                session.close().await.unwrap();
                firsts.push(first.as_secs_f64());
                lasts.push(last.as_secs_f64());
            }
        }
        println!("### {name}\n");
        let [auto, warm, cold] = &times;
        for (which, pick) in [("first result", 0), ("all cells done", 1)] {
            let pick = |(firsts, lasts): &(Vec<f64>, Vec<f64>)| {
                if pick == 0 {
                    firsts.clone()
                } else {
                    lasts.clone()
                }
            };
            let auto = Sample::from_secs(
                &format!("auto (warm heavy backend): new session → {which}"),
                &pick(auto),
            );
            let warm = Sample::from_secs(
                &format!("always heavy, warm: new sandbox → {which}"),
                &pick(warm),
            );
            let cold = Sample::from_secs(
                &format!("always heavy, cold: new sandbox → {which}"),
                &pick(cold),
            );
            println!("{}", table(&[&auto, &warm], &cold));
        }
    }
}
