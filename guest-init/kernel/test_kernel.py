"""End-to-end tests for cellbox_kernel.py, speaking its fd 3 / fd 4 protocol.

Usage:
    python3 test_kernel.py [--python /path/to/python3] [-k substring]
The interpreter that runs the kernel (it needs IPython, numpy, pandas, matplotlib) comes
from --python, else $CELLBOX_KERNEL_PYTHON, else the interpreter running this script.
Prints one line per check and `N passed, M failed`; exits 1 if anything failed.
Standard library only.
"""
import argparse, base64, fcntl, json, os, queue, signal, subprocess, sys, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL = os.path.join(HERE, "cellbox_kernel.py")
TIMEOUT = 60


def strict_json(name):
    raise ValueError(f"{name} is not JSON")


class Kernel:
    """One kernel process: requests on its fd 3, events from its fd 4, raw fd 1/2 collected."""

    def __init__(self, python):
        self.python = python
        req_r, req_w = os.pipe()
        ev_r, ev_w = os.pipe()
        # Park the child's ends above 10 so moving them onto 3 and 4 cannot clobber each other.
        child_req = fcntl.fcntl(req_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_ev = fcntl.fcntl(ev_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(req_r)
        os.close(ev_w)

        def wire():                       # runs in the child before exec; dup2 clears CLOEXEC
            os.dup2(child_req, 3)
            os.dup2(child_ev, 4)

        self.proc = subprocess.Popen([python, KERNEL], cwd=HERE, preexec_fn=wire, pass_fds=(3, 4),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        os.close(child_req)
        os.close(child_ev)
        self.requests = os.fdopen(req_w, "wb")
        self.events = queue.Queue()
        self.raw = {"stdout": bytearray(), "stderr": bytearray()}
        threading.Thread(target=self._read_events, args=(os.fdopen(ev_r, "rb"),), daemon=True).start()
        for name, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            threading.Thread(target=self._read_raw, args=(name, pipe), daemon=True).start()

    def _read_events(self, pipe):
        for line in pipe:
            try:
                self.events.put(json.loads(line, parse_constant=strict_json))
            except ValueError as e:
                self.events.put({"type": "BAD-LINE", "line": line[:200], "why": str(e)})
        self.events.put(None)             # EOF

    def _read_raw(self, name, pipe):
        for chunk in iter(lambda: pipe.read1(65536), b""):
            self.raw[name] += chunk

    def next_event(self, timeout=TIMEOUT):
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s") from None

    def send(self, code, env=None):
        request = {"code": code}
        if env is not None:
            request["env"] = env
        self.requests.write(json.dumps(request).encode() + b"\n")
        self.requests.flush()

    def collect(self, timeout=TIMEOUT):
        """Events of one request, up to and including its end event."""
        events = []
        while True:
            event = self.next_event(timeout)
            assert event is not None, f"kernel closed fd 4 mid-request; got {events}"
            assert event["type"] != "BAD-LINE", f"malformed event line: {event}"
            events.append(event)
            if event["type"] == "end":
                return events

    def run(self, code, env=None, timeout=TIMEOUT):
        self.send(code, env)
        return Cell(self.collect(timeout))

    def close(self):
        try:
            self.requests.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "timeout"


class Cell:
    def __init__(self, events):
        self.events = events
        self.end = events[-1]
        self.stdout = "".join(e["text"] for e in events if e["type"] == "stdout")
        self.stderr = "".join(e["text"] for e in events if e["type"] == "stderr")
        self.results = [e for e in events if e["type"] == "result"]
        self.main = [r for r in self.results if r["is_main_result"]]
        self.errors = [e for e in events if e["type"] == "error"]

    def of(self, kind):
        return [e for e in self.events if e["type"] == kind]

    def text(self):
        assert len(self.main) == 1, f"expected one main result: {self.brief()}"
        return self.main[0].get("text")

    def brief(self):
        return json.dumps([{k: (v[:120] + "..." if isinstance(v, str) and len(v) > 120 else v)
                            for k, v in e.items()} for e in self.events])

    def ok(self):
        assert not self.errors, f"unexpected error: {self.brief()}"
        assert [e["type"] for e in self.events].count("end") == 1
        return self


def is_png(b64):
    return base64.b64decode(b64, validate=True).startswith(b"\x89PNG\r\n\x1a\n")


# ---- the checks: each takes the shared kernel ------------------------------------------
def t_ready_and_state(k):
    first = k.run("x = 1").ok()
    assert first.events == [first.end], first.brief()
    second = k.run("x += 1; x").ok()
    assert second.text() == "2", second.brief()
    assert second.end["execution_count"] == first.end["execution_count"] + 1


def t_stdout_one_event(k):
    cell = k.run('print("a")').ok()
    assert cell.of("stdout") == [{"type": "stdout", "text": "a\n"}], cell.brief()
    assert not cell.results


def t_stdout_partial_lines_joined(k):
    cell = k.run('print("a", end=""); print("b"); print("tail", end="")').ok()
    assert cell.stdout == "ab\ntail", cell.brief()
    assert cell.of("stdout")[0]["text"] == "ab\n", cell.brief()


def t_stderr(k):
    cell = k.run('import sys; print("oops", file=sys.stderr)').ok()
    assert cell.of("stderr") == [{"type": "stderr", "text": "oops\n"}], cell.brief()


def t_output_order(k):
    cell = k.run('print("before"); display("shown"); print("after"); 7').ok()
    kinds = [(e["type"], e.get("text")) for e in cell.events[:-1]]
    assert kinds == [("stdout", "before\n"), ("result", "'shown'"), ("stdout", "after\n"),
                     ("result", "7")], cell.brief()


def t_name_error_then_next_cell(k):
    k.run("kept = 2").ok()
    cell = k.run("undefined_name + 1")
    assert len(cell.errors) == 1, cell.brief()
    err = cell.errors[0]
    assert err["name"] == "NameError", err
    assert "undefined_name" in err["value"], err
    assert "NameError" in err["traceback"] and "undefined_name" in err["traceback"], err
    assert "\x1b[" not in err["traceback"], "traceback has ANSI escapes"
    assert cell.events[-1]["type"] == "end"
    assert k.run("kept").ok().text() == "2"


def t_syntax_error(k):
    cell = k.run("def f(:\n    pass")
    assert [e["name"] for e in cell.errors] == ["SyntaxError"], cell.brief()
    assert "SyntaxError" in cell.errors[0]["traceback"]
    assert "\x1b[" not in cell.errors[0]["traceback"]


def t_error_after_output(k):
    cell = k.run('print("partial")\nraise ValueError("bad value")')
    assert cell.stdout == "partial\n" and cell.errors[0]["name"] == "ValueError", cell.brief()
    assert cell.errors[0]["value"] == "bad value"
    types = [e["type"] for e in cell.events]
    assert types == ["stdout", "reporting", "error", "end"], types


def t_shell_command(k):
    cell = k.run("!echo hi").ok()
    assert cell.of("stdout") == [{"type": "stdout", "text": "hi\n"}], cell.brief()
    cell = k.run("!echo to-err >&2; exit 3").ok()
    assert cell.stderr == "to-err\n", cell.brief()
    assert k.run("_exit_code").text() == "3"
    name = k.run("who = 'world'\n!echo hello $who").ok()
    assert name.stdout == "hello world\n", name.brief()


def t_shell_capture(k):
    cell = k.run("lines = !printf 'a\\nb\\n'\nlist(lines)").ok()
    assert cell.text() == "['a', 'b']", cell.brief()


def t_line_magics(k):
    cell = k.run("%pwd").ok()
    assert cell.text() == repr(HERE), cell.brief()
    cell = k.run("%timeit -n 10 -r 2 sum(range(10))").ok()
    assert "per loop" in cell.stdout, cell.brief()
    cell = k.run("%%capture captured\nprint('hidden')").ok()
    assert cell.stdout == "", cell.brief()
    assert k.run("captured.stdout").text() == "'hidden\\n'"


def t_matplotlib_show(k):
    cell = k.run("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()").ok()
    pngs = [r for r in cell.results if "png" in r]
    assert len(pngs) == 1 and not pngs[0]["is_main_result"], cell.brief()
    assert is_png(pngs[0]["png"])
    assert not cell.main, cell.brief()
    assert k.run("len(plt.get_fignums())").text() == "0"
    assert k.run("import matplotlib; matplotlib.get_backend()").text() == "'agg'"


def t_matplotlib_no_show(k):
    cell = k.run("import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])").ok()
    pngs = [r for r in cell.results if "png" in r]
    assert len(pngs) == 1 and is_png(pngs[0]["png"]), cell.brief()
    assert len(cell.main) == 1 and "Line2D" in cell.main[0]["text"], cell.brief()
    assert "png" not in cell.main[0]


def t_matplotlib_show_in_loop(k):
    cell = k.run("import matplotlib.pyplot as plt\nfor i in range(3):\n"
                 "    plt.plot([i, i + 1])\n    plt.show()").ok()
    assert sum("png" in r for r in cell.results) == 3, cell.brief()


def t_matplotlib_figure_value(k):
    cell = k.run("import matplotlib.pyplot as plt\nfig, ax = plt.subplots(); ax.bar([1, 2], [3, 4]); fig").ok()
    pngs = [r for r in cell.results if "png" in r]
    assert len(pngs) == 1 and pngs[0]["is_main_result"], cell.brief()


def t_matplotlib_inline_magic_no_duplicates(k):
    cell = k.run("%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    assert sum("png" in r for r in cell.results) == 1, cell.brief()
    cell = k.run("plt.plot([2, 1]);").ok()
    assert sum("png" in r for r in cell.results) == 1 and not cell.main, cell.brief()
    k.run("import matplotlib; matplotlib.use('Agg')").ok()


def t_dataframe_html(k):
    cell = k.run("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})").ok()
    main = cell.main[0] if len(cell.main) == 1 else {}
    assert "<table" in main.get("html", ""), cell.brief()
    assert "a" in main.get("text", "") and "x" in main["text"], cell.brief()


def t_display(k):
    cell = k.run("from IPython.display import display, HTML, Markdown\n"
                 "display(HTML('<b>hi</b>'))\ndisplay(Markdown('# t'))\n"
                 "display({'k': 1}, raw=False)\nNone").ok()
    assert len(cell.results) == 3 and not cell.main, cell.brief()
    assert cell.results[0]["html"] == "<b>hi</b>" and cell.results[1]["markdown"] == "# t"
    assert cell.results[2]["text"] == "{'k': 1}"


def t_mime_mapping(k):
    cell = k.run("from IPython.display import JSON, Image, SVG, Javascript, display\n"
                 "import base64\n"
                 "png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
                 "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')\n"
                 "display(Image(data=png))\ndisplay(JSON({'a': [1, 2]}))\n"
                 "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>'))\n"
                 "display(Javascript('1'))\n"
                 "display({'application/x-custom': {'v': 1}, 'text/plain': 'c'}, raw=True)").ok()
    r = cell.results
    assert len(r) == 5, cell.brief()
    assert is_png(r[0]["png"]), r[0]
    assert r[1]["json"] == {"a": [1, 2]}, r[1]
    assert r[2]["svg"].startswith("<svg"), r[2]
    assert "1" in r[3]["javascript"], r[3]
    assert r[4]["extra"] == {"application/x-custom": {"v": 1}} and r[4]["text"] == "c", r[4]


def t_unencodable_values(k):
    cell = k.run("from IPython.display import display\nloop = []; loop.append(loop)\n"
                 "display({'application/json': {'x': float('nan')}, 'text/plain': 'nan'}, raw=True)\n"
                 "display({'application/x-loop': loop, 'text/plain': 'loop'}, raw=True)").ok()
    assert [r["text"] for r in cell.results] == ["nan", "loop"], cell.brief()
    assert "nan" in cell.results[0]["json"] and "..." in cell.results[1]["extra"], cell.brief()


def t_trailing_semicolon(k):
    cell = k.run("1 + 1;").ok()
    assert not cell.results, cell.brief()
    cell = k.run("1 + 1  # comment").ok()
    assert cell.text() == "2"


def t_env_restored(k):
    k.run("import os; os.environ['KEEP_ME'] = 'old'").ok()
    cell = k.run("import os; (os.environ.get('NEW_VAR'), os.environ.get('KEEP_ME'))",
                 env={"NEW_VAR": "v1", "KEEP_ME": "new"}).ok()
    assert cell.text() == "('v1', 'new')", cell.brief()
    sub = k.run("!echo $NEW_VAR", env={"NEW_VAR": "from-env"}).ok()
    assert sub.stdout == "from-env\n", sub.brief()
    after = k.run("('NEW_VAR' in os.environ, os.environ.get('KEEP_ME'))").ok()
    assert after.text() == "(False, 'old')", after.brief()


def t_interrupt_sleep(k):
    k.run("survivor = 41").ok()
    k.send("import time\nprint('sleeping', flush=True)\ntime.sleep(30)\nprint('not reached')")
    first = k.next_event()
    assert first == {"type": "stdout", "text": "sleeping\n"}, first
    time.sleep(1)
    start = time.monotonic()
    k.proc.send_signal(signal.SIGINT)
    cell = Cell([first] + k.collect(timeout=10))
    assert time.monotonic() - start < 5, "interrupt took too long"
    assert [e["name"] for e in cell.errors] == ["KeyboardInterrupt"], cell.brief()
    assert "not reached" not in cell.stdout
    assert k.run("1 + 1").ok().text() == "2"
    assert k.run("survivor + 1").ok().text() == "42"


def t_interrupt_busy_loop(k):
    k.send("n = 0\nwhile True:\n    n += 1")
    time.sleep(1)
    k.proc.send_signal(signal.SIGINT)
    cell = Cell(k.collect(timeout=10))
    assert [e["name"] for e in cell.errors] == ["KeyboardInterrupt"], cell.brief()
    assert int(k.run("n").ok().text()) > 0


def t_interrupt_printing_loop(k):
    """Interrupts landing while events are written must not corrupt the stream."""
    k.send("i = 0\nwhile True:\n    print('tick', i)\n    i += 1")
    time.sleep(0.5)
    for _ in range(5):
        k.proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    cell = Cell(k.collect(timeout=10))
    assert cell.errors and cell.errors[-1]["name"] == "KeyboardInterrupt", cell.brief()[-500:]
    time.sleep(0.3)
    assert k.run("'alive'").ok().text() == "'alive'"


def t_interrupt_during_big_writes(k):
    """SIGINT while large events are being written: every event line must stay whole."""
    for attempt in range(12):
        k.send("import sys\nwhile True:\n    sys.stderr.write('e' * 50000)")
        time.sleep(0.1 + 0.02 * attempt)
        k.proc.send_signal(signal.SIGINT)
        cell = Cell(k.collect(timeout=10))   # collect() fails on a malformed line
        assert cell.errors and cell.errors[-1]["name"] == "KeyboardInterrupt", cell.brief()[-300:]
        assert set(cell.stderr) == {"e"}, "stderr text damaged"
    assert k.run("'alive'").ok().text() == "'alive'"


def t_fresh_kernel_interrupt_burst(k):
    """A burst of SIGINTs on a fresh kernel's first cell (slow first traceback): still
    exactly one KeyboardInterrupt error event, and the kernel keeps serving."""
    fresh = Kernel(k.python)
    try:
        assert fresh.next_event() == {"type": "ready"}
        fresh.send("while True:\n    print('tick')")
        time.sleep(0.5)
        for _ in range(8):
            fresh.proc.send_signal(signal.SIGINT)
            time.sleep(0.03)
        cell = Cell(fresh.collect(timeout=10))
        assert [e["name"] for e in cell.errors] == ["KeyboardInterrupt"], cell.brief()[-400:]
        assert fresh.run("'alive'").ok().text() == "'alive'"
        assert fresh.close() == 0
    finally:
        if fresh.proc.poll() is None:
            fresh.proc.kill()


def t_interrupt_shell_command(k):
    k.send("!sleep 30")
    time.sleep(1)
    k.proc.send_signal(signal.SIGINT)
    cell = Cell(k.collect(timeout=10))
    assert [e["name"] for e in cell.errors] == ["KeyboardInterrupt"], cell.brief()
    assert k.run("1").ok().text() == "1"
    k.send("!trap '' INT; sleep 30; echo not-reached")   # a command that ignores SIGINT
    time.sleep(1)
    start = time.monotonic()
    k.proc.send_signal(signal.SIGINT)
    cell = Cell(k.collect(timeout=10))
    assert [e["name"] for e in cell.errors] == ["KeyboardInterrupt"], cell.brief()
    assert time.monotonic() - start < 5 and "not-reached" not in cell.stdout


def t_interrupt_async_cell(k):
    before = k.run("1").ok().end["execution_count"]
    k.send("import asyncio\nawait asyncio.sleep(30)")
    time.sleep(1)
    k.proc.send_signal(signal.SIGINT)
    cell = Cell(k.collect(timeout=10))
    assert [e["name"] for e in cell.errors] == ["KeyboardInterrupt"], cell.brief()
    after = k.run("await asyncio.sleep(0.01); 'again'").ok()
    assert after.text() == "'again'", after.brief()
    counts = [before, cell.end["execution_count"], after.end["execution_count"]]
    assert counts == [before, before + 1, before + 2], counts


def t_sigint_while_idle(k):
    k.run("kept = 2").ok()
    for _ in range(3):
        k.proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    assert k.proc.poll() is None, "kernel died on an idle SIGINT"
    cell = k.run("kept").ok()
    assert cell.text() == "2" and not cell.errors, cell.brief()


def t_cell_cannot_kill_kernel(k):
    k.run("kept = 2").ok()
    for code, name in (("import sys; sys.exit(3)", "SystemExit"), ("raise SystemExit", "SystemExit"),
                       ("raise KeyboardInterrupt", "KeyboardInterrupt"), ("input()", "EOFError")):
        cell = k.run(code)
        assert [e["name"] for e in cell.errors] == [name], cell.brief()
    k.run("exit()")
    k.run("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)")
    assert k.run("kept").ok().text() == "2"


def t_bad_requests(k):
    k.run("kept = 2").ok()
    k.requests.write(b"this is not json\n")
    k.requests.flush()
    cell = Cell(k.collect())
    assert len(cell.errors) == 1 and cell.events[-1]["type"] == "end", cell.brief()
    k.requests.write(b'{"env": {}}\n')
    k.requests.flush()
    assert len(Cell(k.collect()).errors) == 1
    assert k.run("kept").ok().text() == "2"


def t_unicode_and_bad_text(k):
    cell = k.run("print('h\u00e9llo \u2603 \U0001f600')\nprint('lone \\udcff surrogate')\n"
                 "import sys; sys.stdout.buffer.write(b'bytes \\xff\\xfe ok\\n'); sys.stdout.flush()\n"
                 "class Odd:\n    def __repr__(self): return 'odd \\udc80 repr'\nOdd()").ok()
    assert "h\u00e9llo \u2603 \U0001f600\n" in cell.stdout, cell.brief()
    assert "lone ? surrogate\n" in cell.stdout and "bytes \ufffd\ufffd ok\n" in cell.stdout, cell.brief()
    assert cell.text() == "odd ? repr", cell.brief()


def t_huge_output(k):
    cell = k.run("print('x' * 5_000_000)\nfor i in range(20000): print(i)").ok()
    chunks = cell.of("stdout")
    assert len(chunks) > 10, "huge output was not split into chunks"
    assert max(len(c["text"]) for c in chunks) <= 1 << 16
    assert cell.stdout == "x" * 5_000_000 + "\n" + "".join(f"{i}\n" for i in range(20000))


def t_threads_print(k):
    cell = k.run("import threading\n"
                 "ts = [threading.Thread(target=lambda n=n: [print(f't{n}.{j};') for j in range(200)])"
                 " for n in range(4)]\n[t.start() for t in ts]; [t.join() for t in ts];").ok()
    # print() writes text and newline separately, so lines may interleave (as in plain
    # Python); every item must arrive intact, once.
    items = sorted(cell.stdout.replace("\n", "").split(";"))
    assert items == sorted([""] + [f"t{n}.{j}" for n in range(4) for j in range(200)]), cell.brief()


def t_multiprocessing_workers_print(k):
    cell = k.run("import multiprocessing as mp\n"
                 "def work(i):\n    print('worker', i, flush=True)\n    return i * i\n"
                 "with mp.get_context('fork').Pool(2) as pool:\n    squares = pool.map(work, range(4))\n"
                 "squares").ok()
    assert cell.text() == "[0, 1, 4, 9]", cell.brief()
    assert sorted(cell.stdout.splitlines()) == [f"worker {i}" for i in range(4)], cell.brief()


def t_raw_fds_go_to_parent(k):
    k.run("import os; os.write(1, b'raw-out\\n'); os.write(2, b'raw-err\\n')\n"
          "import subprocess; subprocess.run(['echo', 'sub-out'])").ok()
    time.sleep(0.3)
    assert b"raw-out\n" in k.raw["stdout"] and b"sub-out\n" in k.raw["stdout"], k.raw
    assert b"raw-err\n" in k.raw["stderr"], k.raw


def t_protocol_fds_not_inherited(k):
    cell = k.run("import os, subprocess\nproto = {os.readlink(f'/proc/self/fd/{n}') for n in (3, 4)}\n"
                 "out = subprocess.run('ls -l /proc/$$/fd', shell=True, close_fds=False,\n"
                 "                     capture_output=True, text=True).stdout\n"
                 "(len(out.splitlines()) > 3, [l for l in out.splitlines() if any(p in l for p in proto)])").ok()
    assert cell.text() == "(True, [])", cell.brief()


def t_async_cell(k):
    cell = k.run("import asyncio\nawait asyncio.sleep(0.01)\n'awaited'").ok()
    assert cell.text() == "'awaited'"


CHECKS = [v for n, v in list(globals().items()) if n.startswith("t_")]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default=os.environ.get("CELLBOX_KERNEL_PYTHON", sys.executable))
    parser.add_argument("-k", default="", help="only checks whose name contains this")
    args = parser.parse_args()
    passed = failed = 0

    def check(name, fn):
        nonlocal passed, failed
        started = time.monotonic()
        try:
            fn()
            passed += 1
            print(f"PASS {name} ({time.monotonic() - started:.1f}s)", flush=True)
        except Exception as exc:
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)

    kernel = Kernel(args.python)
    try:
        def ready():
            event = kernel.next_event(timeout=60)
            assert event == {"type": "ready"}, f"first event {event}; stderr {bytes(kernel.raw['stderr'])!r}"
        check("ready", ready)
        for fn in CHECKS:
            if args.k in fn.__name__:
                check(fn.__name__[2:], lambda: fn(kernel))
                if kernel.proc.poll() is not None:
                    print(f"kernel died (status {kernel.proc.returncode}); stderr: "
                          f"{bytes(kernel.raw['stderr'])[-2000:]!r}")
                    failed += 1
                    break

        def exits_zero_on_eof():
            status = kernel.close()
            assert status == 0, f"exit status {status}; stderr {bytes(kernel.raw['stderr'])[-2000:]!r}"
            assert kernel.next_event(timeout=5) is None   # fd 4 closed too
        check("exits_zero_on_eof", exits_zero_on_eof)
    finally:
        if kernel.proc.poll() is None:
            kernel.proc.kill()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
