//! cellbox runs untrusted, stateful Python cells the way a notebook does —
//! variables persist between cells, the last expression is a rich result —
//! inside a local sandbox, embedded in your program.
//!
//! - [`Sandbox`] is what an application uses: code in contexts, files,
//!   commands, lifecycle (the E2B code-interpreter feature set).
//! - The result model ([`Execution`], [`CellResult`], [`Logs`],
//!   [`ExecutionError`]) matches E2B's `Execution`.
//! - [`Executor`] is the one seam every backend implements; [`Event`]s stream
//!   while a cell runs.
//! - [`router`] ([`HybridExecutor`]) runs plain cells on the fast path and
//!   moves a session, with its state, to a heavy backend when it needs one.
//! - [`wasm`] is the WebAssembly fast path ([`WasmExecutor`]).
//! - [`namespace`] runs the full guest (IPython, numpy, pandas, matplotlib)
//!   in Linux namespaces ([`NamespaceExecutor`]); [`microvm`] runs it in a
//!   KVM microVM ([`MicroVmExecutor`], on `cellbox-vmm`); [`guest`] is the
//!   host side of the guest protocol both share.
//!
//! ```no_run
//! # async fn demo() -> cellbox::Result<()> {
//! use cellbox::{Sandbox, SandboxOptions};
//!
//! let sandbox = Sandbox::create(SandboxOptions::default()).await?;
//! sandbox.run_code("x = 1").await?;
//! let execution = sandbox.run_code("x += 1; x").await?;
//! assert_eq!(execution.text(), Some("2"));
//! sandbox.close().await?;
//! # Ok(()) }
//! ```

mod builder;
pub mod cache;
#[cfg(feature = "cli")]
pub mod cli;
pub mod error;
pub mod event;
pub mod execution;
pub mod executor;
pub mod guest;
pub mod microvm;
pub mod namespace;
pub mod progress;
mod relay;
pub mod router;
pub mod sandbox;
#[cfg(feature = "serve")]
pub mod serve;
pub mod template;
pub mod tls;
pub mod wasm;

pub use cache::default_cache_dir;
pub use error::{Error, Result};
pub use event::Event;
pub use execution::{CellResult, Execution, ExecutionError, Logs};
pub use executor::{Backend, EventCallback, Executor, Interrupt, RunOptions};
pub use guest::{
    CommandHandle, CommandInfo, CommandOptions, CommandResult, ContextInfo, FileStat, Language,
};
pub use microvm::{BootTimeline, MicroVmConfig, MicroVmExecutor};
pub use namespace::{
    HostRule, NamespaceConfig, NamespaceExecutor, NamespacePool, NetworkPolicy, SecretSource,
    VolumeMount,
};
pub use progress::Progress;
pub use router::{HeavyChoice, HybridConfig, HybridExecutor};
pub use sandbox::{
    BackendPolicy, Files, RunCodeOptions, RunStream, Sandbox, SandboxMetrics, SandboxOptions,
    Snapshot,
};
pub use wasm::{WasmConfig, WasmEngine, WasmExecutor, WasmSessionOptions};

/// Locks `mutex`, also after a panic elsewhere (the maps it guards stay valid).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
