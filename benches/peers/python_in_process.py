"""Times `Sandbox.create()` → first result through cellbox's Python package
(in this process) and through E2B's official SDK against `cellbox serve`
(E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY set by the caller). Both packages
are installed in this Python. Prints a JSON object of timing lists, in seconds:

- in_process_fast / sdk_fast: create → run_code("1 + 1") (the fast path)
- in_process_heavy / sdk_heavy: create → run_code("import numpy\\n1 + 1")
  (the heavy guest)

Usage: python python_in_process.py RUNS
"""
import json
import os
import sys
import time

os.environ.pop("E2B_DEBUG", None)

import cellbox  # noqa: E402
import e2b_code_interpreter  # noqa: E402

runs = int(sys.argv[1])
CELLS = {"fast": ("1 + 1", "2"), "heavy": ("import numpy\n1 + 1", "2")}
timings = {f"{way}_{path}": [] for way in ("in_process", "sdk") for path in CELLS}
timings["warm-up"] = []


def create_and_run(create, key, cell, expected):
    started = time.perf_counter()
    sandbox = create()
    text = sandbox.run_code(cell).text
    timings[key].append(time.perf_counter() - started)
    assert text == expected, text
    sandbox.kill()


# Warm-ups: each side loads its WebAssembly engine and starts its warm template once.
for create in (cellbox.Sandbox.create, e2b_code_interpreter.Sandbox.create):
    for cell, expected in CELLS.values():
        create_and_run(create, "warm-up", cell, expected)
timings.pop("warm-up")
for path, (cell, expected) in CELLS.items():
    for _ in range(runs):
        create_and_run(cellbox.Sandbox.create, f"in_process_{path}", cell, expected)
        create_and_run(e2b_code_interpreter.Sandbox.create, f"sdk_{path}", cell, expected)
print(json.dumps(timings))
