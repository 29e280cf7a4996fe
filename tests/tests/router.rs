//! The router (`HybridExecutor`) as a library user drives it: routing
//! decisions, state across a move, and what it cannot carry. The heavy
//! backend here is the namespace sandbox (root needed) unless KVM can run
//! the microVM.

use cellbox::{Backend, Executor, HybridConfig, HybridExecutor};
use cellbox_tests::{check_env_vars_do_not_leak, run_with_timeout, wasm_engine};

async fn session(prestart: bool) -> HybridExecutor {
    let config = HybridConfig {
        prestart,
        ..Default::default()
    };
    HybridExecutor::start(&wasm_engine().await, config)
        .await
        .expect("a hybrid session")
}

fn is_heavy(backend: Backend) -> bool {
    matches!(backend, Backend::Namespace | Backend::Vm)
}

#[tokio::test]
async fn shell_and_magic_lines_move_the_session_for_good() {
    let mut s = session(true).await;
    s.run("greeting = 'hi'").await.unwrap();
    assert_eq!(s.backend(), Backend::Wasm);
    let shell = s.run("!echo from-the-shell").await.unwrap();
    assert!(is_heavy(s.backend()));
    assert_eq!(shell.logs.stdout.concat(), "from-the-shell\n");
    // Plain Python now stays on the heavy backend, with the old names.
    let after = s.run("greeting.upper()").await.unwrap();
    assert_eq!(after.text(), Some("'HI'"));
    assert!(s.has_moved() && is_heavy(s.backend()));
    s.close().await.unwrap();
}

#[tokio::test]
async fn a_dynamic_import_that_fails_on_the_fast_path_runs_on_the_heavy_backend() {
    let mut s = session(false).await;
    let out = s
        .run("import math\n__import__('numpy').__name__")
        .await
        .unwrap();
    assert_eq!(out.text(), Some("'numpy'"), "{out:?}");
    assert!(is_heavy(s.backend()));
    s.close().await.unwrap();
}

#[tokio::test]
async fn a_failure_after_other_statements_is_reported_not_rerun() {
    let mut s = session(false).await;
    s.run("x = 1").await.unwrap();
    let failed = s.run("x += 1; __import__('numpy')").await.unwrap();
    assert_eq!(failed.error.unwrap().name, "ModuleNotFoundError");
    assert_eq!(
        s.run("x").await.unwrap().text(),
        Some("2"),
        "x += 1 ran once"
    );
    assert_eq!(s.backend(), Backend::Wasm);
    s.close().await.unwrap();
}

#[tokio::test]
async fn functions_classes_and_instances_move_unpicklable_names_are_named() {
    let mut s = session(true).await;
    s.run(
        "class Point:\n    def __init__(self, x): self.x = x\n\
         def grow(p): return Point(p.x * 10)\n\
         p = grow(Point(4)); squares = [i * i for i in range(4)]; gen = (i for i in range(2))",
    )
    .await
    .unwrap();
    let moved = s
        .run("import numpy as np; (grow(p).x, int(np.sum(squares)))")
        .await
        .unwrap();
    assert_eq!(moved.text(), Some("(400, 14)"), "{moved:?}");
    let note = moved.logs.stderr.concat();
    assert!(
        note.contains("not carried over") && note.contains("gen"),
        "{note}"
    );
    s.close().await.unwrap();
}

#[tokio::test]
async fn execution_counts_run_on_across_the_move() {
    let mut s = session(true).await;
    for (i, code) in ["1", "2", "import numpy; 3", "4"].iter().enumerate() {
        let out = s.run(code).await.unwrap();
        assert_eq!(out.execution_count, Some(i as u32 + 1));
    }
    s.close().await.unwrap();
}

#[tokio::test]
async fn timeouts_and_env_vars_behave_on_both_sides_of_the_move() {
    let mut s = session(true).await;
    let (outcome, _) = run_with_timeout(&mut s, "while True: pass", 1).await;
    assert!(
        matches!(outcome, Err(cellbox::Error::Timeout { .. })),
        "{outcome:?}"
    );
    assert_eq!(s.run("1 + 1").await.unwrap().text(), Some("2"));
    check_env_vars_do_not_leak(&mut s).await;
    s.run("import numpy").await.unwrap();
    let (outcome, _) = run_with_timeout(&mut s, "import time; time.sleep(30)", 1).await;
    assert!(
        matches!(outcome, Err(cellbox::Error::Timeout { .. })),
        "{outcome:?}"
    );
    assert_eq!(
        s.run("numpy.int64(5) + 1").await.unwrap().text(),
        Some("6"),
        "the kernel survived"
    );
    check_env_vars_do_not_leak(&mut s).await;
    s.close().await.unwrap();
}
