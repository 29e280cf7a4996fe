"""`AsyncSandbox`: E2B's async code-interpreter sandbox, in this process.

Each call runs the sync sandbox's call in a worker thread (the GIL is
released while the sandbox works); callbacks run on the event loop, and
may be coroutines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
from typing import Any, Callable, Dict, List, Optional, Union

from . import _cells
from ._commands import CommandHandle, CommandResult, PtySize, command
from ._files import FilesystemEvent, parse_event
from .exceptions import CommandExitException, translated
from .models import Context, Execution, ExecutionError, OutputHandlerWithAsync, OutputMessage, Result
from .sandbox import Sandbox

# Worker threads wait for sandboxes, often long (a background command's
# output, say), so they get their own pool rather than the loop's small default one.
_WORKERS = concurrent.futures.ThreadPoolExecutor(max_workers=256, thread_name_prefix="cellbox")


async def _in_thread(function: Callable, *args: Any, **kwargs: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_WORKERS, functools.partial(function, *args, **kwargs))


async def _call(handler: Optional[Callable], value: Any) -> None:
    if handler is not None:
        outcome = handler(value)
        if inspect.isawaitable(outcome):
            await outcome


async def _next(stream) -> Any:
    """The stream's next event; a cancelled wait stops the run."""
    try:
        with translated():
            return await _in_thread(stream.next)
    except asyncio.CancelledError:
        stream.interrupt()
        raise


class _Async:
    """The methods of a sync object (files, say) as coroutines."""

    def __init__(self, target: Any):
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await _in_thread(attribute, *args, **kwargs)

        call.__doc__ = attribute.__doc__
        return call


class AsyncCommandHandle:
    """A started command. Its output goes to the callbacks on the event loop
    as it arrives, whether or not anyone waits."""

    def __init__(self, handle: CommandHandle, on_stdout=None, on_stderr=None, on_pty=None):
        self._handle = handle
        self._handlers = (on_stdout, on_stderr, on_pty)
        self._pump = asyncio.ensure_future(self._follow())

    @property
    def pid(self) -> int:
        return self._handle.pid

    async def _follow(self) -> CommandResult:
        while True:
            item = await _next(self._handle._stream)
            if item is None:
                break
            for handler, value in zip(self._handlers, self._handle._chunk(*item)):
                if value is not None:
                    await _call(handler, value)
        return await _in_thread(self._handle._finish)

    async def wait(self) -> CommandResult:
        """Waits for the end; raises `CommandExitException` if the exit code is not 0."""
        result = await asyncio.shield(self._pump)
        if result.exit_code != 0:
            raise CommandExitException(result.stdout, result.stderr, result.exit_code, result.error)
        return result

    async def kill(self) -> bool:
        return await _in_thread(self._handle.kill)

    async def send_stdin(self, data: Union[str, bytes]) -> None:
        await _in_thread(self._handle.send_stdin, data)

    async def close_stdin(self) -> None:
        await _in_thread(self._handle.close_stdin)

    async def disconnect(self) -> None:
        self._pump.cancel()


class AsyncWatchHandle:
    """A running watch whose changes go to `on_event` on the event loop."""

    def __init__(self, stream, on_event, on_exit=None):
        self._stream = stream
        self._pump = asyncio.ensure_future(self._follow(on_event, on_exit))

    async def _follow(self, on_event, on_exit) -> None:
        error: Optional[BaseException] = None
        try:
            while True:
                item = await _next(self._stream)
                if item is None:
                    break
                await _call(on_event, parse_event(item[1]))
        except Exception as failure:  # reported to on_exit, as E2B's handle does
            error = failure
        await _call(on_exit, error)

    async def stop(self) -> None:
        self._stream.interrupt()
        await asyncio.shield(self._pump)


class AsyncFilesystem(_Async):
    async def watch_dir(
        self,
        path: str,
        on_event: OutputHandlerWithAsync[FilesystemEvent],
        recursive: bool = False,
        on_exit: Optional[Callable[[Optional[Exception]], Any]] = None,
        **_: Any,
    ) -> AsyncWatchHandle:
        handle = await _in_thread(self._target.watch_dir, path, recursive)
        return AsyncWatchHandle(handle._stream, on_event, on_exit)


class AsyncCommands(_Async):
    async def run(
        self,
        cmd: str,
        background: bool = False,
        envs: Optional[Dict[str, str]] = None,
        user: Optional[str] = None,
        cwd: Optional[str] = None,
        on_stdout: Optional[OutputHandlerWithAsync[str]] = None,
        on_stderr: Optional[OutputHandlerWithAsync[str]] = None,
        stdin: Optional[bool] = None,
        timeout: Optional[float] = None,
        **_: Any,
    ) -> Union[CommandResult, AsyncCommandHandle]:
        native = self._target._native
        with translated():
            stream = await _in_thread(native.start_command, command(cmd, envs, cwd, user, timeout))
        handle = AsyncCommandHandle(CommandHandle(native, stream), on_stdout, on_stderr)
        return handle if background else await handle.wait()


class AsyncPty(_Async):
    async def create(
        self,
        size: PtySize,
        on_data: OutputHandlerWithAsync[bytes],
        user: Optional[str] = None,
        cwd: Optional[str] = None,
        envs: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
        **_: Any,
    ) -> AsyncCommandHandle:
        handle = await _in_thread(self._target.create, size, user=user, cwd=cwd, envs=envs, timeout=timeout)
        return AsyncCommandHandle(handle, on_pty=on_data)


class AsyncSandbox:
    """The async form of `Sandbox`: the same calls, awaited."""

    default_template = Sandbox.default_template

    def __init__(self, sandbox: Sandbox):
        self._sandbox = sandbox
        self.files = AsyncFilesystem(sandbox.files)
        self.commands = AsyncCommands(sandbox.commands)
        self.pty = AsyncPty(sandbox.pty)

    @classmethod
    async def create(cls, *args: Any, **kwargs: Any) -> "AsyncSandbox":
        """Starts a sandbox; takes `Sandbox.create`'s arguments."""
        return cls(await _in_thread(Sandbox.create, *args, **kwargs))

    @classmethod
    async def connect(cls, sandbox_id: str, timeout: Optional[float] = None, **_: Any) -> "AsyncSandbox":
        """Resumes this process's sandbox `sandbox_id` if paused, and returns it."""
        return cls(await _in_thread(Sandbox.connect, sandbox_id, timeout))

    @property
    def sandbox_id(self) -> str:
        return self._sandbox.sandbox_id

    async def run_code(
        self,
        code: str,
        language: Optional[str] = None,
        context: Optional[Context] = None,
        on_stdout: Optional[OutputHandlerWithAsync[OutputMessage]] = None,
        on_stderr: Optional[OutputHandlerWithAsync[OutputMessage]] = None,
        on_result: Optional[OutputHandlerWithAsync[Result]] = None,
        on_error: Optional[OutputHandlerWithAsync[ExecutionError]] = None,
        envs: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
        request_timeout: Optional[float] = None,
    ) -> Execution:
        """Runs `code` as `Sandbox.run_code` does; callbacks run on the event
        loop; cancelling the task interrupts the cell."""
        native = self._sandbox._native
        stream = await _in_thread(_cells.start, native, code, language, context, envs, timeout)
        fold = _cells.Fold(on_stdout, on_stderr, on_result, on_error)
        while True:
            item = await _next(stream)
            if item is None:
                break
            handler, value = fold.add(*item)
            try:
                await _call(handler, value)
            except BaseException:
                stream.interrupt()
                raise
        return fold.finish(await _in_thread(_cells.outcome, native, stream))

    async def create_code_context(self, cwd: Optional[str] = None, language: Optional[str] = None, **_: Any) -> Context:
        return await _in_thread(self._sandbox.create_code_context, cwd, language)

    async def list_code_contexts(self) -> List[Context]:
        return await _in_thread(self._sandbox.list_code_contexts)

    async def restart_code_context(self, context: Union[Context, str]) -> None:
        await _in_thread(self._sandbox.restart_code_context, context)

    async def remove_code_context(self, context: Union[Context, str]) -> None:
        await _in_thread(self._sandbox.remove_code_context, context)

    async def is_running(self, **_: Any) -> bool:
        return await _in_thread(self._sandbox.is_running)

    async def kill(self, **_: Any) -> bool:
        return await _in_thread(self._sandbox.kill)

    async def set_timeout(self, timeout: float, **_: Any) -> None:
        await _in_thread(self._sandbox.set_timeout, timeout)

    async def get_info(self, **_: Any):
        return await _in_thread(self._sandbox.get_info)

    async def get_metrics(self, **kwargs: Any):
        return await _in_thread(self._sandbox.get_metrics, **kwargs)

    async def pause(self, **_: Any) -> bool:
        return await _in_thread(self._sandbox.pause)

    async def fork(self, timeout: Optional[float] = None, count: Optional[int] = None, **_: Any) -> List[Any]:
        forks = await _in_thread(self._sandbox.fork, timeout, count)
        return [AsyncSandbox(f) if isinstance(f, Sandbox) else f for f in forks]

    async def create_snapshot(self, name: Optional[str] = None, **_: Any):
        return await _in_thread(self._sandbox.create_snapshot, name)

    @property
    def backend(self) -> str:
        return self._sandbox.backend

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.kill()

    def __repr__(self) -> str:
        return f"AsyncSandbox(sandbox_id={self.sandbox_id!r})"
