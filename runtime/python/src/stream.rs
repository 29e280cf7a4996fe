//! `EventStream`: what a running cell or command produces, pulled one event
//! at a time by the Python thread (or event loop) that called it, so that
//! callbacks run there and nowhere else.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::prelude::*;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::blocking;

/// One event: its kind (`stdout`, `stderr`, `result`, `error`) and its text
/// (JSON for results and errors).
pub type Item = (&'static str, String);

/// The producing end of an [`EventStream`]. At most `limit` events wait
/// unread; past that, new ones are dropped, so that a stream nobody reads
/// (a watch on a folder that hostile code churns) cannot grow the host's memory.
#[derive(Debug, Clone)]
pub struct Feed {
    tx: mpsc::UnboundedSender<Item>,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl Feed {
    /// Queues `item`; false if it was dropped (the reader is too far behind or gone).
    pub fn send(&self, item: Item) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.tx.send(item).is_ok()
    }
}

/// The reading end of a [`Feed`].
#[derive(Debug)]
pub struct Queue {
    rx: mpsc::UnboundedReceiver<Item>,
    queued: Arc<AtomicUsize>,
}

impl Queue {
    async fn recv(&mut self) -> Option<Item> {
        let item = self.rx.recv().await;
        self.taken(item)
    }

    fn try_recv(&mut self) -> Option<Item> {
        let item = self.rx.try_recv().ok();
        self.taken(item)
    }

    fn taken(&self, item: Option<Item>) -> Option<Item> {
        if item.is_some() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        item
    }
}

/// A feed holding at most `limit` unread events, and its queue.
pub fn feed(limit: usize) -> (Feed, Queue) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let feed = Feed {
        tx,
        queued: queued.clone(),
        limit,
    };
    (feed, Queue { rx, queued })
}

/// The events of one run, then its outcome (as JSON).
#[derive(Debug)]
#[pyclass(frozen, module = "cellbox._native")]
pub struct EventStream {
    events: Arc<Mutex<Queue>>,
    done: Mutex<Option<JoinHandle<cellbox::Result<String>>>>,
    interrupt: Option<cellbox::Interrupt>,
    pid: Option<u32>,
}

impl EventStream {
    /// A stream fed through `events` by the task `done`, which ends with the
    /// run's outcome; `interrupt` stops the run.
    pub fn new(
        events: Queue,
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
        self.events.try_lock().ok()?.try_recv()
    }

    /// The run's outcome as JSON (a cell's execution count, a command's result),
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
