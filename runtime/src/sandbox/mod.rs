//! The `Sandbox` API: what a host application links — code in contexts,
//! files, commands, lifecycle — on top of the router.
//!
//! - [`Sandbox`]: create, `run_code`, contexts, pause and resume, metrics,
//!   close, inactivity timeout
//! - [`Snapshot`]: `sandbox.snapshot(dir)`, `Sandbox::from_snapshot`,
//!   `sandbox.fork()`
//! - [`Files`] (`sandbox.files()`), [`Commands`] (`sandbox.commands()`),
//!   servers in the sandbox (`sandbox.open_port(port)`)
//! - [`SandboxOptions`], [`RunCodeOptions`], [`BackendPolicy`]

mod commands;
mod files;
mod metrics;
mod options;
mod ports;
mod session;
mod snapshot;

pub use commands::Commands;
pub use files::Files;
pub use metrics::SandboxMetrics;
pub use options::{BackendPolicy, RunCodeOptions, SandboxOptions};
pub use session::{DEFAULT_CONTEXT, RunStream, Sandbox};
pub use snapshot::Snapshot;
