"""Notebook semantics for cellbox-python (imported once by cellbox_init).

The host calls run_cell(request_json) for each cell. Everything the cell
produces goes back through _cellbox.emit(kind, payload):

  1 stdout text    2 stderr text    3 result (JSON mime bundle)    4 error (JSON)
"""

# Kept to cheap imports: a session started without the snapshot pays for each
# module here. traceback and linecache load on the first error.
import _ast
import binascii
import builtins
import io
import json
import os
import sys

import _cellbox

STDOUT, STDERR, RESULT, ERROR = 1, 2, 3, 4
_FLUSH_AT = 8192

# (method, format) pairs, in the order Jupyter's formatters use them.
_REPR_METHODS = (
    ("_repr_html_", "html"),
    ("_repr_markdown_", "markdown"),
    ("_repr_svg_", "svg"),
    ("_repr_png_", "png"),
    ("_repr_jpeg_", "jpeg"),
    ("_repr_pdf_", "pdf"),
    ("_repr_latex_", "latex"),
    ("_repr_json_", "json"),
    ("_repr_javascript_", "javascript"),
)
_MIME_TO_FORMAT = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "text/latex": "latex",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/svg+xml": "svg",
    "application/pdf": "pdf",
    "application/json": "json",
    "application/javascript": "javascript",
}
_BINARY_FORMATS = ("png", "jpeg", "pdf")


class _Stream(io.TextIOBase):
    """A line-buffered text stream that sends complete lines to the host."""

    def __init__(self, kind, name):
        self._kind = kind
        self._name = name
        self._pending = []
        self._size = 0

    @property
    def name(self):
        return self._name

    @property
    def encoding(self):
        return "utf-8"

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self._pending.append(text)
            self._size += len(text)
            if "\n" in text or self._size >= _FLUSH_AT:
                self.flush()
        return len(text)

    def flush(self):
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._size = 0
            _cellbox.emit(self._kind, text.encode("utf-8", "replace"))


HOME = "/home/user"
try:
    os.chdir(HOME)  # the session's scratch folder, as in E2B
except OSError:
    pass
os.environ.setdefault("HOME", HOME)

sys.stdout = sys.__stdout__ = _Stream(STDOUT, "<stdout>")
sys.stderr = sys.__stderr__ = _Stream(STDERR, "<stderr>")


def _flush_streams():
    sys.stdout.flush()
    sys.stderr.flush()


def _encode(fmt, value):
    if fmt in _BINARY_FORMATS and isinstance(value, (bytes, bytearray)):
        return binascii.b2a_base64(value, newline=False).decode("ascii")
    if fmt == "json":
        return value
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return str(value)


def _mime_bundle(obj):
    """The formats of one object, the way IPython's display formatter finds them."""
    bundle = {}
    if not isinstance(obj, type):
        method = getattr(obj, "_repr_mimebundle_", None)
        if callable(method):
            try:
                data = method()
                if isinstance(data, tuple):
                    data = data[0]
                for mime, value in (data or {}).items():
                    fmt = _MIME_TO_FORMAT.get(mime)
                    if fmt and value is not None:
                        bundle[fmt] = _encode(fmt, value)
            except Exception:
                _print_exc()
        for name, fmt in _REPR_METHODS:
            method = getattr(obj, name, None)
            if fmt in bundle or not callable(method):
                continue
            try:
                value = method()
            except Exception:
                _print_exc()
                continue
            if isinstance(value, tuple):  # (data, metadata)
                value = value[0]
            if value is not None:
                bundle[fmt] = _encode(fmt, value)
    if "text" not in bundle:
        bundle["text"] = repr(obj)
    return bundle


def _print_exc():
    import traceback

    traceback.print_exc()


def _send_result(obj, is_main):
    bundle = _mime_bundle(obj)
    bundle["is_main_result"] = is_main
    _flush_streams()
    _cellbox.emit(RESULT, json.dumps(bundle, default=str).encode("utf-8", "replace"))


def display(*objs, **_ignored):
    """Show objects as extra (non-main) results of the running cell."""
    for obj in objs:
        _send_result(obj, False)


builtins.display = display


class _Session:
    def __init__(self):
        self.count = 0
        self.namespace = {"__name__": "__main__", "__builtins__": builtins, "display": display}
        self.started = False
        self.sources = {}  # filename -> source, for tracebacks

    def start(self):
        """Per-session entropy: a pre-initialised snapshot shares its RNG state."""
        self.started = True
        random = sys.modules.get("random")
        if random is not None:
            random.seed()

    def run(self, code):
        filename = f"<cell {self.count}>"
        self.sources[filename] = code
        tree = compile(code, filename, "exec", _ast.PyCF_ONLY_AST)
        last = None
        if tree.body and isinstance(tree.body[-1], _ast.Expr) and not code.rstrip().endswith(";"):
            last = _ast.Expression(tree.body.pop().value)
        exec(compile(tree, filename, "exec"), self.namespace)
        if last is not None:
            value = eval(compile(last, filename, "eval"), self.namespace)
            if value is not None:
                self.namespace["_"] = value
                _send_result(value, True)


def _report(exc):
    import linecache
    import traceback

    for filename, code in _session.sources.items():
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    _flush_streams()
    if isinstance(exc, SyntaxError):
        lines = traceback.format_exception_only(type(exc), exc)
    else:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        lines = traceback.format_exception(type(exc), exc, tb)
    error = {"name": type(exc).__name__, "value": str(exc), "traceback": "".join(lines)}
    _cellbox.emit(ERROR, json.dumps(error).encode("utf-8", "replace"))


_session = _Session()


def run_cell(request_json):
    """Run one cell; returns its execution count."""
    request = json.loads(request_json)
    if not _session.started:
        _session.start()
    _session.count += 1
    env = request.get("env") or {}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        _session.run(request["code"])
    except BaseException as exc:  # the user's error, reported as data
        _report(exc)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _flush_streams()
    return _session.count


# The standard modules notebooks use most. Under Wizer (the host sets
# CELLBOX_PREINIT while taking the snapshot, and only then) they are imported
# here, so that every session starts with them loaded; the per-session
# reseeding in _Session.start covers the random state they bring along.
_WARM_MODULES = (
    "re", "math", "datetime", "collections", "itertools", "functools", "decimal",
    "fractions", "statistics", "string", "textwrap", "dataclasses", "typing",
    "enum", "csv", "copy", "pprint", "operator", "heapq", "bisect",
)
if os.environ.pop("CELLBOX_PREINIT", None):
    for _name in _WARM_MODULES:
        try:
            __import__(_name)
        except ImportError:
            pass
    del _name
