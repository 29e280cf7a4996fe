//! The modules the WebAssembly fast path can import: its standard library
//! folder plus the interpreter's built-in modules (asked once per engine).

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::error::Result;
use crate::executor::Executor;
use crate::wasm::{WasmEngine, WasmExecutor};

static MODULES: OnceCell<Arc<BTreeSet<String>>> = OnceCell::const_new();

/// Top-level module names importable on the fast path.
pub async fn available(engine: &WasmEngine) -> Result<Arc<BTreeSet<String>>> {
    MODULES
        .get_or_try_init(|| async {
            let mut names = stdlib_names(&engine.inner.python.stdlib_dir());
            let mut probe = WasmExecutor::start(engine, Default::default()).await?;
            let builtins = probe
                .run("import sys; print(' '.join(sys.builtin_module_names))")
                .await?;
            let _ = probe.close().await;
            names.extend(
                builtins
                    .logs
                    .stdout
                    .concat()
                    .split_whitespace()
                    .map(String::from),
            );
            Ok(Arc::new(names))
        })
        .await
        .cloned()
}

/// Module names in a standard library folder: `x.py`, `x.pyc` and packages `x/`.
fn stdlib_names(dir: &std::path::Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if path.is_dir() && path.join("__init__.py").exists() {
                Some(name)
            } else {
                name.strip_suffix(".py")
                    .or_else(|| name.strip_suffix(".pyc"))
                    .map(String::from)
            }
        })
        .collect()
}
