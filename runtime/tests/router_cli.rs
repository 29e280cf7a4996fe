//! `cellbox run` with the router (`--backend auto`, the default): which
//! backend each cell ran on, and the session's state across a move. The
//! heavy backend here is the namespace sandbox (root needed) unless KVM can
//! run the microVM.

use std::process::{Command, Output};

use serde_json::Value;

fn auto(cells: &[&str]) -> Vec<Value> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cellbox"));
    command.args(["run", "--json"]);
    for cell in cells {
        command.args(["-c", cell]);
    }
    let output: Output = command.output().expect("running cellbox");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn heavy(line: &Value) -> bool {
    line["backend"] == "namespace" || line["backend"] == "vm"
}

#[test]
fn a_numpy_cell_moves_the_session_and_keeps_its_names() {
    let lines = auto(&["x = 2", "import numpy as np; float(np.float64(x) * 21)"]);
    assert_eq!(lines[0]["backend"], "wasm");
    assert!(heavy(&lines[1]), "{lines:?}");
    assert_eq!(lines[1]["results"][0]["text"], "42.0");
    assert_eq!(lines[1]["execution_count"], 2);
}

#[test]
fn plain_python_stays_on_the_fast_path() {
    let lines = auto(&["x = 1", "x + 1"]);
    assert_eq!(lines[0]["backend"], "wasm");
    assert_eq!(lines[1]["backend"], "wasm");
    assert_eq!(lines[1]["results"][0]["text"], "2");
}

#[test]
fn names_defined_on_the_fast_path_are_there_after_the_move() {
    let lines = auto(&[
        r#"import json; d = {"a": 1}"#,
        "import pandas as pd; pd.DataFrame([d]).shape",
    ]);
    assert_eq!(lines[1]["results"][0]["text"], "(1, 1)");
    assert!(heavy(&lines[1]));
}

#[test]
fn side_effects_before_a_move_happen_once() {
    let lines = auto(&[r#"print("once")"#, "import numpy; print('heavy')"]);
    let all: String = lines
        .iter()
        .flat_map(|l| l["logs"]["stdout"].as_array().unwrap().iter())
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(all.matches("once").count(), 1, "{lines:?}");
    assert!(all.contains("heavy"));
}
