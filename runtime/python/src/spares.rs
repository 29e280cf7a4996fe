//! Spare namespace sandboxes for this process's sandboxes, kept ready as
//! `cellbox serve` keeps them ([`cellbox::NamespacePool`]): a sandbox whose
//! heavy backend is the default namespace sandbox takes a running one.

use std::sync::{Arc, Mutex};

use cellbox::{NamespacePool, SandboxOptions};
use pyo3::prelude::*;

/// How many spares to keep (`CELLBOX_SPARES`, default 1; 0 keeps none).
fn wanted() -> usize {
    std::env::var("CELLBOX_SPARES")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1)
}

static POOL: Mutex<Option<Arc<NamespacePool>>> = Mutex::new(None);

/// The pool that serves `options`, made on first use; `None` where their
/// heavy backend is not the default namespace sandbox or no spares are
/// wanted. Call it on the runtime (the pool starts its spares there).
pub fn for_options(options: &SandboxOptions) -> Option<Arc<NamespacePool>> {
    if options.template.is_some() || !options.heavy_is_namespace() {
        return None;
    }
    let spares = wanted();
    if spares == 0 {
        return None;
    }
    let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let pool = pool.get_or_insert_with(|| {
        let config = SandboxOptions::default().namespace_config(Vec::new());
        Arc::new(NamespacePool::new(config, spares))
    });
    pool.serves(&options.namespace_config(Vec::new()))
        .then(|| pool.clone())
}

/// Stops the spares and waits until they are gone (the package calls it at
/// exit); sandboxes in use go on.
#[pyfunction]
pub fn shutdown(py: Python<'_>) {
    let pool = POOL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let (Some(pool), Ok(runtime)) = (pool, crate::blocking::runtime()) {
        py.detach(|| runtime.block_on(pool.close()));
    }
}
