//! The namespace sandbox for an ordinary user: `cellbox setup --user NAME`
//! run once as root, then the `cellbox` command as that user, with the
//! attacks a sandbox must stop. Run as root (as CI does), the tests make
//! the users they need; otherwise they have nothing to set up and say so.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use cellbox::namespace::zygote::only_child;

/// The user `cellbox setup` prepares.
const USER: &str = "cellbox-rootless";
/// A user with subordinate ids but nothing else: told what is missing.
const UNPREPARED: &str = "cellbox-unprepared";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Every test's start: only as root (which makes the users), and one test
/// at a time (see [`alone`]). `None`: not root, said on stderr.
fn as_root_one_at_a_time() -> Option<std::sync::MutexGuard<'static, ()>> {
    if !is_root() {
        eprintln!("not root: no user to set up (CI runs this as root)");
        return None;
    }
    Some(alone())
}

/// Held while a test runs rootless sandboxes (they share the user and its
/// control groups, which each checks are empty afterwards), and by a test
/// that must see none of their processes.
pub fn alone() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ensure_user(name: &str) {
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let made = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", name])
            .status()
            .expect("useradd");
        assert!(made.success(), "useradd {name}");
    }
}

/// The `cellbox` binary beside the tests, copied where any user may run it
/// (the checkout may sit in a folder only root can enter).
fn cellbox_binary() -> &'static Path {
    static COPY: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, binary) = COPY.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let built = exe.parent().unwrap().parent().unwrap().join("cellbox");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let binary = dir.path().join("cellbox");
        std::fs::copy(&built, &binary).expect("the cellbox binary (cargo build -p cellbox)");
        (dir, binary)
    });
    binary
}

/// `cellbox setup --user USER` (once per run); returns the shared guest
/// layer, which the user's processes are pointed at (they may not read
/// guest-init's sources in the checkout).
fn set_up() -> &'static str {
    static LAYER: OnceLock<String> = OnceLock::new();
    LAYER.get_or_init(|| {
        ensure_user(USER);
        let output = Command::new(cellbox_binary())
            .args(["setup", "--user", USER])
            .env("CELLBOX_CACHE_DIR", cellbox::default_cache_dir())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.contains("subordinate ids"), "{text}");
        text.lines()
            .find_map(|line| line.split("the guest's layer is shared in ").nth(1))
            .expect("the shared layer")
            .to_string()
    })
}

/// `cellbox ARGS` run by `user` with a clean environment plus `env`.
fn as_user(user: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    user_command(user, args, env).output().expect("runuser")
}

/// The command running `cellbox ARGS` as `user` (see [`as_user`]).
fn user_command(user: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new("runuser");
    command
        .args(["-u", user, "--", "env", "-i"])
        .arg(format!("HOME=/home/{user}"))
        .args(["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]);
    for (key, value) in env {
        command.arg(format!("{key}={value}"));
    }
    command.arg(cellbox_binary()).args(args).current_dir("/");
    command
}

/// What the sandbox printed, and its errors, as one text.
fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn delegated_v1() -> bool {
    !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The environment the set-up user's processes get: the shared guest layer,
/// and where no control group can be delegated (cgroup v2), no limits.
fn user_env() -> Vec<(&'static str, &'static str)> {
    let mut env = vec![("CELLBOX_GUEST_LAYER", set_up())];
    if !delegated_v1() {
        env.push(("CELLBOX_ALLOW_UNLIMITED", "1"));
    }
    env
}

#[test]
fn an_ordinary_user_runs_the_namespace_sandbox_after_setup() {
    let Some(_turn) = as_root_one_at_a_time() else {
        return;
    };
    let env = user_env();
    let checkout = env!("CARGO_MANIFEST_DIR");
    let who = format!(
        "import os, getpass, socket\n\
         print(os.getuid(), getpass.getuser(), os.path.exists({checkout:?}), os.path.exists('/home/{USER}'))\n\
         print(open('/proc/self/uid_map').read().split())\n\
         print([name for _, name in socket.if_nameindex()])"
    );
    let output = as_user(USER, &["run", "--backend", "namespace", "-c", &who], &env);
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    // The sandbox's user, its ids from the first subordinate one (its root
    // is not the host user), no host files, loopback only.
    assert!(said.contains("1000 user False False"), "{said}");
    assert!(said.contains("['0', '1', '65536']"), "{said}");
    assert!(said.contains("['lo']"), "{said}");

    if !delegated_v1() {
        return; // the limits below need the delegated control groups
    }
    // A full disk is ENOSPC at half the memory limit (the tmpfs is charged
    // to the sandbox's memory), and the sandbox goes on.
    let fill = "total = 0\n\
                try:\n\
                \x20   with open('/home/user/big', 'wb') as f:\n\
                \x20       while True:\n\
                \x20           f.write(b'x' * (64 << 20)); f.flush(); total += 64\n\
                except OSError as e:\n\
                \x20   print('stopped after', total, 'MiB:', e.strerror)\n";
    // Memory past the limit kills the kernel, not the sandbox; a fork bomb
    // stops at the process limit.
    let bomb = "import os, time\n\
                n = 0\n\
                try:\n\
                \x20   while True:\n\
                \x20       if os.fork() == 0:\n\
                \x20           time.sleep(30); os._exit(0)\n\
                \x20       n += 1\n\
                except OSError as e:\n\
                \x20   print('forked', n, e.strerror)\n";
    let output = as_user(
        USER,
        &[
            "run",
            "--backend",
            "namespace",
            "--timeout",
            "20",
            "-c",
            fill,
            "-c",
            "import os; os.remove('/home/user/big')",
            "-c",
            "x = bytearray(3 << 30)",
            "-c",
            "40 + 2",
            "-c",
            bomb,
        ],
        &env,
    );
    let said = text(&output);
    let mib: u64 = said
        .split("stopped after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the disk never filled: {said}"));
    assert!((512..=1024).contains(&mib), "{mib} MiB written: {said}");
    assert!(said.contains("No space left on device"), "{said}");
    assert!(said.contains("the kernel died"), "{said}");
    assert!(said.contains("42"), "the sandbox went on: {said}");
    let forked: u32 = said
        .split("forked ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the fork bomb never stopped: {said}"));
    assert!(forked <= 256, "{forked} processes: {said}");
    assert_eq!(sandbox_cgroups(), Vec::<String>::new(), "left behind");
}

/// The attacks on what the user who started it has: its files, its
/// processes, and what listens on the host's loopback.
#[test]
fn a_rootless_sandbox_reaches_none_of_its_users_files_processes_or_network() {
    let Some(_turn) = as_root_one_at_a_time() else {
        return;
    };
    let env = user_env();
    let secret = format!("/home/{USER}/secret");
    std::fs::write(&secret, "the user's own").unwrap();
    let account = nix::unistd::User::from_name(USER).unwrap().unwrap();
    std::os::unix::fs::chown(&secret, Some(account.uid.as_raw()), None).unwrap();
    let mut sleeper = Command::new("runuser")
        .args(["-u", USER, "--", "sleep", "300"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = only_child(sleeper.id()).expect("the user's sleep") as i32;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let attack = format!(
        "import os, socket\n\
         seen = [os.path.exists({secret:?}), os.path.exists('/proc/{pid}/environ')]\n\
         try:\n\
         \x20   os.kill({pid}, 9); seen.append('killed')\n\
         except OSError as e:\n\
         \x20   seen.append(type(e).__name__)\n\
         s = socket.socket(); s.settimeout(5)\n\
         try:\n\
         \x20   s.connect(('127.0.0.1', {port})); seen.append('connected')\n\
         except OSError as e:\n\
         \x20   seen.append(type(e).__name__)\n\
         print('seen', seen)"
    );
    let output = as_user(
        USER,
        &["run", "--backend", "namespace", "-c", &attack],
        &env,
    );
    let said = text(&output);
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let accepted = listener.accept().is_ok();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = sleeper.wait();
    assert!(
        said.contains("seen [False, False, 'ProcessLookupError', 'ConnectionRefusedError']"),
        "{said}"
    );
    assert!(alive, "the user's process survived");
    assert!(!accepted, "nothing reached the host's loopback");
}

/// Network on request, as for root: slirp4netns joined through the
/// sandbox's own user namespace, and egress rules that hold, by address and
/// (port 80) through the egress proxy, whose socket is made in there too.
#[test]
fn a_rootless_sandbox_gets_the_network_it_asks_for_and_no_more() {
    use cellbox_tests::network_rig::{ALLOWED, DENIED, HTTP_PORT, PORT, servers};
    let Some(_turn) = as_root_one_at_a_time() else {
        return;
    };
    let env = user_env();
    servers();
    let fetch = format!(
        "import urllib.request\n\
         for host in ({ALLOWED:?}, {DENIED:?}):\n\
         \x20 for port in ({PORT}, {HTTP_PORT}):\n\
         \x20   try:\n\
         \x20       print(urllib.request.urlopen(f'http://{{host}}:{{port}}/', timeout=10).read().decode(), port)\n\
         \x20   except OSError as e:\n\
         \x20       print(host, port, 'refused')"
    );
    let output = as_user(
        USER,
        &[
            "run",
            "--backend",
            "namespace",
            "--allow-out",
            ALLOWED,
            "-c",
            &fetch,
        ],
        &env,
    );
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    for port in [PORT, HTTP_PORT] {
        assert!(
            said.contains(&format!("hello from {ALLOWED} {port}")),
            "{said}"
        );
        assert!(said.contains(&format!("{DENIED} {port} refused")), "{said}");
    }
}

/// The control groups of the user's sandboxes (none once they are closed).
fn sandbox_cgroups() -> Vec<String> {
    let delegated = format!("/sys/fs/cgroup/memory/cellbox-{USER}");
    let Ok(entries) = std::fs::read_dir(delegated) else {
        return Vec::new(); // cgroup v2: nothing delegated
    };
    entries
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_user_who_is_not_set_up_is_told_what_to_do() {
    let Some(_turn) = as_root_one_at_a_time() else {
        return;
    };
    ensure_user(UNPREPARED);
    let layer = set_up(); // shares the guest with every user
    let env = [("CELLBOX_GUEST_LAYER", layer)];
    let run = ["run", "--backend", "namespace", "-c", "1 + 1"];
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    if !subuid
        .lines()
        .any(|line| line.starts_with(&format!("{UNPREPARED}:")))
    {
        let output = as_user(UNPREPARED, &run, &env);
        let said = text(&output);
        assert!(!output.status.success(), "{said}");
        assert!(
            said.contains("subordinate ids")
                && said.contains(&format!("sudo cellbox setup --user {UNPREPARED}")),
            "{said}"
        );
        let range = "300000000-300065535";
        let added = Command::new("usermod")
            .args(["--add-subuids", range, "--add-subgids", range, UNPREPARED])
            .status()
            .unwrap();
        assert!(added.success());
    }
    if delegated_v1() {
        // Ids but no delegated control groups: refused, unless accepted.
        let output = as_user(UNPREPARED, &run, &env);
        let said = text(&output);
        assert!(!output.status.success(), "{said}");
        assert!(
            said.contains("control groups") && said.contains("CELLBOX_ALLOW_UNLIMITED=1"),
            "{said}"
        );
    }
    let unlimited = [env[0], ("CELLBOX_ALLOW_UNLIMITED", "1")];
    let output = as_user(UNPREPARED, &run, &unlimited);
    let said = text(&output);
    assert!(output.status.success() && said.contains('2'), "{said}");

    // The microVM: /dev/kvm is the group kvm's, which only set-up users join.
    if Path::new("/dev/kvm").exists() {
        let vm = ["run", "--backend", "vm", "-c", "1 + 1"];
        let output = as_user(UNPREPARED, &vm, &env);
        let said = text(&output);
        assert!(!output.status.success(), "{said}");
        assert!(
            said.contains("/dev/kvm cannot be opened: Permission denied")
                && said.contains(&format!("sudo cellbox setup --user {UNPREPARED}")),
            "{said}"
        );
        // The set-up user opens it (here it may still not run a Linux
        // guest, as on PVM: then that is the reason given).
        let output = as_user(USER, &vm, &user_env());
        let said = text(&output);
        assert!(!said.contains("cannot be opened"), "{said}");
    }
}

/// `cellbox serve` run by the set-up user, driven by E2B's own SDK (run by
/// root, which has it in its cache): every check of `tests/e2b/test_sdk.py`.
#[test]
fn cellbox_serve_runs_as_an_ordinary_user_for_the_e2b_sdk() {
    let Some(_turn) = as_root_one_at_a_time() else {
        return;
    };
    let python = cellbox_tests::e2b_sdk_python();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut serve = user_command(USER, &["serve"], &user_env())
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("runuser");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !cellbox_tests::http_ok("127.0.0.1:49999", "/health") {
        let log = std::fs::read_to_string(log.path()).unwrap_or_default();
        assert!(serve.try_wait().unwrap().is_none(), "serve ended: {log}");
        assert!(
            std::time::Instant::now() < deadline,
            "serve never came up: {log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2b/test_sdk.py");
    let checked = Command::new(python)
        .arg(script)
        .env("SDK_TEST_DEADLINE", "600")
        .output()
        .expect("the SDK's python");
    // SIGTERM to serve itself (runuser would kill it two seconds after
    // passing the signal on): it stops its sandboxes and exits.
    let server = only_child(serve.id()).expect("runuser's one child, cellbox serve") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopped = serve.wait().unwrap();
    let said = text(&checked);
    assert!(
        checked.status.success() && said.contains(" passed, 0 failed"),
        "{said}\n--- serve:\n{}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
    assert!(stopped.success(), "serve ended with {stopped}");
    assert!(stopped.success(), "serve ended with {stopped}");
    // Nothing of the user's left (a launcher's child killed with it is
    // reaped by the host's init a moment later).
    let running = || {
        let ps = Command::new("ps")
            .args(["--no-headers", "-o", "pid,ppid,stat,args", "-u", USER])
            .output()
            .unwrap();
        String::from_utf8_lossy(&ps.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !running().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(running(), "", "left running");
    assert_eq!(sandbox_cgroups(), Vec::<String>::new(), "left behind");
}

/// Where no root file system is shared, the user builds their own without
/// root (mmdebstrap's unshare mode): its files belong to the user's
/// subordinate ids, so inside the sandbox they keep their owners (root's
/// `/etc/shadow`, user's home), and user code still cannot change them.
/// The first run builds it (minutes, downloading); the user's cache keeps it.
#[test]
fn a_user_builds_the_guest_root_file_system_without_root() {
    let Some(_turn) = as_root_one_at_a_time() else {
        return;
    };
    let mut env: Vec<(&str, &str)> = user_env();
    env.push(("CELLBOX_SHARED_CACHE_DIR", ""));
    let cache = format!("/home/{USER}/.cache/cellbox-own-rootfs");
    env.push(("CELLBOX_CACHE_DIR", &cache));
    let owners = "import os, pwd, grp\n\
         owner = lambda p: (pwd.getpwuid(os.stat(p).st_uid).pw_name, grp.getgrgid(os.stat(p).st_gid).gr_name)\n\
         print(owner('/etc/shadow'), owner('/usr/bin/python3'), owner('/home/user'))\n\
         try:\n    open('/etc/passwd', 'a').write('x')\nexcept PermissionError:\n    print('refused')";
    let output = as_user(USER, &["run", "--backend", "namespace", "-c", owners], &env);
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("('root', 'shadow') ('root', 'root') ('user', 'user')"),
        "{said}"
    );
    assert!(said.contains("refused"), "{said}");
    // The tree is the user's subordinate ids', not the user's nor root's.
    let tree = std::fs::read_dir(format!("{cache}/rootfs"))
        .unwrap()
        .flatten()
        .map(|entry| entry.path().join("tree/etc/shadow"))
        .find(|shadow| shadow.exists())
        .expect("the user's own tree");
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(&tree).unwrap().uid();
    let user = nix::unistd::User::from_name(USER).unwrap().unwrap();
    assert!(
        uid != 0 && uid != user.uid.as_raw(),
        "{} is uid {uid}",
        tree.display()
    );
}
