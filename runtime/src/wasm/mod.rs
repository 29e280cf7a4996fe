//! The WebAssembly fast path: CPython 3.11 compiled to WASI, run in process by
//! wasmtime. Sessions start in milliseconds from a pre-initialised snapshot.
//!
//! - [`engine`]: the shared engine, artefact loading, the epoch clock
//! - [`executor`]: one session ([`WasmExecutor`])
//! - `host`: the `cellbox.emit` import and the output cap
//! - `artifacts`: building and caching cellbox-python (`python-wasm/`)

mod artifacts;
mod disk;
pub mod engine;
pub mod executor;
mod host;

pub use engine::{WasmConfig, WasmEngine};
pub use executor::{WasmExecutor, WasmSessionOptions};
