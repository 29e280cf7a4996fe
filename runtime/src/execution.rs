//! The result of running a cell, shaped like E2B's `Execution` so that code
//! moving from E2B finds the same fields under the same (snake_case) names.

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// Everything one cell produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// Rich results: the main result (the cell's trailing expression) and any
    /// `display()`ed values, in the order they were produced.
    pub results: Vec<CellResult>,
    /// Text written to stdout and stderr, as the chunks arrived.
    pub logs: Logs,
    /// The exception the user's code raised, if any.
    pub error: Option<ExecutionError>,
    /// The cell's number in its session (1 for the first cell).
    pub execution_count: Option<u32>,
}

impl Execution {
    /// The main result's plain-text form, if the cell ended in an expression.
    pub fn text(&self) -> Option<&str> {
        self.main_result().and_then(|r| r.text.as_deref())
    }

    /// The result of the cell's trailing expression.
    pub fn main_result(&self) -> Option<&CellResult> {
        self.results.iter().find(|r| r.is_main_result)
    }

    /// Folds one streamed event into this execution.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Stdout(text) => self.logs.stdout.push(text.clone()),
            Event::Stderr(text) => self.logs.stderr.push(text.clone()),
            Event::Result(result) => self.results.push(result.as_ref().clone()),
            Event::Error(error) => self.error = Some(error.clone()),
            Event::End { execution_count } => self.execution_count = *execution_count,
        }
    }
}

/// Output streams of a cell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logs {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

/// An exception raised by the user's code. This is data about the cell, not a
/// failure of the sandbox (those are [`crate::Error`]s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionError {
    /// The exception class, e.g. `NameError`.
    pub name: String,
    /// The exception message.
    pub value: String,
    /// The formatted traceback.
    pub traceback: String,
}

/// One rich result with every representation the object offered. Binary
/// formats (`png`, `jpeg`, `pdf`) are base64 strings, as in Jupyter and E2B.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CellResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub markdown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jpeg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdf: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub javascript: Option<String>,
    /// Tabular data (column → values) extracted from a DataFrame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// A structured description of a chart extracted from a figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart: Option<serde_json::Value>,
    /// Other representations, keyed by MIME type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
    /// True for the value of the cell's trailing expression.
    pub is_main_result: bool,
}

impl CellResult {
    /// The names of the formats this result carries, e.g. `["text", "html"]`.
    pub fn formats(&self) -> Vec<&'static str> {
        let present = [
            ("text", self.text.is_some()),
            ("html", self.html.is_some()),
            ("markdown", self.markdown.is_some()),
            ("latex", self.latex.is_some()),
            ("png", self.png.is_some()),
            ("jpeg", self.jpeg.is_some()),
            ("svg", self.svg.is_some()),
            ("pdf", self.pdf.is_some()),
            ("json", self.json.is_some()),
            ("javascript", self.javascript.is_some()),
            ("data", self.data.is_some()),
            ("chart", self.chart.is_some()),
        ];
        present
            .into_iter()
            .filter_map(|(name, here)| here.then_some(name))
            .collect()
    }
}

/// A result's text as E2B's code-interpreter server gives it: a Python
/// string's repr without its single quotes (`'bar'` is `bar`), anything
/// else as it is. `cellbox serve` and the Python package answer so.
pub fn e2b_text(text: &str) -> &str {
    match text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        Some(inner) => inner,
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_results_lose_their_quotes_as_in_e2b() {
        assert_eq!(e2b_text("'bar'"), "bar");
        assert_eq!(e2b_text("''"), "");
        assert_eq!(e2b_text("'"), "'", "one quote is no pair");
        assert_eq!(e2b_text("42"), "42");
        assert_eq!(e2b_text("\"it's\""), "\"it's\"");
    }

    #[test]
    fn json_field_names_match_e2b() {
        let execution = Execution {
            results: vec![CellResult {
                text: Some("2".into()),
                html: Some("<b>2</b>".into()),
                is_main_result: true,
                ..Default::default()
            }],
            logs: Logs {
                stdout: vec!["a\n".into()],
                stderr: vec![],
            },
            error: Some(ExecutionError {
                name: "NameError".into(),
                value: "x".into(),
                traceback: "tb".into(),
            }),
            execution_count: Some(3),
        };
        let value = serde_json::to_value(&execution).unwrap();
        assert_eq!(value["results"][0]["text"], "2");
        assert_eq!(value["results"][0]["is_main_result"], true);
        assert_eq!(value["logs"]["stdout"][0], "a\n");
        assert_eq!(value["error"]["name"], "NameError");
        assert_eq!(value["execution_count"], 3);
        let back: Execution = serde_json::from_value(value).unwrap();
        assert_eq!(back, execution);
    }

    #[test]
    fn formats_lists_present_representations() {
        let result = CellResult {
            text: Some("t".into()),
            png: Some("iVBO".into()),
            chart: Some(serde_json::json!({"type": "line"})),
            ..Default::default()
        };
        assert_eq!(result.formats(), vec!["text", "png", "chart"]);
        assert!(CellResult::default().formats().is_empty());
    }

    #[test]
    fn apply_builds_an_execution_from_events() {
        let mut execution = Execution::default();
        let events = [
            Event::Stdout("a\n".into()),
            Event::Stderr("b\n".into()),
            Event::Result(Box::new(CellResult {
                text: Some("42".into()),
                is_main_result: true,
                ..Default::default()
            })),
            Event::End {
                execution_count: Some(1),
            },
        ];
        events.iter().for_each(|e| execution.apply(e));
        assert_eq!(execution.text(), Some("42"));
        assert_eq!(execution.logs.stdout, vec!["a\n"]);
        assert_eq!(execution.logs.stderr, vec!["b\n"]);
        assert_eq!(execution.execution_count, Some(1));
        assert!(execution.error.is_none());
    }
}
