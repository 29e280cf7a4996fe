//! The WebAssembly backend through the `Executor` trait: notebook semantics,
//! limits and isolation.

use std::time::Duration;

use cellbox::{Error, Event, Executor, RunOptions, WasmSessionOptions};
use cellbox_tests::{
    check_env_vars_do_not_leak, run_with_timeout, wasm_session, wasm_session_with,
};

#[tokio::test]
async fn state_persists_between_cells() {
    let mut session = wasm_session().await;
    let first = session.run("x = 1").await.unwrap();
    assert!(first.results.is_empty());
    assert_eq!(first.execution_count, Some(1));
    let second = session.run("x += 1; x").await.unwrap();
    assert_eq!(second.text(), Some("2"));
    assert_eq!(second.execution_count, Some(2));
}

#[tokio::test]
async fn stdout_and_stderr_stream_before_the_result() {
    let mut session = wasm_session().await;
    let mut seen = Vec::new();
    let execution = session
        .execute(
            r#"print("a"); print("b", file=__import__("sys").stderr); 40 + 2"#,
            &RunOptions::default(),
            &mut |event| seen.push(event.clone()),
        )
        .await
        .unwrap();
    assert_eq!(execution.logs.stdout, vec!["a\n"]);
    assert_eq!(execution.logs.stderr, vec!["b\n"]);
    assert_eq!(execution.text(), Some("42"));
    assert_eq!(seen[0], Event::Stdout("a\n".into()));
    assert_eq!(seen[1], Event::Stderr("b\n".into()));
    assert!(matches!(&seen[2], Event::Result(r) if r.is_main_result));
    assert_eq!(
        seen.last(),
        Some(&Event::End {
            execution_count: Some(1)
        })
    );
}

#[tokio::test]
async fn exceptions_are_execution_errors_and_the_session_goes_on() {
    let mut session = wasm_session().await;
    let failed = session.run("undefined_name").await.unwrap();
    let error = failed.error.expect("a NameError");
    assert_eq!(error.name, "NameError");
    assert!(error.value.contains("undefined_name"));
    assert!(error.traceback.contains("Traceback"));
    assert!(error.traceback.contains("<cell 1>"), "{}", error.traceback);
    assert!(
        !error.traceback.contains("_cellbox_driver"),
        "{}",
        error.traceback
    );

    let syntax = session.run("def f(:").await.unwrap();
    assert_eq!(syntax.error.expect("a SyntaxError").name, "SyntaxError");

    let next = session.run("1 + 1").await.unwrap();
    assert_eq!(next.text(), Some("2"));
    assert_eq!(next.execution_count, Some(3));
}

#[tokio::test]
async fn a_runaway_cell_times_out_and_the_session_restarts() {
    let mut session = wasm_session().await;
    session.run("x = 5").await.unwrap();
    let (outcome, elapsed) = run_with_timeout(&mut session, "while True: pass", 2).await;
    assert!(
        matches!(
            outcome,
            Err(Error::Timeout {
                restarted: true,
                ..
            })
        ),
        "{outcome:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    let after = session.run("'x' in globals(), 1 + 1").await.unwrap();
    assert_eq!(
        after.text(),
        Some("(False, 2)"),
        "fresh state after restart"
    );
}

#[tokio::test]
async fn a_sleeping_cell_is_interrupted_too() {
    let mut session = wasm_session().await;
    let (outcome, elapsed) = run_with_timeout(
        &mut session,
        "import time; print('before'); time.sleep(30)",
        1,
    )
    .await;
    assert!(matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
    assert!(elapsed < Duration::from_secs(3));
    assert_eq!(session.run("2 * 21").await.unwrap().text(), Some("42"));
}

#[tokio::test]
async fn memory_is_capped() {
    let mut session = wasm_session_with(WasmSessionOptions {
        memory_limit: 256 << 20,
        ..Default::default()
    })
    .await;
    let huge = session.run(r#"x = "a" * 10**10"#).await.unwrap();
    let name = huge.error.expect("an error").name;
    assert!(
        ["MemoryError", "OverflowError"].contains(&name.as_str()),
        "{name}"
    );
    let big = session.run("b = bytearray(400 * 2**20)").await.unwrap();
    assert_eq!(big.error.expect("a MemoryError").name, "MemoryError");
    let small = session
        .run("b = bytearray(50 * 2**20); len(b)")
        .await
        .unwrap();
    assert_eq!(small.text(), Some("52428800"));
}

#[tokio::test]
async fn host_files_are_invisible() {
    let mut session = wasm_session().await;
    for code in [
        r#"open("/etc/passwd").read()"#,
        r#"import os; os.listdir("/")"#,
        r#"open("/usr/local/lib/python3.11/os.py", "a")"#,
        r#"open("../../etc/hostname").read()"#,
    ] {
        let execution = session.run(code).await.unwrap();
        assert!(
            execution.error.is_some(),
            "{code} should fail: {execution:?}"
        );
    }
}

#[tokio::test]
async fn the_shared_scratch_folder_is_the_only_writable_place() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("input.txt"), "from the host").unwrap();
    let mut session = wasm_session_with(WasmSessionOptions {
        scratch_dir: Some(shared.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let read = session
        .run(r#"import os; os.getcwd(), open("input.txt").read()"#)
        .await
        .unwrap();
    assert_eq!(read.text(), Some("('/home/user', 'from the host')"));
    let write = session
        .run(r#"open("/home/user/out.txt", "w").write("from the sandbox")"#)
        .await
        .unwrap();
    assert!(write.error.is_none(), "{write:?}");
    let written = std::fs::read_to_string(shared.path().join("out.txt")).unwrap();
    assert_eq!(written, "from the sandbox");
}

/// Writing past the scratch folder's limit fails with ENOSPC inside; the
/// host folder holds no more than the limit; deleting frees room again.
#[tokio::test]
async fn a_full_scratch_folder_is_enospc_and_costs_the_host_nothing_more() {
    let shared = tempfile::tempdir().unwrap();
    let disk_limit = 8 << 20;
    let mut session = wasm_session_with(WasmSessionOptions {
        scratch_dir: Some(shared.path().to_path_buf()),
        disk_limit,
        ..Default::default()
    })
    .await;
    let filled = session
        .run(
            "import errno\nchunk = b'x' * (1 << 20)\nwritten = 0\ntry:\n    \
             with open('/home/user/big', 'wb') as f:\n        for _ in range(100):\n            \
             f.write(chunk); f.flush(); written += 1\nexcept OSError as e:\n    \
             print(errno.errorcode[e.errno])\nwritten",
        )
        .await
        .unwrap();
    assert_eq!(filled.logs.stdout.concat().trim(), "ENOSPC", "{filled:?}");
    let written: u64 = filled.text().unwrap().parse().unwrap();
    assert!(
        (6..=8).contains(&written),
        "{written} MiB written before ENOSPC"
    );
    let held = std::fs::metadata(shared.path().join("big")).unwrap();
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&held) * 512 <= disk_limit,
        "the host holds {} bytes",
        std::os::unix::fs::MetadataExt::blocks(&held) * 512
    );
    let again = session
        .run("import os; os.remove('/home/user/big'); open('/home/user/small', 'wb').write(b'y' * 4096)")
        .await
        .unwrap();
    assert_eq!(again.text(), Some("4096"), "{again:?}");
}

/// Empty files, folders and links count too (a block each): a flood of
/// them meets the limit with ENOSPC instead of filling the host's inodes.
#[tokio::test]
async fn a_flood_of_empty_files_meets_the_same_limit() {
    let shared = tempfile::tempdir().unwrap();
    let mut session = wasm_session_with(WasmSessionOptions {
        scratch_dir: Some(shared.path().to_path_buf()),
        disk_limit: 1 << 20,
        ..Default::default()
    })
    .await;
    let flood = session
        .run(
            "import errno, os\nmade = 0\ntry:\n    for i in range(100000):\n        \
             open(f'/home/user/f{i}', 'w').close(); os.mkdir(f'/home/user/d{i}'); made += 1\n\
             except OSError as e:\n    print(errno.errorcode[e.errno])\nmade",
        )
        .await
        .unwrap();
    assert_eq!(flood.logs.stdout.concat().trim(), "ENOSPC", "{flood:?}");
    let made: usize = flood.text().unwrap().parse().unwrap();
    assert!(made <= 128, "{made} files and folders made in 1 MiB");
    let entries = std::fs::read_dir(shared.path()).unwrap().count();
    assert!(entries <= 256, "the host holds {entries} entries");
}

#[tokio::test]
async fn there_is_no_network() {
    let mut session = wasm_session().await;
    let execution = session
        .run(r#"import socket; socket.create_connection(("1.1.1.1", 80), timeout=3)"#)
        .await
        .unwrap();
    assert!(execution.error.is_some(), "{execution:?}");
}

#[tokio::test]
async fn huge_output_is_cut_at_the_cap() {
    let limit = 1 << 20;
    let mut session = wasm_session_with(WasmSessionOptions {
        output_limit: limit,
        ..Default::default()
    })
    .await;
    let execution = session
        .run("line = 'x' * 999\nfor _ in range(100_000): print(line)\n'done'")
        .await
        .unwrap();
    let total: usize = execution.logs.stdout.iter().map(String::len).sum();
    assert!(total <= limit + 100, "{total} bytes kept");
    let last = execution.logs.stdout.last().unwrap();
    assert!(
        last.contains("[cellbox: output truncated at 1048576 bytes]"),
        "{last}"
    );
    assert!(execution.error.is_none());
    let next = session.run("print('still here')").await.unwrap();
    assert_eq!(next.logs.stdout, vec!["still here\n"]);
}

#[tokio::test]
async fn rich_representations_become_formats() {
    let mut session = wasm_session().await;
    let html = session
        .run(
            "class Table:\n    def _repr_html_(self): return '<table></table>'\n    \
             def _repr_markdown_(self): return '| a |'\n    def __repr__(self): return 'Table()'\nTable()",
        )
        .await
        .unwrap();
    let main = html.main_result().expect("a main result");
    assert_eq!(main.html.as_deref(), Some("<table></table>"));
    assert_eq!(main.markdown.as_deref(), Some("| a |"));
    assert_eq!(main.text.as_deref(), Some("Table()"));
    assert_eq!(main.formats(), vec!["text", "html", "markdown"]);

    let images = session
        .run(
            "class Img:\n    def _repr_png_(self): return b'\\x89PNG\\r\\n'\n\
             class Data:\n    def _repr_json_(self): return {'a': [1, 2]}\n\
             display(Img(), Data())\n'main'",
        )
        .await
        .unwrap();
    assert_eq!(images.results.len(), 3);
    assert!(!images.results[0].is_main_result);
    assert_eq!(images.results[0].png.as_deref(), Some("iVBORw0K"));
    assert_eq!(
        images.results[1].json,
        Some(serde_json::json!({"a": [1, 2]}))
    );
    assert!(images.results[2].is_main_result);

    let silent = session.run("1 + 1;").await.unwrap();
    assert!(silent.results.is_empty(), "a trailing ; hides the result");
}

#[tokio::test]
async fn per_run_env_vars_do_not_leak() {
    check_env_vars_do_not_leak(&mut wasm_session().await).await;
}

#[tokio::test]
async fn garbage_from_the_guest_is_reported_not_trusted() {
    let mut session = wasm_session().await;
    let execution = session
        .run("import _cellbox\n_cellbox.emit(3, b'{not json')\n_cellbox.emit(77, b'x')\n_cellbox.emit(4, b'[]')\n'ok'")
        .await
        .unwrap();
    assert_eq!(execution.text(), Some("'ok'"));
    assert_eq!(
        execution.logs.stderr.len(),
        3,
        "{:?}",
        execution.logs.stderr
    );
    assert!(execution.logs.stderr[0].contains("malformed message"));
    assert!(execution.error.is_none());
}

#[tokio::test]
async fn restart_clears_state_and_close_ends_the_session() {
    let mut session = wasm_session().await;
    session.run("y = 3").await.unwrap();
    session.restart().await.unwrap();
    let after = session.run("y").await.unwrap();
    assert_eq!(after.error.expect("y is gone").name, "NameError");
    assert_eq!(after.execution_count, Some(1));
    session.close().await.unwrap();
    assert!(matches!(session.run("1").await, Err(Error::Closed)));
}

#[tokio::test]
async fn sessions_are_isolated_and_have_their_own_randomness() {
    let mut a = wasm_session().await;
    let mut b = wasm_session().await;
    a.run("secret = 1").await.unwrap();
    let probe = b.run("'secret' in globals()").await.unwrap();
    assert_eq!(probe.text(), Some("False"));
    let draw = "import random; random.getrandbits(64)";
    let (ra, rb) = (a.run(draw).await.unwrap(), b.run(draw).await.unwrap());
    assert_ne!(
        ra.text(),
        rb.text(),
        "sessions from one snapshot must not share RNG state"
    );
}

#[tokio::test]
async fn an_interpreter_that_exits_or_crashes_is_replaced() {
    let mut session = wasm_session().await;
    for code in [
        "import os; os._exit(3)",
        // Deep C recursion overflows the interpreter's stack.
        "import sys; sys.setrecursionlimit(10**7)\nl = []\nfor _ in range(10**6): l = [l]\nrepr(l)",
    ] {
        session.run("z = 1").await.unwrap();
        let outcome = session.run(code).await;
        assert!(
            matches!(&outcome, Err(Error::SandboxDied { reason }) if reason.contains("restarted")),
            "{code}: {outcome:?}"
        );
        let after = session.run("'z' in globals(), 3 * 3").await.unwrap();
        assert_eq!(after.text(), Some("(False, 9)"));
    }
    let exit = session.run("raise SystemExit(4)").await.unwrap();
    assert_eq!(
        exit.error.expect("SystemExit is the cell's error").name,
        "SystemExit"
    );
}
