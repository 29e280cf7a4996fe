//! The one seam every backend implements.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::event::Event;
use crate::execution::Execution;

/// Which backend runs a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// CPython for WASI inside wasmtime, in process.
    Wasm,
    /// The guest in a KVM microVM.
    Vm,
    /// The guest in Linux namespaces.
    Namespace,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Wasm => "wasm",
            Backend::Vm => "vm",
            Backend::Namespace => "namespace",
        })
    }
}

/// Options for one cell.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Wall-clock limit for the cell; `None` uses the session's default.
    pub timeout: Option<Duration>,
    /// Environment variables set for this cell only.
    pub env: BTreeMap<String, String>,
    /// Lets another task stop the cell (say, when the client that asked for
    /// it went away): the heavy kernel gets a `KeyboardInterrupt` and keeps
    /// its state; the fast path restarts, like after a timeout.
    pub interrupt: Option<Interrupt>,
}

/// A handle that interrupts the cell it was given to (see [`RunOptions::interrupt`]).
#[derive(Debug, Clone, Default)]
pub struct Interrupt(std::sync::Arc<tokio::sync::watch::Sender<bool>>);

impl Interrupt {
    /// A fresh, untriggered handle.
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    /// Interrupts the cell (now, or as soon as it starts).
    pub fn interrupt(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once [`Interrupt::interrupt`] was called.
    pub async fn interrupted(&self) {
        let mut receiver = self.0.subscribe();
        let _ = receiver.wait_for(|interrupted| *interrupted).await;
    }
}

/// Resolves when `interrupt` fires; never without one.
pub(crate) async fn interrupted(interrupt: Option<&Interrupt>) {
    match interrupt {
        Some(interrupt) => interrupt.interrupted().await,
        None => std::future::pending().await,
    }
}

impl RunOptions {
    /// Options with a timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        RunOptions {
            timeout: Some(timeout),
            ..Default::default()
        }
    }

    /// Adds an environment variable for this cell.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
}

/// A callback that receives a cell's events as they happen.
pub type EventCallback<'a> = dyn FnMut(&Event) + Send + 'a;

/// A running session of one backend: cells run in order and share state.
///
/// ```no_run
/// # async fn demo() -> cellbox::Result<()> {
/// use cellbox::{Event, Executor, RunOptions, WasmEngine, WasmExecutor};
///
/// let engine = WasmEngine::load(Default::default()).await?;
/// let mut session = WasmExecutor::start(&engine, Default::default()).await?;
/// session.run("x = 20").await?;
/// let execution = session
///     .execute("print('adding'); x + 22", &RunOptions::default(), &mut |event| {
///         if let Event::Stdout(text) = event {
///             eprint!("{text}"); // streamed while the cell runs
///         }
///     })
///     .await?;
/// assert_eq!(execution.text(), Some("42"));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Executor: Send {
    /// The backend behind this session.
    fn backend(&self) -> Backend;

    /// Runs one cell, calling `on_event` for each event as it happens, and
    /// returns the whole `Execution`. An exception in the user's code is an
    /// `Ok` with `error` set; `Err` means the sandbox failed.
    async fn execute(
        &mut self,
        code: &str,
        options: &RunOptions,
        on_event: &mut EventCallback<'_>,
    ) -> Result<Execution>;

    /// Runs one cell with default options, without streaming.
    async fn run(&mut self, code: &str) -> Result<Execution> {
        self.execute(code, &RunOptions::default(), &mut |_| {})
            .await
    }

    /// Clears the session's state: the next cell starts from scratch.
    async fn restart(&mut self) -> Result<()>;

    /// Ends the session and frees what it holds. Later calls fail with
    /// [`crate::Error::Closed`].
    async fn close(&mut self) -> Result<()>;
}
