//! `cellbox._native`: the Rust half of the `cellbox` Python package. It
//! holds a [`cellbox::Sandbox`] per Python sandbox and runs its futures on
//! one shared tokio runtime with the GIL released; the Python half
//! (`python/cellbox/`) turns what it returns into E2B's classes.
//!
//! Structured values (executions, results, file listings) cross as JSON
//! text: the Rust types already serialise as E2B spells them, and the
//! Python side builds its dataclasses from the parsed dicts.

mod blocking;
mod errors;
mod sandbox;
mod spares;
mod stream;

use pyo3::prelude::*;

/// Runs the `cellbox` command line with `args` (the program name first) and
/// returns its exit status: the `cellbox` command that the wheel installs.
#[pyfunction]
fn cli_main(py: Python<'_>, args: Vec<String>) -> u8 {
    py.detach(|| cellbox::cli::run(args))
}

/// The artefact cache's folder (`CELLBOX_CACHE_DIR`, else `~/.cache/cellbox`).
#[pyfunction]
fn cache_dir() -> String {
    cellbox::default_cache_dir().to_string_lossy().into_owned()
}

/// cellbox's data folder (`$XDG_DATA_HOME/cellbox`, else
/// `~/.local/share/cellbox`): what is kept there is the user's, unlike the cache.
#[pyfunction]
fn data_dir() -> String {
    let snapshots = cellbox::serve::snapshots::default_snapshot_dir();
    let data = snapshots.parent().unwrap_or(&snapshots);
    data.to_string_lossy().into_owned()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CellboxError", m.py().get_type::<errors::CellboxError>())?;
    m.add_class::<sandbox::NativeSandbox>()?;
    m.add_class::<stream::EventStream>()?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(cache_dir, m)?)?;
    m.add_function(wrap_pyfunction!(data_dir, m)?)?;
    m.add_function(wrap_pyfunction!(spares::shutdown, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
