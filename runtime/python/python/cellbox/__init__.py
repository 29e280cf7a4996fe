"""cellbox: run model-written code in a local sandbox, in this process.

The API is E2B's code-interpreter SDK's: code written for
``e2b_code_interpreter`` works after changing only the import::

    from cellbox import Sandbox

    with Sandbox.create() as sandbox:
        sandbox.run_code("x = 41")
        execution = sandbox.run_code("x + 1")
        print(execution.text)  # 42

No server, no API key, no network: cells run in cellbox's sandboxes (the
WebAssembly fast path, a microVM, or Linux namespaces), driven by its Rust
library through ``cellbox._native``.
"""

import atexit as _atexit
import os as _os

# The guest layer this wheel ships (guest-init and its kernel drivers): the
# heavy backends run it where cellbox's sources are not (CELLBOX_GUEST_LAYER).
_guest = _os.path.join(_os.path.dirname(__file__), "guest")
if _os.path.isfile(_os.path.join(_guest, "sbin", "init")):
    _os.environ.setdefault("CELLBOX_GUEST_LAYER", _guest)

from ._commands import CommandHandle, CommandResult, Commands, ProcessInfo, Pty, PtySize
from ._files import (
    EntryInfo,
    FilesystemEvent,
    FilesystemEventType,
    FileType,
    Filesystem,
    WatchHandle,
    WriteEntry,
    WriteInfo,
)
from ._native import __version__
from ._native import shutdown as _shutdown
from .async_sandbox import AsyncCommandHandle, AsyncSandbox, AsyncWatchHandle
from .charts import (
    BarChart,
    BoxAndWhiskerChart,
    Chart,
    ChartType,
    LineChart,
    PieChart,
    ScaleType,
    ScatterChart,
    SuperChart,
)
from .exceptions import (
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    SandboxNotFoundException,
    TemplateException,
    TimeoutException,
)
from .models import (
    Context,
    Execution,
    ExecutionError,
    Logs,
    MIMEType,
    OutputHandler,
    OutputMessage,
    Result,
    RunCodeLanguage,
)
from .sandbox import Sandbox, SandboxInfo, SandboxMetrics, SandboxPaginator, SnapshotInfo

# The spare sandboxes kept for this process stop with it.
_atexit.register(_shutdown)

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AsyncWatchHandle",
    "AuthenticationException",
    "BarChart",
    "BoxAndWhiskerChart",
    "Chart",
    "ChartType",
    "CommandExitException",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "Context",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "FileNotFoundException",
    "FileType",
    "FilesystemEvent",
    "FilesystemEventType",
    "Filesystem",
    "InvalidArgumentException",
    "LineChart",
    "Logs",
    "MIMEType",
    "NotEnoughSpaceException",
    "NotFoundException",
    "OutputHandler",
    "OutputMessage",
    "PieChart",
    "ProcessInfo",
    "Pty",
    "PtySize",
    "RateLimitException",
    "Result",
    "RunCodeLanguage",
    "Sandbox",
    "SandboxException",
    "SandboxInfo",
    "SandboxMetrics",
    "SandboxNotFoundException",
    "SandboxPaginator",
    "ScaleType",
    "ScatterChart",
    "SnapshotInfo",
    "SuperChart",
    "TemplateException",
    "TimeoutException",
    "WatchHandle",
    "WriteEntry",
    "WriteInfo",
    "__version__",
]
