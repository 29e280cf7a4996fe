//! The namespace sandbox's warm start: Python kernels forked from the warm
//! template (`runtime/src/namespace/zygote.rs`) are confined exactly like
//! the ones guest-init starts, share nothing per-sandbox with each other,
//! and the cold start stays available. (The shared heavy-backend suite in
//! `namespace.rs` runs on warm kernels too: they are the default.)

use cellbox::guest::{CommandOptions, GuestExecutor};
use cellbox::{Executor, NamespaceConfig, NamespaceExecutor, NamespacePool};

/// What a kernel says about itself: its process, namespaces, control group,
/// open descriptors, fresh state and whether the data stack was imported
/// before its first cell.
const PROBE: &str = r#"
import json, os, random, sys
warm = all(m in sys.modules for m in ("numpy", "pandas", "matplotlib.pyplot", "IPython"))
import numpy
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines())
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass                        # the listing's own descriptor, closed by now
print(json.dumps({
    "warm": warm,
    "status": {k: status[k].strip() for k in ("Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp")},
    "ns": {k: os.readlink(f"/proc/self/ns/{k}") for k in ("mnt", "net", "pid", "user", "uts", "ipc", "cgroup")},
    "cgroup": open("/proc/self/cgroup").read(),
    "fds": fds,
    "cwd": os.getcwd(),
    "home": os.environ.get("HOME"),
    "random": [random.random(), float(numpy.random.rand())],
    "mark": hasattr(numpy, "cellbox_mark"),
}))
"#;

/// What a command guest-init starts sees of the same things.
const COMMAND_PROBE: &str = "for n in mnt net pid user uts ipc cgroup; do readlink /proc/self/ns/$n; done; cat /proc/self/cgroup";

async fn probe(sandbox: &mut NamespaceExecutor) -> serde_json::Value {
    let probed = sandbox.run(PROBE).await.expect("the probe runs");
    assert_eq!(probed.execution_count, Some(1), "a fresh shell: {probed:?}");
    let text = probed.logs.stdout.concat();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {probed:?}"))
}

#[tokio::test]
async fn warm_kernels_are_confined_like_cold_ones_and_share_nothing() {
    let mut first = cellbox_tests::namespace_session().await;
    let a = probe(&mut first).await;
    let mut second = cellbox_tests::namespace_session().await;
    let b = probe(&mut second).await;
    for probed in [&a, &b] {
        assert_eq!(
            probed["warm"], true,
            "forked from the warm template: {probed}"
        );
        let status = &probed["status"];
        assert_eq!(status["Uid"], "1000\t1000\t1000\t1000", "{probed}");
        assert_eq!(status["Gid"], "1000\t1000\t1000\t1000", "{probed}");
        for caps in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(status[caps], "0000000000000000", "{caps}: {probed}");
        }
        assert_eq!(status["NoNewPrivs"], "1", "{probed}");
        assert_eq!(status["Seccomp"], "2", "the guest's filter: {probed}");
        assert_eq!(probed["cwd"], "/home/user");
        assert_eq!(probed["home"], "/home/user");
        // Nothing of the template's: no sockets, no namespace or control group files.
        for (fd, target) in probed["fds"].as_object().unwrap() {
            let target = target.as_str().unwrap();
            assert!(
                target.starts_with("pipe:") || target == "/dev/null",
                "fd {fd} -> {target}: {probed}"
            );
        }
        assert_eq!(probed["mark"], false, "{probed}");
    }
    assert_ne!(a["random"], b["random"], "random state is per sandbox");
    for name in ["mnt", "net", "pid", "user", "uts", "ipc", "cgroup"] {
        assert_ne!(a["ns"][name], b["ns"][name], "{name}: one per sandbox");
    }

    // The kernel is in its sandbox's namespaces and control group, with
    // what guest-init starts directly.
    for (sandbox, probed) in [(&first, &a), (&second, &b)] {
        let seen = sandbox
            .guest()
            .unwrap()
            .run_command(COMMAND_PROBE, &CommandOptions::default(), &mut |_, _| {})
            .await
            .unwrap();
        assert!(seen.success(), "{seen:?}");
        let mut lines = seen.stdout.lines();
        for name in ["mnt", "net", "pid", "user", "uts", "ipc", "cgroup"] {
            assert_eq!(Some(probed["ns"][name].as_str().unwrap()), lines.next());
        }
        let cgroup: Vec<&str> = lines.collect();
        assert_eq!(
            probed["cgroup"]
                .as_str()
                .unwrap()
                .lines()
                .collect::<Vec<_>>(),
            cgroup
        );
    }

    // What one sandbox's code does to the imported modules stays there.
    first
        .run("import numpy; numpy.cellbox_mark = 1")
        .await
        .unwrap();
    let mut third = cellbox_tests::namespace_session().await;
    let c = probe(&mut third).await;
    assert_eq!(c["mark"], false, "{c}");
    assert_eq!(c["warm"], true, "{c}");
}

#[tokio::test]
async fn a_cold_start_stays_available() {
    let mut cold = NamespaceExecutor::start(NamespaceConfig {
        warm: false,
        ..Default::default()
    })
    .await
    .expect("starting a namespace sandbox (needs root)");
    let probed = probe(&mut cold).await;
    assert_eq!(probed["warm"], false, "{probed}");
    assert_eq!(probed["status"]["Seccomp"], "2", "{probed}");
    assert_eq!(probed["status"]["CapBnd"], "0000000000000000", "{probed}");
}

/// How many loop devices are backed by a live file of exactly `bytes`.
fn disks_of_size(bytes: u64) -> usize {
    let Ok(devices) = std::fs::read_dir("/sys/block") else {
        return 0;
    };
    devices
        .flatten()
        .filter_map(|d| std::fs::read_to_string(d.path().join("loop/backing_file")).ok())
        .filter(|file| std::fs::metadata(file.trim()).is_ok_and(|m| m.len() == bytes))
        .count()
}

#[tokio::test]
async fn a_pool_hands_out_fresh_spares_and_stops_them_when_dropped() {
    // A disk size no other test uses tells this pool's sandboxes apart.
    let disk_limit = (3 << 30) + (7 << 20);
    let config = NamespaceConfig {
        disk_limit,
        ..Default::default()
    };
    let pool = NamespacePool::new(config, 1);
    pool.ready().await.expect("the spare starts (needs root)");
    assert_eq!(pool.spares(), 1);
    assert_eq!(disks_of_size(disk_limit), 1, "the spare's disk is mounted");

    let mut first = pool.start().await.expect("the spare");
    let a = probe(&mut first).await;
    pool.ready().await.expect("a replacement starts");
    assert_eq!(
        disks_of_size(disk_limit),
        2,
        "the replacement has a disk of its own"
    );
    let mut second = pool.start().await.expect("the replacement");
    let b = probe(&mut second).await;
    for probed in [&a, &b] {
        assert_eq!(probed["warm"], true, "{probed}");
        assert_eq!(
            probed["status"]["Uid"], "1000\t1000\t1000\t1000",
            "{probed}"
        );
    }
    assert_ne!(a["random"], b["random"], "random state is per sandbox");
    for name in ["mnt", "pid", "user", "net"] {
        assert_ne!(a["ns"][name], b["ns"][name], "{name}: one per sandbox");
    }
    first.close().await.unwrap();
    second.close().await.unwrap();
    drop((first, second));

    pool.ready().await.expect("another replacement starts");
    drop(pool);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while disks_of_size(disk_limit) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        disks_of_size(disk_limit),
        0,
        "the dropped pool's spare is gone"
    );
}

#[tokio::test]
async fn a_pool_whose_spares_cannot_start_says_why() {
    let config = NamespaceConfig {
        template_layers: vec!["/nonexistent/cellbox-layer".into()],
        ..Default::default()
    };
    let pool = NamespacePool::new(config, 1);
    let e = pool.ready().await.expect_err("no such layer");
    assert!(e.to_string().contains("spare sandbox did not start"), "{e}");
    assert_eq!(pool.spares(), 0);
}
