"""The heavy backend, in process: rich results, charts, the move from the
fast path, contexts, files, commands and terminals."""

import asyncio
import base64
import threading
import time

import pytest

from cellbox import (
    AsyncSandbox,
    CommandExitException,
    FileNotFoundException,
    FilesystemEventType,
    FileType,
    LineChart,
    PtySize,
    TimeoutException,
)


def test_a_session_moves_to_the_heavy_backend_with_its_state(sandbox, heavy_backend):
    sandbox.run_code("base = 40")
    assert sandbox.backend == "wasm"
    execution = sandbox.run_code("import numpy as np\nint(np.int64(base) + 2)")
    assert execution.text == "42"
    assert sandbox.backend == heavy_backend


def test_dataframes_and_charts_come_back_rich(sandbox):
    frame = sandbox.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})")
    result = frame.results[0]
    assert "<table" in result.html
    assert result.data is not None
    plot = sandbox.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9], label='squares')\nplt.title('growth')\nplt.show()"
    )
    (image,) = plot.results
    assert base64.b64decode(image.png).startswith(b"\x89PNG")
    assert isinstance(image.chart, LineChart)
    assert image.chart.title == "growth"
    assert [tuple(p) for p in image.chart.elements[0].points][:2] == [(1, 1), (2, 4)]
    assert "png" in image.formats() and "chart" in image.formats()


def test_a_runaway_cell_is_interrupted_and_the_kernel_keeps_its_state(sandbox):
    sandbox.run_code("import numpy\nkept = 'yes'")
    with pytest.raises(TimeoutException):
        sandbox.run_code("while True: pass", timeout=2)
    assert sandbox.run_code("kept").text == "yes"


def test_contexts_in_other_languages(sandbox):
    context = sandbox.create_code_context(language="javascript")
    assert context.language == "javascript"
    sandbox.run_code("let n = 20", context=context)
    assert sandbox.run_code("n * 2 + 2", context=context).text == "42"
    assert context.id in [c.id for c in sandbox.list_code_contexts()]
    assert sandbox.run_code("echo $((6 * 7))", language="bash").logs.stdout == ["42\n"]
    sandbox.remove_code_context(context)
    assert context.id not in [c.id for c in sandbox.list_code_contexts()]


def test_files_round_trip_and_cells_see_them(sandbox):
    files = sandbox.files
    info = files.write("/home/user/data/notes.txt", "hello\n")
    assert info.name == "notes.txt" and info.path == "/home/user/data/notes.txt"
    assert files.read("/home/user/data/notes.txt") == "hello\n"
    files.write("/home/user/data/blob.bin", bytes(range(256)))
    assert files.read("/home/user/data/blob.bin", format="bytes") == bytearray(range(256))
    assert sandbox.run_code("open('/home/user/data/notes.txt').read()").text == "hello\\n"
    listed = {entry.name: entry for entry in files.list("/home/user/data")}
    assert set(listed) == {"notes.txt", "blob.bin"}
    assert listed["blob.bin"].size == 256 and listed["blob.bin"].type is FileType.FILE
    assert (listed["blob.bin"].owner, listed["blob.bin"].group) == ("user", "user")
    assert files.make_dir("/home/user/data/sub") is True
    assert files.make_dir("/home/user/data/sub") is False
    assert files.get_info("/home/user/data/sub").type is FileType.DIR
    moved = files.rename("/home/user/data/notes.txt", "/home/user/data/sub/moved.txt")
    assert moved.path == "/home/user/data/sub/moved.txt"
    assert not files.exists("/home/user/data/notes.txt")
    assert [e.name for e in files.list("/home/user/data", depth=2) if e.name == "moved.txt"] == ["moved.txt"]
    tree = [e.path for e in files.list("/home/user/data", depth=2)]
    assert tree == ["/home/user/data/blob.bin", "/home/user/data/sub", "/home/user/data/sub/moved.txt"]
    # Relative paths are the user's home's; a stream reads in chunks.
    files.write("relative.txt", "r" * 100_000)
    with files.read("/home/user/relative.txt", format="stream") as stream:
        assert b"".join(stream) == b"r" * 100_000
    files.remove("/home/user/data/sub")
    files.remove("/home/user/data/sub")  # missing: no error, as in E2B
    with pytest.raises(FileNotFoundException):
        files.read("/home/user/data/sub/moved.txt")


def test_metadata_stays_on_written_files(sandbox):
    info = sandbox.files.write("/home/user/tagged.txt", "x", metadata={"team": "blue"})
    assert info.metadata == {"team": "blue"}
    assert sandbox.files.get_info("/home/user/tagged.txt").metadata == {"team": "blue"}
    listed = {e.name: e for e in sandbox.files.list("/home/user")}
    assert listed["tagged.txt"].metadata == {"team": "blue"}


def test_a_watched_folder_reports_its_changes(sandbox):
    sandbox.files.make_dir("/home/user/watched")
    handle = sandbox.files.watch_dir("/home/user/watched")
    sandbox.files.write("/home/user/watched/new.txt", "hello")
    seen = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(e.name == "new.txt" for e in seen):
        seen += handle.get_new_events()
        time.sleep(0.05)
    handle.stop()
    kinds = {e.type for e in seen if e.name == "new.txt"}
    assert kinds & {FilesystemEventType.CREATE, FilesystemEventType.WRITE}, seen


def test_commands_stream_fail_and_run_in_the_background(sandbox):
    chunks = []
    result = sandbox.commands.run("echo out; echo err >&2; echo $GREETING", envs={"GREETING": "hi"}, on_stdout=chunks.append)
    assert result.exit_code == 0
    assert result.stdout == "out\nhi\n" and result.stderr == "err\n"
    assert "".join(chunks) == "out\nhi\n"
    with pytest.raises(CommandExitException) as failed:
        sandbox.commands.run("echo no >&2; exit 3")
    assert failed.value.exit_code == 3 and failed.value.stderr == "no\n"
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30", timeout=1)
    with pytest.raises(TimeoutException):
        for _ in sandbox.commands.run("sleep 30", background=True, timeout=1):
            pass
    assert sandbox.commands.run("whoami").stdout == "user\n"

    handle = sandbox.commands.run("cat", background=True)
    handle.send_stdin("typed\n")
    handle.close_stdin()
    assert handle.wait().stdout == "typed\n"
    sleeper = sandbox.commands.run("sleep 600", background=True)
    assert sleeper.pid in [p.pid for p in sandbox.commands.list()]
    assert sandbox.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException):
        sleeper.wait()


def test_a_terminal_echoes_what_is_typed(sandbox):
    terminal = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.send_stdin(terminal.pid, b"echo $((40 + 2)); exit\n")
    output = bytearray()
    try:
        terminal.wait(on_pty=output.extend)
    except CommandExitException:
        pass  # the shell's own exit status
    assert b"42" in output


def test_two_heavy_sandboxes_at_once_from_threads(sandbox):
    with type(sandbox).create() as other:
        answers = {}

        def run(name, box):
            box.run_code(f"import numpy\nwho = '{name}'")
            answers[name] = box.run_code("who").text

        threads = [threading.Thread(target=run, args=(n, b)) for n, b in (("one", sandbox), ("two", other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers == {"one": "one", "two": "two"}


@pytest.mark.asyncio
async def test_async_commands_call_back_on_the_loop(heavy_backend):
    async with await AsyncSandbox.create() as sandbox:
        seen = []

        async def on_stdout(chunk):
            seen.append(chunk)

        handle = await sandbox.commands.run("for i in 1 2 3; do echo $i; done", background=True, on_stdout=on_stdout)
        result = await handle.wait()
        assert result.stdout == "1\n2\n3\n"
        assert "".join(seen) == "1\n2\n3\n"
        await sandbox.files.make_dir("/home/user/seen")
        changes = []
        watch = await sandbox.files.watch_dir("/home/user/seen", on_event=changes.append)
        await sandbox.files.write("/home/user/seen/a.txt", "async")
        assert await sandbox.files.read("/home/user/seen/a.txt") == "async"
        for _ in range(300):
            if any(c.name == "a.txt" for c in changes):
                break
            await asyncio.sleep(0.05)
        await watch.stop()
        assert any(c.name == "a.txt" for c in changes), changes
        assert (await sandbox.run_code("import numpy; 1 + 1")).text == "2"


def test_the_heavy_sandbox_sees_no_host_files_and_no_host_network(sandbox, tmp_path):
    # A file only the host has, and a server only the host's loopback has.
    secret = tmp_path / "host-secret.txt"
    secret.write_text("not for the sandbox")
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        probe = sandbox.run_code(
            "import os, socket\n"
            f"seen = os.path.exists({str(secret)!r})\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); reached = True\n"
            "except OSError:\n"
            "    reached = False\n"
            "(seen, reached)"
        )
    finally:
        server.close()
    assert probe.error is None, probe.error
    assert sandbox.backend != "wasm"
    assert probe.text == "(False, False)"


def test_spare_sandboxes_stop_with_the_process(heavy_backend):
    if heavy_backend != "namespace":
        pytest.skip("spares are kept for the namespace sandbox only")
    import os
    import pathlib
    import shutil
    import subprocess
    import sys
    import tempfile

    # Not pytest's tmp_path: the sandbox's own ids must be able to pass through it.
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="cellbox-spares-"))
    tmp_path.chmod(0o755)

    # The child's sandboxes keep their folders in its TMPDIR: after its first
    # sandbox ends, the spare started behind it is the one left running.
    script = (
        "import os, time\n"
        "from cellbox import Sandbox\n"
        "with Sandbox.create(backend='namespace') as s:\n"
        "    assert s.run_code('1 + 1').text == '2'\n"
        "for _ in range(200):\n"
        "    if os.listdir(os.environ['TMPDIR']):\n"
        "        break\n"
        "    time.sleep(0.1)\n"
        "assert os.listdir(os.environ['TMPDIR']), 'no spare started'\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path), "CELLBOX_SPARES": "1"}
    try:
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
        assert list(tmp_path.iterdir()) == []
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
