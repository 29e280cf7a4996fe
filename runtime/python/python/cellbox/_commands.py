"""`sandbox.commands` and `sandbox.pty`: E2B's `Commands`, `CommandHandle`
and `Pty` on a cellbox sandbox. Output callbacks run on the thread that
waits for the command."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from .exceptions import CommandExitException, translated

# E2B's default for commands that set no timeout, in seconds.
DEFAULT_COMMAND_TIMEOUT = 60


@dataclass
class CommandResult:
    """How a command ended and what it printed."""

    stdout: str
    stderr: str
    exit_code: int
    error: Optional[str] = None


@dataclass
class ProcessInfo:
    """A command running in the sandbox."""

    pid: int
    cmd: str
    tag: Optional[str] = None
    args: List[str] = field(default_factory=list)
    envs: Dict[str, str] = field(default_factory=dict)
    cwd: Optional[str] = None


@dataclass
class PtySize:
    rows: int
    cols: int


class CommandHandle:
    """A started command: wait for it, read its output, feed its stdin, kill it.

    Iterating gives ``(stdout, stderr, pty)`` tuples as output arrives, one
    of them set (`pty` is bytes, for terminals).
    """

    def __init__(
        self,
        native,
        stream,
        *,
        pty: bool = False,
        on_stdout: Optional[Callable[[str], object]] = None,
        on_stderr: Optional[Callable[[str], object]] = None,
        on_pty: Optional[Callable[[bytes], object]] = None,
    ):
        self._native = native
        self._stream = stream
        self._pty = pty
        self._handlers = (on_stdout, on_stderr, on_pty)
        self._stdout: List[str] = []
        self._stderr: List[str] = []
        self._result: Optional[CommandResult] = None

    @property
    def pid(self) -> int:
        return self._stream.pid

    def _chunk(self, kind: str, text: str) -> Tuple[Optional[str], Optional[str], Optional[bytes]]:
        if self._pty:
            return None, None, text.encode("utf-8")
        (self._stdout if kind == "stdout" else self._stderr).append(text)
        return (text, None, None) if kind == "stdout" else (None, text, None)

    def __iter__(self) -> Iterator[Tuple[Optional[str], Optional[str], Optional[bytes]]]:
        """Output as it arrives; a command that runs past its timeout raises
        `TimeoutException` at the end."""
        while True:
            with translated():
                item = self._stream.next()
            if item is None:
                break
            yield self._chunk(*item)
        self._finish()

    def _finish(self) -> CommandResult:
        if self._result is None:
            with translated():
                raw = json.loads(self._stream.outcome())
            self._result = CommandResult(
                stdout=raw["stdout"] if not self._stdout else "".join(self._stdout),
                stderr=raw["stderr"] if not self._stderr else "".join(self._stderr),
                exit_code=raw["exit_code"],
            )
        return self._result

    def wait(
        self,
        on_stdout: Optional[Callable[[str], object]] = None,
        on_stderr: Optional[Callable[[str], object]] = None,
        on_pty: Optional[Callable[[bytes], object]] = None,
    ) -> CommandResult:
        """Waits for the end, passing output to the callbacks as it arrives;
        raises `CommandExitException` if the exit code is not 0."""
        handlers = (
            on_stdout or self._handlers[0],
            on_stderr or self._handlers[1],
            on_pty or self._handlers[2],
        )
        for chunk in self:
            for handler, value in zip(handlers, chunk):
                if handler is not None and value is not None:
                    handler(value)
        result = self._finish()
        if result.exit_code != 0:
            raise CommandExitException(result.stdout, result.stderr, result.exit_code, result.error)
        return result

    def kill(self) -> bool:
        """Kills the command and its process group; False if it had ended."""
        with translated():
            return self._native.kill_command(self.pid)

    def send_stdin(self, data: Union[str, bytes]) -> None:
        with translated():
            self._native.send_stdin(self.pid, data.encode() if isinstance(data, str) else bytes(data))

    def close_stdin(self) -> None:
        with translated():
            self._native.close_stdin(self.pid)

    def disconnect(self) -> None:
        """Stops following the command's output; the command goes on."""
        self._stream = _Ended(self.pid)


class _Ended:
    """The stream of a handle that no longer follows its command."""

    def __init__(self, pid: int):
        self.pid = pid

    def next(self):
        return None

    def outcome(self) -> str:
        return json.dumps({"stdout": "", "stderr": "", "exit_code": -1})


def command(
    cmd: str,
    envs: Optional[Dict[str, str]],
    cwd: Optional[str],
    user: Optional[str],
    timeout: Optional[float],
    pty: Optional[Tuple[int, int]] = None,
) -> dict:
    """The native `start_command`'s argument; `timeout` is E2B's (default 60 s, 0 for none)."""
    seconds = None if timeout == 0 else (DEFAULT_COMMAND_TIMEOUT if timeout is None else timeout)
    return {"cmd": cmd, "envs": envs, "cwd": cwd, "user": user, "timeout": seconds, "pty": pty}


class Commands:
    """Shell commands in the sandbox (`/bin/sh -c`), as the sandbox's `user` by default."""

    def __init__(self, native):
        self._native = native

    def run(
        self,
        cmd: str,
        background: bool = False,
        envs: Optional[Dict[str, str]] = None,
        user: Optional[str] = None,
        cwd: Optional[str] = None,
        on_stdout: Optional[Callable[[str], object]] = None,
        on_stderr: Optional[Callable[[str], object]] = None,
        stdin: Optional[bool] = None,
        timeout: Optional[float] = None,
        **_: object,
    ) -> Union[CommandResult, CommandHandle]:
        """Runs `cmd` to its end (raising `CommandExitException` on a non-zero
        exit), or with `background=True` returns its handle at once.
        `timeout` (seconds, default 60, 0 for none) kills it when it runs longer."""
        with translated():
            stream = self._native.start_command(command(cmd, envs, cwd, user, timeout))
        handle = CommandHandle(self._native, stream, on_stdout=on_stdout, on_stderr=on_stderr)
        return handle if background else handle.wait()

    def list(self, **_: object) -> List[ProcessInfo]:
        with translated():
            return [ProcessInfo(pid=p["pid"], cmd=p["cmd"]) for p in json.loads(self._native.list_commands())]

    def kill(self, pid: int, **_: object) -> bool:
        with translated():
            return self._native.kill_command(pid)

    def send_stdin(self, pid: int, data: Union[str, bytes], **_: object) -> None:
        with translated():
            self._native.send_stdin(pid, data.encode() if isinstance(data, str) else bytes(data))

    def close_stdin(self, pid: int, **_: object) -> None:
        with translated():
            self._native.close_stdin(pid)


class Pty:
    """Terminals in the sandbox: a login bash whose output comes as bytes."""

    def __init__(self, native):
        self._native = native

    def create(
        self,
        size: PtySize,
        user: Optional[str] = None,
        cwd: Optional[str] = None,
        envs: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
        on_data: Optional[Callable[[bytes], object]] = None,
        **_: object,
    ) -> CommandHandle:
        """Starts `bash -i -l` in a terminal of `size`; read it with the handle's `wait(on_pty=...)`."""
        terminal = {"TERM": "xterm-256color", "LANG": "C.UTF-8", **(envs or {})}
        with translated():
            stream = self._native.start_command(
                command("exec /bin/bash -i -l", terminal, cwd, user, timeout, (size.cols, size.rows))
            )
        return CommandHandle(self._native, stream, pty=True, on_pty=on_data)

    def send_stdin(self, pid: int, data: bytes, **_: object) -> None:
        with translated():
            self._native.send_stdin(pid, bytes(data))

    def resize(self, pid: int, size: PtySize, **_: object) -> None:
        with translated():
            self._native.resize_pty(pid, size.cols, size.rows)

    def kill(self, pid: int, **_: object) -> bool:
        with translated():
            return self._native.kill_command(pid)
