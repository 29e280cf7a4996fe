//! The WebAssembly backend without the pre-initialised snapshot: the same
//! interpreter started from scratch behaves the same.

use cellbox::{Executor, WasmConfig, WasmEngine, WasmExecutor};

#[tokio::test]
async fn sessions_work_without_preinitialisation() {
    let engine = WasmEngine::load(WasmConfig {
        preinitialize: false,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!engine.is_preinitialized());
    let mut session = WasmExecutor::start(&engine, Default::default())
        .await
        .unwrap();
    session.run("x = 20").await.unwrap();
    let execution = session.run("x + 22").await.unwrap();
    assert_eq!(execution.text(), Some("42"));
}
