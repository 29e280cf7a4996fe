"""The result model of E2B's code-interpreter SDK: `Execution`, `Result`,
`Logs`, `ExecutionError`, `OutputMessage` and `Context`, with the same
fields, methods and JSON forms."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Literal, Optional, TypeVar, Union

from .charts import Chart, deserialize_chart

RunCodeLanguage = Union[Literal["python", "javascript", "typescript", "r", "java", "bash"], str]

T = TypeVar("T")
OutputHandler = Callable[[T], Any]
OutputHandlerWithAsync = Union[Callable[[T], Any], Callable[[T], Awaitable[Any]]]


class MIMEType(str):
    """A MIME type."""


@dataclass
class OutputMessage:
    """A chunk of a cell's stdout or stderr, as the `on_stdout`/`on_stderr` callbacks get it."""

    line: str
    timestamp: int
    """Unix epoch in nanoseconds."""
    error: bool = False
    """Whether it was written to stderr."""

    def __str__(self) -> str:
        return self.line


@dataclass
class ExecutionError:
    """The exception a cell raised: its class name, message and traceback."""

    name: str
    value: str
    traceback: str

    def __init__(self, name: str, value: str, traceback: str, **_: Any):
        self.name = name
        self.value = value
        self.traceback = traceback

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "value": self.value, "traceback": self.traceback})


_FORMATS = ("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json", "javascript", "data", "chart")


class Result:
    """One rich result: the cell's last expression or a displayed value, in
    every representation it offered (binary ones base64-encoded)."""

    def __init__(
        self,
        text: Optional[str] = None,
        html: Optional[str] = None,
        markdown: Optional[str] = None,
        svg: Optional[str] = None,
        png: Optional[str] = None,
        jpeg: Optional[str] = None,
        pdf: Optional[str] = None,
        latex: Optional[str] = None,
        json: Optional[dict] = None,
        javascript: Optional[str] = None,
        data: Optional[dict] = None,
        chart: Optional[dict] = None,
        is_main_result: bool = False,
        extra: Optional[dict] = None,
        **_: Any,
    ):
        self.text = text
        self.html = html
        self.markdown = markdown
        self.svg = svg
        self.png = png
        self.jpeg = jpeg
        self.pdf = pdf
        self.latex = latex
        self.json = json
        self.javascript = javascript
        self.data = data
        self.chart: Optional[Chart] = deserialize_chart(chart) if isinstance(chart, dict) else chart
        self.is_main_result = is_main_result
        """Whether this is the value of the cell's last expression."""
        self.extra = extra
        """Other representations, keyed by MIME type."""

    def __getitem__(self, item: str) -> Any:
        return getattr(self, item)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and vars(self) == vars(other)

    def formats(self) -> Iterable[str]:
        """The representations this result has, e.g. ``["text", "png"]``."""
        present = [name for name in _FORMATS if getattr(self, name)]
        return present + list(self.extra or {})

    def __repr__(self) -> str:
        if self.text:
            return f"Result({self.text})"
        return "Result(Formats: " + ", ".join(self.formats()) + ")"

    __str__ = __repr__

    def _repr_html_(self) -> Optional[str]:
        return self.html

    def _repr_markdown_(self) -> Optional[str]:
        return self.markdown

    def _repr_svg_(self) -> Optional[str]:
        return self.svg

    def _repr_png_(self) -> Optional[str]:
        return self.png

    def _repr_jpeg_(self) -> Optional[str]:
        return self.jpeg

    def _repr_pdf_(self) -> Optional[str]:
        return self.pdf

    def _repr_latex_(self) -> Optional[str]:
        return self.latex

    def _repr_json_(self) -> Optional[dict]:
        return self.json

    def _repr_javascript_(self) -> Optional[str]:
        return self.javascript


@dataclass(repr=False)
class Logs:
    """What a cell printed, chunk by chunk."""

    stdout: List[str] = field(default_factory=list)
    stderr: List[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Logs(stdout: {self.stdout}, stderr: {self.stderr})"

    def to_json(self) -> str:
        return json.dumps({"stdout": self.stdout, "stderr": self.stderr})


def serialize_results(results: List[Result]) -> List[Dict[str, Any]]:
    """Results as E2B's `Execution.to_json` writes them."""
    serialized = []
    for result in results:
        entry: Dict[str, Any] = {}
        for name in result.formats():
            value = result[name] if name in _FORMATS else (result.extra or {})[name]
            entry[name] = value.to_dict() if isinstance(value, Chart) else value
        entry["text"] = result.text
        serialized.append(entry)
    return serialized


@dataclass(repr=False)
class Execution:
    """Everything one cell produced."""

    results: List[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: Optional[ExecutionError] = None
    execution_count: Optional[int] = None

    def __repr__(self) -> str:
        return f"Execution(Results: {self.results}, Logs: {self.logs}, Error: {self.error})"

    @property
    def text(self) -> Optional[str]:
        """The text of the cell's main result (its last expression), if any."""
        for result in self.results:
            if result.is_main_result:
                return result.text
        return None

    def to_json(self) -> str:
        return json.dumps(
            {
                "results": serialize_results(self.results),
                "logs": self.logs.to_json(),
                "error": self.error.to_json() if self.error else None,
            }
        )


@dataclass
class Context:
    """A context: one kernel with its own state, in one language."""

    id: str
    language: str
    cwd: str

    def __init__(self, context_id: str, language: str, cwd: str, **_: Any):
        self.id = context_id
        self.language = language
        self.cwd = cwd

    @classmethod
    def from_json(cls, data: Dict[str, str]) -> "Context":
        return cls(context_id=data["id"], language=data["language"], cwd=data["cwd"])
