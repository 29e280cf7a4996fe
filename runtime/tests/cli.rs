//! The `cellbox run` contract: JSON lines, exit statuses, timeouts.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

fn cellbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cellbox"))
        .args(args)
        .output()
        .expect("running cellbox")
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect()
}

#[test]
fn cells_share_state_and_report_their_backend() {
    let output = cellbox(&[
        "run",
        "--backend",
        "wasm",
        "--json",
        "-c",
        "x = 1",
        "-c",
        "x += 1; x",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["backend"], "wasm");
    assert_eq!(lines[1]["results"][0]["text"], "2");
    assert_eq!(lines[1]["results"][0]["is_main_result"], true);
    assert_eq!(lines[1]["execution_count"], 2);
    assert_eq!(lines[1]["error"], Value::Null);
}

#[test]
fn logs_and_result_in_one_line() {
    let output = cellbox(&[
        "run",
        "--json",
        "-c",
        r#"print("a"); print("b", file=__import__("sys").stderr); 40 + 2"#,
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let line = &json_lines(&output)[0];
    assert_eq!(line["logs"]["stdout"], serde_json::json!(["a\n"]));
    assert_eq!(line["logs"]["stderr"], serde_json::json!(["b\n"]));
    assert_eq!(line["results"][0]["text"], "42");
}

#[test]
fn a_raising_cell_exits_1_and_later_cells_still_run() {
    let output = cellbox(&[
        "run",
        "--json",
        "-c",
        "undefined_name",
        "-c",
        "def f(:",
        "-c",
        "7",
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines = json_lines(&output);
    assert_eq!(lines[0]["error"]["name"], "NameError");
    assert!(
        lines[0]["error"]["traceback"]
            .as_str()
            .unwrap()
            .contains("Traceback")
    );
    assert_eq!(lines[1]["error"]["name"], "SyntaxError");
    assert_eq!(lines[2]["results"][0]["text"], "7");
}

#[test]
fn a_timeout_is_a_sandbox_error_within_the_limit() {
    // The first run on a fresh machine builds the interpreter; keep that out of the timing.
    assert_eq!(cellbox(&["run", "-c", "1"]).status.code(), Some(0));
    let started = Instant::now();
    let output = cellbox(&[
        "run",
        "--json",
        "--timeout",
        "2",
        "-c",
        "while True: pass",
        "-c",
        "1 + 1",
    ]);
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let lines = json_lines(&output);
    assert_eq!(lines[0]["sandbox_error"]["kind"], "timeout");
    assert_eq!(
        lines[1]["results"][0]["text"], "2",
        "the next cell runs in a fresh session"
    );
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[test]
fn host_files_are_not_readable() {
    let output = cellbox(&["run", "--json", "-c", r#"open("/etc/passwd").read()"#]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(json_lines(&output)[0]["error"]["name"], "PermissionError");
}

#[test]
fn the_namespace_backend_runs_the_full_guest() {
    let output = cellbox(&[
        "run",
        "--backend",
        "namespace",
        "--json",
        "-c",
        "x = 1",
        "-c",
        "x += 1; x",
        "-c",
        "!echo hi",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let lines = json_lines(&output);
    assert_eq!(lines[1]["backend"], "namespace");
    assert_eq!(lines[1]["results"][0]["text"], "2");
    assert_eq!(lines[2]["logs"]["stdout"][0], "hi\n");
}

#[test]
fn the_vm_backend_runs_cells_or_fails_fast_naming_the_reason() {
    let started = std::time::Instant::now();
    let output = cellbox(&[
        "run",
        "--backend",
        "vm",
        "--json",
        "-c",
        "x = 1",
        "-c",
        "x += 1; x",
    ]);
    let lines = json_lines(&output);
    match cellbox_vmm::kvm_support::linux_guest_blocker() {
        Some(reason) => {
            assert_eq!(output.status.code(), Some(2), "{output:?}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "it must fail fast"
            );
            assert_eq!(lines[0]["backend"], "vm");
            assert_eq!(lines[0]["sandbox_error"]["kind"], "unavailable");
            let message = lines[0]["sandbox_error"]["message"].as_str().unwrap();
            assert!(message.contains(&reason), "{message}");
            assert!(message.contains("--backend namespace"), "{message}");
            let plain = cellbox(&["run", "--backend", "vm", "-c", "1"]);
            assert!(String::from_utf8_lossy(&plain.stderr).contains("--backend namespace"));
        }
        None => {
            assert_eq!(output.status.code(), Some(0), "{output:?}");
            assert_eq!(lines[1]["results"][0]["text"], "2");
        }
    }
}

#[test]
fn readable_output_shows_streams_and_results() {
    let output = cellbox(&["run", "-c", "print('hello')", "-c", "6 * 7", "-c", "1/0"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("hello\n"), "{stdout}");
    assert!(stdout.contains("Out[2]: 42"), "{stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("ZeroDivisionError"));
}

#[test]
fn bad_arguments_are_refused() {
    let output = cellbox(&["run", "--timeout", "0", "-c", "1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("positive number of seconds"));
    assert_eq!(cellbox(&["run"]).status.code(), Some(2), "no cells");
}

#[test]
fn python_files_and_notebooks_run_cell_by_cell() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.py");
    std::fs::write(&script, "a = 2\n# %%\nprint('two cells')\na * 21\n").unwrap();
    let output = cellbox(&["run", "--json", script.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["results"][0]["text"], "42");

    let notebook = dir.path().join("analysis.ipynb");
    let document = serde_json::json!({
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": ["# Notes"]},
            {"cell_type": "code", "execution_count": null, "metadata": {}, "outputs": [], "source": ["x = 20\n", "print('hi')"]},
            {"cell_type": "code", "execution_count": null, "metadata": {}, "outputs": [], "source": "x + 1"},
            {"cell_type": "code", "execution_count": null, "metadata": {}, "outputs": [], "source": "1 / 0"}
        ],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5
    });
    std::fs::write(&notebook, document.to_string()).unwrap();
    let output = cellbox(&["run", "--backend", "wasm", notebook.to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the last cell raises: {output:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&notebook).unwrap(),
        document.to_string(),
        "the original is untouched"
    );
    let copy: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("analysis.out.ipynb")).unwrap(),
    )
    .unwrap();
    let cells = copy["cells"].as_array().unwrap();
    assert_eq!(cells[1]["outputs"][0]["text"], "hi\n");
    assert_eq!(cells[2]["outputs"][0]["data"]["text/plain"], "21");
    assert_eq!(cells[2]["execution_count"], 2);
    assert_eq!(cells[3]["outputs"][0]["ename"], "ZeroDivisionError");
    // A file that is not a notebook is refused clearly.
    std::fs::write(dir.path().join("broken.ipynb"), "not json").unwrap();
    let broken = cellbox(&["run", dir.path().join("broken.ipynb").to_str().unwrap()]);
    assert_eq!(broken.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&broken.stderr).contains("not a Jupyter notebook"));
}
