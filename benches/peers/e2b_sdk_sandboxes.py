"""Times sandbox lifecycles through E2B's official Python SDK against
`cellbox serve` as E2B's cloud (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY
set by the caller). Prints a JSON object of timing lists, in seconds:

- create_first_result: Sandbox.create() then run_code("1 + 1") (fast path)
- create_first_command: Sandbox.create() then commands.run("true") (heavy guest)
- pause_resume: pause() then Sandbox.connect() then run_code (heavy guest)
- parallel_8 / sequential_8: eight create → run_code → kill, at once / in turn
- fork_fast: fork() then run_code on the fork, of a fast-path sandbox
- fork_heavy: the same of a sandbox on the heavy guest (numpy imported)
- snapshot_start: create_snapshot(), Sandbox.create(it), run_code (heavy guest)

Usage: python e2b_sdk_sandboxes.py RUNS
"""
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.pop("E2B_DEBUG", None)

from e2b_code_interpreter import Sandbox  # noqa: E402

runs = int(sys.argv[1])
timings = {key: [] for key in
           ["create_first_result", "create_first_command", "pause_resume", "parallel_8", "sequential_8",
            "fork_fast", "fork_heavy", "snapshot_start"]}


def timed(key, action):
    started = time.perf_counter()
    result = action()
    timings[key].append(time.perf_counter() - started)
    return result


def one_cell():
    sbx = Sandbox.create()
    assert sbx.run_code("1 + 1").text == "2"
    sbx.kill()


Sandbox.create().kill()  # warm-up: the server loads its WebAssembly engine once
for _ in range(runs):
    sbx = timed("create_first_result", lambda: (lambda s: (s, s.run_code("1 + 1")))(Sandbox.create()))[0]
    sbx.kill()
for _ in range(max(1, runs // 3)):
    sbx = timed("create_first_command", lambda: (lambda s: (s, s.commands.run("true")))(Sandbox.create()))[0]
    sbx.run_code("kept = 42")
    for _ in range(3):
        def pause_resume():
            sbx.pause()
            again = Sandbox.connect(sbx.sandbox_id)
            assert again.run_code("kept").text == "42"
        timed("pause_resume", pause_resume)
    sbx.kill()
for _ in range(max(1, runs // 3)):
    with ThreadPoolExecutor(8) as pool:
        timed("parallel_8", lambda: list(pool.map(lambda _: one_cell(), range(8))))
    timed("sequential_8", lambda: [one_cell() for _ in range(8)])


def fork_and_run(parent):
    fork = parent.fork(timeout=60)[0]
    assert fork.run_code("kept").text == "42"
    return fork


for key, setup in [("fork_fast", "kept = 42"), ("fork_heavy", "import numpy as np; kept = int(np.int64(42))")]:
    parent = Sandbox.create()
    parent.run_code(setup)
    forks = [timed(key, lambda: fork_and_run(parent)) for _ in range(max(1, runs // 3))]
    for sbx in forks + [parent]:
        sbx.kill()

parent = Sandbox.create()
parent.run_code("import numpy as np; kept = int(np.int64(42))")
for _ in range(max(1, runs // 3)):
    def snapshot_start():
        snapshot = parent.create_snapshot()
        started = Sandbox.create(snapshot.snapshot_id)
        assert started.run_code("kept").text == "42"
        return started, snapshot
    started, snapshot = timed("snapshot_start", snapshot_start)
    started.kill()
    Sandbox.delete_snapshot(snapshot.snapshot_id)
parent.kill()
print(json.dumps(timings))
