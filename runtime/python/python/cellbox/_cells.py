"""Running code: a native run's events folded into an `Execution`, with the
callback each event goes to. The sync and async sandboxes share it."""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, Optional, Tuple

from ._native import CellboxError
from .exceptions import InvalidArgumentException, TimeoutException, translated
from .models import Context, Execution, ExecutionError, OutputMessage, Result

# E2B's default timeout of a run, in seconds.
DEFAULT_RUN_TIMEOUT = 300
# What E2B's SDK says when the sandbox goes away under a running cell.
KILLED = (
    "The sandbox was killed while the request was in progress. This can happen when the sandbox "
    "times out or is killed manually. You can modify the sandbox timeout by passing 'timeout' when "
    "starting the sandbox or calling '.set_timeout' on the sandbox with the desired timeout"
)


def start(
    native,
    code: str,
    language: Optional[str],
    context: Optional[Context],
    envs: Optional[Dict[str, str]],
    timeout: Optional[float],
):
    """Starts `code` as E2B's `run_code` would (timeout 0 means none)."""
    if language and context:
        raise InvalidArgumentException("You can provide context or language, but not both at the same time.")
    if timeout is None:
        timeout = DEFAULT_RUN_TIMEOUT
    target = (context.id, context.language, context.cwd) if context else None
    with translated():
        return native.run_code(code, language, target, envs, timeout)


class Fold:
    """Builds the `Execution` from a run's events; `add` says which callback
    gets what."""

    def __init__(self, on_stdout=None, on_stderr=None, on_result=None, on_error=None):
        self.execution = Execution()
        self._handlers = {"stdout": on_stdout, "stderr": on_stderr, "result": on_result, "error": on_error}

    def add(self, kind: str, payload: str) -> Tuple[Optional[Callable[[Any], Any]], Any]:
        execution = self.execution
        if kind in ("stdout", "stderr"):
            getattr(execution.logs, kind).append(payload)
            value: Any = OutputMessage(payload, time.time_ns(), kind == "stderr")
        elif kind == "result":
            value = Result(**json.loads(payload))
            execution.results.append(value)
        else:
            value = ExecutionError(**json.loads(payload))
            execution.error = value
        return self._handlers.get(kind), value

    def finish(self, outcome: str) -> Execution:
        self.execution.execution_count = json.loads(outcome).get("execution_count")
        return self.execution


def outcome(native, stream) -> str:
    """The run's outcome; a run ended by the sandbox's end raises E2B's error for it."""
    try:
        return stream.outcome()
    except CellboxError as error:
        if error.args[:1] == ("interrupted",) and not native.is_running():
            raise TimeoutException(KILLED) from None
        with translated():
            raise error


def run(native, code, language, context, envs, timeout, handlers: Dict[str, Any]) -> Execution:
    """Runs `code` to its end, calling the handlers on this thread."""
    stream = start(native, code, language, context, envs, timeout)
    fold = Fold(**handlers)
    while True:
        with translated():
            item = stream.next()
        if item is None:
            break
        handler, value = fold.add(*item)
        if handler is not None:
            try:
                handler(value)
            except BaseException:
                stream.interrupt()
                raise
    return fold.finish(outcome(native, stream))
