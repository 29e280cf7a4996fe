//! How `cellbox run` shows executions: JSON lines or readable text.

use std::io::Write;

use crate::{Backend, CellResult, Error, Event, Execution};

/// Writes to stdout; a closed pipe is not an error worth dying for.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    /// Shows stdout and stderr as they stream (readable mode only).
    pub fn stream(&self, event: &Event) {
        if self.json {
            return;
        }
        match event {
            Event::Stdout(text) => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
            Event::Stderr(text) => eprint!("{text}"),
            _ => {}
        }
    }

    /// Shows a finished cell.
    pub fn execution(&self, backend: Backend, execution: &Execution) {
        if self.json {
            self.json_line(backend, execution, None);
            return;
        }
        let count = execution.execution_count.unwrap_or_default();
        for result in &execution.results {
            let label = if result.is_main_result {
                format!("Out[{count}]: ")
            } else {
                String::new()
            };
            out!("{label}{}", describe(result));
        }
        if let Some(error) = &execution.error {
            eprint!("{}", error.traceback);
            if !error.traceback.ends_with('\n') {
                eprintln!();
            }
        }
    }

    /// Shows a failure of the sandbox, with whatever the cell printed before it.
    pub fn sandbox_error(&self, backend: Backend, partial: &Execution, error: &Error) {
        if self.json {
            self.json_line(backend, partial, Some(error));
        } else {
            eprintln!("cellbox: error: {error}");
        }
    }

    fn json_line(&self, backend: Backend, execution: &Execution, error: Option<&Error>) {
        let mut value = serde_json::to_value(execution).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("backend".into(), serde_json::json!(backend));
            if let Some(error) = error {
                object.insert(
                    "sandbox_error".into(),
                    serde_json::json!({ "kind": error.kind(), "message": error.to_string() }),
                );
            }
        }
        out!("{value}");
    }
}

/// The text of a result, or a note naming its formats.
fn describe(result: &CellResult) -> String {
    let rich: Vec<_> = result
        .formats()
        .into_iter()
        .filter(|f| *f != "text")
        .collect();
    match (&result.text, rich.is_empty()) {
        (Some(text), true) => text.clone(),
        (Some(text), false) => format!("{text}  [also: {}]", rich.join(", ")),
        (None, _) => format!("[{}]", rich.join(", ")),
    }
}
