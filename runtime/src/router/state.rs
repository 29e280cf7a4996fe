//! Moving a session's state from the fast path to the heavy backend.
//!
//! 1. On the fast path, every global that pickles is pickled (functions,
//!    classes and their instances included: pickle refers to them by name),
//!    and every imported module is recorded by name, into a file in the
//!    session's home folder, which the host reads directly.
//! 2. That file and the session's history of fast-path cells go into the
//!    guest. There, the top-level `def`, `class` and `import` statements of
//!    the history run again (they only define names), modules are imported,
//!    and the pickled values are loaded over them; the working folder and the
//!    files the cells wrote in `/home/user` follow.
//!
//! Nothing else of the history runs again, so no cell's side effects happen
//! twice. Limits: values that do not pickle (open files, generators,
//! lambdas, locks) are not carried over — the cell that moves gets a note on
//! stderr naming them — and objects whose class was defined in a cell that
//! failed are lost.

use crate::error::{Error, Result};
use crate::executor::{Executor, RunOptions};
use crate::guest::GuestExecutor;
use crate::wasm::WasmExecutor;

const STATE_FILE: &str = ".cellbox-state.pickle";
const GUEST_STATE: &str = "/tmp/.cellbox-state.pickle";
const GUEST_HISTORY: &str = "/tmp/.cellbox-history.json";

/// Pickles the fast path's globals into `~/.cellbox-state.pickle`.
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
            if name.startswith("_") or name in ("display", "In", "Out", "exit", "quit"):
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
__cellbox_export("/home/user/.cellbox-state.pickle")
del __cellbox_export
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
    for name, blob in state["values"].items():
        try:
            namespace[name] = pickle.loads(blob)
        except Exception:
            dropped.append(name)
    os.remove(state_path)
    os.remove(history_path)
    try:
        os.makedirs(state["cwd"], exist_ok=True)
        os.chdir(state["cwd"])
    except Exception:
        pass
    print(json.dumps(sorted(set(dropped))))
__cellbox_import("/tmp/.cellbox-state.pickle", "/tmp/.cellbox-history.json")
del __cellbox_import
"#;

/// Copies the files fast-path cells wrote (their `/home/user`) into the guest.
async fn copy_home(home: &std::path::Path, guest: &crate::guest::GuestClient) -> Result<()> {
    let mut pending = vec![home.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| Error::io("reading the fast path's home", e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(relative) = path.strip_prefix(home) else {
                continue;
            };
            let target = format!("/home/user/{}", relative.display());
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => {
                    guest.make_dir(&target).await?;
                    pending.push(path);
                }
                Ok(kind) if kind.is_file() => {
                    guest.upload(&path, &target).await?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Carries the fast path's state (and `history`, its cells) into `heavy`.
/// Returns the names that could not be carried over.
pub async fn carry_over(
    wasm: &mut WasmExecutor,
    history: &[String],
    heavy: &mut dyn GuestExecutor,
) -> Result<Vec<String>> {
    let failed = |what: &str, detail: String| Error::SandboxDied {
        reason: format!("moving the session to the heavy backend failed ({what}): {detail}"),
    };
    let quiet = RunOptions::default();
    let export = wasm.execute(EXPORT, &quiet, &mut |_| {}).await?;
    if let Some(error) = export.error {
        return Err(failed("export", format!("{}: {}", error.name, error.value)));
    }
    let local = wasm.home_dir().join(STATE_FILE);
    let state = std::fs::read(&local).map_err(|e| failed("export", e.to_string()))?;
    let _ = std::fs::remove_file(&local);

    let guest = heavy.guest()?;
    copy_home(wasm.home_dir(), guest).await?;
    guest.write_file(GUEST_STATE, &state).await?;
    let history = serde_json::to_vec(history).map_err(|e| failed("history", e.to_string()))?;
    guest.write_file(GUEST_HISTORY, &history).await?;
    let imported = heavy.execute(IMPORT, &quiet, &mut |_| {}).await?;
    if let Some(error) = imported.error {
        return Err(failed("import", format!("{}: {}", error.name, error.value)));
    }
    let printed = imported.logs.stdout.concat();
    serde_json::from_str(printed.trim()).map_err(|e| failed("import", format!("{e}: {printed}")))
}
