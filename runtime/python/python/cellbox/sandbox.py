"""`Sandbox`: E2B's code-interpreter `Sandbox`, in this process.

Where E2B's SDK sends HTTP requests to a cloud sandbox, this one calls
cellbox's Rust library directly: no server, no key, no network. Calls
release the GIL while the sandbox works.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import threading
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from . import _cells, _native
from ._commands import Commands, Pty
from ._files import Filesystem
from .exceptions import (
    InvalidArgumentException,
    NotFoundException,
    SandboxNotFoundException,
    translated,
)
from .models import Context, Execution, ExecutionError, OutputHandler, OutputMessage, Result

# E2B's default sandbox timeout, in seconds.
DEFAULT_SANDBOX_TIMEOUT = 300
# Template names that mean cellbox's own default template.
DEFAULT_TEMPLATES = ("base", "code-interpreter-v1", "code-interpreter")
_SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# This process's live sandboxes by id, for `Sandbox.connect(id)`, `Sandbox.kill(id)` and `Sandbox.list()`.
_live: "weakref.WeakValueDictionary[str, Sandbox]" = weakref.WeakValueDictionary()
_live_lock = threading.Lock()


@dataclass
class SandboxInfo:
    sandbox_id: str
    template_id: str
    name: Optional[str]
    metadata: Dict[str, str]
    started_at: datetime
    end_at: datetime
    state: str
    cpu_count: int
    memory_mb: int
    envd_version: str = "cellbox"
    allow_internet_access: Optional[bool] = None
    backend: str = ""
    """cellbox: the backend that ran the latest cell (wasm, namespace or vm)."""


@dataclass
class SandboxMetrics:
    timestamp: datetime
    cpu_count: int
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    disk_used: int
    disk_total: int


@dataclass
class SnapshotInfo:
    snapshot_id: str
    """Use it as the template of `Sandbox.create` to start a sandbox from it."""
    names: List[str] = field(default_factory=list)


def snapshot_dir() -> Path:
    """Where `create_snapshot` keeps snapshots: `$CELLBOX_SNAPSHOT_DIR`, else
    `sandbox-snapshots/` in cellbox's data folder (`~/.local/share/cellbox`;
    not the cache, which may be deleted at any time)."""
    chosen = os.environ.get("CELLBOX_SNAPSHOT_DIR")
    return Path(chosen) if chosen else Path(_native.data_dir()) / "sandbox-snapshots"


class _Either:
    """A method called on a sandbox, or on the class with a sandbox id first,
    as E2B's `Sandbox.kill(sandbox_id)`; `missing` is what an unknown id gives
    (an exception class is raised)."""

    def __init__(self, missing: Any):
        self.missing = missing

    def __call__(self, method: Callable) -> "_Either":
        self.method = method
        functools.update_wrapper(self, method)  # type: ignore[arg-type]
        return self

    def __get__(self, sandbox: Optional["Sandbox"], owner: type) -> Callable:
        if sandbox is not None:
            return functools.partial(self.method, sandbox)

        def by_id(sandbox_id: str, *args: Any, **kwargs: Any) -> Any:
            found = _live.get(sandbox_id)
            if found is None:
                if isinstance(self.missing, type) and issubclass(self.missing, BaseException):
                    raise self.missing(f"sandbox {sandbox_id} not found in this process")
                return self.missing
            return self.method(found, *args, **kwargs)

        return by_id


class Sandbox:
    """A sandbox: stateful code contexts, files, commands and terminals.

    ``Sandbox.create()`` starts one; ``with Sandbox.create() as sandbox:``
    kills it at the end. Plain Python cells run on the WebAssembly fast path
    (about a millisecond each); the first cell that needs more (numpy, files,
    commands, another language) moves the session, with its variables, to
    the heavy backend: a microVM where KVM can run Linux, else the namespace
    sandbox.
    """

    default_template = "base"

    def __init__(
        self,
        *,
        _native: Any = None,
        _template: str = "base",
        _timeout: Optional[float] = None,
        _metadata: Optional[Dict[str, str]] = None,
        **create: Any,
    ):
        if _native is None:
            # `Sandbox(...)` creates one, as `Sandbox.create(...)` does.
            other = type(self).create(**create)
            _native, _template, _timeout, _metadata = other._native, other._template, other._timeout, other._meta
        self._native = _native
        self._template = _template
        self._timeout = _timeout
        self._meta = dict(_metadata or {})
        self._started_at = datetime.now(timezone.utc)
        self._touched_at = self._started_at
        self._files = Filesystem(_native)
        self._commands = Commands(_native)
        self._pty = Pty(_native)
        with _live_lock:
            _live[self.sandbox_id] = self

    @classmethod
    def create(
        cls,
        template: Optional[str] = None,
        timeout: Optional[float] = None,
        metadata: Optional[Dict[str, str]] = None,
        envs: Optional[Dict[str, str]] = None,
        allow_internet_access: Optional[bool] = None,
        network: Optional[Dict[str, List[str]]] = None,
        *,
        backend: str = "auto",
        cwd: Optional[str] = None,
        memory_mb: Optional[int] = None,
        disk_mb: Optional[int] = None,
        cpu_count: Optional[int] = None,
        **_: Any,
    ) -> "Sandbox":
        """Starts a sandbox.

        :param template: a custom template (``cellbox template build``), a
            snapshot id from `create_snapshot`, or None for the default one.
        :param timeout: close it after this many seconds without use
            (default 300, 0 for never).
        :param allow_internet_access: network access (default: none, unlike
            E2B's cloud); `network` takes ``allow_out``/``deny_out`` lists.
        :param backend: cellbox's choice of backend: ``auto`` (default),
            ``wasm``, ``vm`` or ``namespace``.
        """
        timeout = DEFAULT_SANDBOX_TIMEOUT if timeout is None else timeout
        network = network or {}
        options = {
            "backend": backend,
            "template": None,
            "timeout": float(timeout),
            "envs": dict(envs or {}),
            "metadata": dict(metadata or {}),
            "cwd": cwd,
            "memory_mb": memory_mb,
            "disk_mb": disk_mb,
            "cpu_count": cpu_count,
            "allow_internet_access": bool(allow_internet_access),
            "allow_out": list(network.get("allow_out") or []),
            "deny_out": list(network.get("deny_out") or []),
        }
        name = template or cls.default_template
        snapshot = _snapshot_path(name)
        with translated():
            if snapshot is not None and snapshot.is_dir():
                native = _native.Sandbox.from_snapshot(str(snapshot), options)
            else:
                options["template"] = None if name in DEFAULT_TEMPLATES else name
                native = _native.Sandbox.create(options)
        return cls(_native=native, _template=name, _timeout=timeout, _metadata=metadata)

    # -- identity and parts -------------------------------------------------

    @property
    def sandbox_id(self) -> str:
        return self._native.id

    @property
    def files(self) -> Filesystem:
        return self._files

    @property
    def commands(self) -> Commands:
        return self._commands

    @property
    def pty(self) -> Pty:
        return self._pty

    @property
    def backend(self) -> str:
        """cellbox: the backend that ran the latest cell (``wasm``, ``namespace`` or ``vm``)."""
        with translated():
            return self._native.backend()

    # -- code ---------------------------------------------------------------

    def run_code(
        self,
        code: str,
        language: Optional[str] = None,
        context: Optional[Context] = None,
        on_stdout: Optional[OutputHandler[OutputMessage]] = None,
        on_stderr: Optional[OutputHandler[OutputMessage]] = None,
        on_result: Optional[OutputHandler[Result]] = None,
        on_error: Optional[OutputHandler[ExecutionError]] = None,
        envs: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
        request_timeout: Optional[float] = None,
    ) -> Execution:
        """Runs `code` in `language`'s default context or in `context`.

        The callbacks get output and results as they happen, on this thread.
        Past `timeout` seconds (default 300, 0 for none) the cell is
        interrupted, its state kept, and `TimeoutException` raised. Ctrl-C
        interrupts the cell too.
        """
        handlers = {"on_stdout": on_stdout, "on_stderr": on_stderr, "on_result": on_result, "on_error": on_error}
        return _cells.run(self._native, code, language, context, envs, timeout, handlers)

    def create_code_context(
        self, cwd: Optional[str] = None, language: Optional[str] = None, request_timeout: Optional[float] = None
    ) -> Context:
        with translated():
            return Context.from_json(json.loads(self._native.create_context(cwd, language)))

    def list_code_contexts(self) -> List[Context]:
        with translated():
            return [Context.from_json(c) for c in json.loads(self._native.list_contexts())]

    def restart_code_context(self, context: Union[Context, str]) -> None:
        with translated():
            self._native.restart_context(context.id if isinstance(context, Context) else context)

    def remove_code_context(self, context: Union[Context, str]) -> None:
        with translated():
            self._native.remove_context(context.id if isinstance(context, Context) else context)

    # -- lifecycle ----------------------------------------------------------

    def is_running(self, request_timeout: Optional[float] = None) -> bool:
        with translated():
            return self._native.is_running()

    @_Either(missing=False)
    def kill(self, request_timeout: Optional[float] = None) -> bool:
        """Kills the sandbox: running cells and commands stop, its files go.
        False if it had already ended (`Sandbox.kill(sandbox_id)` works too)."""
        with _live_lock:
            _live.pop(self.sandbox_id, None)
        if not self._native.is_running():
            return False
        with translated():
            self._native.kill()
        return True

    @_Either(missing=SandboxNotFoundException)
    def set_timeout(self, timeout: float, request_timeout: Optional[float] = None) -> None:
        """Closes the sandbox after `timeout` seconds without use from now on (0: never)."""
        with translated():
            self._native.set_timeout(float(timeout))
        self._timeout = timeout
        self._touched_at = datetime.now(timezone.utc)

    @_Either(missing=SandboxNotFoundException)
    def get_info(self, request_timeout: Optional[float] = None) -> SandboxInfo:
        with translated():
            backend = self._native.backend()
            state = "paused" if self._native.is_paused() else "running"
        # No timeout (0 or None): it never ends by itself.
        lifetime = timedelta(seconds=self._timeout) if self._timeout else timedelta(days=36500)
        return SandboxInfo(
            sandbox_id=self.sandbox_id,
            template_id=self._template,
            name=self._template,
            metadata=dict(self._meta),
            started_at=self._started_at,
            end_at=self._touched_at + lifetime,
            state=state,
            cpu_count=os.cpu_count() or 1,
            memory_mb=0,
            backend=backend,
        )

    @_Either(missing=SandboxNotFoundException)
    def get_metrics(self, start: Optional[datetime] = None, end: Optional[datetime] = None, **_: Any) -> List[SandboxMetrics]:
        """One measurement of CPU, memory and disk use, now."""
        with translated():
            raw = json.loads(self._native.metrics())
        raw["timestamp"] = datetime.fromtimestamp(raw["timestamp"], tz=timezone.utc)
        return [SandboxMetrics(**raw)]

    @_Either(missing=SandboxNotFoundException)
    def pause(self, **_: Any) -> bool:
        """Freezes everything in the sandbox; `connect()` resumes it. False if already paused."""
        if self._native.is_paused():
            return False
        with translated():
            self._native.pause()
        return True

    beta_pause = pause

    @_Either(missing=SandboxNotFoundException)
    def connect(self, timeout: Optional[float] = None, **_: Any) -> "Sandbox":
        """Resumes a paused sandbox and returns it (`Sandbox.connect(sandbox_id)` works too)."""
        with translated():
            if self._native.is_paused():
                self._native.resume()
        if timeout is not None:
            self.set_timeout(timeout)
        return self

    def fork(self, timeout: Optional[float] = None, count: Optional[int] = None, **_: Any) -> List[Union["Sandbox", Exception]]:
        """`count` (default 1) new sandboxes with this one's files and state;
        each entry is a sandbox or the exception that stopped that fork."""
        forks: List[Union[Sandbox, Exception]] = []
        for _ in range(count or 1):
            try:
                with translated():
                    native = self._native.fork()
                forks.append(
                    type(self)(
                        _native=native,
                        _template=self._template,
                        _timeout=timeout or self._timeout,
                        _metadata=self._meta,
                    )
                )
            except Exception as error:  # each fork fails alone, as E2B's do
                forks.append(error)
        return forks

    def create_snapshot(self, name: Optional[str] = None, **_: Any) -> SnapshotInfo:
        """Keeps the sandbox's files and state in cellbox's cache; start new
        sandboxes from it with ``Sandbox.create(snapshot_id)``."""
        snapshot_id = name or f"snapshot-{secrets.token_hex(6)}"
        path = _snapshot_path(snapshot_id)
        if path is None:
            raise InvalidArgumentException(f"{snapshot_id!r} is not a snapshot name: use letters, digits, '.', '_' and '-'")
        if path.exists():
            shutil.rmtree(path)
        # Snapshots hold the sandbox's files and variables: the user's alone.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with translated():
            self._native.snapshot(str(path))
        return SnapshotInfo(snapshot_id=snapshot_id, names=[snapshot_id])

    @staticmethod
    def list_snapshots(**_: Any) -> List[SnapshotInfo]:
        root = snapshot_dir()
        names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        return [SnapshotInfo(snapshot_id=name, names=[name]) for name in names]

    @staticmethod
    def delete_snapshot(snapshot_id: str, **_: Any) -> bool:
        path = _snapshot_path(snapshot_id)
        if path is None or not path.is_dir():
            return False
        shutil.rmtree(path)
        return True

    @staticmethod
    def list(**_: Any) -> "SandboxPaginator":
        """This process's running sandboxes."""
        with _live_lock:
            sandboxes = [s for s in _live.values() if s._native.is_running()]
        return SandboxPaginator([s.get_info() for s in sandboxes])

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *_: Any) -> None:
        self.kill()

    def __repr__(self) -> str:
        return f"Sandbox(sandbox_id={self.sandbox_id!r})"


class SandboxPaginator:
    """`Sandbox.list()`'s answer: all of this process's sandboxes in one page."""

    def __init__(self, items: List[SandboxInfo]):
        self._items: Optional[List[SandboxInfo]] = items

    @property
    def has_next(self) -> bool:
        return self._items is not None

    @property
    def next_token(self) -> Optional[str]:
        return None

    def next_items(self) -> List[SandboxInfo]:
        if self._items is None:
            raise NotFoundException("no more sandboxes")
        items, self._items = self._items, None
        return items


def _snapshot_path(snapshot_id: str) -> Optional[Path]:
    """The folder of snapshot `snapshot_id`, or None if it cannot be a snapshot name."""
    return snapshot_dir() / snapshot_id if _SNAPSHOT_NAME.match(snapshot_id) else None
