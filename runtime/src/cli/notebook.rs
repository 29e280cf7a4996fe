//! Cells from files: a `.py` file (one cell, or cells split at `# %%` lines)
//! or the code cells of a Jupyter notebook, whose outputs are written back to
//! a copy of it.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::{CellResult, Execution};

/// A notebook being run: the document and which of its cells hold code.
#[derive(Debug)]
pub struct Notebook {
    document: Value,
    code_cells: Vec<usize>,
}

/// Reads `path`: its cells, and the notebook if it is one.
pub fn load(path: &Path) -> Result<(Vec<String>, Option<Notebook>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "ipynb") {
        let document: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a Jupyter notebook (JSON): {e}", path.display()))?;
        let cells = document["cells"]
            .as_array()
            .ok_or_else(|| format!("{} has no \"cells\" list", path.display()))?;
        let mut sources = Vec::new();
        let mut code_cells = Vec::new();
        for (index, cell) in cells.iter().enumerate() {
            if cell["cell_type"] == "code" {
                sources.push(source_text(&cell["source"]));
                code_cells.push(index);
            }
        }
        Ok((
            sources,
            Some(Notebook {
                document,
                code_cells,
            }),
        ))
    } else {
        Ok((split_percent_cells(&text), None))
    }
}

/// A notebook cell's `source`: a string or a list of lines.
fn source_text(source: &Value) -> String {
    match source {
        Value::String(text) => text.clone(),
        Value::Array(lines) => lines.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

/// Splits at `# %%` lines (the "percent" cell format); one cell otherwise.
fn split_percent_cells(text: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    for line in text.lines() {
        if line.trim_start().starts_with("# %%") {
            cells.push(String::new());
        } else {
            let cell = cells.last_mut().expect("never empty");
            cell.push_str(line);
            cell.push('\n');
        }
    }
    cells.retain(|c| !c.trim().is_empty());
    cells
}

impl Notebook {
    /// Stores cell `n`'s (of the code cells) outputs in the document.
    pub fn record(&mut self, n: usize, execution: &Execution) {
        let Some(&index) = self.code_cells.get(n) else {
            return;
        };
        let cell = &mut self.document["cells"][index];
        cell["execution_count"] = json!(execution.execution_count);
        cell["outputs"] = Value::Array(outputs(execution));
    }

    /// Writes the document to `path`.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(&self.document).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// Where the copy with outputs goes by default: `name.ipynb` → `name.out.ipynb`.
pub fn default_output(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.out.ipynb"))
}

/// An execution as nbformat 4 outputs.
pub fn outputs(execution: &Execution) -> Vec<Value> {
    let mut out = Vec::new();
    for (name, texts) in [
        ("stdout", &execution.logs.stdout),
        ("stderr", &execution.logs.stderr),
    ] {
        if !texts.is_empty() {
            out.push(json!({"output_type": "stream", "name": name, "text": texts.concat()}));
        }
    }
    for result in &execution.results {
        let data = mime_bundle(result);
        if result.is_main_result {
            out.push(json!({
                "output_type": "execute_result",
                "execution_count": execution.execution_count,
                "data": data,
                "metadata": {},
            }));
        } else {
            out.push(json!({"output_type": "display_data", "data": data, "metadata": {}}));
        }
    }
    if let Some(error) = &execution.error {
        out.push(json!({
            "output_type": "error",
            "ename": error.name,
            "evalue": error.value,
            "traceback": error.traceback.lines().collect::<Vec<_>>(),
        }));
    }
    out
}

fn mime_bundle(result: &CellResult) -> Value {
    let mut data = serde_json::Map::new();
    let mut put = |mime: &str, value: Option<Value>| {
        if let Some(value) = value {
            data.insert(mime.to_string(), value);
        }
    };
    let text = |v: &Option<String>| v.clone().map(Value::String);
    put("text/plain", text(&result.text));
    put("text/html", text(&result.html));
    put("text/markdown", text(&result.markdown));
    put("text/latex", text(&result.latex));
    put("image/png", text(&result.png));
    put("image/jpeg", text(&result.jpeg));
    put("image/svg+xml", text(&result.svg));
    put("application/pdf", text(&result.pdf));
    put("application/json", result.json.clone());
    put("application/javascript", text(&result.javascript));
    Value::Object(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_files_split_at_percent_markers() {
        assert_eq!(split_percent_cells("x = 1\nx + 1\n"), ["x = 1\nx + 1\n"]);
        let cells = split_percent_cells("# %%\nx = 1\n# %% [markdown]\n\n# %%\nx\n");
        assert_eq!(cells, ["x = 1\n", "x\n"]);
    }

    #[test]
    fn notebook_sources_and_outputs() {
        assert_eq!(source_text(&json!(["a = 1\n", "a"])), "a = 1\na");
        let execution: Execution = serde_json::from_value(json!({
            "results": [{"text": "2", "png": "iVBO", "is_main_result": true}],
            "logs": {"stdout": ["hi\n"], "stderr": []},
            "error": {"name": "E", "value": "v", "traceback": "line 1\nline 2"},
            "execution_count": 3
        }))
        .unwrap();
        let out = outputs(&execution);
        assert_eq!(
            out[0],
            json!({"output_type": "stream", "name": "stdout", "text": "hi\n"})
        );
        assert_eq!(out[1]["data"]["image/png"], "iVBO");
        assert_eq!(out[1]["execution_count"], 3);
        assert_eq!(out[2]["traceback"], json!(["line 1", "line 2"]));
    }
}
