//! The `Sandbox`: a code-interpreter sandbox the way E2B's SDK offers one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};

use super::metrics::{CpuSampler, SandboxMetrics};
use super::options::{RunCodeOptions, SandboxOptions};
use super::{Commands, Files};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::execution::Execution;
use crate::executor::{Backend, EventCallback, Executor, Interrupt, RunOptions};
use crate::guest::{CommandOptions, ContextInfo, ControlSlot, GuestClient, Language, Usage};
use crate::microvm::MicroVmConfig;
use crate::namespace::NetworkPolicy;
use crate::router::{HybridConfig, HybridExecutor};
use crate::wasm::{WasmEngine, WasmSessionOptions};

/// The default context's id.
pub const DEFAULT_CONTEXT: &str = cellbox_guest_init::protocol::DEFAULT_CONTEXT;

pub(super) struct Inner {
    pub(super) session: HybridExecutor,
    last_used: Instant,
    inactivity_timeout: Option<Duration>,
}

/// What files, commands, `close` and `pause` reach without waiting for the
/// cell that holds [`Inner`]'s lock.
struct Side {
    closed: AtomicBool,
    paused: AtomicBool,
    /// The heavy guest's pause/resume/usage, once it started.
    control: ControlSlot,
    cpu: CpuSampler,
    /// The heavy guest's connection once started, and whether the default
    /// context has moved there (the heavy backend, once started, stays).
    guest: std::sync::Mutex<Option<(GuestClient, bool)>>,
    /// The running cells' interrupts, by run number.
    running: std::sync::Mutex<HashMap<u64, Interrupt>>,
    next_run: AtomicU64,
    /// The network rules since [`Sandbox::update_network`] (forks take them).
    network: std::sync::Mutex<Option<NetworkPolicy>>,
}

impl Side {
    /// Resumes the heavy guest if the sandbox is paused.
    fn thaw(&self) -> Result<()> {
        if !self.paused.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        match self.control.get() {
            Some(control) => control.resume(),
            None => Ok(()),
        }
    }
}

/// A running cell's entry in [`Side::running`], removed when dropped.
struct Running<'a> {
    side: &'a Side,
    id: u64,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        crate::lock(&self.side.running).remove(&self.id);
    }
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
    side: Arc<Side>,
    pub(super) options: Arc<SandboxOptions>,
    id: Arc<str>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The WebAssembly engine, loaded once per process.
async fn engine(options: &SandboxOptions) -> Result<&'static WasmEngine> {
    static ENGINE: tokio::sync::OnceCell<WasmEngine> = tokio::sync::OnceCell::const_new();
    ENGINE
        .get_or_try_init(|| {
            WasmEngine::load(crate::wasm::WasmConfig {
                progress: options.progress.clone(),
                ..Default::default()
            })
        })
        .await
}

/// The session configuration `options` ask for, on a template's `layers`.
fn hybrid_config(
    options: &SandboxOptions,
    layers: Vec<std::path::PathBuf>,
) -> Result<HybridConfig> {
    let (policy, heavy) = options
        .backend
        .split_for(&options.network, options.namespace_only())?;
    Ok(HybridConfig {
        policy,
        heavy,
        prestart: options.prestart,
        wasm: WasmSessionOptions {
            default_timeout: options.timeout,
            disk_limit: u64::from(options.disk_mib) << 20,
            ..Default::default()
        },
        namespace: options.namespace_config(layers),
        namespace_pool: options.namespace_pool.clone(),
        microvm: MicroVmConfig {
            vcpus: options.vcpus,
            memory_mib: options.memory_mib,
            default_timeout: options.timeout,
            network: options.network.clone(),
            ..Default::default()
        },
        progress: options.progress.clone(),
    })
}

impl Sandbox {
    /// A sandbox on a microVM restored from the folder `dir` that
    /// [`HybridExecutor::save_whole`] filled, its cells numbered on from
    /// `execution_count`.
    pub(super) async fn restore_whole(
        dir: &std::path::Path,
        options: SandboxOptions,
        execution_count: u32,
    ) -> Result<Sandbox> {
        let engine = engine(&options).await?;
        let config = hybrid_config(&options, Vec::new())?;
        let session = HybridExecutor::restore_whole(engine, config, dir, execution_count).await?;
        Ok(Sandbox::around(session, options))
    }

    /// Creates a sandbox (the WebAssembly engine is loaded once per process).
    /// A template's start command is started in it, and its ready command
    /// has succeeded, before it is handed over.
    pub async fn create(mut options: SandboxOptions) -> Result<Sandbox> {
        let (template, defaults) = match &options.template {
            Some(name) => {
                let template =
                    crate::template::TemplateStore::open(&crate::default_cache_dir()).get(name)?;
                for (key, value) in &template.info.env {
                    options
                        .env_vars
                        .entry(key.clone())
                        .or_insert_with(|| value.clone());
                }
                if options.cwd.is_none() {
                    options.cwd.clone_from(&template.info.workdir);
                }
                let defaults = template.info.defaults.clone();
                options.vcpus = defaults.cpu_count.unwrap_or(options.vcpus);
                options.memory_mib = defaults.memory_mb.unwrap_or(options.memory_mib);
                (template.layers, defaults)
            }
            None => (Vec::new(), Default::default()),
        };
        let engine = engine(&options).await?;
        let config = hybrid_config(&options, template)?;
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
        let sandbox = Sandbox::around(session, options);
        if let Err(error) = sandbox.start_up(&defaults).await {
            let _ = sandbox.close().await;
            return Err(error);
        }
        Ok(sandbox)
    }

    /// Starts a template's start command, then runs its ready command until
    /// it succeeds (at most [`crate::template::READY_WITHIN`]).
    async fn start_up(&self, defaults: &crate::template::SandboxDefaults) -> Result<()> {
        let commands = self.commands();
        let options = CommandOptions::default();
        if let Some(start) = &defaults.start_cmd {
            commands.start(start, &options).await?;
        }
        let Some(ready) = &defaults.ready_cmd else {
            return Ok(());
        };
        let deadline = Instant::now() + crate::template::READY_WITHIN;
        let mut last = None;
        while Instant::now() < deadline {
            let attempt = CommandOptions {
                timeout: Some(Duration::from_secs(10)),
                ..CommandOptions::default()
            };
            match commands.run(ready, &attempt).await {
                Ok(result) if result.exit_code == 0 => return Ok(()),
                Ok(result) => {
                    last = Some(format!(
                        "exit status {}: {}",
                        result.exit_code,
                        result.stderr.trim()
                    ))
                }
                Err(error) => last = Some(error.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(Error::InvalidArgument(format!(
            "the template's ready command `{ready}` did not succeed within {:?} (last: {})",
            crate::template::READY_WITHIN,
            last.unwrap_or_default()
        )))
    }

    /// A new sandbox around a running `session`.
    pub(super) fn around(session: HybridExecutor, options: SandboxOptions) -> Sandbox {
        let id: Arc<str> = format!("cellbox-{:016x}", rand_id()).into();
        let side = Side {
            closed: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            control: session.control_slot(),
            cpu: CpuSampler::new(),
            guest: Default::default(),
            running: Default::default(),
            next_run: AtomicU64::new(0),
            network: std::sync::Mutex::new(None),
        };
        let sandbox = Sandbox {
            inner: Arc::new(Mutex::new(Inner {
                session,
                last_used: Instant::now(),
                inactivity_timeout: options.inactivity_timeout,
            })),
            side: Arc::new(side),
            options: Arc::new(options),
            id,
        };
        spawn_watchdog(
            Arc::downgrade(&sandbox.inner),
            Arc::downgrade(&sandbox.side),
        );
        sandbox
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
        !self.side.closed.load(Ordering::SeqCst)
    }

    /// Changes the inactivity timeout (`None`: never close for inactivity).
    pub async fn set_timeout(&self, timeout: Option<Duration>) {
        let mut inner = self.inner.lock().await;
        inner.inactivity_timeout = timeout;
        inner.last_used = Instant::now();
    }

    /// The options it was made with.
    pub fn options(&self) -> &SandboxOptions {
        &self.options
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
        // The run's own interrupt, so that `close` can stop it; the caller's
        // fires it too.
        let interrupt = Interrupt::new();
        let id = self.side.next_run.fetch_add(1, Ordering::Relaxed);
        crate::lock(&self.side.running).insert(id, interrupt.clone());
        let _running = Running {
            side: &self.side,
            id,
        };
        let forward = async {
            if let Some(theirs) = &options.interrupt {
                theirs.interrupted().await;
                interrupt.interrupt();
            }
            std::future::pending::<()>().await
        };
        let run = RunOptions {
            timeout: options.timeout,
            env,
            interrupt: Some(interrupt.clone()),
        };
        tokio::select! {
            result = self.run_code_in(code, options, &run, on_event) => result,
            () = forward => unreachable!("pending"),
        }
    }

    async fn run_code_in(
        &self,
        code: &str,
        options: &RunCodeOptions,
        run: &RunOptions,
        on_event: &mut EventCallback<'_>,
    ) -> Result<Execution> {
        match options.context_id()? {
            DEFAULT_CONTEXT => {
                let mut inner = self.active().await?;
                let result = inner.session.execute(code, run, on_event).await;
                inner.last_used = Instant::now();
                result
            }
            context => {
                let guest = self.heavy_client().await?;
                guest
                    .execute(context, code, run, self.options.timeout, on_event)
                    .await
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

    /// Creates a context (its own kernel and state) for `language`, with
    /// working folder `cwd`.
    pub async fn create_context(
        &self,
        cwd: Option<&str>,
        language: Language,
    ) -> Result<ContextInfo> {
        let cwd = cwd.or(self.options.cwd.as_deref());
        self.heavy_client()
            .await?
            .create_context(cwd, language)
            .await
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

    /// Removes a context (not a default one).
    pub async fn remove_context(&self, context: &ContextInfo) -> Result<()> {
        if Language::is_default_context(&context.id) {
            return Err(Error::InvalidArgument(format!(
                "the default context `{}` cannot be removed",
                context.id
            )));
        }
        self.heavy_client().await?.remove_context(&context.id).await
    }

    /// Closes the sandbox at once: running cells are interrupted and the
    /// heavy guest told to stop everything, then the session closes. Later
    /// calls fail with [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        if self.side.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // A frozen guest could not hear the shutdown.
        let _ = self.side.thaw();
        for interrupt in crate::lock(&self.side.running).values() {
            interrupt.interrupt();
        }
        let guest = crate::lock(&self.side.guest)
            .as_ref()
            .map(|(c, _)| c.clone());
        if let Some(guest) = guest {
            guest.shutdown().await?;
        }
        self.inner.lock().await.session.close().await
    }

    /// Pauses the sandbox: everything in its guest (cells' kernels,
    /// commands, background processes) stops where it is and uses no CPU;
    /// memory and files stay. Using the sandbox again (or
    /// [`Sandbox::resume`]) resumes it. Before the heavy guest starts there
    /// is nothing running to stop (the fast path runs only during a cell; a
    /// fast-path cell already running finishes).
    pub async fn pause(&self) -> Result<()> {
        self.check_open()?;
        if self.side.paused.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let Some(control) = self.side.control.get() else {
            return Ok(());
        };
        let paused = tokio::task::spawn_blocking(move || control.pause()).await;
        let paused = paused.unwrap_or_else(|e| {
            Err(Error::SandboxDied {
                reason: format!("pausing panicked: {e}"),
            })
        });
        if paused.is_err() {
            self.side.paused.store(false, Ordering::SeqCst);
        }
        paused
    }

    /// Replaces the network rules of the running sandbox with `network`'s
    /// (E2B's `update_network`): from the next connection on, and for each
    /// request through a connection its egress proxy opened. The namespace
    /// backend only, for a sandbox started with network access (its heavy
    /// guest is started first if it has not yet).
    pub async fn update_network(&self, network: NetworkPolicy) -> Result<()> {
        self.check_open()?;
        network.check()?;
        self.heavy_client().await?;
        let control = self.side.control.get().ok_or_else(|| Error::Unavailable {
            backend: crate::Backend::Namespace,
            reason: "the sandbox's heavy guest is not running".into(),
        })?;
        let kept = network.clone();
        tokio::task::spawn_blocking(move || control.update_network(&network))
            .await
            .map_err(|e| Error::SandboxDied {
                reason: format!("updating the network panicked: {e}"),
            })??;
        *crate::lock(&self.side.network) = Some(kept);
        Ok(())
    }

    /// The sandbox's options, with its network rules as they are now.
    pub(super) fn options_now(&self) -> SandboxOptions {
        let mut options = (*self.options).clone();
        if let Some(network) = crate::lock(&self.side.network).clone() {
            options.network = network;
        }
        options
    }

    /// Resumes a paused sandbox where it stopped (nothing if it runs).
    pub async fn resume(&self) -> Result<()> {
        self.check_open()?;
        self.wake()
    }

    /// Whether the sandbox is paused.
    pub fn is_paused(&self) -> bool {
        self.side.paused.load(Ordering::SeqCst)
    }

    /// What the sandbox uses now; CPU use is since the previous call.
    pub async fn metrics(&self) -> Result<SandboxMetrics> {
        self.check_open()?;
        let usage = match self.side.control.get() {
            Some(control) => tokio::task::spawn_blocking(move || control.usage())
                .await
                .map_err(|e| Error::SandboxDied {
                    reason: format!("measuring panicked: {e}"),
                })??,
            None => Usage {
                cpus: u32::from(self.options.vcpus),
                memory_total: u64::from(self.options.memory_mib) << 20,
                disk_total: u64::from(self.options.disk_mib) << 20,
                ..Usage::default()
            },
        };
        Ok(self.side.cpu.metrics(usage))
    }

    /// Resumes the guest if it is paused (every use of the sandbox does).
    fn wake(&self) -> Result<()> {
        self.side.thaw()
    }

    /// The session, if the sandbox still runs (and marks it used).
    pub(super) async fn active(&self) -> Result<tokio::sync::MutexGuard<'_, Inner>> {
        self.check_open()?;
        self.wake()?;
        let mut inner = self.inner.lock().await;
        self.check_open()?;
        inner.last_used = Instant::now();
        Ok(inner)
    }

    fn check_open(&self) -> Result<()> {
        if self.side.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// The heavy guest's connection, without waiting for a running cell once
    /// it is known (and the default context moved there, if `moved`).
    fn known_client(&self, moved: bool) -> Result<Option<GuestClient>> {
        self.check_open()?;
        self.wake()?;
        if let Ok(mut inner) = self.inner.try_lock() {
            inner.last_used = Instant::now();
        }
        let guest = crate::lock(&self.side.guest);
        Ok(guest
            .as_ref()
            .filter(|(_, is_moved)| *is_moved || !moved)
            .map(|(client, _)| client.clone()))
    }

    /// The heavy guest with the default context moved there (files, commands).
    pub(super) async fn moved_client(&self) -> Result<GuestClient> {
        if let Some(client) = self.known_client(true)? {
            return Ok(client);
        }
        let mut inner = self.active().await?;
        let client = inner.session.guest().await?.guest().cloned()?;
        *crate::lock(&self.side.guest) = Some((client.clone(), true));
        Ok(client)
    }

    /// The heavy guest without moving the default context (other contexts).
    async fn heavy_client(&self) -> Result<GuestClient> {
        if let Some(client) = self.known_client(false)? {
            return Ok(client);
        }
        let mut inner = self.active().await?;
        let client = inner.session.heavy_guest().await?.guest().cloned()?;
        crate::lock(&self.side.guest).get_or_insert((client.clone(), false));
        Ok(client)
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
            user: None,
            pty: None,
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
fn spawn_watchdog(inner: Weak<Mutex<Inner>>, side: Weak<Side>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (Some(inner), Some(side)) = (inner.upgrade(), side.upgrade()) else {
                return;
            };
            if side.closed.load(Ordering::SeqCst) {
                return;
            }
            let Ok(mut guard) = inner.try_lock() else {
                continue;
            };
            if guard
                .inactivity_timeout
                .is_some_and(|t| guard.last_used.elapsed() > t)
                && !side.closed.swap(true, Ordering::SeqCst)
            {
                tracing::info!("closing a sandbox after its inactivity timeout");
                let _ = side.thaw();
                let _ = guard.session.close().await;
                return;
            }
        }
    });
}

pub(super) fn rand_id() -> u64 {
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
