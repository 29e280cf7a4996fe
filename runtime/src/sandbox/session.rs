//! The `Sandbox`: a code-interpreter sandbox the way E2B's SDK offers one.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};

use super::options::{RunCodeOptions, SandboxOptions};
use super::{Commands, Files};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::execution::Execution;
use crate::executor::{Backend, EventCallback, Executor, RunOptions};
use crate::guest::{ContextInfo, GuestClient};
use crate::microvm::MicroVmConfig;
use crate::namespace::NamespaceConfig;
use crate::router::{HybridConfig, HybridExecutor};
use crate::wasm::{WasmEngine, WasmSessionOptions};

/// The default context's id.
pub const DEFAULT_CONTEXT: &str = cellbox_guest_init::protocol::DEFAULT_CONTEXT;

pub(super) struct Inner {
    pub(super) session: HybridExecutor,
    closed: bool,
    last_used: Instant,
    inactivity_timeout: Option<Duration>,
}

/// A stateful code-interpreter sandbox: cells (in contexts), files and
/// commands. Cheap to clone; every clone is the same sandbox. It closes on
/// [`Sandbox::close`], after its inactivity timeout, or when the last clone
/// is dropped.
///
/// ```no_run
/// # async fn demo() -> cellbox::Result<()> {
/// use cellbox::{Sandbox, SandboxOptions};
///
/// let sandbox = Sandbox::create(SandboxOptions::default()).await?;
/// sandbox.run_code("x = 21").await?;
/// assert_eq!(sandbox.run_code("x * 2").await?.text(), Some("42"));
/// sandbox.files().write("/home/user/data.csv", b"a,b\n1,2\n").await?;
/// let shape = sandbox.run_code("import pandas as pd; pd.read_csv('data.csv').shape").await?;
/// assert_eq!(shape.text(), Some("(1, 2)"));
/// let hi = sandbox.commands().run("echo hi", &Default::default()).await?;
/// assert_eq!(hi.stdout, "hi\n");
/// sandbox.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sandbox {
    pub(super) inner: Arc<Mutex<Inner>>,
    options: Arc<SandboxOptions>,
    id: Arc<str>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Creates a sandbox (the WebAssembly engine is loaded once per process).
    pub async fn create(options: SandboxOptions) -> Result<Sandbox> {
        static ENGINE: tokio::sync::OnceCell<WasmEngine> = tokio::sync::OnceCell::const_new();
        let engine = ENGINE
            .get_or_try_init(|| {
                WasmEngine::load(crate::wasm::WasmConfig {
                    progress: options.progress.clone(),
                    ..Default::default()
                })
            })
            .await?;
        let (policy, heavy) = options.backend.split();
        let config = HybridConfig {
            policy,
            heavy,
            prestart: options.prestart,
            wasm: WasmSessionOptions {
                default_timeout: options.timeout,
                ..Default::default()
            },
            namespace: NamespaceConfig {
                memory_limit: u64::from(options.memory_mib) << 20,
                default_timeout: options.timeout,
                ..Default::default()
            },
            microvm: MicroVmConfig {
                vcpus: options.vcpus,
                memory_mib: options.memory_mib,
                default_timeout: options.timeout,
                ..Default::default()
            },
            progress: options.progress.clone(),
        };
        let mut session = HybridExecutor::start(engine, config).await?;
        if let Some(cwd) = &options.cwd {
            let code = format!(
                "import os as _os; _os.makedirs({cwd:?}, exist_ok=True); _os.chdir({cwd:?}); del _os"
            );
            let setup = session.run_setup(&code).await?;
            if let Some(error) = setup.error {
                return Err(Error::InvalidArgument(format!(
                    "cwd {cwd}: {}: {}",
                    error.name, error.value
                )));
            }
        }
        let id: Arc<str> = format!("cellbox-{:016x}", rand_id()).into();
        let sandbox = Sandbox {
            inner: Arc::new(Mutex::new(Inner {
                session,
                closed: false,
                last_used: Instant::now(),
                inactivity_timeout: options.inactivity_timeout,
            })),
            options: Arc::new(options),
            id,
        };
        spawn_watchdog(Arc::downgrade(&sandbox.inner));
        Ok(sandbox)
    }

    /// This sandbox's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The labels it was created with.
    pub fn metadata(&self) -> &std::collections::BTreeMap<String, String> {
        &self.options.metadata
    }

    /// Whether it still runs (not closed, not timed out).
    pub async fn is_running(&self) -> bool {
        !self.inner.lock().await.closed
    }

    /// Changes the inactivity timeout (`None`: never close for inactivity).
    pub async fn set_timeout(&self, timeout: Option<Duration>) {
        let mut inner = self.inner.lock().await;
        inner.inactivity_timeout = timeout;
        inner.last_used = Instant::now();
    }

    /// The backend that ran the latest cell of the default context.
    pub async fn backend(&self) -> Backend {
        self.inner.lock().await.session.backend()
    }

    /// Runs `code` in the default context with default options.
    pub async fn run_code(&self, code: &str) -> Result<Execution> {
        self.run_code_with(code, &RunCodeOptions::default(), &mut |_| {})
            .await
    }

    /// Runs `code`, streaming its events to `on_event` (stdout, stderr,
    /// results, error) as they happen.
    pub async fn run_code_with(
        &self,
        code: &str,
        options: &RunCodeOptions,
        on_event: &mut EventCallback<'_>,
    ) -> Result<Execution> {
        let mut env = self.options.env_vars.clone();
        env.extend(options.env.clone());
        let run = RunOptions {
            timeout: options.timeout,
            env,
            interrupt: options.interrupt.clone(),
        };
        match &options.context {
            Some(context) if context.id != DEFAULT_CONTEXT => {
                let guest = self.heavy_client().await?;
                guest
                    .execute(&context.id, code, &run, self.options.timeout, on_event)
                    .await
            }
            _ => {
                let mut inner = self.active().await?;
                let result = inner.session.execute(code, &run, on_event).await;
                inner.last_used = Instant::now();
                result
            }
        }
    }

    /// Runs `code` and returns a stream of its events; the final
    /// [`Execution`] comes from [`RunStream::execution`].
    pub fn run_code_stream(&self, code: &str, options: RunCodeOptions) -> RunStream {
        let (tx, events) = mpsc::unbounded_channel();
        let sandbox = self.clone();
        let code = code.to_string();
        let done = tokio::spawn(async move {
            sandbox
                .run_code_with(&code, &options, &mut |event| {
                    let _ = tx.send(event.clone());
                })
                .await
        });
        RunStream { events, done }
    }

    /// Files in the sandbox (using them moves the session to the heavy
    /// backend, so that cells see them).
    pub fn files(&self) -> Files<'_> {
        Files { sandbox: self }
    }

    /// Shell commands in the sandbox (heavy backend, like files).
    pub fn commands(&self) -> Commands<'_> {
        Commands { sandbox: self }
    }

    /// Creates a context (its own Python state) with working folder `cwd`.
    pub async fn create_context(&self, cwd: Option<&str>) -> Result<ContextInfo> {
        let cwd = cwd.or(self.options.cwd.as_deref());
        self.heavy_client().await?.create_context(cwd).await
    }

    /// The contexts, the default one included once the heavy backend runs.
    pub async fn list_contexts(&self) -> Result<Vec<ContextInfo>> {
        self.heavy_client().await?.list_contexts().await
    }

    /// Restarts a context: its state is cleared.
    pub async fn restart_context(&self, context: &ContextInfo) -> Result<()> {
        if context.id == DEFAULT_CONTEXT {
            return self.active().await?.session.restart().await;
        }
        self.heavy_client()
            .await?
            .restart_context(&context.id)
            .await
    }

    /// Removes a context (not the default one).
    pub async fn remove_context(&self, context: &ContextInfo) -> Result<()> {
        if context.id == DEFAULT_CONTEXT {
            return Err(Error::InvalidArgument(
                "the default context cannot be removed".into(),
            ));
        }
        self.heavy_client().await?.remove_context(&context.id).await
    }

    /// Closes the sandbox; later calls fail with [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        let mut inner = self.inner.lock().await;
        if inner.closed {
            return Ok(());
        }
        inner.closed = true;
        inner.session.close().await
    }

    /// The session, if the sandbox still runs (and marks it used).
    pub(super) async fn active(&self) -> Result<tokio::sync::MutexGuard<'_, Inner>> {
        let mut inner = self.inner.lock().await;
        if inner.closed {
            return Err(Error::Closed);
        }
        inner.last_used = Instant::now();
        Ok(inner)
    }

    /// The heavy guest with the default context moved there (files, commands).
    pub(super) async fn moved_client(&self) -> Result<GuestClient> {
        let mut inner = self.active().await?;
        inner.session.guest().await?.guest().cloned()
    }

    /// The heavy guest without moving the default context (other contexts).
    async fn heavy_client(&self) -> Result<GuestClient> {
        let mut inner = self.active().await?;
        inner.session.heavy_guest().await?.guest().cloned()
    }

    /// Default options for commands: the sandbox's folder and variables.
    pub(super) fn command_defaults(&self) -> crate::guest::CommandOptions {
        crate::guest::CommandOptions {
            cwd: Some(
                self.options
                    .cwd
                    .clone()
                    .unwrap_or_else(|| "/home/user".into()),
            ),
            env: self.options.env_vars.clone(),
            timeout: Some(self.options.timeout),
        }
    }
}

/// Events of a run as they happen, then its [`Execution`].
#[derive(Debug)]
pub struct RunStream {
    events: mpsc::UnboundedReceiver<Event>,
    done: tokio::task::JoinHandle<Result<Execution>>,
}

impl RunStream {
    /// The next event, or `None` once the run ended.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Waits for the run to end.
    pub async fn execution(self) -> Result<Execution> {
        self.done.await.map_err(|e| Error::SandboxDied {
            reason: format!("the run panicked: {e}"),
        })?
    }
}

/// Closes the sandbox once it has been idle past its inactivity timeout;
/// ends when the sandbox is gone.
fn spawn_watchdog(inner: Weak<Mutex<Inner>>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(inner) = inner.upgrade() else { return };
            let Ok(mut guard) = inner.try_lock() else {
                continue;
            };
            if guard.closed {
                return;
            }
            if guard
                .inactivity_timeout
                .is_some_and(|t| guard.last_used.elapsed() > t)
            {
                tracing::info!("closing a sandbox after its inactivity timeout");
                guard.closed = true;
                let _ = guard.session.close().await;
                return;
            }
        }
    });
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}
