//! `EventStream`: what a running cell or command produces, pulled one event
//! at a time by the Python thread (or event loop) that called it, so that
//! callbacks run there and nowhere else.

use std::sync::Arc;

use pyo3::prelude::*;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::blocking;

/// One event: its kind (`stdout`, `stderr`, `result`, `error`) and its text
/// (JSON for results and errors).
pub type Item = (&'static str, String);

/// The events of one run, then its outcome (as JSON).
#[derive(Debug)]
#[pyclass(frozen, module = "cellbox._native")]
pub struct EventStream {
    events: Arc<Mutex<mpsc::UnboundedReceiver<Item>>>,
    done: Mutex<Option<JoinHandle<cellbox::Result<String>>>>,
    interrupt: Option<cellbox::Interrupt>,
    pid: Option<u32>,
}

impl EventStream {
    /// A stream fed through `events` by the task `done`, which ends with the
    /// run's outcome; `interrupt` stops the run.
    pub fn new(
        events: mpsc::UnboundedReceiver<Item>,
        done: JoinHandle<cellbox::Result<String>>,
        interrupt: Option<cellbox::Interrupt>,
        pid: Option<u32>,
    ) -> Self {
        EventStream {
            events: Arc::new(Mutex::new(events)),
            done: Mutex::new(Some(done)),
            interrupt,
            pid,
        }
    }

    fn stop(&self) {
        if let Some(interrupt) = &self.interrupt {
            interrupt.interrupt();
        }
    }
}

#[pymethods]
impl EventStream {
    /// The next event, or `None` once the run has ended. Ctrl-C interrupts
    /// the run (the kernel keeps its state) and raises `KeyboardInterrupt`.
    fn next(&self, py: Python<'_>) -> PyResult<Option<Item>> {
        let events = self.events.clone();
        blocking::wait(py, async move { events.lock().await.recv().await }, || {
            self.stop()
        })
    }

    /// The next event if one has arrived, else `None` at once.
    fn poll(&self) -> Option<Item> {
        self.events.try_lock().ok()?.try_recv().ok()
    }

    /// The run's outcome as JSON (an execution, or a command's result),
    /// once its events are read; raises `CellboxError` if the run failed.
    fn outcome(&self, py: Python<'_>) -> PyResult<String> {
        let outcome = blocking::wait(
            py,
            async {
                match self.done.lock().await.take() {
                    Some(task) => match task.await {
                        Ok(outcome) => outcome,
                        Err(e) => Err(cellbox::Error::SandboxDied {
                            reason: format!("the run's task failed: {e}"),
                        }),
                    },
                    None => Err(cellbox::Error::InvalidArgument(
                        "the outcome of this run was already taken".into(),
                    )),
                }
            },
            || self.stop(),
        )?;
        outcome.map_err(crate::errors::to_python)
    }

    /// Stops the run: a cell is interrupted (its kernel keeps its state).
    fn interrupt(&self) {
        self.stop();
    }

    /// The process id of a command's stream (`None` for a cell).
    #[getter]
    fn pid(&self) -> Option<u32> {
        self.pid
    }
}
