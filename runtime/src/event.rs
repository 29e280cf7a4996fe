//! Events streamed while a cell runs, in the order they happen.

use crate::execution::{CellResult, ExecutionError};

/// One thing a running cell produced. Every backend streams the same events;
/// folding them with [`crate::Execution::apply`] gives the final `Execution`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A chunk of standard output (whole lines unless the cell flushed early).
    Stdout(String),
    /// A chunk of standard error.
    Stderr(String),
    /// A rich result: the main result or a `display()`ed value.
    Result(Box<CellResult>),
    /// The exception the cell raised.
    Error(ExecutionError),
    /// The cell finished; no more events follow for it.
    End { execution_count: Option<u32> },
}
