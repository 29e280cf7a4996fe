//! The full guest (guest-init + IPython kernel on the Debian root file
//! system) in the namespace sandbox: notebook semantics, limits, isolation.

use std::time::Duration;

use cellbox::{Error, Executor};
use cellbox_tests::{
    check_env_vars_do_not_leak, check_plot_is_png, namespace_session, run_with_timeout,
};

#[tokio::test]
async fn state_persists_between_cells() {
    let mut sandbox = namespace_session().await;
    sandbox.run("x = 1").await.unwrap();
    let execution = sandbox.run("x += 1; x").await.unwrap();
    assert_eq!(execution.text(), Some("2"));
    assert_eq!(execution.execution_count, Some(2));
    sandbox.close().await.unwrap();
}

#[tokio::test]
async fn plots_tables_and_shell_lines() {
    let mut sandbox = namespace_session().await;
    check_plot_is_png(&mut sandbox).await;

    let table = sandbox
        .run(r#"import pandas as pd; pd.DataFrame({"a": [1, 2, 3]})"#)
        .await
        .unwrap();
    let main = table.main_result().expect("a main result");
    assert!(main.html.as_deref().unwrap_or_default().contains("<table"));
    assert!(main.text.as_deref().unwrap_or_default().contains('a'));

    let shell = sandbox.run("!echo hi").await.unwrap();
    assert_eq!(shell.logs.stdout.concat(), "hi\n");
    let ipython = sandbox
        .run("import IPython\nfrom IPython.display import HTML\nIPython.get_ipython() is get_ipython(), HTML('<b>x</b>')._repr_html_()")
        .await
        .unwrap();
    assert_eq!(
        ipython.text(),
        Some("(True, '<b>x</b>')"),
        "the whole IPython package is there"
    );
    let magic = sandbox.run("%pwd").await.unwrap();
    assert_eq!(magic.text(), Some("'/home/user'"));
    let failed = sandbox.run("undefined_name").await.unwrap();
    let error = failed.error.expect("a NameError");
    assert_eq!(error.name, "NameError");
    assert!(error.traceback.contains("undefined_name"));
}

#[tokio::test]
async fn a_timeout_interrupts_the_kernel_which_keeps_its_state() {
    let mut sandbox = namespace_session().await;
    sandbox.run("y = 41").await.unwrap();
    let (outcome, elapsed) = run_with_timeout(&mut sandbox, "import time; time.sleep(30)", 2).await;
    assert!(
        matches!(
            outcome,
            Err(Error::Timeout {
                restarted: false,
                ..
            })
        ),
        "{outcome:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "{:?}", elapsed);
    assert_eq!(sandbox.run("y + 1").await.unwrap().text(), Some("42"));
}

#[tokio::test]
async fn the_guest_sees_its_own_files_and_sandboxes_do_not_share_them() {
    let mut first = namespace_session().await;
    let home = first
        .run(r#"import os; sorted(os.listdir("/home"))"#)
        .await
        .unwrap();
    assert_eq!(home.text(), Some("['user']"));
    let wrote = first
        .run(r#"open("/home/user/secret.txt", "w").write("mine"); open("/etc/cellbox-mark", "w").write("x")"#)
        .await
        .unwrap();
    assert!(wrote.error.is_none(), "{wrote:?}");
    let mut second = namespace_session().await;
    let seen = second
        .run(r#"import os; os.path.exists("/home/user/secret.txt"), os.path.exists("/etc/cellbox-mark")"#)
        .await
        .unwrap();
    assert_eq!(seen.text(), Some("(False, False)"));
}

#[tokio::test]
async fn there_is_no_network() {
    let mut sandbox = namespace_session().await;
    let execution = sandbox
        .run(r#"import urllib.request; urllib.request.urlopen("http://1.1.1.1", timeout=3)"#)
        .await
        .unwrap();
    assert!(execution.error.is_some(), "{execution:?}");
    let loopback = sandbox
        .run("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); s.getsockname()[0]")
        .await
        .unwrap();
    assert_eq!(loopback.text(), Some("'127.0.0.1'"), "loopback works");
}

#[tokio::test]
async fn dangerous_system_calls_are_filtered() {
    let mut sandbox = namespace_session().await;
    let probe = sandbox
        .run("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.unshare(0), ctypes.get_errno()")
        .await
        .unwrap();
    assert_eq!(
        probe.text(),
        Some("(-1, 1)"),
        "unshare fails with EPERM: {probe:?}"
    );
}

#[tokio::test]
async fn memory_and_fork_bombs_are_stopped() {
    let mut sandbox = namespace_session().await;
    let huge = sandbox.run("b = bytearray(50 * 2**30)").await.unwrap();
    assert_eq!(huge.error.expect("a MemoryError").name, "MemoryError");
    let creeping = sandbox
        .run("b = [bytearray(2**20) for _ in range(4000)]")
        .await;
    assert!(
        matches!(&creeping, Err(Error::SandboxDied { .. }))
            || creeping.as_ref().is_ok_and(|e| e.error.is_some()),
        "{creeping:?}"
    );
    let (forks, _) = run_with_timeout(
        &mut sandbox,
        "import os\nn = 0\ntry:\n    while n < 100000:\n        if os.fork() == 0:\n            import time; time.sleep(3); os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nn",
        20,
    )
    .await;
    let forks = forks.unwrap();
    let made: u32 = forks.text().unwrap().parse().unwrap();
    assert!(
        made < 300,
        "the process limit stopped the bomb after {made} forks"
    );
    assert_eq!(sandbox.run("1 + 1").await.unwrap().text(), Some("2"));
    let mut next = namespace_session().await;
    assert_eq!(next.run("2 + 2").await.unwrap().text(), Some("4"));
}

#[tokio::test]
async fn a_killed_kernel_is_reported_and_replaced() {
    let mut sandbox = namespace_session().await;
    sandbox.run("z = 1").await.unwrap();
    let outcome = sandbox
        .run("import os, signal; os.kill(os.getpid(), 9)")
        .await;
    assert!(
        matches!(&outcome, Err(Error::SandboxDied { reason }) if reason.contains("kernel died")),
        "{outcome:?}"
    );
    let after = sandbox.run("'z' in globals(), 3 * 3").await.unwrap();
    assert_eq!(after.text(), Some("(False, 9)"));
}

#[tokio::test]
async fn per_run_env_vars_and_restart() {
    let mut sandbox = namespace_session().await;
    check_env_vars_do_not_leak(&mut sandbox).await;
    sandbox.restart().await.unwrap();
    let after = sandbox.run("os").await.unwrap();
    assert_eq!(after.error.expect("state cleared").name, "NameError");
}

#[tokio::test]
async fn the_same_guest_becomes_an_ext4_image() {
    let cache = cellbox::default_cache_dir();
    let artifacts = tokio::task::spawn_blocking(move || {
        let guest = cellbox::guest::GuestArtifacts::ensure(&cache, &Default::default())?;
        let image = guest.ext4_image(&Default::default())?;
        Ok::<_, cellbox::Error>((guest, image))
    })
    .await
    .unwrap();
    let (guest, image) = artifacts.expect("guest artefacts and image");
    let stat = std::process::Command::new("debugfs")
        .args(["-R", "stat /usr/sbin/init"])
        .arg(&image)
        .output()
        .expect("debugfs (e2fsprogs)");
    let text = String::from_utf8_lossy(&stat.stdout);
    let size = std::fs::metadata(guest.layer.join("sbin/init"))
        .unwrap()
        .len();
    assert!(
        text.contains(&format!("Size: {size}")),
        "guest-init in the image: {text}"
    );
    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&image)
        .status()
        .unwrap();
    assert!(fsck.success(), "the image is a clean ext4 file system");
}

#[tokio::test]
async fn orphans_are_reaped_by_guest_init() {
    let mut sandbox = namespace_session().await;
    let spawned = sandbox
        .run("import subprocess; subprocess.run('for i in 1 2 3 4 5; do sleep 0.1 & done', shell=True).returncode")
        .await
        .unwrap();
    assert_eq!(spawned.text(), Some("0"));
    let zombies = sandbox
        .run(
            "import os, time; time.sleep(1)\n\
             [p for p in os.listdir('/proc') if p.isdigit() and open(f'/proc/{p}/stat').read().split()[2] == 'Z']",
        )
        .await
        .unwrap();
    assert_eq!(zombies.text(), Some("[]"), "PID 1 reaps orphaned children");
}
