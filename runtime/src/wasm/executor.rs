//! `WasmExecutor`: one session of CPython-for-WASI, one long-lived instance.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use wasmtime::{Memory, Store, TypedFunc};

use super::engine::{WasmEngine, new_store};
use super::host::{CellSink, HostState};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::execution::Execution;
use crate::executor::{Backend, EventCallback, Executor, RunOptions};

/// Limits and sharing for one WebAssembly session.
#[derive(Debug, Clone)]
pub struct WasmSessionOptions {
    /// Cap on the interpreter's linear memory; allocations past it raise `MemoryError`.
    pub memory_limit: usize,
    /// Cap on the bytes of output and results one cell may produce.
    pub output_limit: usize,
    /// Timeout for cells whose [`RunOptions`] set none.
    pub default_timeout: Duration,
    /// A host folder shared with the sandbox at `/home/user` (read-write).
    /// `None` gives the session a private, empty folder, deleted on close.
    pub scratch_dir: Option<PathBuf>,
    /// Most bytes the scratch folder may hold; writes past it fail with
    /// `ENOSPC` (`OSError: [Errno 28]`) inside the sandbox.
    pub disk_limit: u64,
}

impl Default for WasmSessionOptions {
    fn default() -> Self {
        WasmSessionOptions {
            memory_limit: 512 << 20,
            output_limit: 8 << 20,
            default_timeout: Duration::from_secs(60),
            scratch_dir: None,
            disk_limit: 1 << 30,
        }
    }
}

/// A stateful Python session run by CPython for WASI inside wasmtime.
///
/// The sandbox has no network and sees no host files except its scratch
/// folder (at `/home/user`) and a read-only standard library. A cell that
/// runs past its timeout is stopped and the session restarts (state is lost).
#[derive(Debug)]
pub struct WasmExecutor {
    engine: WasmEngine,
    options: WasmSessionOptions,
    scratch: Scratch,
    live: Option<Live>,
}

#[derive(Debug)]
enum Scratch {
    Private(tempfile::TempDir),
    Shared(PathBuf),
}

impl Scratch {
    fn path(&self) -> &std::path::Path {
        match self {
            Scratch::Private(dir) => dir.path(),
            Scratch::Shared(path) => path,
        }
    }
}

/// A live interpreter instance and its entry points.
struct Live {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    exec: TypedFunc<(u32, u32), i32>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live { .. }")
    }
}

enum Outcome {
    Finished(wasmtime::Result<i32>),
    TimedOut,
    Interrupted,
}

impl WasmExecutor {
    /// Starts a session.
    pub async fn start(engine: &WasmEngine, options: WasmSessionOptions) -> Result<Self> {
        let scratch = match &options.scratch_dir {
            Some(path) if path.is_dir() => Scratch::Shared(path.clone()),
            Some(path) => {
                return Err(Error::InvalidArgument(format!(
                    "scratch folder {} does not exist",
                    path.display()
                )));
            }
            None => Scratch::Private(
                tempfile::Builder::new()
                    .prefix("cellbox-wasm-")
                    .tempdir()
                    .map_err(|e| Error::io("creating the session's scratch folder", e))?,
            ),
        };
        let mut executor = WasmExecutor {
            engine: engine.clone(),
            options,
            scratch,
            live: None,
        };
        executor.renew().await?;
        Ok(executor)
    }

    /// The host folder the session sees as `/home/user`.
    pub fn home_dir(&self) -> &std::path::Path {
        self.scratch.path()
    }

    /// Replaces the instance with a fresh one.
    async fn renew(&mut self) -> Result<()> {
        self.live = None;
        let home = self.scratch.path().to_path_buf();
        self.live = Some(instantiate(&self.engine, &home, &self.options).await?);
        Ok(())
    }
}

/// A fresh interpreter instance whose home folder is `home`.
async fn instantiate(
    engine: &WasmEngine,
    home: &std::path::Path,
    options: &WasmSessionOptions,
) -> Result<Live> {
    let inner = &engine.inner;
    let failed = |store: &Store<HostState>, e: wasmtime::Error| Error::Artifact {
        what: "starting cellbox-python".into(),
        reason: format!("{e:#}\n{}", store.data().stray),
    };
    let mut store = new_store(
        &inner.engine,
        &inner.python,
        home,
        options.memory_limit,
        Some(options.disk_limit),
        &[],
    )?;
    let instance = match inner.pre.instantiate_async(&mut store).await {
        Ok(instance) => instance,
        Err(e) => return Err(failed(&store, e)),
    };
    if !inner.preinitialized {
        for name in ["_initialize", "cellbox_init"] {
            let init = instance.get_typed_func::<(), ()>(&mut store, name);
            if let Err(e) = match init {
                Ok(f) => f.call_async(&mut store, ()).await,
                Err(e) => Err(e),
            } {
                return Err(failed(&store, e));
            }
        }
    }
    let memory = instance.get_memory(&mut store, "memory");
    let alloc = instance.get_typed_func(&mut store, "cellbox_alloc");
    let exec = instance.get_typed_func(&mut store, "cellbox_exec");
    match (memory, alloc, exec) {
        (Some(memory), Ok(alloc), Ok(exec)) => Ok(Live {
            store,
            memory,
            alloc,
            exec,
        }),
        (_, Err(e), _) | (_, _, Err(e)) => Err(failed(&store, e)),
        (None, ..) => Err(failed(&store, wasmtime::Error::msg("no exported memory"))),
    }
}

/// Why the interpreter stopped, without the wasm backtrace.
fn trap_summary(error: &wasmtime::Error) -> String {
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return format!("the interpreter exited with status {}", exit.0);
    }
    let cause = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    format!(
        "the interpreter crashed: {}",
        cause.lines().next().unwrap_or_default()
    )
}

fn died(reason: &str) -> Error {
    Error::SandboxDied {
        reason: format!("{reason}; the session was restarted and its state is lost"),
    }
}

#[async_trait]
impl Executor for WasmExecutor {
    fn backend(&self) -> Backend {
        Backend::Wasm
    }

    async fn execute(
        &mut self,
        code: &str,
        options: &RunOptions,
        on_event: &mut EventCallback<'_>,
    ) -> Result<Execution> {
        let timeout = options.timeout.unwrap_or(self.options.default_timeout);
        let live = self.live.as_mut().ok_or(Error::Closed)?;
        let request = serde_json::json!({ "code": code, "env": options.env }).to_string();
        let len = u32::try_from(request.len())
            .map_err(|_| Error::InvalidArgument("the cell is larger than 4 GiB".into()))?;

        let (events, mut received) = mpsc::unbounded_channel();
        live.store.data_mut().cell = Some(CellSink::new(events, self.options.output_limit));
        let mut execution = Execution::default();
        let outcome = {
            let call = async {
                let ptr = live.alloc.call_async(&mut live.store, len).await?;
                if ptr == 0 {
                    return Ok(-2);
                }
                live.memory
                    .write(&mut live.store, ptr as usize, request.as_bytes())?;
                live.exec.call_async(&mut live.store, (ptr, len)).await
            };
            tokio::pin!(call);
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    biased;
                    Some(event) = received.recv() => {
                        execution.apply(&event);
                        on_event(&event);
                    }
                    result = &mut call => break Outcome::Finished(result),
                    () = &mut deadline => break Outcome::TimedOut,
                    () = crate::executor::interrupted(options.interrupt.as_ref()) => break Outcome::Interrupted,
                }
            }
        };
        while let Ok(event) = received.try_recv() {
            execution.apply(&event);
            on_event(&event);
        }
        if let Some(live) = self.live.as_mut() {
            live.store.data_mut().cell = None;
        }

        let failure = match outcome {
            Outcome::Finished(Ok(count)) if count >= 0 => {
                let end = Event::End {
                    execution_count: u32::try_from(count).ok(),
                };
                execution.apply(&end);
                on_event(&end);
                return Ok(execution);
            }
            Outcome::Finished(Ok(-2)) => died("the interpreter is out of memory"),
            Outcome::Finished(Ok(_)) => died("the interpreter's driver failed"),
            Outcome::Finished(Err(e)) => died(&trap_summary(&e)),
            Outcome::TimedOut => Error::Timeout {
                after: timeout,
                restarted: true,
            },
            Outcome::Interrupted => Error::Interrupted { restarted: true },
        };
        tracing::info!("wasm session: {failure}");
        self.renew().await?;
        Err(failure)
    }

    async fn restart(&mut self) -> Result<()> {
        if self.live.is_none() {
            return Err(Error::Closed);
        }
        self.renew().await
    }

    async fn close(&mut self) -> Result<()> {
        self.live = None;
        Ok(())
    }
}
