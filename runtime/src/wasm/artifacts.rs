//! Finding, building and caching cellbox-python: the interpreter module, its
//! standard library, the pre-initialised snapshot and compiled machine code.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::{Engine, Module};

use crate::builder;
use crate::cache::{self, CacheLock};
use crate::error::{Error, Result};
use crate::progress::Progress;

const BUILD_SCRIPT: &str = include_str!("../../../python-wasm/build.sh");
const MAIN_C: &str = include_str!("../../../python-wasm/cellbox_main.c");
const DRIVER_PY: &str = include_str!("../../../python-wasm/cellbox_driver.py");

/// A built cellbox-python: `python.wasm` and `lib/python3.11/`.
#[derive(Debug, Clone)]
pub(crate) struct PythonWasm {
    dir: PathBuf,
}

impl PythonWasm {
    /// Returns the cached build, building it first if there is none (about a
    /// minute; progress goes to `progress`). Blocking.
    pub fn ensure(cache_root: &Path, progress: &Progress) -> Result<PythonWasm> {
        let dir = builder::script_build(
            cache_root,
            "python-wasm",
            "python.wasm",
            &[
                ("build.sh", BUILD_SCRIPT),
                ("cellbox_main.c", MAIN_C),
                ("cellbox_driver.py", DRIVER_PY),
            ],
            "building cellbox-python (CPython for WASI) with python-wasm/build.sh",
            progress,
        )?;
        Ok(PythonWasm { dir })
    }

    pub fn wasm_path(&self) -> PathBuf {
        self.dir.join("python.wasm")
    }

    pub fn stdlib_dir(&self) -> PathBuf {
        self.dir.join("lib/python3.11")
    }

    /// Where the pre-initialised snapshot of this build is kept.
    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join("python-preinit.wasm")
    }

    pub fn lock(&self) -> Result<CacheLock> {
        CacheLock::acquire(&self.dir)
    }
}

/// Loads `wasm` compiled for `engine`, from the compiled-code cache beside it
/// when present, else compiling it (seconds) and filling the cache. Blocking.
pub(crate) fn load_compiled(engine: &Engine, wasm: &Path) -> Result<Module> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let compiled = wasm.with_extension(format!("{:016x}.cwasm", hasher.finish()));
    if compiled.is_file() {
        cache::check_trusted(&compiled)?;
        // SAFETY: the file is a `Module::serialize` output that this code wrote
        // into the user's own cache folder (checked above: nobody else can
        // write it), keyed by the engine's compatibility hash; wasmtime checks
        // its header and version before using it.
        match unsafe { Module::deserialize_file(engine, &compiled) } {
            Ok(module) => return Ok(module),
            Err(e) => tracing::warn!("recompiling {}: {e:#}", compiled.display()),
        }
    }
    let module = Module::from_file(engine, wasm).map_err(|e| Error::Artifact {
        what: format!("compiling {}", wasm.display()),
        reason: format!("{e:#}"),
    })?;
    let bytes = module.serialize().map_err(|e| Error::Artifact {
        what: "serialising the compiled module".into(),
        reason: format!("{e:#}"),
    })?;
    cache::write_atomically(&compiled, &bytes)?;
    Ok(module)
}
