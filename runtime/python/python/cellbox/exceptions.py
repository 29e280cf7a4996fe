"""E2B's exception classes, and how cellbox's failures become them.

The names and the hierarchy are those of the `e2b` package, so that
``except TimeoutException`` written for E2B catches the same failures here.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from ._native import CellboxError


class SandboxException(Exception):
    """Base class for all sandbox errors."""


class TimeoutException(SandboxException):
    """A cell, command or call ran past its timeout (the cell was interrupted)."""


class InvalidArgumentException(SandboxException):
    """An argument was refused (an unknown language, bad network rules, ...)."""


class NotEnoughSpaceException(SandboxException):
    """The sandbox's disk is full."""


class NotFoundException(SandboxException):
    """No such file, folder, context, process, snapshot or sandbox."""


class FileNotFoundException(NotFoundException):
    """No such file or folder in the sandbox."""


class SandboxNotFoundException(NotFoundException):
    """The sandbox was killed or timed out."""


class AuthenticationException(Exception):
    """Kept for E2B compatibility: an in-process sandbox needs no key."""


class RateLimitException(SandboxException):
    """A limit on how many of something may exist at once was reached."""


class TemplateException(SandboxException):
    """The template cannot be used."""


class CommandExitException(SandboxException):
    """A command exited with a non-zero code (E2B raises it from `commands.run`)."""

    def __init__(self, stdout: str, stderr: str, exit_code: int, error: Optional[str] = None):
        super().__init__(stdout, stderr, exit_code, error)
        self.stdout = stdout
        self.stderr = stderr
        self.exit_code = exit_code
        self.error = error

    def __str__(self) -> str:
        return f"Command exited with code {self.exit_code} and error:\n{self.stderr}"


# cellbox's failure kinds (`cellbox::Error::kind`) and E2B's class for each.
_BY_KIND = {
    "timeout": TimeoutException,
    "interrupted": TimeoutException,
    "not_found": NotFoundException,
    "invalid_argument": InvalidArgumentException,
    "limit_reached": RateLimitException,
    "no_space": NotEnoughSpaceException,
    "closed": SandboxNotFoundException,
}


def translate(error: CellboxError, *, not_found: type = NotFoundException) -> SandboxException:
    """E2B's exception for a native failure (`not_found` picks the class for missing things)."""
    kind, message = error.args if len(error.args) == 2 else ("", str(error))
    cls = not_found if kind == "not_found" else _BY_KIND.get(kind, SandboxException)
    if kind == "closed":
        message = "the sandbox was killed or timed out; create a new one"
    exception = cls(message)
    exception.kind = kind  # type: ignore[attr-defined]
    return exception


@contextlib.contextmanager
def translated(*, not_found: type = NotFoundException) -> Iterator[None]:
    """Raises E2B's exception for any native failure inside the block."""
    try:
        yield
    except CellboxError as error:
        raise translate(error, not_found=not_found) from None
