//! Forks and snapshots through the `Sandbox` API: a fork starts with its
//! parent's files and Python state, on the same kind of backend, and then
//! goes its own way; a snapshot outlives its sandbox and starts others.
//! The heavy backend is the namespace sandbox (root needed) unless KVM can
//! run the microVM.

use cellbox::{Backend, CommandOptions, Error, Sandbox, SandboxOptions, Snapshot};

/// Defines a variable, a function, a class with an instance, and a file.
const SETUP: &str = "\
x = 41
def double(n):
    return 2 * n
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
p = Point(1, 2)
import json
with open('/home/user/notes.txt', 'w') as f:
    f.write('parent')
";

const CHECK: &str =
    "(x, double(x), p.x + p.y, json.dumps([1]), open('/home/user/notes.txt').read())";

async fn text(sandbox: &Sandbox, code: &str) -> String {
    let execution = sandbox.run_code(code).await.unwrap();
    assert!(execution.error.is_none(), "{code}: {execution:?}");
    execution.text().unwrap_or_default().to_string()
}

/// The fork sees everything SETUP made; then each changes alone.
async fn check_fork_of(parent: &Sandbox) {
    let fork = parent.fork().await.unwrap();
    assert_ne!(fork.id(), parent.id());
    assert_eq!(
        text(&fork, CHECK).await,
        "(41, 82, 3, '[1]', 'parent')",
        "the fork has the parent's variables, functions, classes, imports and files"
    );
    assert_eq!(fork.backend().await, parent.backend().await);

    text(
        &fork,
        "x = 1; open('/home/user/notes.txt', 'w').write('fork')",
    )
    .await;
    text(parent, "p.x = 100").await;
    assert_eq!(text(parent, CHECK).await, "(41, 82, 102, '[1]', 'parent')");
    assert_eq!(text(&fork, CHECK).await, "(1, 2, 3, '[1]', 'fork')");
    fork.close().await.unwrap();
    assert_eq!(
        text(parent, "x").await,
        "41",
        "closing a fork leaves its parent"
    );
}

#[tokio::test]
async fn a_fast_path_fork_has_its_parents_state_and_goes_its_own_way() {
    let parent = Sandbox::create(SandboxOptions::default().with_prestart(false))
        .await
        .unwrap();
    text(&parent, SETUP).await;
    assert_eq!(parent.backend().await, Backend::Wasm);
    check_fork_of(&parent).await;
    parent.close().await.unwrap();
}

#[tokio::test]
async fn a_heavy_fork_has_its_parents_state_and_goes_its_own_way() {
    let parent = Sandbox::create(SandboxOptions::default()).await.unwrap();
    text(&parent, SETUP).await;
    // Defined in the cell that moves the session: its history is kept there too.
    text(
        &parent,
        "import numpy as np\na = np.arange(4)\ndef total():\n    return int(a.sum())",
    )
    .await;
    parent
        .files()
        .write("/home/user/data/deep/table.csv", b"a,b\n1,2\n")
        .await
        .unwrap();
    assert_ne!(parent.backend().await, Backend::Wasm);
    check_fork_of(&parent).await;

    let fork = parent.fork().await.unwrap();
    assert_eq!(
        text(&fork, "int(a.sum())").await,
        "6",
        "numpy arrays pickle"
    );
    assert_eq!(
        fork.files()
            .read_text("/home/user/data/deep/table.csv")
            .await
            .unwrap(),
        "a,b\n1,2\n"
    );
    fork.close().await.unwrap();
    parent.close().await.unwrap();
}

#[tokio::test]
async fn a_snapshot_outlives_its_sandbox_and_starts_others() {
    let root = std::env::temp_dir().join(format!("cellbox-snapshots-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("one");

    let parent = Sandbox::create(SandboxOptions::default()).await.unwrap();
    text(&parent, SETUP).await;
    text(&parent, "import threading; lock = threading.Lock()").await;
    parent
        .commands()
        .start("sleep 600", &CommandOptions::default())
        .await
        .unwrap();
    let snapshot = parent.snapshot(&dir).await.unwrap();
    assert_eq!(snapshot.source(), parent.id());
    assert_eq!(snapshot.dropped(), ["lock"], "a lock does not pickle");
    let again = parent.snapshot(&dir).await.unwrap_err();
    assert!(matches!(again, Error::InvalidArgument(_)), "{again}");
    parent.close().await.unwrap();

    let snapshot = Snapshot::open(&dir).unwrap();
    let one = Sandbox::from_snapshot(&snapshot, SandboxOptions::default())
        .await
        .unwrap();
    let two = Sandbox::from_snapshot(&snapshot, SandboxOptions::default())
        .await
        .unwrap();
    for sandbox in [&one, &two] {
        assert_eq!(text(sandbox, CHECK).await, "(41, 82, 3, '[1]', 'parent')");
        assert_eq!(text(sandbox, "'lock' in globals()").await, "False");
        let running = sandbox.commands().list().await.unwrap();
        assert!(running.is_empty(), "processes are not kept: {running:?}");
    }
    text(&one, "x = 0").await;
    assert_eq!(
        text(&two, "x").await,
        "41",
        "sandboxes from one snapshot are independent"
    );
    one.close().await.unwrap();
    two.close().await.unwrap();

    let not_one = Snapshot::open(&root).unwrap_err();
    assert!(matches!(not_one, Error::NotFound(_)), "{not_one}");
    snapshot.delete().unwrap();
    assert!(!dir.exists());
    std::fs::remove_dir_all(&root).unwrap();
}
