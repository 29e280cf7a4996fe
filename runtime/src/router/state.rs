//! Moving a session's state: from the fast path to the heavy backend, and
//! into and out of snapshots ([`super::snapshot`]).
//!
//! 1. On the fast path, every global that pickles is pickled (functions,
//!    classes and their instances included: pickle refers to them by name),
//!    and every imported module is recorded by name, into a file the host
//!    reads (directly from the fast path's home folder, through guest-init
//!    from the heavy guest).
//! 2. That file and the session's history of cells go into the session
//!    that takes the state over. There, the top-level `def`, `class` and `import` statements of
//!    the history run again (they only define names), modules are imported,
//!    and the pickled values are loaded over them; the working folder and the
//!    files the cells wrote in `/home/user` follow.
//!
//! Nothing else of the history runs again, so no cell's side effects happen
//! twice. Limits: values that do not pickle (open files, generators,
//! lambdas, locks) are not carried over — the cell that moves gets a note on
//! stderr naming them — and objects whose class was defined in a cell that
//! failed are lost.

use std::path::{Path, PathBuf};

use super::history::History;
use crate::error::{Error, Result};
use crate::execution::Execution;
use crate::executor::{Executor, RunOptions};
use crate::guest::GuestExecutor;
use crate::wasm::WasmExecutor;

/// The state and history files in the fast path's home folder...
const STATE_FILE: &str = ".cellbox-state.pickle";
const HISTORY_FILE: &str = ".cellbox-history.json";
/// ... as the fast path sees them...
const WASM_STATE: &str = "/home/user/.cellbox-state.pickle";
const WASM_HISTORY: &str = "/home/user/.cellbox-history.json";
/// ... and where they go in the heavy guest.
const GUEST_STATE: &str = "/tmp/.cellbox-state.pickle";
const GUEST_HISTORY: &str = "/tmp/.cellbox-history.json";

/// Pickles the session's globals into the file named by its call.
const EXPORT: &str = r#"
def __cellbox_export(path):
    import pickle, sys, types
    namespace = globals()
    # Pickle finds functions and classes through sys.modules['__main__'].
    main = types.ModuleType("__main__")
    main.__dict__.update(namespace)
    saved_main = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    values, modules, dropped = {}, {}, []
    try:
        for name, value in list(namespace.items()):
            if name.startswith("_") or name in ("display", "get_ipython", "In", "Out", "exit", "quit"):
                continue
            if isinstance(value, types.ModuleType):
                modules[name] = value.__name__
                continue
            try:
                values[name] = pickle.dumps(value, protocol=4)
            except Exception:
                dropped.append(name)
    finally:
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
    import os
    state = {"values": values, "modules": modules, "dropped": dropped, "cwd": os.getcwd()}
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=4)
    import json
    print(json.dumps(sorted(dropped)))
"#;

/// Redefines, re-imports and unpickles in the guest; prints the names lost.
const IMPORT: &str = r#"
def __cellbox_import(state_path, history_path):
    import ast, importlib, json, os, pickle
    namespace = globals()
    with open(history_path) as f:
        history = json.load(f)
    for source in history:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
                try:
                    exec(compile(ast.Module([node], []), "<cellbox moved cell>", "exec"), namespace)
                except Exception:
                    pass
    with open(state_path, "rb") as f:
        state = pickle.load(f)
    dropped = list(state["dropped"])
    for name, module in state["modules"].items():
        try:
            namespace[name] = importlib.import_module(module)
        except Exception:
            dropped.append(name)
    # Pickle finds functions and classes through sys.modules['__main__'].
    import sys, types
    main = types.ModuleType("__main__")
    main.__dict__.update(namespace)
    saved_main = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    try:
        for name, blob in state["values"].items():
            try:
                namespace[name] = pickle.loads(blob)
            except Exception:
                dropped.append(name)
    finally:
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
    os.remove(state_path)
    os.remove(history_path)
    try:
        os.makedirs(state["cwd"], exist_ok=True)
        os.chdir(state["cwd"])
    except Exception:
        pass
    print(json.dumps(sorted(set(dropped))))
"#;

/// A failure while carrying state over.
fn failed(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::SandboxDied {
        reason: format!("carrying the session's state over failed ({what}): {detail}"),
    }
}

/// Runs `code` in `executor` without showing anything; a Python error in it
/// is a failure of `what`.
async fn run_quiet(executor: &mut dyn Executor, code: &str, what: &str) -> Result<Execution> {
    let execution = executor
        .execute(code, &RunOptions::default(), &mut |_| {})
        .await?;
    match &execution.error {
        Some(error) => Err(failed(what, format!("{}: {}", error.name, error.value))),
        None => Ok(execution),
    }
}

/// The names `EXPORT` or `IMPORT` printed as lost.
fn dropped_names(imported: &Execution) -> Result<Vec<String>> {
    let printed = imported.logs.stdout.concat();
    serde_json::from_str(printed.trim()).map_err(|e| failed("import", format!("{e}: {printed}")))
}

/// A Python string literal of `text`.
fn literal(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// The code that pickles the session's state into `path` (in the session).
fn export_code(path: &str) -> String {
    format!(
        "{EXPORT}__cellbox_export({})\ndel __cellbox_export\n",
        literal(path)
    )
}

/// The code that loads the state and history files at these paths.
fn import_code(state: &str, history: &str) -> String {
    format!(
        "{IMPORT}__cellbox_import({}, {})\ndel __cellbox_import\n",
        literal(state),
        literal(history)
    )
}

/// Pickles the fast path's globals; returns the host file holding them (in
/// the fast path's home folder: move or remove it) and the names that do
/// not pickle.
pub async fn export_wasm(wasm: &mut WasmExecutor) -> Result<(PathBuf, Vec<String>)> {
    let exported = run_quiet(wasm, &export_code(WASM_STATE), "export").await?;
    Ok((wasm.home_dir().join(STATE_FILE), dropped_names(&exported)?))
}

/// Pickles the heavy session's default context into `to` on the host;
/// returns the names that do not pickle.
pub async fn export_heavy(
    heavy: &mut dyn GuestExecutor,
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<Vec<String>> {
    let exported = run_quiet(heavy, &export_code(GUEST_STATE), "export").await?;
    let guest = heavy.guest()?;
    let copied = guest.read_file_to(GUEST_STATE, to).await;
    let _ = guest.remove(GUEST_STATE).await;
    copied?;
    dropped_names(&exported)
}

/// Loads the state in the host file `state` (and the definitions in
/// `history`) into the heavy session's default context. Returns the names
/// that could not be loaded.
pub async fn import_heavy(
    heavy: &mut dyn GuestExecutor,
    state: &Path,
    history: &History,
) -> Result<Vec<String>> {
    let guest = heavy.guest()?;
    guest.upload(state, GUEST_STATE).await?;
    guest.write_file(GUEST_HISTORY, &history.to_json()).await?;
    let imported = run_quiet(heavy, &import_code(GUEST_STATE, GUEST_HISTORY), "import").await?;
    dropped_names(&imported)
}

/// The same for the fast path.
pub async fn import_wasm(
    wasm: &mut WasmExecutor,
    state: &Path,
    history: &History,
) -> Result<Vec<String>> {
    let home = wasm.home_dir().to_path_buf();
    let io = |e| Error::io("writing the state into the fast path's home", e);
    std::fs::copy(state, home.join(STATE_FILE)).map_err(io)?;
    std::fs::write(home.join(HISTORY_FILE), history.to_json()).map_err(io)?;
    let imported = run_quiet(wasm, &import_code(WASM_STATE, WASM_HISTORY), "import").await?;
    dropped_names(&imported)
}

/// Carries the fast path's state (and `history`, its cells) into `heavy`.
/// Returns the names that could not be carried over.
pub async fn carry_over(
    wasm: &mut WasmExecutor,
    history: &History,
    heavy: &mut dyn GuestExecutor,
) -> Result<Vec<String>> {
    let (local, _) = export_wasm(wasm).await?;
    let imported = import_heavy(heavy, &local, history).await;
    let _ = std::fs::remove_file(&local);
    super::home::to_guest(wasm.home_dir(), heavy.guest()?).await?;
    imported
}
