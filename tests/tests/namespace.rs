//! The full guest (guest-init + IPython kernel on the Debian root file
//! system) in the namespace sandbox: the behaviour every heavy backend shares
//! (`cellbox_tests::heavy`), the guest's ext4 image for the microVM, and the
//! sandbox run by an ordinary user (`rootless`).

use cellbox::{Backend, Executor};

#[path = "namespace/rootless.rs"]
mod rootless;

cellbox_tests::heavy_backend_tests!(Backend::Namespace);

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

/// Writing past the sandbox's disk size fails with ENOSPC inside it; the host
/// holds no more than that size; the sandbox works on.
#[tokio::test]
async fn a_full_disk_is_enospc_inside_and_costs_the_host_nothing_more() {
    let disk_limit = 64 << 20;
    let mut sandbox = cellbox::NamespaceExecutor::start(cellbox::NamespaceConfig {
        disk_limit,
        ..Default::default()
    })
    .await
    .expect("starting a namespace sandbox (needs root)");
    let filled = sandbox
        .run(
            "import errno\nchunk = b'x' * (1 << 20)\nwritten = 0\ntry:\n    with open('/home/user/big', 'wb') as f:\n        for _ in range(1024):\n            f.write(chunk); f.flush(); written += 1\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\nwritten",
        )
        .await
        .unwrap();
    assert_eq!(filled.logs.stdout.concat().trim(), "ENOSPC", "{filled:?}");
    let written: u64 = filled.text().unwrap().parse().unwrap();
    assert!(
        (40..64).contains(&written),
        "{written} MiB written before ENOSPC"
    );
    let images: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cellbox-ns-"))
        .map(|e| e.path().join("disk.img"))
        .filter(|p| p.exists())
        .collect();
    let largest = images
        .iter()
        .map(|p| std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p).unwrap()) * 512)
        .max()
        .unwrap();
    assert!(
        largest <= disk_limit,
        "a disk image takes {largest} bytes on the host"
    );
    let after = sandbox
        .run("import os; os.remove('/home/user/big'); 1 + 1")
        .await
        .unwrap();
    assert_eq!(after.text(), Some("2"));
}

/// The sandbox's ids are an unprivileged host range: its root is host uid
/// 1000000000, its `user` host uid 1000001000 (every kernel on the host runs
/// as that); the system files keep their owners inside (idmapped layers), so
/// root may change them and `user` may not.
#[tokio::test]
// Only other test threads take its lock: holding it across this test's
// awaits blocks nothing of its own runtime.
#[allow(clippy::await_holding_lock)]
async fn the_sandbox_root_is_not_the_host_root() {
    use cellbox::guest::{CommandOptions, GuestExecutor};
    // No kernel of a user's sandbox (whose ids are that user's) on the host
    // meanwhile.
    let _alone = rootless::alone();
    let mut sandbox = cellbox_tests::namespace_session().await;
    let map = sandbox
        .run("open('/proc/self/uid_map').read().split()")
        .await
        .unwrap();
    assert_eq!(map.text(), Some("['0', '1000000000', '65536']"), "{map:?}");
    // Kernels, started or forked from the warm template (whose own process
    // runs in the host's user namespace), wherever they are on the host.
    let host_users = std::fs::read_link("/proc/self/ns/user").unwrap();
    let mut kernels = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains("cellbox_kernel.py") && !cmdline.contains("cellbox_zygote.py") {
            continue;
        }
        match std::fs::read_link(entry.path().join("ns/user")) {
            Ok(users) if users != host_users => {}
            _ => continue, // ended meanwhile, or the template
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue; // ended meanwhile
        };
        let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(
            uids.split_whitespace().skip(1).collect::<Vec<_>>(),
            ["1000001000"; 4],
            "a kernel on the host: {uids}"
        );
        kernels += 1;
    }
    assert!(kernels >= 1, "this sandbox's kernel was found on the host");

    let guest = sandbox.guest().unwrap().clone();
    let run = |cmd: &'static str, user: &'static str| {
        let guest = guest.clone();
        async move {
            let options = CommandOptions::default().user(user);
            let result = guest
                .run_command(cmd, &options, &mut |_, _| {})
                .await
                .unwrap();
            (result.exit_code, result.stdout + &result.stderr)
        }
    };
    let (code, owner) = run("stat -c %U:%G /usr/bin/python3.11 /etc", "user").await;
    assert_eq!((code, owner.as_str()), (0, "root:root\nroot:root\n"));
    let (code, out) = run("touch /usr/local/bin/probe", "user").await;
    assert!(code != 0 && out.contains("Permission denied"), "{out}");
    let (code, out) = run(
        "touch /usr/local/bin/probe && ls /usr/local/bin/probe",
        "root",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "/usr/local/bin/probe\n"));
}

/// R and Java on the namespace backend (the microVM runs the same guest-init
/// and drivers; its suite keeps to Python, JavaScript and bash for time).
#[tokio::test]
async fn r_and_java_keep_their_state() {
    cellbox_tests::heavy::r_and_java_keep_their_state(Backend::Namespace).await;
}

/// E2B's preinstalled Python packages (guest-init/rootfs/python-packages.txt)
/// import and work, with E2B's numpy, pandas and matplotlib.
#[tokio::test]
async fn e2b_preinstalled_packages_work() {
    let mut sandbox = cellbox::NamespaceExecutor::start(Default::default())
        .await
        .expect("starting a namespace sandbox (needs root)");
    let cells = [
        (
            "from sklearn.linear_model import LinearRegression\n\
             round(float(LinearRegression().fit([[0], [1], [2]], [1, 3, 5]).coef_[0]), 6)",
            "2.0",
        ),
        (
            "import scipy.stats; round(float(scipy.stats.norm.cdf(0)), 3)",
            "0.5",
        ),
        (
            "from bs4 import BeautifulSoup; BeautifulSoup('<p>hi</p>', 'html.parser').p.text",
            "'hi'",
        ),
        (
            "import openpyxl, pandas as pd\n\
             pd.DataFrame({'a': [1, 2]}).to_excel('/tmp/t.xlsx', index=False)\n\
             int(pd.read_excel('/tmp/t.xlsx')['a'].sum())",
            "3",
        ),
        (
            "import cv2, numpy as np; int(cv2.cvtColor(np.zeros((2, 2, 3), np.uint8), cv2.COLOR_BGR2GRAY).sum())",
            "0",
        ),
        (
            "import numba\n@numba.njit\ndef add(a, b): return a + b\nadd(40, 2)",
            "42",
        ),
        (
            "import numpy, pandas, matplotlib\n\
             numpy.__version__, pandas.__version__, matplotlib.__version__",
            "('1.26.4', '2.2.3', '3.10.3')",
        ),
    ];
    for (code, text) in cells {
        let execution = sandbox.run(code).await.unwrap();
        assert_eq!(execution.text(), Some(text), "{code}: {execution:?}");
    }
    let plot = sandbox
        .run("import seaborn as sns, matplotlib.pyplot as plt\nsns.histplot([1, 2, 2, 3]); plt.show()")
        .await
        .unwrap();
    assert!(
        plot.results.iter().any(|r| r.png.is_some()),
        "a seaborn plot is a PNG: {plot:?}"
    );
}
