"""Times `run_code("1 + 1")` through E2B's official Python SDK (debug mode:
localhost:49999, which `cellbox serve` answers). Prints the timings of the
measured runs, in seconds, as a JSON list.

Usage: python e2b_sdk_run_code.py WARMUP RUNS
"""
import json
import os
import sys
import time

os.environ["E2B_DEBUG"] = "true"

from e2b_code_interpreter import Sandbox  # noqa: E402

warmup, runs = int(sys.argv[1]), int(sys.argv[2])
sbx = Sandbox.create()
for _ in range(warmup):
    assert sbx.run_code("1 + 1").text == "2"
times = []
for _ in range(runs):
    started = time.perf_counter()
    execution = sbx.run_code("1 + 1")
    times.append(time.perf_counter() - started)
    assert execution.text == "2", execution
print(json.dumps(times))
