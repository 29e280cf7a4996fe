//! The `Sandbox` API as a host application uses it: files, commands,
//! contexts, per-run options, streaming and lifecycle. The heavy backend is
//! the namespace sandbox (root needed) unless KVM can run the microVM.

use std::time::Duration;

use cellbox::{CommandOptions, Error, Event, Language, RunCodeOptions, Sandbox, SandboxOptions};

async fn sandbox() -> Sandbox {
    Sandbox::create(SandboxOptions::default())
        .await
        .expect("a sandbox")
}

#[tokio::test]
async fn files_written_through_the_api_and_by_cells_are_seen_by_both() {
    let s = sandbox().await;
    s.run_code("x = 40").await.unwrap();
    s.files().write("data/input.txt", b"2").await.unwrap(); // parent folders are created
    s.files().make_dir("data/empty/nested").await.unwrap();
    assert!(s.files().stat("data/empty/nested").await.unwrap().is_dir);
    let sum = s
        .run_code("x + int(open('data/input.txt').read())")
        .await
        .unwrap();
    assert_eq!(sum.text(), Some("42"), "{sum:?}");
    s.run_code("open('/home/user/data/out.txt', 'w').write('from a cell')")
        .await
        .unwrap();
    assert_eq!(
        s.files().read_text("data/out.txt").await.unwrap(),
        "from a cell"
    );
    let names: Vec<String> = s
        .files()
        .list("data")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        names.contains(&"input.txt".to_string()) && names.contains(&"out.txt".to_string()),
        "{names:?}"
    );
    s.files()
        .rename("data/out.txt", "data/renamed.txt")
        .await
        .unwrap();
    assert!(!s.files().exists("data/out.txt").await.unwrap());
    assert_eq!(s.files().stat("data/renamed.txt").await.unwrap().size, 11);
    s.files().remove("data").await.unwrap();
    assert!(matches!(
        s.files().read("data/renamed.txt").await,
        Err(Error::NotFound(_))
    ));
    s.close().await.unwrap();
}

#[tokio::test]
async fn per_run_env_vars_apply_to_that_run_only() {
    let s = Sandbox::create(SandboxOptions::default().with_env("TEAM", "blue"))
        .await
        .unwrap();
    let options = RunCodeOptions::default().env("FOO", "bar");
    let with = s
        .run_code_with(
            "import os; (os.environ.get('FOO'), os.environ.get('TEAM'))",
            &options,
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(with.text(), Some("('bar', 'blue')"));
    let without = s
        .run_code("os.environ.get('FOO'), os.environ.get('TEAM')")
        .await
        .unwrap();
    assert_eq!(without.text(), Some("(None, 'blue')"));
    s.close().await.unwrap();
}

#[tokio::test]
async fn contexts_keep_their_names_apart() {
    let s = sandbox().await;
    s.run_code("shared = 'default'").await.unwrap();
    let a = s.create_context(None, Language::Python).await.unwrap();
    let b = s
        .create_context(Some("/tmp"), Language::Python)
        .await
        .unwrap();
    let in_a = RunCodeOptions::default().in_context(&a);
    let in_b = RunCodeOptions::default().in_context(&b);
    s.run_code_with("who = 'a'", &in_a, &mut |_| {})
        .await
        .unwrap();
    let seen = s
        .run_code_with(
            "(globals().get('who'), globals().get('shared'))",
            &in_b,
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(seen.text(), Some("(None, None)"));
    let cwd = s
        .run_code_with("import os; os.getcwd()", &in_b, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(cwd.text(), Some("'/tmp'"));
    assert_eq!(
        s.run_code("shared").await.unwrap().text(),
        Some("'default'")
    );
    let ids: Vec<String> = s
        .list_contexts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(ids.contains(&a.id) && ids.contains(&b.id), "{ids:?}");
    // Another language runs in its own default context; a context of one
    // language is not run as another.
    let js = RunCodeOptions::default().language(Language::Javascript);
    let node = s
        .run_code_with("typeof shared + ' ' + (1 + 1)", &js, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(node.text(), Some("undefined 2"));
    let mismatch = s
        .run_code_with(
            "1",
            &in_a.clone().language(Language::Javascript),
            &mut |_| {},
        )
        .await;
    assert!(
        matches!(mismatch, Err(Error::InvalidArgument(_))),
        "{mismatch:?}"
    );
    s.restart_context(&a).await.unwrap();
    let after = s
        .run_code_with("globals().get('who')", &in_a, &mut |_| {})
        .await
        .unwrap();
    assert!(after.results.is_empty(), "restart cleared it: {after:?}");
    s.remove_context(&a).await.unwrap();
    let gone = s.run_code_with("1", &in_a, &mut |_| {}).await;
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    s.close().await.unwrap();
}

#[tokio::test]
async fn commands_run_to_completion_or_in_the_background() {
    let s = sandbox().await;
    let hi = s
        .commands()
        .run("echo hi; echo err >&2; exit 3", &CommandOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (hi.stdout.as_str(), hi.stderr.as_str(), hi.exit_code),
        ("hi\n", "err\n", 3)
    );
    let pwd = s
        .commands()
        .run("pwd", &CommandOptions::default())
        .await
        .unwrap();
    assert_eq!(pwd.stdout, "/home/user\n");
    let slow = s
        .commands()
        .run(
            "sleep 30",
            &CommandOptions::default().timeout(Duration::from_secs(1)),
        )
        .await;
    assert!(matches!(slow, Err(Error::Timeout { .. })), "{slow:?}");

    let cat = s
        .commands()
        .start("cat", &CommandOptions::default())
        .await
        .unwrap();
    cat.send_stdin(b"through stdin").await.unwrap();
    cat.close_stdin().await.unwrap();
    assert_eq!(cat.wait().await.unwrap().stdout, "through stdin");
    let sleeper = s
        .commands()
        .start("sleep 100", &CommandOptions::default())
        .await
        .unwrap();
    let running = s.commands().list().await.unwrap();
    assert!(
        running.iter().any(|c| c.pid == sleeper.pid()),
        "{running:?}"
    );
    sleeper.kill().await.unwrap();
    let killed = tokio::time::timeout(Duration::from_secs(5), sleeper.wait())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(killed.exit_code, 0);
    s.close().await.unwrap();
}

#[tokio::test]
async fn runs_stream_their_events() {
    let s = sandbox().await;
    let mut stream = s.run_code_stream("print('one'); print('two'); 3", RunCodeOptions::default());
    let mut seen = Vec::new();
    while let Some(event) = stream.next_event().await {
        seen.push(event);
    }
    assert!(
        matches!(&seen[0], Event::Stdout(t) if t.contains("one")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Result(r) if r.text.as_deref() == Some("3")))
    );
    assert_eq!(stream.execution().await.unwrap().text(), Some("3"));
    s.close().await.unwrap();
}

#[tokio::test]
async fn a_run_timeout_interrupts_and_the_kernel_survives() {
    let s = sandbox().await;
    s.run_code("import numpy; kept = 7").await.unwrap();
    let options = RunCodeOptions::default().timeout(Duration::from_secs(1));
    let slow = s
        .run_code_with("import time; time.sleep(60)", &options, &mut |_| {})
        .await;
    assert!(
        matches!(
            slow,
            Err(Error::Timeout {
                restarted: false,
                ..
            })
        ),
        "{slow:?}"
    );
    assert_eq!(s.run_code("kept").await.unwrap().text(), Some("7"));
    s.close().await.unwrap();
}

#[tokio::test]
async fn lifecycle_close_and_inactivity_timeout() {
    let s = Sandbox::create(
        SandboxOptions::default()
            .with_metadata("owner", "tests")
            .with_prestart(false),
    )
    .await
    .unwrap();
    assert_eq!(s.metadata()["owner"], "tests");
    assert!(s.is_running().await);
    s.close().await.unwrap();
    assert!(!s.is_running().await);
    assert!(matches!(s.run_code("1").await, Err(Error::Closed)));

    let idle = Sandbox::create(SandboxOptions::default().with_prestart(false))
        .await
        .unwrap();
    idle.set_timeout(Some(Duration::from_secs(1))).await;
    idle.run_code("1").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !idle.is_running().await,
        "closed after a second of inactivity"
    );
}

#[tokio::test]
async fn the_working_folder_and_its_files_follow_a_move() {
    let s = Sandbox::create(SandboxOptions::default().with_cwd("/home/user/project"))
        .await
        .unwrap();
    s.run_code("open('notes.txt', 'w').write('n')")
        .await
        .unwrap();
    assert_eq!(
        s.run_code("import os; os.getcwd()").await.unwrap().text(),
        Some("'/home/user/project'")
    );
    let moved = s
        .run_code("import numpy, os; os.getcwd(), open('notes.txt').read()")
        .await
        .unwrap();
    assert_eq!(
        moved.text(),
        Some("('/home/user/project', 'n')"),
        "the folder and its files moved"
    );
    let pwd = s
        .commands()
        .run("pwd", &CommandOptions::default())
        .await
        .unwrap();
    assert_eq!(pwd.stdout, "/home/user/project\n");
    s.close().await.unwrap();
}

#[tokio::test]
async fn another_task_can_interrupt_a_run() {
    use cellbox::Interrupt;
    let s = sandbox().await;
    // Fast path: the session restarts, like after a timeout.
    let stop = Interrupt::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.interrupt();
    });
    let options = RunCodeOptions {
        interrupt: Some(stop),
        ..Default::default()
    };
    let stopped = s
        .run_code_with("while True: pass", &options, &mut |_| {})
        .await;
    assert!(
        matches!(stopped, Err(Error::Interrupted { restarted: true })),
        "{stopped:?}"
    );
    assert_eq!(s.run_code("1 + 1").await.unwrap().text(), Some("2"));

    // Heavy backend: KeyboardInterrupt in the cell, the kernel keeps its state.
    s.run_code("import numpy; kept = 5").await.unwrap();
    let stop = Interrupt::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        trigger.interrupt();
    });
    let options = RunCodeOptions {
        interrupt: Some(stop),
        ..Default::default()
    };
    let interrupted = s
        .run_code_with("import time; time.sleep(60)", &options, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(interrupted.error.unwrap().name, "KeyboardInterrupt");
    assert_eq!(s.run_code("kept").await.unwrap().text(), Some("5"));
    s.close().await.unwrap();
}

#[tokio::test]
async fn files_commands_and_close_do_not_wait_behind_a_running_cell() {
    let s = sandbox().await;
    s.files().write("/home/user/here.txt", b"x").await.unwrap();
    let running = {
        let s = s.clone();
        tokio::spawn(async move { s.run_code("import time; time.sleep(30)").await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quick = Duration::from_secs(5);
    let listed = tokio::time::timeout(quick, s.files().list("/home/user"))
        .await
        .expect("listing files waited for the cell")
        .unwrap();
    assert!(listed.iter().any(|e| e.name == "here.txt"), "{listed:?}");
    let echoed = tokio::time::timeout(
        quick,
        s.commands().run("echo hi", &CommandOptions::default()),
    )
    .await
    .expect("a command waited for the cell")
    .unwrap();
    assert_eq!(echoed.stdout, "hi\n");
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(15), s.close())
        .await
        .expect("close waited for the cell")
        .unwrap();
    let outcome = running.await.unwrap();
    assert!(
        outcome.is_err(),
        "the cell was stopped by close: {outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!s.is_running().await);
    assert!(matches!(s.run_code("1").await, Err(Error::Closed)));
}
