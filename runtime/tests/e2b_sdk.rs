//! E2B's official SDKs, unmodified, drive `cellbox serve`: Python's
//! `e2b-code-interpreter` from PyPI and, where Node.js ≥ 20.18 is
//! installed, the npm package `@e2b/code-interpreter`. Each is installed
//! into the cache on first run. Both run twice: in their debug mode (one
//! sandbox on the fixed ports; `tests/e2b/test_sdk.*`) and as against E2B's
//! cloud (many sandboxes through the control plane; `test_sandboxes.*`).
//! Where Node.js is, E2B's own CLI (`@e2b/cli`) runs too (`test_cli.py`).
//! Root is needed (the heavy backend is the namespace sandbox here).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Named HTTP and HTTPS servers beside them, for the egress proxy's rules.
#[path = "../../tests/egress_rig.rs"]
mod egress_rig;
/// The test servers of the namespace and microVM suites (a network
/// namespace of their own: nothing leaves this machine), shared by path.
#[path = "../../tests/network_rig.rs"]
#[allow(dead_code)] // (its helpers for Rust sandboxes are not used here)
mod network_rig;

/// Installs the SDK for `language` (once; `tests/e2b/install_sdk.sh`);
/// returns the path the script prints.
fn installed(language: &str) -> PathBuf {
    let output = Command::new("sh")
        .arg(e2b_dir().join("install_sdk.sh"))
        .arg(language)
        .env("CELLBOX_CACHE_DIR", cellbox::default_cache_dir())
        .stderr(Stdio::inherit())
        .output()
        .expect("sh");
    assert!(
        output.status.success(),
        "installing the {language} SDK failed"
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

fn e2b_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2b")
}

/// Whether this machine has npm and a Node.js the JS SDK supports (≥ 20.18).
fn node_is_recent() -> bool {
    let has_npm = Command::new("npm").arg("--version").output();
    if !has_npm.is_ok_and(|output| output.status.success()) {
        return false;
    }
    let Ok(output) = Command::new("node").arg("--version").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&output.stdout);
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    major > 20 || (major == 20 && minor >= 18)
}

/// The server's API key in these tests.
const API_KEY: &str = "e2b_a-key-for-the-sdk-tests-0123456789";

/// The folder of the server the tests start: snapshots, secrets, its CA.
fn server_dir() -> PathBuf {
    std::env::temp_dir().join(format!("cellbox-e2b-sdk-{}", std::process::id()))
}

/// `command` with the SDK pointed at `cellbox serve` as its cloud, and told
/// the test servers its sandboxes' network checks reach and the server's CA.
fn cloud(command: &mut Command) -> &mut Command {
    let url = format!("http://localhost:{}", cellbox::serve::DEFAULT_API_PORT);
    network_rig::servers();
    let egress = egress_rig::egress_servers();
    command
        .env_remove("E2B_DEBUG")
        .env("E2B_API_URL", &url)
        .env("E2B_SANDBOX_URL", &url)
        .env("E2B_API_KEY", API_KEY)
        .env("CELLBOX_TEST_ALLOWED", network_rig::ALLOWED)
        .env("CELLBOX_TEST_DENIED", network_rig::DENIED)
        .env("CELLBOX_TEST_PORT", network_rig::PORT.to_string())
        .env("CELLBOX_TEST_CA", server_dir().join("tls/ca.pem"))
        .env("CELLBOX_TEST_SEEN", &egress.seen)
        .env("CELLBOX_TEST_EGRESS_CA", &egress.ca)
        .env("CELLBOX_TEST_API_NAME", egress_rig::API_NAME)
        .env("CELLBOX_TEST_OTHER_NAME", egress_rig::OTHER_NAME)
}

/// Runs an SDK test script; asserts that every check passed.
fn passes(command: &mut Command) {
    let output = command.output().expect("running an SDK test");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains(" passed, 0 failed"), "{report}");
    eprintln!("{}", report.lines().last().unwrap_or_default());
}

/// `cellbox serve` on the SDK's debug ports, stopped (SIGTERM) on drop.
struct Server(Child);

impl Server {
    /// Sends SIGTERM; returns how long the server took to exit (killed
    /// after 20 s).
    fn stop(&mut self) -> Duration {
        let started = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        started.elapsed()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

/// Starts `sleep 1000` through envd's `Start` and leaves its stream open;
/// returns the connection once the start event arrived.
fn open_command_stream() -> TcpStream {
    let message = br#"{"process": {"cmd": "/bin/sleep", "args": ["1000"]}}"#;
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let mut stream = TcpStream::connect("127.0.0.1:49983").unwrap();
    let head = format!(
        "POST /process.Process/Start HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/connect+json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0; 4096];
    while !String::from_utf8_lossy(&seen).contains(r#""start""#) {
        let n = stream.read(&mut buffer).unwrap();
        assert!(
            n > 0,
            "the stream ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
    stream
}

fn healthy() -> bool {
    let Ok(mut stream) = TcpStream::connect("127.0.0.1:49999") else {
        return false;
    };
    let _ =
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

#[test]
fn the_official_e2b_sdks_run_against_cellbox_serve() {
    let python = installed("python");
    // The custom template test_sandboxes.py uses, with E2B's template
    // options; built from a copy, since the build writes e2b.toml there.
    let folder = tempfile::tempdir().unwrap();
    for file in ["e2b.Dockerfile", "hello.txt"] {
        std::fs::copy(
            e2b_dir().join("template").join(file),
            folder.path().join(file),
        )
        .unwrap();
    }
    let build = |options: &[&str]| {
        let built = Command::new(env!("CARGO_BIN_EXE_cellbox"))
            .args(["template", "build", "--path"])
            .arg(folder.path())
            .args(options)
            .env("CELLBOX_CACHE_DIR", cellbox::default_cache_dir())
            .status()
            .expect("running cellbox template build");
        assert!(built.success(), "cellbox template build failed");
        std::fs::read_to_string(folder.path().join("e2b.toml")).unwrap()
    };
    let written = build(&[
        "--name",
        "sdk-test",
        "--cmd",
        "python3 -m http.server 8000",
        "--ready-cmd",
        "curl -sf localhost:8000",
        "--cpu-count",
        "2",
        "--memory-mb",
        "1024",
    ]);
    for line in [
        "template_name = \"sdk-test\"",
        "start_cmd = \"python3 -m http.server 8000\"",
        "cpu_count = 2",
        "dockerfile = \"e2b.Dockerfile\"",
    ] {
        assert!(written.contains(line), "e2b.toml lacks {line}: {written}");
    }
    // The next build takes everything from e2b.toml (as E2B's CLI does).
    assert_eq!(build(&[]), written);
    let dir = server_dir();
    // The server resolves the egress rig's names from its hosts file (bound
    // over /etc/hosts in a mount namespace of the server's own) and trusts
    // the rig's CA, as its sandboxes' egress proxies dial them.
    let egress = egress_rig::egress_servers();
    let mut server = Server(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
            .arg(&egress.hosts)
            .arg(env!("CARGO_BIN_EXE_cellbox"))
            .env("SSL_CERT_FILE", &egress.ca)
            .args(["serve", "--api-key", API_KEY, "--snapshot-dir"])
            .arg(&dir)
            .arg("--secrets-file")
            .arg(dir.join("secrets.json"))
            .arg("--tls-dir")
            .arg(dir.join("tls"))
            .stdout(Stdio::null())
            .spawn()
            .expect("starting cellbox serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    while !healthy() {
        assert!(Instant::now() < deadline, "cellbox serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    passes(Command::new(&python).arg(e2b_dir().join("test_sdk.py")));
    passes(cloud(
        Command::new(&python).arg(e2b_dir().join("test_sandboxes.py")),
    ));
    if node_is_recent() {
        let node_modules = installed("node");
        passes(
            Command::new("node")
                .arg(e2b_dir().join("test_sdk.cjs"))
                .env("NODE_PATH", &node_modules),
        );
        passes(cloud(
            Command::new("node")
                .arg(e2b_dir().join("test_sandboxes.cjs"))
                .env("NODE_PATH", &node_modules),
        ));
        // E2B's CLI, driven from Python (which makes its sandboxes).
        let e2b_cli = installed("cli");
        passes(cloud(
            Command::new(&python)
                .arg(e2b_dir().join("test_cli.py"))
                .arg(&e2b_cli),
        ));
    } else {
        eprintln!(
            "skipping the JavaScript SDK and E2B's CLI: they need Node.js 20.18 or newer and npm, not found here"
        );
    }
    // A command stream left open does not hold up shutdown for long.
    let _open = open_command_stream();
    let took = server.stop();
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
