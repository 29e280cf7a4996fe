"""`AsyncSandbox`: the same calls awaited, callbacks on the event loop."""

import asyncio
import threading

import pytest

from cellbox import AsyncSandbox, TimeoutException

pytestmark = pytest.mark.asyncio


async def test_cells_with_async_and_plain_callbacks():
    loop_thread = threading.get_ident()
    lines, results = [], []

    async def on_stdout(message):
        assert threading.get_ident() == loop_thread
        await asyncio.sleep(0)
        lines.append(message.line)

    async with await AsyncSandbox.create(backend="wasm") as sandbox:
        await sandbox.run_code("x = 20")
        execution = await sandbox.run_code("print('hi'); x * 2 + 2", on_stdout=on_stdout, on_result=results.append)
        assert execution.text == "42"
        assert lines == ["hi\n"]
        assert [r.text for r in results] == ["42"]


async def test_two_sandboxes_run_at_once():
    a, b = await asyncio.gather(AsyncSandbox.create(backend="wasm"), AsyncSandbox.create(backend="wasm"))
    try:
        first, second = await asyncio.gather(
            a.run_code("import time; time.sleep(0.5); 'a'"),
            b.run_code("import time; time.sleep(0.5); 'b'"),
        )
        assert (first.text, second.text) == ("a", "b")
    finally:
        await asyncio.gather(a.kill(), b.kill())


async def test_timeouts_and_cancellation_leave_the_sandbox_usable():
    async with await AsyncSandbox.create(backend="wasm") as sandbox:
        with pytest.raises(TimeoutException):
            await sandbox.run_code("while True: pass", timeout=1)
        task = asyncio.ensure_future(sandbox.run_code("while True: pass", timeout=0))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await sandbox.run_code("6 * 7")).text == "42"
