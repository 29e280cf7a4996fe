//! `HybridExecutor`: one session over the fast path and a heavy backend.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::task::JoinHandle;

use super::analysis::{CellNeeds, analyze, heavy_reason};
use super::history::History;
use super::state::carry_over;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::execution::Execution;
use crate::executor::{Backend, EventCallback, Executor, RunOptions};
use crate::guest::{ControlSlot, GuestExecutor};
use crate::microvm::{MicroVmConfig, MicroVmExecutor};
use crate::namespace::{NamespaceConfig, NamespaceExecutor, NamespacePool};
use crate::progress::Progress;
use crate::wasm::{WasmEngine, WasmExecutor, WasmSessionOptions};

/// Which heavy backend a hybrid session moves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeavyChoice {
    /// The microVM where KVM can run Linux, else the namespace sandbox.
    #[default]
    Auto,
    /// Always the microVM.
    Vm,
    /// Always the namespace sandbox.
    Namespace,
}

impl HeavyChoice {
    /// The backend this choice means on this host.
    pub fn resolve(self) -> Backend {
        match self {
            HeavyChoice::Vm => Backend::Vm,
            HeavyChoice::Namespace => Backend::Namespace,
            HeavyChoice::Auto => match cellbox_vmm::kvm_support::linux_guest_blocker() {
                None => Backend::Vm,
                Some(_) => Backend::Namespace,
            },
        }
    }
}

/// Where a session's cells may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Start on the fast path, move to the heavy backend when a cell needs it.
    #[default]
    Auto,
    /// The fast path only: no heavy backend, no files, commands or contexts.
    FastOnly,
    /// The heavy backend from the start.
    HeavyOnly,
}

/// How to start a hybrid session.
#[derive(Debug, Clone)]
pub struct HybridConfig {
    /// Where cells may run.
    pub policy: Policy,
    /// The heavy backend.
    pub heavy: HeavyChoice,
    /// Start the heavy backend in the background right after the first
    /// cell, so that a move costs only the state transfer (see also
    /// [`HybridExecutor::prestart_heavy`]). It costs a sandbox start, and on
    /// a machine without the guest artefacts, their build.
    pub prestart: bool,
    /// Options of the fast-path session.
    pub wasm: WasmSessionOptions,
    /// Options of the namespace sandbox (when it is the heavy backend).
    pub namespace: NamespaceConfig,
    /// Options of the microVM (when it is the heavy backend).
    pub microvm: MicroVmConfig,
    /// Spare namespace sandboxes the heavy backend is taken from when they
    /// are what `namespace` asks for ([`NamespacePool::serves`]).
    pub namespace_pool: Option<Arc<NamespacePool>>,
    /// Progress of artefact builds.
    pub progress: Progress,
}

impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            policy: Policy::Auto,
            heavy: HeavyChoice::Auto,
            prestart: true,
            wasm: WasmSessionOptions::default(),
            namespace: NamespaceConfig::default(),
            microvm: MicroVmConfig::default(),
            namespace_pool: None,
            progress: Progress::default(),
        }
    }
}

pub(super) type Heavy = Box<dyn GuestExecutor>;

enum HeavyState {
    Idle,
    Starting(JoinHandle<Result<Heavy>>),
    Ready(Heavy),
}

/// A session that runs each cell on the fastest backend able to: trivial
/// cells on the WebAssembly fast path; once a cell needs more (a module the
/// fast path lacks, `!shell`, `%magic`, a file or command of the sandbox), the
/// session moves to the heavy backend with its state and stays there.
///
/// ```no_run
/// # async fn demo() -> cellbox::Result<()> {
/// use cellbox::{Executor, HybridExecutor, WasmEngine};
///
/// let engine = WasmEngine::load(Default::default()).await?;
/// let mut session = HybridExecutor::start(&engine, Default::default()).await?;
/// session.run("x = 2").await?;                                   // fast path
/// let out = session.run("import numpy as np; float(np.float64(x) * 21)").await?;
/// assert_eq!(out.text(), Some("42.0"));                          // moved, `x` came along
/// # Ok(()) }
/// ```
pub struct HybridExecutor {
    pub(super) wasm: Option<WasmExecutor>,
    wasm_modules: Arc<BTreeSet<String>>,
    /// The default context's cells: their definitions go with its state.
    pub(super) history: History,
    heavy: HeavyState,
    heavy_backend: Backend,
    config: HybridConfig,
    last_backend: Backend,
    execution_count: u32,
    prestart_pending: bool,
    control: ControlSlot,
}

impl std::fmt::Debug for HybridExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridExecutor")
            .field("moved", &self.wasm.is_none())
            .field("heavy_backend", &self.heavy_backend)
            .field("execution_count", &self.execution_count)
            .finish_non_exhaustive()
    }
}

impl HybridExecutor {
    /// Starts the fast path (and, with `prestart`, the heavy backend in the background).
    pub async fn start(engine: &WasmEngine, config: HybridConfig) -> Result<HybridExecutor> {
        let wasm = WasmExecutor::start(engine, config.wasm.clone()).await?;
        let wasm_modules = super::modules::available(engine).await?;
        let heavy_backend = config.heavy.resolve();
        let mut session = HybridExecutor {
            wasm: Some(wasm),
            wasm_modules,
            history: History::default(),
            heavy: HeavyState::Idle,
            heavy_backend,
            config,
            last_backend: Backend::Wasm,
            execution_count: 0,
            prestart_pending: false,
            control: ControlSlot::default(),
        };
        match session.config.policy {
            Policy::HeavyOnly => {
                session
                    .move_to_heavy("the session's policy is heavy only")
                    .await?;
            }
            Policy::Auto
                if session.config.prestart
                    && heavy_available(heavy_backend, &session.config.namespace) =>
            {
                // After the first cell: starting a sandbox now would slow it down.
                session.prestart_pending = true;
            }
            _ => {}
        }
        Ok(session)
    }

    /// A copy of this session made from the whole heavy guest (memory and
    /// processes), where its backend can make one and the session runs
    /// there; `None` otherwise.
    pub async fn copy_whole(&mut self) -> Result<Option<HybridExecutor>> {
        let HeavyState::Ready(heavy) = &mut self.heavy else {
            return Ok(None);
        };
        if self.wasm.is_some() {
            return Ok(None); // the state is on the fast path
        }
        let Some(copy) = heavy.copy_whole().await? else {
            return Ok(None);
        };
        let control = ControlSlot::default();
        control.set(copy.control());
        Ok(Some(HybridExecutor {
            wasm: None,
            wasm_modules: self.wasm_modules.clone(),
            history: self.history.clone(),
            heavy: HeavyState::Ready(copy),
            heavy_backend: self.heavy_backend,
            config: self.config.clone(),
            last_backend: self.last_backend,
            execution_count: self.execution_count,
            prestart_pending: false,
            control,
        }))
    }

    /// Saves the whole heavy guest into the new folder `dir`, where its
    /// backend can and the session runs there (see
    /// [`MicroVmExecutor::save`]); `false` otherwise.
    pub async fn save_whole(&mut self, dir: &std::path::Path) -> Result<bool> {
        match &mut self.heavy {
            HeavyState::Ready(heavy) if self.wasm.is_none() => heavy.save_whole(dir).await,
            _ => Ok(false),
        }
    }

    /// A session on a microVM restored from the folder `dir` that
    /// [`HybridExecutor::save_whole`] filled; its cells are numbered on
    /// from `execution_count`.
    pub async fn restore_whole(
        engine: &WasmEngine,
        config: HybridConfig,
        dir: &std::path::Path,
        execution_count: u32,
    ) -> Result<HybridExecutor> {
        let heavy: Heavy = Box::new(MicroVmExecutor::restore(dir, &config.microvm).await?);
        let control = ControlSlot::default();
        control.set(heavy.control());
        Ok(HybridExecutor {
            wasm: None,
            wasm_modules: super::modules::available(engine).await?,
            history: History::default(),
            heavy: HeavyState::Ready(heavy),
            heavy_backend: Backend::Vm,
            config,
            last_backend: Backend::Vm,
            execution_count,
            prestart_pending: false,
            control,
        })
    }

    /// How many cells of the default context have run.
    pub fn execution_count(&self) -> u32 {
        self.execution_count
    }

    /// Where the heavy guest's pause/resume/usage control appears once it
    /// has started.
    pub fn control_slot(&self) -> ControlSlot {
        self.control.clone()
    }

    /// Whether the session has moved to the heavy backend.
    pub fn has_moved(&self) -> bool {
        self.wasm.is_none()
    }

    /// The heavy backend this session uses (or would move to).
    pub fn heavy_backend(&self) -> Backend {
        self.heavy_backend
    }

    /// Why `code` would move the session to the heavy backend, if it would.
    pub fn needs_heavy(&self, code: &str) -> Option<String> {
        heavy_reason(&analyze(code), &self.wasm_modules)
    }

    /// Starts the heavy backend in the background now (if it can run here
    /// and is not started yet), so that a later move costs little.
    pub fn prestart_heavy(&mut self) {
        if heavy_available(self.heavy_backend, &self.config.namespace) {
            self.start_heavy_in_background();
        }
    }

    fn start_heavy_in_background(&mut self) {
        if matches!(self.heavy, HeavyState::Idle) {
            tracing::debug!(backend = %self.heavy_backend, "starting the heavy backend in the background");
            let task = start_heavy(self.heavy_backend, &self.config, &self.control);
            self.heavy = HeavyState::Starting(tokio::spawn(task));
        }
    }

    /// The heavy backend, started if need be (waits for a background start).
    pub(super) async fn heavy(&mut self) -> Result<&mut Heavy> {
        loop {
            match std::mem::replace(&mut self.heavy, HeavyState::Idle) {
                HeavyState::Ready(heavy) => {
                    self.heavy = HeavyState::Ready(heavy);
                    break;
                }
                HeavyState::Starting(task) => {
                    let heavy = task.await.map_err(|e| Error::SandboxDied {
                        reason: format!("starting the heavy backend panicked: {e}"),
                    })??;
                    self.heavy = HeavyState::Ready(heavy);
                }
                HeavyState::Idle => {
                    let heavy =
                        start_heavy(self.heavy_backend, &self.config, &self.control).await?;
                    self.heavy = HeavyState::Ready(heavy);
                }
            }
        }
        match &mut self.heavy {
            HeavyState::Ready(heavy) => Ok(heavy),
            _ => unreachable!("set to Ready just above"),
        }
    }

    /// Moves the session to the heavy backend (once), carrying its state.
    /// Returns the names that could not be carried over.
    pub async fn move_to_heavy(&mut self, reason: &str) -> Result<Vec<String>> {
        if self.wasm.is_none() {
            return Ok(Vec::new());
        }
        if self.config.policy == Policy::FastOnly {
            return Err(Error::Unavailable {
                backend: self.heavy_backend,
                reason: format!("the session runs on the fast path only, and {reason}"),
            });
        }
        tracing::info!(backend = %self.heavy_backend, reason, "moving the session to the heavy backend");
        if let Err(error) = self.heavy().await {
            return Err(match error {
                Error::Unavailable {
                    backend,
                    reason: why,
                } => Error::Unavailable {
                    backend,
                    reason: format!(
                        "{why} (needed because {reason}; the fast path keeps its state)"
                    ),
                },
                other => other,
            });
        }
        let HybridExecutor {
            wasm,
            heavy,
            history,
            ..
        } = self;
        let (Some(wasm), HeavyState::Ready(heavy)) = (wasm.as_mut(), heavy) else {
            unreachable!("checked above");
        };
        // A failed move can be retried: the fast path is closed only after.
        let dropped = if history.is_empty() {
            Vec::new()
        } else {
            carry_over(wasm, history, heavy.as_mut()).await?
        };
        if let Some(mut wasm) = self.wasm.take() {
            let _ = wasm.close().await;
        }
        Ok(dropped)
    }

    /// The heavy backend's guest without moving the session (for contexts
    /// other than the default one).
    pub async fn heavy_guest(&mut self) -> Result<&dyn GuestExecutor> {
        if self.config.policy == Policy::FastOnly {
            return Err(Error::Unavailable {
                backend: self.heavy_backend,
                reason: "the session runs on the fast path only".into(),
            });
        }
        let heavy: &mut Heavy = self.heavy().await?;
        Ok(&**heavy)
    }

    /// Runs set-up code in the default context without counting it as a cell.
    pub async fn run_setup(&mut self, code: &str) -> Result<Execution> {
        let execution = self
            .execute(code, &RunOptions::default(), &mut |_| {})
            .await;
        self.execution_count -= 1;
        execution
    }

    /// The guest of the heavy backend (moving the session there first): for
    /// files, commands and contexts.
    pub async fn guest(&mut self) -> Result<&dyn GuestExecutor> {
        self.move_to_heavy("the sandbox's files, commands or contexts are used")
            .await?;
        let heavy: &mut Heavy = self.heavy().await?;
        Ok(&**heavy)
    }

    async fn run_heavy(
        &mut self,
        code: &str,
        options: &RunOptions,
        on_event: &mut EventCallback<'_>,
        dropped: Vec<String>,
    ) -> Result<Execution> {
        let backend = self.heavy_backend;
        let heavy = self.heavy().await?;
        let note = (!dropped.is_empty()).then(|| {
            format!(
                "cellbox: moved to the {backend} backend; not carried over (they do not pickle): {}\n",
                dropped.join(", ")
            )
        });
        if let Some(note) = &note {
            on_event(&Event::Stderr(note.clone()));
        }
        let outcome = heavy.execute(code, options, on_event).await;
        self.last_backend = backend;
        let mut execution = match outcome {
            Ok(execution) => execution,
            Err(error) => {
                if restarted(&error) {
                    self.history.clear();
                }
                return Err(error);
            }
        };
        self.history.push(code.to_string());
        if let Some(note) = note {
            execution.logs.stderr.insert(0, note);
        }
        Ok(execution)
    }
}

/// Whether the run's failure restarted the kernel (its state, and so its
/// history, is gone).
fn restarted(error: &Error) -> bool {
    matches!(
        error,
        Error::Timeout {
            restarted: true,
            ..
        } | Error::Interrupted { restarted: true }
    )
}

/// Whether `backend` can start here at all (so that prestarting it is sensible).
fn heavy_available(backend: Backend, namespace: &NamespaceConfig) -> bool {
    match backend {
        Backend::Vm => cellbox_vmm::kvm_support::linux_guest_blocker().is_none(),
        Backend::Namespace => crate::namespace::rootless::can_start(namespace.allow_unlimited),
        Backend::Wasm => false,
    }
}

fn start_heavy(
    backend: Backend,
    config: &HybridConfig,
    control: &ControlSlot,
) -> impl std::future::Future<Output = Result<Heavy>> + Send + 'static {
    let namespace = NamespaceConfig {
        progress: config.progress.clone(),
        ..config.namespace.clone()
    };
    let microvm = MicroVmConfig {
        progress: config.progress.clone(),
        ..config.microvm.clone()
    };
    let pool = (config.namespace_pool.as_ref()).filter(|pool| pool.serves(&namespace));
    let pool = pool.cloned();
    let control = control.clone();
    async move {
        let heavy: Heavy = match (backend, pool) {
            (Backend::Vm, _) => Box::new(MicroVmExecutor::start(microvm).await?),
            (_, Some(pool)) => Box::new(pool.start().await?),
            (_, None) => Box::new(NamespaceExecutor::start(namespace).await?),
        };
        control.set(heavy.control());
        Ok(heavy)
    }
}

/// Whether a fast-path failure means "the fast path lacks something", and
/// re-running the cell elsewhere is safe: nothing was printed and every
/// statement before the failing one only imported.
fn missing_capability(execution: &Execution, code: &str, printed: bool) -> Option<String> {
    let error = execution.error.as_ref()?;
    let lacks = matches!(error.name.as_str(), "ModuleNotFoundError" | "ImportError")
        || (error.name == "OSError" && error.value.contains("not supported"))
        || error.name == "NotImplementedError";
    if !lacks || printed {
        return None;
    }
    // `x += 1; __import__("numpy")`: the failing line did more than fail.
    let failing = code
        .lines()
        .map(str::trim)
        .find(|l| failing_line(&error.traceback, l))?;
    if failing.contains(';') {
        return None;
    }
    let only_imports_before = code
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .take_while(|l| !failing_line(&error.traceback, l))
        .all(|l| l.starts_with("import ") || l.starts_with("from "));
    only_imports_before.then(|| {
        format!(
            "it failed on the fast path: {}: {}",
            error.name, error.value
        )
    })
}

/// Whether the traceback's last frame shows `line` (the statement that failed).
fn failing_line(traceback: &str, line: &str) -> bool {
    traceback.lines().rev().take(6).any(|t| t.trim() == line)
}

#[async_trait]
impl Executor for HybridExecutor {
    fn backend(&self) -> Backend {
        self.last_backend
    }

    async fn execute(
        &mut self,
        code: &str,
        options: &RunOptions,
        on_event: &mut EventCallback<'_>,
    ) -> Result<Execution> {
        self.execution_count += 1;
        let count = self.execution_count;
        let mut execution = if let Some(wasm) = self.wasm.as_mut() {
            let needs: CellNeeds = analyze(code);
            let reason = heavy_reason(&needs, &self.wasm_modules)
                .filter(|_| self.config.policy != Policy::FastOnly);
            if let Some(reason) = reason {
                tracing::info!(cell = count, backend = %self.heavy_backend, reason, "routing decision");
                let dropped = self.move_to_heavy(&reason).await?;
                self.run_heavy(code, options, on_event, dropped).await?
            } else {
                tracing::debug!(
                    cell = count,
                    backend = "wasm",
                    "routing decision: plain Python"
                );
                let mut printed = false;
                let outcome = wasm
                    .execute(code, options, &mut |event| {
                        printed |= matches!(
                            event,
                            Event::Stdout(_) | Event::Stderr(_) | Event::Result(_)
                        );
                        on_event(event);
                    })
                    .await;
                match outcome {
                    Ok(execution) => match missing_capability(&execution, code, printed)
                        .filter(|_| self.config.policy != Policy::FastOnly)
                    {
                        Some(reason) => {
                            tracing::info!(cell = count, backend = %self.heavy_backend, reason, "routing decision");
                            let dropped = self.move_to_heavy(&reason).await?;
                            self.run_heavy(code, options, on_event, dropped).await?
                        }
                        None => {
                            self.history.push(code.to_string());
                            self.last_backend = Backend::Wasm;
                            if std::mem::take(&mut self.prestart_pending) {
                                self.start_heavy_in_background();
                            }
                            execution
                        }
                    },
                    Err(error) => {
                        if restarted(&error) {
                            self.history.clear();
                        }
                        self.last_backend = Backend::Wasm;
                        return Err(error);
                    }
                }
            }
        } else {
            self.run_heavy(code, options, on_event, Vec::new()).await?
        };
        execution.execution_count = Some(count);
        Ok(execution)
    }

    async fn restart(&mut self) -> Result<()> {
        self.history.clear();
        match self.wasm.as_mut() {
            Some(wasm) => wasm.restart().await,
            None => self.heavy().await?.restart().await,
        }
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(mut wasm) = self.wasm.take() {
            let _ = wasm.close().await;
        }
        match std::mem::replace(&mut self.heavy, HeavyState::Idle) {
            HeavyState::Ready(mut heavy) => heavy.close().await,
            HeavyState::Starting(task) => {
                // Dropping a half-started sandbox cleans it up.
                task.abort();
                let _ = task.await;
                Ok(())
            }
            HeavyState::Idle => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execution::ExecutionError;

    fn failed(name: &str, value: &str, traceback: &str) -> Execution {
        Execution {
            error: Some(ExecutionError {
                name: name.into(),
                value: value.into(),
                traceback: traceback.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_failed_import_moves_only_if_nothing_ran_before_it() {
        let tb = "Traceback (most recent call last):\n  File \"<cell>\", line 2, in <module>\n    __import__('numpy')\nModuleNotFoundError: No module named 'numpy'";
        let execution = failed("ModuleNotFoundError", "No module named 'numpy'", tb);
        assert!(
            missing_capability(&execution, "import json\n__import__('numpy')", false).is_some()
        );
        assert!(
            missing_capability(&execution, "x += 1\n__import__('numpy')", false).is_none(),
            "x += 1 would run twice"
        );
        assert!(
            missing_capability(&execution, "import json\n__import__('numpy')", true).is_none(),
            "output was shown"
        );
        let other = failed("ValueError", "bad", tb);
        assert!(missing_capability(&other, "__import__('numpy')", false).is_none());
    }
}
