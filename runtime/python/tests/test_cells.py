"""Cells on the fast path: state, results, output callbacks, errors, limits."""

import threading

import pytest

from cellbox import (
    Execution,
    InvalidArgumentException,
    OutputMessage,
    Result,
    Sandbox,
    SandboxNotFoundException,
    TimeoutException,
)


def test_variables_persist_between_cells(fast):
    fast.run_code("x = 41")
    execution = fast.run_code("x + 1")
    assert isinstance(execution, Execution)
    assert execution.text == "42"
    assert execution.results[0].is_main_result
    assert execution.execution_count == 2
    assert fast.backend == "wasm"


def test_output_reaches_callbacks_in_order_on_the_calling_thread(fast):
    seen = []
    caller = threading.get_ident()

    def on_stdout(message: OutputMessage):
        assert threading.get_ident() == caller
        seen.append(("out", message.line, message.error))

    def on_stderr(message: OutputMessage):
        seen.append(("err", message.line, message.error))

    results = []
    execution = fast.run_code(
        "import sys\nprint('one')\nprint('two', file=sys.stderr)\n7 * 6",
        on_stdout=on_stdout,
        on_stderr=on_stderr,
        on_result=results.append,
    )
    assert seen == [("out", "one\n", False), ("err", "two\n", True)]
    assert execution.logs.stdout == ["one\n"]
    assert execution.logs.stderr == ["two\n"]
    assert [r.text for r in results] == ["42"] and isinstance(results[0], Result)
    assert execution.results == results


def test_exceptions_are_data_and_the_session_goes_on(fast):
    errors = []
    fast.run_code("y = 5")
    execution = fast.run_code("1 / 0", on_error=errors.append)
    assert execution.error.name == "ZeroDivisionError"
    assert "division by zero" in execution.error.value
    assert "Traceback" in execution.error.traceback
    assert errors == [execution.error]
    assert fast.run_code("def broken(:").error.name == "SyntaxError"
    assert fast.run_code("y").text == "5"


def test_json_forms_match_e2b(fast):
    import json

    execution = fast.run_code("print('p'); 3")
    data = json.loads(execution.to_json())
    assert data["results"] == [{"text": "3"}]
    assert json.loads(data["logs"]) == {"stdout": ["p\n"], "stderr": []}
    assert data["error"] is None


def test_a_runaway_cell_times_out_and_the_sandbox_stays_usable(fast):
    with pytest.raises(TimeoutException):
        fast.run_code("while True: pass", timeout=1)
    assert fast.run_code("2 + 2").text == "4"


def test_huge_output_is_cut_not_buffered_without_bound(fast):
    execution = fast.run_code("print('x' * 50_000_000)")
    printed = sum(len(chunk) for chunk in execution.logs.stdout)
    assert 0 < printed < 50_000_000
    assert fast.run_code("1").text == "1"


def test_the_host_files_are_not_visible(fast):
    execution = fast.run_code("open('/etc/passwd').read()")
    assert execution.error is not None
    assert execution.text is None


def test_bad_arguments_are_refused_clearly(fast):
    with pytest.raises(InvalidArgumentException, match="unknown language"):
        fast.run_code("1", language="cobol")
    with pytest.raises(InvalidArgumentException, match="unknown backend"):
        Sandbox.create(backend="nonsense")


def test_a_killed_sandbox_says_so(fast):
    sandbox_id = fast.sandbox_id
    assert fast.kill() is True
    assert fast.kill() is False
    assert Sandbox.kill(sandbox_id) is False
    with pytest.raises(SandboxNotFoundException):
        fast.run_code("1")


def test_sandboxes_are_listed_and_reached_by_id(fast):
    listed = Sandbox.list().next_items()
    assert fast.sandbox_id in [info.sandbox_id for info in listed]
    assert Sandbox.connect(fast.sandbox_id) is fast
    assert Sandbox.get_info(fast.sandbox_id).backend == "wasm"


def test_context_manager_kills_at_the_end():
    with Sandbox.create(backend="wasm") as sandbox:
        assert sandbox.run_code("1 + 1").text == "2"
    assert not sandbox.is_running()


def test_cells_release_the_gil(fast):
    # While a cell sleeps in the sandbox, this thread keeps running Python.
    ticks = 0
    done = threading.Event()

    def run():
        fast.run_code("import time; time.sleep(1)")
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    while not done.is_set():
        ticks += 1
    worker.join()
    assert ticks > 1000


def test_two_sandboxes_at_once_keep_their_own_state():
    with Sandbox.create(backend="wasm") as a, Sandbox.create(backend="wasm") as b:
        a.run_code("name = 'a'")
        b.run_code("name = 'b'")
        results = {}
        threads = [
            threading.Thread(target=lambda s=s, k=k: results.__setitem__(k, s.run_code("name * 3").text))
            for k, s in (("a", a), ("b", b))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {"a": "aaa", "b": "bbb"}


def test_forks_and_snapshots_carry_state(fast, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLBOX_SNAPSHOT_DIR", str(tmp_path / "snapshots"))
    fast.run_code("def greet(n): return 'hello ' + n\nwho = 'ada'")
    (fork,) = fast.fork()
    try:
        assert fork.run_code("greet(who)").text == "hello ada"
        fork.run_code("who = 'bob'")
        assert fast.run_code("who").text == "ada"
    finally:
        fork.kill()
    info = fast.create_snapshot()
    assert (tmp_path / "snapshots" / info.snapshot_id).is_dir()
    try:
        assert info.snapshot_id in [s.snapshot_id for s in Sandbox.list_snapshots()]
        with Sandbox.create(info.snapshot_id, backend="wasm") as copy:
            assert copy.run_code("greet('eve')").text == "hello eve"
    finally:
        assert Sandbox.delete_snapshot(info.snapshot_id)


def test_a_sandbox_killed_under_a_running_cell_ends_the_call_as_e2b_does(fast):
    timer = threading.Timer(1.0, fast.kill)
    timer.start()
    try:
        with pytest.raises(TimeoutException, match="sandbox was killed while the request was in progress"):
            fast.run_code("import time; time.sleep(60)", timeout=120)
    finally:
        timer.cancel()
    assert not fast.is_running()
