//! E2B's official Python SDK (`e2b-code-interpreter` from PyPI, unmodified)
//! drives `cellbox serve` (both ports) in its debug mode:
//! `tests/e2b/test_sdk.py`. The SDK is installed into a virtualenv in the
//! cache on first run. Root is needed
//! (the heavy backend is the namespace sandbox here).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Python with the SDK (`tests/e2b/sdk_python.sh` installs it once).
fn sdk_python() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2b/sdk_python.sh");
    let output = Command::new("sh")
        .arg(script)
        .env("CELLBOX_CACHE_DIR", cellbox::default_cache_dir())
        .stderr(Stdio::inherit())
        .output()
        .expect("sh");
    assert!(output.status.success(), "installing the E2B SDK failed");
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// `cellbox serve` on the SDK's debug port, stopped (SIGTERM) on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
    }
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
fn the_official_e2b_sdk_runs_against_cellbox_serve() {
    let python = sdk_python();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_cellbox"))
            .arg("serve")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting cellbox serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    while !healthy() {
        assert!(Instant::now() < deadline, "cellbox serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2b/test_sdk.py");
    let output = Command::new(&python)
        .arg(&script)
        .output()
        .expect("running the SDK test");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("0 failed"), "{report}");
    drop(server);
}
