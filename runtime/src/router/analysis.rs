//! What a cell needs, read from its source without running it: the modules it
//! imports, and lines only the full guest understands (`!shell`, `%magic`).
//!
//! A line-based reading, deliberately generous: an `import` inside a string
//! may send a cell to the heavy backend needlessly, which costs time, never
//! correctness. Imports it cannot see (`__import__`, `importlib`) are caught
//! by the fast path failing instead.

use std::collections::BTreeSet;

/// Modules that import on the WebAssembly fast path but cannot work there
/// (no processes, threads, sockets or native code in WASI preview 1).
pub const UNUSABLE_ON_WASM: &[&str] = &[
    "subprocess",
    "multiprocessing",
    "concurrent",
    "threading",
    "_thread",
    "socket",
    "ssl",
    "select",
    "selectors",
    "asyncio",
    "ctypes",
    "signal",
    "pty",
    "tty",
    "urllib",
    "http",
    "ftplib",
    "smtplib",
    "webbrowser",
];

/// What [`analyze`] found in a cell.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CellNeeds {
    /// Top-level names of imported modules (`numpy` for `import numpy.linalg`).
    pub imports: BTreeSet<String>,
    /// A `!command` line.
    pub shell: bool,
    /// A `%magic` or `%%cell_magic` line.
    pub magic: bool,
}

/// Reads a cell's imports, shell and magic lines.
pub fn analyze(code: &str) -> CellNeeds {
    let mut needs = CellNeeds::default();
    for statement in logical_lines(code) {
        let line = statement.trim_start();
        if line.starts_with('!') {
            needs.shell = true;
        } else if line.starts_with('%') {
            needs.magic = true;
        }
        // Several statements may share a line: `import json; import numpy`.
        for part in line.split(';') {
            let part = part.trim();
            if let Some(rest) = part.strip_prefix("import ") {
                for item in rest.split(',') {
                    add(&mut needs.imports, item.split_whitespace().next());
                }
            } else if let Some(rest) = part.strip_prefix("from ") {
                let module = rest.split_whitespace().next();
                if module.is_some_and(|m| !m.starts_with('.')) {
                    add(&mut needs.imports, module);
                }
            }
        }
    }
    needs
}

fn add(imports: &mut BTreeSet<String>, dotted: Option<&str>) {
    let top = dotted.and_then(|d| d.trim_matches(|c| c == '(' || c == ')').split('.').next());
    if let Some(top) =
        top.filter(|t| !t.is_empty() && t.chars().all(|c| c.is_alphanumeric() || c == '_'))
    {
        imports.insert(top.to_string());
    }
}

/// Physical lines joined where a backslash or an open bracket continues them.
fn logical_lines(code: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut depth: i32 = 0;
    for raw in code.lines() {
        let without_comment = match raw.find('#') {
            Some(i) if !raw[..i].contains(['"', '\'']) => &raw[..i],
            _ => raw,
        };
        current.push_str(without_comment.trim_end_matches('\\'));
        current.push(' ');
        depth += without_comment.matches(['(', '[', '{']).count() as i32;
        depth -= without_comment.matches([')', ']', '}']).count() as i32;
        if !without_comment.trim_end().ends_with('\\') && depth <= 0 {
            lines.push(std::mem::take(&mut current));
            depth = 0;
        }
    }
    if !current.trim().is_empty() {
        lines.push(current);
    }
    lines
}

/// Why `needs` cannot be met on the fast path, given the modules it has.
pub fn heavy_reason(needs: &CellNeeds, wasm_modules: &BTreeSet<String>) -> Option<String> {
    if needs.shell {
        return Some("a `!shell` line".into());
    }
    if needs.magic {
        return Some("a `%magic` line".into());
    }
    let missing: Vec<&str> = needs
        .imports
        .iter()
        .filter(|m| !wasm_modules.contains(*m) || UNUSABLE_ON_WASM.contains(&m.as_str()))
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| format!("imports {}", missing.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imports(code: &str) -> Vec<String> {
        analyze(code).imports.into_iter().collect()
    }

    #[test]
    fn finds_every_form_of_import() {
        assert_eq!(imports("import numpy as np"), ["numpy"]);
        assert_eq!(imports("import os.path, json as j"), ["json", "os"]);
        assert_eq!(imports("from pandas import DataFrame"), ["pandas"]);
        assert_eq!(
            imports("from matplotlib.pyplot import (\n  plot,\n  show)"),
            ["matplotlib"]
        );
        assert_eq!(imports("x = 2; import numpy as np; np.pi"), ["numpy"]);
        assert_eq!(
            imports("def f():\n    import scipy.stats\n    return 1"),
            ["scipy"]
        );
        assert_eq!(imports("from . import sibling"), Vec::<String>::new());
        assert_eq!(
            imports("# import numpy\nx = 1  # import pandas"),
            Vec::<String>::new()
        );
        assert_eq!(imports("important = 1\nfromage = 2"), Vec::<String>::new());
    }

    #[test]
    fn shell_and_magic_lines() {
        assert!(analyze("!pip list").shell);
        assert!(analyze("x = 1\n  !ls").shell);
        assert!(analyze("%timeit 1 + 1").magic);
        assert!(analyze("%%bash\necho hi").magic);
        let plain = analyze("x = '!not shell'\ny = 5 % 3");
        assert!(!plain.shell && !plain.magic);
    }

    #[test]
    fn reasons_name_what_the_fast_path_lacks() {
        let wasm: BTreeSet<String> = ["json", "math", "subprocess"].map(String::from).into();
        assert_eq!(heavy_reason(&analyze("import json, math"), &wasm), None);
        assert_eq!(
            heavy_reason(&analyze("import numpy, json"), &wasm).as_deref(),
            Some("imports numpy")
        );
        assert_eq!(
            heavy_reason(&analyze("import subprocess"), &wasm).as_deref(),
            Some("imports subprocess")
        );
        assert_eq!(
            heavy_reason(&analyze("!ls"), &wasm).as_deref(),
            Some("a `!shell` line")
        );
    }
}
