//! Shared helpers for cellbox's integration tests.

pub mod heavy;
pub mod kvm_host;
pub mod network_rig;

use std::time::{Duration, Instant};

use cellbox::{
    Execution, Executor, RunOptions, WasmConfig, WasmEngine, WasmExecutor, WasmSessionOptions,
};
use tokio::sync::OnceCell;

static ENGINE: OnceCell<WasmEngine> = OnceCell::const_new();

/// The WebAssembly engine, loaded once per test binary (building the
/// interpreter into the cache on a machine that has none).
pub async fn wasm_engine() -> WasmEngine {
    ENGINE
        .get_or_init(|| async {
            WasmEngine::load(WasmConfig::default())
                .await
                .expect("loading the wasm backend")
        })
        .await
        .clone()
}

/// A fresh WebAssembly session with default options.
pub async fn wasm_session() -> WasmExecutor {
    wasm_session_with(WasmSessionOptions::default()).await
}

/// A fresh WebAssembly session with the given options.
pub async fn wasm_session_with(options: WasmSessionOptions) -> WasmExecutor {
    WasmExecutor::start(&wasm_engine().await, options)
        .await
        .expect("starting a wasm session")
}

/// A fresh namespace sandbox (building the guest on a machine that has none).
pub async fn namespace_session() -> cellbox::NamespaceExecutor {
    cellbox::NamespaceExecutor::start(cellbox::NamespaceConfig::default())
        .await
        .expect("starting a namespace sandbox (needs root)")
}

/// A fresh microVM (building the guest kernel and image on a machine that
/// has none). Only where KVM can run a Linux guest: see [`kvm_host`].
pub async fn vm_session() -> cellbox::MicroVmExecutor {
    cellbox::MicroVmExecutor::start(cellbox::MicroVmConfig::default())
        .await
        .expect("starting a microVM")
}

/// How much longer than natively things may take here: 1, or 3 inside the
/// emulated-KVM machine, where everything runs in an emulated CPU.
pub fn time_scale() -> u32 {
    match std::env::var_os(kvm_host::IN_EMULATED_KVM) {
        Some(_) => 3,
        None => 1,
    }
}

/// Runs one cell with a timeout of `secs` seconds; returns its outcome and how
/// long the call took.
pub async fn run_with_timeout(
    executor: &mut (impl Executor + ?Sized),
    code: &str,
    secs: u64,
) -> (cellbox::Result<Execution>, Duration) {
    let started = Instant::now();
    let options = RunOptions::with_timeout(Duration::from_secs(secs));
    let outcome = executor.execute(code, &options, &mut |_| {}).await;
    (outcome, started.elapsed())
}

/// The per-run environment contract every backend keeps: `FOO=bar` is set for
/// that cell only.
pub async fn check_env_vars_do_not_leak(executor: &mut (impl Executor + ?Sized)) {
    let options = RunOptions::default().env("FOO", "bar");
    let with = executor
        .execute("import os; os.environ.get('FOO')", &options, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(with.text(), Some("'bar'"));
    let without = executor.run("os.environ.get('FOO')").await.unwrap();
    assert!(without.results.is_empty(), "None is not shown: {without:?}");
}

/// A matplotlib plot comes back as a PNG result (the heavy backends' guest).
pub async fn check_plot_is_png(executor: &mut (impl Executor + ?Sized)) {
    use base64::Engine as _;
    let plot = executor
        .run("import matplotlib.pyplot as plt; plt.plot([1, 2, 3]); plt.show()")
        .await
        .unwrap();
    let png = plot
        .results
        .iter()
        .find_map(|r| r.png.as_deref())
        .expect("a PNG result");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png)
        .unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
}

/// Whether `GET path` on `address` answers 200 (a server is up).
pub fn http_ok(address: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(request.as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// The E2B SDK's Python (`e2b-code-interpreter` from PyPI in a virtualenv),
/// installed into the cache on first use.
pub fn e2b_sdk_python() -> std::path::PathBuf {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2b/install_sdk.sh");
    let output = std::process::Command::new("sh")
        .arg(script)
        .arg("python")
        .env("CELLBOX_CACHE_DIR", cellbox::default_cache_dir())
        .output()
        .expect("sh");
    assert!(
        output.status.success(),
        "installing the E2B SDK failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::path::PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}
