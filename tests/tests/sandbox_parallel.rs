//! 20 sandboxes at once, 50 cells each, mixed backends: every result comes
//! back to the sandbox that asked, and nothing is left behind (processes,
//! temporary folders, control groups), also by sandboxes dropped unclosed. Its own test binary, so that no other
//! test's sandboxes are counted.

use std::collections::BTreeSet;

use cellbox::{Sandbox, SandboxOptions};

/// Processes of ours: sandbox launchers, guest-init, kernels.
fn our_processes() -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("cellbox_kernel.py") || cmdline.contains("--namespace-root") {
            found.insert(pid);
        }
    }
    found
}

/// Temporary folders and control groups of ours.
fn our_leftovers() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let places = [
        std::env::temp_dir(),
        "/sys/fs/cgroup/memory".into(),
        "/sys/fs/cgroup/pids".into(),
        "/sys/fs/cgroup".into(),
    ];
    for place in places {
        for entry in std::fs::read_dir(&place).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("cellbox-") {
                found.insert(format!("{}/{name}", place.display()));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_sandboxes_fifty_cells_no_crosstalk_no_leaks() {
    // Load the engine and build artefacts once, outside the count.
    let warm = Sandbox::create(SandboxOptions::default().with_prestart(false))
        .await
        .unwrap();
    warm.close().await.unwrap();
    let processes_before = our_processes();
    let leftovers_before = our_leftovers();

    let mut tasks = Vec::new();
    for n in 0..20u32 {
        tasks.push(tokio::spawn(async move {
            // Even sandboxes stay on the fast path; odd ones move at cell 25.
            let sandbox = Sandbox::create(SandboxOptions::default().with_prestart(n % 2 == 1))
                .await
                .unwrap();
            sandbox
                .run_code(&format!("tag = 'sandbox-{n}'"))
                .await
                .unwrap();
            for i in 1..50u32 {
                let code = if n % 2 == 1 && i == 25 {
                    format!("import numpy as np; f'{{tag}}-{i}-{{int(np.int64({i}))}}'")
                } else {
                    format!("f'{{tag}}-{i}'")
                };
                let execution = sandbox.run_code(&code).await.unwrap();
                let expected = if n % 2 == 1 && i == 25 {
                    format!("'sandbox-{n}-{i}-{i}'")
                } else {
                    format!("'sandbox-{n}-{i}'")
                };
                assert_eq!(
                    execution.text(),
                    Some(expected.as_str()),
                    "sandbox {n} cell {i}"
                );
            }
            let moved = sandbox.backend().await != cellbox::Backend::Wasm;
            assert_eq!(moved, n % 2 == 1, "sandbox {n}");
            sandbox.close().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Dropped without close: cleaned up all the same.
    for _ in 0..2 {
        let dropped = Sandbox::create(SandboxOptions::default().with_prestart(false))
            .await
            .unwrap();
        dropped.run_code("import numpy").await.unwrap();
        drop(dropped);
    }

    // Closing is synchronous for processes; give the kernel a moment to reap.
    let mut leaked = BTreeSet::new();
    for _ in 0..50 {
        leaked = our_processes()
            .difference(&processes_before)
            .copied()
            .collect();
        if leaked.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(leaked.is_empty(), "processes left behind: {leaked:?}");
    let left: Vec<String> = our_leftovers()
        .difference(&leftovers_before)
        .cloned()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
