//! The shared part of the WebAssembly backend: one wasmtime engine, the
//! compiled interpreter ready to instantiate, and the clock that lets runaway
//! cells be interrupted. Load it once; start many sessions from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstancePre, Linker, Store, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wizer::Wizer;

use super::artifacts::{self, PythonWasm};
use super::disk::DiskBudget;
use super::host::{self, HostState};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Where the standard library appears inside the sandbox.
pub(crate) const GUEST_STDLIB: &str = "/usr/local/lib/python3.11";
/// Where the session's scratch folder appears inside the sandbox.
pub(crate) const GUEST_HOME: &str = "/home/user";
/// How often the epoch clock ticks; a busy cell yields to the host this often.
const TICK: Duration = Duration::from_millis(10);

/// How to load the WebAssembly backend.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// The artefact cache; `None` means [`crate::default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Start sessions from a snapshot taken after the interpreter initialised
    /// (made once with Wizer and cached): milliseconds faster per session.
    pub preinitialize: bool,
    /// Receives progress lines while artefacts are built.
    pub progress: Progress,
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig {
            cache_dir: None,
            preinitialize: true,
            progress: Progress::default(),
        }
    }
}

/// The loaded WebAssembly backend. Cheap to clone; sessions hold a clone.
#[derive(Clone, Debug)]
pub struct WasmEngine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub engine: Engine,
    pub pre: InstancePre<HostState>,
    pub python: PythonWasm,
    /// True when `pre` is the pre-initialised snapshot.
    pub preinitialized: bool,
    _ticker: Ticker,
}

impl std::fmt::Debug for EngineInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineInner")
            .field("python", &self.python)
            .field("preinitialized", &self.preinitialized)
            .finish_non_exhaustive()
    }
}

impl WasmEngine {
    /// Loads the backend, building and caching what is missing: the
    /// interpreter (about a minute, once), its snapshot and compiled code
    /// (seconds, once). Later loads take milliseconds.
    pub async fn load(config: WasmConfig) -> Result<WasmEngine> {
        let cache_root = config
            .cache_dir
            .clone()
            .unwrap_or_else(crate::default_cache_dir);
        let progress = config.progress.clone();
        let python = blocking(move || PythonWasm::ensure(&cache_root, &progress)).await?;
        let engine = new_engine()?;
        let linker = new_linker(&engine)?;

        let wasm = if config.preinitialize {
            ensure_snapshot(&engine, &linker, &python, &config.progress).await?;
            python.snapshot_path()
        } else {
            python.wasm_path()
        };
        let module = {
            let engine = engine.clone();
            blocking(move || artifacts::load_compiled(&engine, &wasm)).await?
        };
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| Error::Artifact {
                what: "linking cellbox-python".into(),
                reason: format!("{e:#}"),
            })?;
        Ok(WasmEngine {
            inner: Arc::new(EngineInner {
                _ticker: Ticker::start(engine.clone())
                    .map_err(|e| Error::io("starting the epoch clock thread", e))?,
                engine,
                pre,
                python,
                preinitialized: config.preinitialize,
            }),
        })
    }

    /// Whether sessions start from the pre-initialised snapshot.
    pub fn is_preinitialized(&self) -> bool {
        self.inner.preinitialized
    }
}

fn new_engine() -> Result<Engine> {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        // CPython recurses deeply in the parser and in repr(): give it room.
        .max_wasm_stack(8 << 20)
        .async_stack_size(10 << 20);
    Engine::new(&config).map_err(|e| Error::Artifact {
        what: "configuring wasmtime".into(),
        reason: format!("{e:#}"),
    })
}

fn new_linker(engine: &Engine) -> Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut HostState| &mut s.wasi)
        .and_then(|()| super::disk::add_to_linker(&mut linker))
        .and_then(|()| host::add_emit(&mut linker))
        .map_err(|e| Error::Artifact {
            what: "setting up the WASI imports".into(),
            reason: format!("{e:#}"),
        })?;
    Ok(linker)
}

/// A store whose sandbox sees only the standard library (read-only) and
/// `home` at [`GUEST_HOME`] (holding at most `disk_limit` bytes, if given),
/// with environment `env`. The preopen order is fixed: the snapshot
/// remembers descriptor numbers.
pub(crate) fn new_store(
    engine: &Engine,
    python: &PythonWasm,
    home: &Path,
    memory_limit: usize,
    disk_limit: Option<u64>,
    env: &[(&str, &str)],
) -> Result<Store<HostState>> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.envs(env);
    wasi.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .preopened_dir(python.stdlib_dir(), GUEST_STDLIB, FsPerms::ReadOnly)
        .and_then(|w| w.preopened_dir(home, GUEST_HOME, FsPerms::ReadWrite))
        .map_err(|e| Error::Artifact {
            what: "opening the sandbox's folders".into(),
            reason: format!("{e:#}"),
        })?;
    let limits = StoreLimitsBuilder::new()
        .memory_size(memory_limit)
        .instances(1)
        .build();
    let disk = disk_limit.map(|limit| DiskBudget::new(home, limit));
    let mut store = Store::new(engine, HostState::new(wasi.build_p1(), limits, disk));
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_async_yield_and_update(1);
    Ok(store)
}

/// Makes the pre-initialised snapshot with Wizer unless it is cached.
async fn ensure_snapshot(
    engine: &Engine,
    linker: &Linker<HostState>,
    python: &PythonWasm,
    progress: &Progress,
) -> Result<()> {
    let path = python.snapshot_path();
    if path.is_file() {
        return Ok(());
    }
    let python_for_lock = python.clone();
    let _lock = blocking(move || python_for_lock.lock()).await?;
    if path.is_file() {
        return Ok(());
    }
    progress.report("pre-initialising cellbox-python with Wizer (first run only)");
    let failed = |reason: String| Error::Artifact {
        what: "pre-initialising cellbox-python".into(),
        reason,
    };
    let wasm = std::fs::read(python.wasm_path())
        .map_err(|e| Error::io(format!("reading {}", python.wasm_path().display()), e))?;
    let home = tempfile::tempdir().map_err(|e| Error::io("creating a scratch folder", e))?;
    // CELLBOX_PREINIT: the driver imports the common standard modules into the snapshot.
    let preinit = [("CELLBOX_PREINIT", "1")];
    let mut store = new_store(engine, python, home.path(), usize::MAX, None, &preinit)?;
    let snapshot = Wizer::new()
        .init_func("cellbox_init")
        .run(&mut store, &wasm, async |store, module| {
            linker.instantiate_async(store, module).await
        })
        .await
        .map_err(|e| failed(format!("{e:#}\n{}", store.data().stray)))?;
    crate::cache::write_atomically(&path, &snapshot)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::SandboxDied {
            reason: format!("a background task failed: {e}"),
        })?
}

/// Advances the engine's epoch every [`TICK`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> std::io::Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cellbox-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
