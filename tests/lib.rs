//! Shared helpers for cellbox's integration tests.

use cellbox::{WasmConfig, WasmEngine, WasmExecutor, WasmSessionOptions};
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
