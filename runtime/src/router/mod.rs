//! The router (`--backend auto`): one session that runs trivial cells on the
//! WebAssembly fast path and moves, with its state, to the heavy backend
//! (microVM or namespace sandbox) when a cell needs more.
//!
//! - [`analysis`]: what a cell needs, from its source
//! - [`modules`]: what the fast path can import
//! - [`state`]: carrying the session's state across a move, with its
//!   [`history`] of cells
//! - [`home`]: copying its home folder; [`snapshot`]: saving and loading
//!   its state in a host folder (snapshots, forks)
//! - [`HybridExecutor`]: the routing itself

pub mod analysis;
mod executor;
pub mod history;
pub mod home;
pub mod modules;
pub mod snapshot;
pub mod state;

pub use executor::{HeavyChoice, HybridConfig, HybridExecutor, Policy};
