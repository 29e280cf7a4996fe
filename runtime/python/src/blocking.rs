//! Waiting for cellbox's futures from Python: one tokio runtime for the
//! process, the GIL released while a future runs, and Ctrl-C noticed.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// How often a wait looks for a signal (Ctrl-C) to hand to Python.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// The process's runtime: sandboxes' background tasks (watchdogs, streamed
/// runs) live on it, so it lives as long as the module.
pub fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("cellbox")
                .enable_all()
                .build()
        })
        .as_ref()
        .map_err(|e| {
            PyRuntimeError::new_err(format!("cellbox cannot start its async runtime: {e}"))
        })
}

/// Runs `future` to its end with the GIL released, so other Python threads
/// go on meanwhile. A signal (Ctrl-C) raises its exception at once and
/// drops the future; `on_signal` runs first (to interrupt a cell, say).
pub fn wait<F>(py: Python<'_>, future: F, on_signal: impl FnOnce()) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let runtime = runtime()?;
    let mut future = Box::pin(future);
    loop {
        let step = py.detach(|| {
            runtime.block_on(async { tokio::time::timeout(SIGNAL_POLL, &mut future).await })
        });
        match step {
            Ok(output) => return Ok(output),
            Err(_elapsed) => {
                if let Err(signal) = py.check_signals() {
                    on_signal();
                    return Err(signal);
                }
            }
        }
    }
}

/// [`wait`] for a future whose failure is a cellbox error.
pub fn wait_for<T: Send>(
    py: Python<'_>,
    future: impl Future<Output = cellbox::Result<T>> + Send,
) -> PyResult<T> {
    wait(py, future, || {})?.map_err(crate::errors::to_python)
}
