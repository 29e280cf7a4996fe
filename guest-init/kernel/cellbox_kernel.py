"""cellbox kernel driver: runs notebook cells in one IPython shell inside the guest.

guest-init starts one process per context as `python3 cellbox_kernel.py` with
  fd 3  requests, one JSON object per line: {"code": "...", "env": {"K": "V"}}
  fd 4  events,   one JSON object per line: ready, stdout, stderr, result, error, end
  fd 1/2 raw pipes the parent forwards as stdout/stderr (subprocesses, C code).
Python-level output goes through replacement sys.stdout/sys.stderr streams as events.
Every request ends with exactly one {"type": "end", "execution_count": N}.
SIGINT (sent by the parent on timeout) raises KeyboardInterrupt in the running cell
and is ignored while idle. EOF on fd 3 ends the process with status 0.
Only the standard library and IPython are needed (matplotlib/pandas when the user imports them).
"""
import codecs, importlib.machinery, io, json, os, selectors, signal
import subprocess, sys, threading, traceback, weakref
import cellbox_driver, cellbox_results             # beside this script

REQUEST_FD, EVENT_FD = 3, 4
LINE_LIMIT = 8192      # a stream emits once it buffers more than this (or on newline/flush)
CHUNK = 1 << 16        # at most this many characters of stream text per event


class _Sig:
    armed = False      # a cell is running: SIGINT raises KeyboardInterrupt
    defer = 0          # the main thread is writing an event: postpone the interrupt
    pending = False    # a postponed interrupt


def _on_sigint(signum, frame):
    if not _Sig.armed:
        return                      # idle: the process must survive
    if _Sig.defer:
        _Sig.pending = True         # raised once the event is written whole
        return
    raise KeyboardInterrupt


# Installed first, so a SIGINT during the slow IPython import cannot kill us.
signal.signal(signal.SIGINT, _on_sigint)
os.environ["MPLBACKEND"] = "Agg"    # before anybody imports matplotlib

_MAIN = threading.get_ident()
_lock = threading.RLock()           # one event at a time, from any thread


def _after_fork():
    """A forked child (multiprocessing) keeps printing through fd 4: fresh lock and main thread."""
    global _MAIN, _lock
    _MAIN, _lock = threading.get_ident(), threading.RLock()


os.register_at_fork(after_in_child=_after_fork)


class _Atomic:
    """Holds the event lock; in the main thread also postpones SIGINT, so an
    interrupt never leaves half an event on fd 4 or a stream buffer half updated."""

    def __enter__(self):
        if threading.get_ident() == _MAIN:
            _Sig.defer += 1
        _lock.acquire()

    def __exit__(self, *exc):
        _lock.release()
        if threading.get_ident() == _MAIN:
            _Sig.defer -= 1
            if not _Sig.defer and _Sig.pending:
                _Sig.pending = False
                if _Sig.armed:
                    raise KeyboardInterrupt


_atomic = _Atomic()


def emit(event):
    """Write one event as a single JSON line; buffered stream text goes first."""
    with _atomic:
        if event["type"] not in ("stdout", "stderr"):
            for stream in _streams:
                stream.flush()
        try:
            line = json.dumps(event, ensure_ascii=False, default=str, skipkeys=True,
                              allow_nan=False)            # strict JSON for the Rust side
        except (TypeError, ValueError, RecursionError):   # NaN, cycles: stringify the parts
            line = json.dumps({k: v if isinstance(v, (str, bool, int, float, type(None)))
                               else repr(v) for k, v in event.items()}, ensure_ascii=False)
        data = memoryview((line + "\n").encode("utf-8", "replace"))  # lone surrogates -> '?'
        try:
            while data:
                data = data[os.write(EVENT_FD, data[:1 << 20]):]
        except OSError:
            os._exit(3)             # the parent is gone: nobody can use this kernel any more


class _Stream(io.TextIOBase):
    """sys.stdout / sys.stderr: line-buffered text, sent as stdout/stderr events."""
    encoding, errors = "utf-8", "replace"

    def __init__(self, kind, fd):
        self.kind, self.name, self._fd = kind, f"<{kind}>", fd
        self._parts, self._size = [], 0
        self.buffer = _BytesToText(self)

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        return self._fd             # the raw pipe, for code that wants a real descriptor

    def close(self):
        self.flush()                # never really closed

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            with _atomic:
                self._parts.append(text)
                self._size += len(text)
                if "\n" in text or self._size > LINE_LIMIT:
                    self.flush()
        return len(text)

    def flush(self):
        with _atomic:
            text, self._parts, self._size = "".join(self._parts), [], 0
            for start in range(0, len(text), CHUNK):   # huge writes go out in pieces
                emit({"type": self.kind, "text": text[start:start + CHUNK]})


class _BytesToText:
    """sys.stdout.buffer: decodes UTF-8 (invalid bytes replaced) into the text stream."""

    def __init__(self, text):
        self._text, self._decode = text, codecs.getincrementaldecoder("utf-8")("replace").decode

    def write(self, data):
        self._text.write(self._decode(bytes(data)))
        return len(data)

    def flush(self):
        self._text.flush()

    def writable(self):
        return True


_streams = (_Stream("stdout", 1), _Stream("stderr", 2))

# ---- rich results --------------------------------------------------------------------
def emit_result(bundle, main):
    """Turn an IPython mime bundle into a result event."""
    emit(cellbox_results.result_event(bundle, main))


def emit_error(etype, value, tb_text):
    try:
        text = str(value)
    except Exception:
        text = f"<unprintable {etype.__name__} object>"
    emit({"type": "error", "name": etype.__name__, "value": text, "traceback": tb_text})


# ---- matplotlib: figures become PNG results ----------------------------------------------
_shown = weakref.WeakSet()          # figures already rendered as PNG during this cell


def _figure_png(fig):
    """IPython's image/png formatter for matplotlib figures (registered lazily by name)."""
    _shown.add(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _flush_figures(*args, **kwargs):
    """Display every open pyplot figure not yet shown this cell, then close them all.
    Also serves as plt.show(), so a figure per show() call, as in Jupyter."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    from IPython.display import display
    from matplotlib._pylab_helpers import Gcf
    try:
        for manager in Gcf.get_all_fig_managers():
            if manager.canvas.figure not in _shown:
                display(manager.canvas.figure)
    finally:
        pyplot.close("all")


def _patch_pyplot(module):
    """pyplot's show() publishes the figures (under Agg it would do nothing)."""
    module.show = _flush_figures
    import matplotlib.axes
    import cellbox_charts
    cellbox_charts.wrap_bxp(matplotlib.axes.Axes)


def _patch_pil_image(module):
    """As in E2B: an image shown, or saved to a named file, is also a PNG result;
    show() opens no viewer (there is no display)."""
    image_class, save, show = module.Image, module.Image.save, module.Image.show

    def save_and_display(self, fp, format=None, **params):
        if isinstance(fp, (str, os.PathLike)):
            _display_image(self)
        return save(self, fp, format, **params)

    def show_as_result(self, title=None):
        _display_image(self)

    save_and_display.__wrapped__, show_as_result.__wrapped__ = save, show
    image_class.save, image_class.show = save_and_display, show_as_result


def _display_image(image):
    from IPython.display import display
    display(image)


class _ImportHook:
    """Meta-path finder: patches a few modules as they are first imported
    (matplotlib.pyplot, PIL.Image), so a cell that never imports them pays nothing."""
    PATCHES = {"matplotlib.pyplot": _patch_pyplot, "PIL.Image": _patch_pil_image}

    @staticmethod
    def find_spec(name, path, target=None):
        patch = _ImportHook.PATCHES.get(name)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                patch(module)
            spec.loader.exec_module = exec_module
        return spec


# ---- the IPython shell ----------------------------------------------------------------
# (imported only now: the SIGINT handler above must already be in place)
def _defer_ipython_package_init():
    """IPython/__init__.py imports the terminal front end (prompt_toolkit and more:
    about 200 ms, half a new sandbox's start) that a kernel never uses. Put the
    package in sys.modules without running its __init__; the first lookup of a
    name it defines (IPython.get_ipython, IPython.display, __version__, ...) runs
    it then, in the same module object, so user code sees the whole package."""
    import importlib.util, types
    spec = importlib.util.find_spec("IPython")
    if spec is None or spec.origin is None:
        return
    package = importlib.util.module_from_spec(spec)
    state = {"loaded": False}

    def __getattr__(name):
        if not state["loaded"]:
            state["loaded"] = True
            del package.__getattr__
            spec.loader.exec_module(package)
            return getattr(package, name)
        raise AttributeError(f"module 'IPython' has no attribute {name!r}")

    package.__getattr__ = __getattr__
    sys.modules["IPython"] = package
    # What the core modules take from the package while it is deferred.
    from IPython.core.getipython import get_ipython
    package.get_ipython = get_ipython


_defer_ipython_package_init()
from IPython.core.displayhook import DisplayHook  # noqa: E402
from IPython.core.displaypub import DisplayPublisher  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from traitlets.config import Config  # noqa: E402


class _MainResultHook(DisplayHook):
    """The cell's trailing expression: the full mime bundle, as a main result.
    IPython itself handles the ';' suppression, the _ / _N variables and Out."""

    def write_output_prompt(self):
        pass                        # no "Out[N]: " on stdout

    def write_format_data(self, format_dict, md_dict=None):
        emit_result(format_dict, main=True)


class _DisplayPublisher(DisplayPublisher):
    """display(obj): results that are not the main result."""

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kw):
        emit_result(data, main=False)

    def clear_output(self, wait=False):
        pass                        # nothing to clear in an event stream


class CellboxShell(InteractiveShell):
    displayhook_class = _MainResultHook
    display_pub_class = _DisplayPublisher

    def showtraceback(self, *args, **kwargs):
        """Further SIGINTs must not cut short the report of the first one (formatting a
        traceback can take a while); IPython would print them to stderr instead."""
        armed, _Sig.armed = _Sig.armed, False
        # Says the cell has stopped and its report is on the way: after an
        # interrupt guest-init then waits for the (possibly slow) report
        # instead of taking the kernel for stuck.
        emit({"type": "reporting"})
        try:
            super().showtraceback(*args, **kwargs)
        finally:
            _Sig.armed = armed

    def _showtraceback(self, etype, evalue, stb):
        """Every traceback IPython would print (exceptions, SyntaxError) becomes an error event."""
        emit_error(etype, evalue, self.InteractiveTB.stb2text(stb))

    def enable_gui(self, gui=None):
        """No GUI event loops headless (`%matplotlib inline` lands here); figures are
        published after the cell anyway."""

    def system(self, cmd):
        """`!cmd`: run through /bin/sh, its output copied to sys.stdout/sys.stderr as it comes."""
        cmd = self.var_expand(cmd, depth=1)
        proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        targets = {proc.stdout: (sys.stdout, codecs.getincrementaldecoder("utf-8")("replace")),
                   proc.stderr: (sys.stderr, codecs.getincrementaldecoder("utf-8")("replace"))}
        try:
            with selectors.DefaultSelector() as sel:
                for pipe in targets:
                    sel.register(pipe, selectors.EVENT_READ)
                while sel.get_map():
                    ready = sel.select(0.1)
                    if not ready and proc.poll() is not None:
                        break               # done; a background child may still hold the pipes
                    for key, _ in ready:
                        out, decoder = targets[key.fileobj]
                        chunk = os.read(key.fd, 65536)
                        out.write(decoder.decode(chunk, final=not chunk))
                        if not chunk:
                            sel.unregister(key.fileobj)
            code = proc.wait()
            self.user_ns["_exit_code"] = -(code - 128) if code > 128 else code  # as IPython
        except KeyboardInterrupt:   # stop the command's whole process group, then re-raise
            for sig, grace in ((signal.SIGINT, 1), (signal.SIGKILL, None)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(grace)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            raise
        finally:
            proc.stdout.close()
            proc.stderr.close()


def _make_shell():
    config = Config()
    config.InteractiveShell.colors = "NoColor"        # plain tracebacks, no ANSI escapes
    config.HistoryManager.hist_file = ":memory:"      # no sqlite file, no saving thread
    shell = CellboxShell.instance(config=config)
    shell.display_formatter.formatters["image/png"].for_type_by_name(
        "matplotlib.figure", "Figure", _figure_png)
    _add_object_formatters(shell.display_formatter)
    return shell


def _add_object_formatters(display_formatter):
    """A figure's chart and a DataFrame's data, as two more formats of their results
    (computed after the PNG, so that the figure is already drawn)."""
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName

    class ObjectFormatter(BaseFormatter):
        _return_type = (dict,)
        print_method = ObjectName("_repr_cellbox_object_")   # no object has it: registered types only

    def lazy(name):
        def call(obj):
            import cellbox_charts
            return getattr(cellbox_charts, name)(obj)
        return call

    for mime, module, cls, function in (
            ("application/vnd.cellbox.chart+json", "matplotlib.figure", "Figure", "chart_of"),
            ("application/vnd.cellbox.data+json", "pandas.core.frame", "DataFrame", "dataframe_data")):
        formatter = ObjectFormatter(parent=display_formatter, format_type=mime)
        formatter.for_type_by_name(module, cls, lazy(function))
        display_formatter.formatters[mime] = formatter
        if mime not in display_formatter.active_types:
            display_formatter.active_types.append(mime)


# ---- serving requests -----------------------------------------------------------------
def serve(shell, line):
    """Run one request; always ends with exactly one end event."""
    count = shell.execution_count                      # this cell's In[N] number
    _reseed_if_restored()
    saved, ran = {}, False
    try:
        try:
            code, env = cellbox_driver.read_request(line)
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            _shown.clear()
            _Sig.armed = ran = True
            shell.run_cell(code, store_history=True)
            _flush_figures()
        finally:
            _Sig.armed = _Sig.pending = False
            signal.signal(signal.SIGINT, _on_sigint)   # in case the cell replaced it
    except BaseException as exc:    # bad request, or an interrupt outside IPython's handling
        emit_error(type(exc), exc, "".join(traceback.format_exception(exc)))
    finally:
        for key, value in saved.items():               # per-run env: undo it
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if ran and shell.execution_count == count:     # aborted before IPython counted it
            shell.execution_count += 1
        emit({"type": "end", "execution_count": count})


def _use_user_site():
    """Puts the user's site-packages on the path even before it exists, so that
    a package `pip install`ed (as the user, into ~/.local) while this kernel
    runs imports in the next cell, as in E2B's sandboxes."""
    import site
    if site.ENABLE_USER_SITE and site.USER_SITE not in sys.path:
        try:
            os.makedirs(site.USER_SITE, exist_ok=True)
        except OSError:
            return                                    # a read-only home: nothing to add
        site.addsitedir(site.USER_SITE)


def prepare():
    """Everything a session needs that does not depend on it: the import patches and
    the shell (the warm template, cellbox_zygote.py, runs this once for many sessions)."""
    sys.meta_path.insert(0, _ImportHook)
    return _make_shell()                              # startup noise still goes to the raw fds


def preload(shell):
    """Imports what notebooks use most, ahead of the first cell (a warm template, or
    a microVM kernel started before the VM is snapshotted), and runs an empty cell:
    IPython's first cell sets up more than later ones (silent and unrecorded, it
    counts nothing and leaves no history)."""
    import numpy, pandas, PIL.Image, matplotlib.pyplot  # noqa: F401,E401
    import IPython
    IPython.get_ipython                               # the whole package, once
    import cellbox_charts  # noqa: F401
    shell.run_cell("pass", store_history=False, silent=True)


def reseed():
    """Fresh random state from the OS (a forked or restored kernel shares its parent's)."""
    import random
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


# guest-init rewrites this file after mixing new entropy into a microVM guest restored
# from a snapshot: a kernel that sees it change reseeds before its next cell.
GENERATION_FILE = "/run/cellbox/generation"


def _generation():
    try:
        with open(GENERATION_FILE, "rb") as f:
            return f.read(64)
    except OSError:
        return None


_seen_generation = _generation()


def _reseed_if_restored():
    global _seen_generation
    generation = _generation()
    if generation != _seen_generation:
        _seen_generation = generation
        reseed()


def run(shell):
    """Serve requests on fd 3 until it closes, then exit."""
    for fd in (REQUEST_FD, EVENT_FD):
        os.set_inheritable(fd, False)                 # subprocesses must not see the protocol pipes
    _use_user_site()
    sys.stdout, sys.stderr = _streams
    sys.stdin = open(os.devnull)                      # input() gets EOF instead of hanging
    requests = open(REQUEST_FD, "rb", closefd=False)
    emit({"type": "ready", "pid": os.getpid()})
    while True:
        try:
            line = requests.readline()
            if not line:
                break
            if line.strip():
                serve(shell, line)
        except KeyboardInterrupt:                     # only possible via a user's own handler
            continue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import atexit
        atexit._run_exitfuncs()                       # IPython's cleanup, user atexit hooks
        for stream in _streams:
            stream.flush()
    finally:
        os._exit(0)                                   # do not wait for leftover user threads


if __name__ == "__main__":
    _shell = prepare()
    if os.environ.pop("CELLBOX_PRELOAD", None) == "1":
        preload(_shell)
    run(_shell)
