"""E2B's official Python SDK (e2b-code-interpreter from PyPI, unmodified) against
`cellbox serve`, in the SDK's debug mode (E2B_DEBUG=true: no cloud, localhost:49999).

Usage: python test_sdk.py   (with `cellbox serve` running; the SDK installed)
Prints one line per check and `N passed, M failed`; exits 1 if anything failed.
"""
import io
import json
import os
import socket
import sys
import time

os.environ["E2B_DEBUG"] = "true"

import httpx  # noqa: E402  (comes with the SDK)
from e2b.exceptions import NotFoundException, TimeoutException  # noqa: E402
from e2b.sandbox.commands.command_handle import CommandExitException  # noqa: E402
from e2b.sandbox.filesystem.filesystem import WriteEntry  # noqa: E402
from e2b_code_interpreter import Sandbox  # noqa: E402
from checks import check, eventually, raises, report  # noqa: E402  (beside this file)

# Past this many seconds (when set) the run is hung: print where, and exit.
if os.environ.get("SDK_TEST_DEADLINE"):
    import faulthandler
    faulthandler.dump_traceback_later(int(os.environ["SDK_TEST_DEADLINE"]), exit=True)

URL = "http://localhost:49999"




sbx = Sandbox.create()

sbx.run_code("x = 1")
e = sbx.run_code("x += 1; x")
check("state persists between cells", e.text == "2", e)

seen = []
e = sbx.run_code(
    "print('out'); import sys; print('err', file=sys.stderr); 40 + 2",
    on_stdout=lambda m: seen.append(("stdout", m.line)),
    on_stderr=lambda m: seen.append(("stderr", m.line)),
    on_result=lambda r: seen.append(("result", r.text)),
)
check("callbacks see stdout, stderr and the result",
      seen == [("stdout", "out\n"), ("stderr", "err\n"), ("result", "42")], seen)
check("logs are collected", e.logs.stdout == ["out\n"] and e.logs.stderr == ["err\n"], e.logs)

e = sbx.run_code("undefined_name + 1")
check("a NameError comes back with its traceback",
      e.error is not None and e.error.name == "NameError" and "undefined_name" in e.error.traceback, e.error)

e = sbx.run_code("import matplotlib.pyplot as plt\nplt.bar(['apples', 'pears'], [3, 5])\nplt.title('Stock')\nplt.show()")
figure = e.results[0] if e.results else None
check("a figure comes back as PNG", figure is not None and bool(figure.png), e)
chart = getattr(figure, "chart", None)
check("a bar chart's elements", chart is not None and chart.type.value == "bar"
      and [(el.label, el.value) for el in chart.elements] == [("apples", 3.0), ("pears", 5.0)]
      and chart.title == "Stock", chart and chart.to_dict())

e = sbx.run_code("import pandas as pd; pd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
check("a DataFrame's data", e.results and e.results[0].data == {"a": [1, 2], "b": ["x", "y"]}, e)

ctx = sbx.create_code_context()
sbx.run_code("only_here = 5", context=ctx)
check("contexts keep their names apart",
      sbx.run_code("only_here", context=ctx).text == "5"
      and sbx.run_code("'only_here' in globals()").text == "False")
check("contexts are listed", ctx.id in [c.id for c in sbx.list_code_contexts()])
sbx.restart_code_context(ctx)
check("restart clears a context", sbx.run_code("'only_here' in globals()", context=ctx).text == "False")
sbx.remove_code_context(ctx)
check("removed contexts are gone", ctx.id not in [c.id for c in sbx.list_code_contexts()])

started = time.time()
try:
    sbx.run_code("import time; time.sleep(300)", timeout=3)
    check("a run past its timeout raises TimeoutException", False, "no exception")
except TimeoutException:
    check("a run past its timeout raises TimeoutException", time.time() - started < 30)
check("the next cell works, state kept", sbx.run_code("x").text == "2")

e = sbx.run_code("import os; os.environ.get('FOO')", envs={"FOO": "bar"})
check("per-run envs", e.text == "bar", e)
check("per-run envs do not leak", sbx.run_code("os.environ.get('FOO')").text is None)

# ---- other languages (E2B's tests/languages and default-kernel tests) ----------------------
e = sbx.run_code("console.log('Hello, World!')", language="js")
check("js: console.log", e.logs.stdout == ["Hello, World!\n"] and not e.results, e)
sbx.run_code("const y = 1", language="js")
e = sbx.run_code("import { readFileSync } from 'fs'\nawait Promise.resolve(typeof readFileSync + y)",
                 language="javascript")
check("js: state, ESM import, top-level await", e.text == "function1", e)
e = sbx.run_code("process.env.FOO", envs={"FOO": "bar"}, language="js")
check("js: per-run envs, the string shown as itself", e.text == "bar", e)
e = sbx.run_code("function subtract(x: number, y: number): number {\n  return x - y;\n}\nsubtract(1, 2);",
                 language="ts")
check("ts: types are stripped", e.text == "-1", e)
e = sbx.run_code("null.x", language="js")
check("js: an error with name, value and stack", e.error is not None and e.error.name == "TypeError"
      and "null" in e.error.value and "cell:1" in e.error.traceback, e.error)
sbx.run_code("cd /tmp; N=7", language="bash")
e = sbx.run_code("echo $N $(pwd) $FOO", envs={"FOO": "bar"}, language="bash")
check("bash: one shell from cell to cell, per-run envs", e.logs.stdout == ["7 /tmp bar\n"], e.logs)
if not os.environ.get("SKIP_R_AND_JAVA"):    # the microVM suite skips them for time
    # IRkernel shows values as displays, which E2B passes on as results that are not the main one.
    e = sbx.run_code("x <- c(1, 2, 3)\nmean(x)", language="r")
    check("r: IRkernel's value", [r.text for r in e.results] == ["[1] 2"], e)
    e = sbx.run_code('Sys.getenv("FOO")', envs={"FOO": "bar"}, language="r")
    check("r: per-run envs", [r.text for r in e.results] == ['[1] "bar"'], e)
    e = sbx.run_code("int square(int n) { return n * n; }\nsquare(7)", language="java")
    check("java: a method and its value", e.text == "49", e)
    e = sbx.run_code('"Hello, " + System.getenv("FOO")', envs={"FOO": "Java"}, language="java")
    check("java: a String shown as itself, per-run envs", e.text == "Hello, Java", e)
    e = sbx.run_code('System.getProperty("FOO") + " " + System.getProperty("FOO", "gone")', envs={"FOO": "bar"}, language="java")
    after = sbx.run_code('System.getProperty("FOO", "gone")', language="java")
    check("java: envs are system properties too, for the run only (as E2B's kernel has them)",
          e.text == "bar bar" and after.text == "gone", (e, after))
    e = sbx.run_code('System.out.println("Hello, World!"); System.out.print("a\\nb")', language="java")
    check("java: a line and its newline are two texts, as E2B's", e.logs.stdout == ["Hello, World!", "\n", "a", "\n", "b"], e.logs)
languages = {c.language for c in sbx.list_code_contexts()}
check("python and javascript contexts are listed", {"python", "javascript"} <= languages, languages)
js_ctx = sbx.create_code_context(cwd="/tmp", language="js")
e = sbx.run_code("process.cwd()", context=js_ctx)
check("a js context of its own", js_ctx.language == "javascript" and e.text == "/tmp", e)
sbx.remove_code_context(js_ctx)
try:
    refused = str(sbx.run_code("1", language="cobol"))
except Exception as ex:     # the SDK raises on the 400
    refused = str(ex)
check("an unknown language is refused, naming it", "cobol" in refused, refused)

# ---- files and commands (envd, port 49983) ---------------------------------------------------
info = sbx.files.write("notes/hello.txt", "hello from the SDK")
check("files.write answers with the absolute path", info.path == "/home/user/notes/hello.txt", info)
check("files.read gives it back", sbx.files.read("notes/hello.txt") == "hello from the SDK")
check("the kernel sees the written file",
      sbx.run_code("open('notes/hello.txt').read()").text == "hello from the SDK")
blob = bytes(range(256)) * 8192     # 2 MiB, every byte value
sbx.files.write("/tmp/blob.bin", blob)
check("2 MiB of binary round-trips", bytes(sbx.files.read("/tmp/blob.bin", format="bytes")) == blob)
infos = sbx.files.write_files([WriteEntry(path="multi/a.txt", data="A"),
                               WriteEntry(path="/tmp/multi/b.bin", data=b"\x00\x01")])
check("files.write_files (one multipart upload)", [i.path for i in infos] == ["/home/user/multi/a.txt", "/tmp/multi/b.bin"]
      and bytes(sbx.files.read("/tmp/multi/b.bin", format="bytes")) == b"\x00\x01", infos)
sbx.files.write("stream.bin", io.BytesIO(b"z" * 3_000_000))   # a file object goes as application/octet-stream
check("a file object uploads (octet-stream) and streams back",
      sum(len(chunk) for chunk in sbx.files.read("stream.bin", format="stream")) == 3_000_000)
text = "compressible " * 50_000
sbx.files.write("big.txt", text, gzip=True)
check("gzip both ways", sbx.files.read("big.txt", gzip=True) == text and sbx.files.read("big.txt") == text)
with httpx.Client(base_url="http://localhost:49983", timeout=30) as envd:
    r = envd.post("/files?path=bad.gz", content=b"not gzip at all",
                  headers={"content-type": "application/octet-stream", "content-encoding": "gzip"})
    check("a broken gzip upload is a 400 and writes nothing",
          r.status_code == 400 and eventually(lambda: not sbx.files.exists("bad.gz.cellbox-upload"))
          and not sbx.files.exists("bad.gz"), r.text)
entries = sbx.files.list("notes")
check("files.list", [(e.name, e.type.value, e.size, e.path) for e in entries]
      == [("hello.txt", "file", 18, "/home/user/notes/hello.txt")], entries)
check("files.exists", sbx.files.exists("notes/hello.txt") and not sbx.files.exists("notes/nope.txt"))
check("files.make_dir: new, then already there",
      sbx.files.make_dir("notes/sub") is True and sbx.files.make_dir("notes/sub") is False)
moved = sbx.files.rename("notes/hello.txt", "notes/sub/moved.txt")
check("files.rename", moved.path == "/home/user/notes/sub/moved.txt"
      and not sbx.files.exists("notes/hello.txt"), moved)
deep = sorted(e.path for e in sbx.files.list("notes", depth=2))
check("files.list two levels deep", deep == ["/home/user/notes/sub", "/home/user/notes/sub/moved.txt"], deep)
check("files.get_info", sbx.files.get_info("notes/sub").type.value == "dir")
sbx.files.write("keep.txt", "old")
with socket.create_connection(("localhost", 49983)) as raw:     # promises 1 MB, sends 1 kB, hangs up
    raw.sendall(b"POST /files?path=keep.txt HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
check("a broken upload leaves the old file, and nothing else",
      eventually(lambda: [e.name for e in sbx.files.list(".") if "keep" in e.name] == ["keep.txt"])
      and sbx.files.read("keep.txt") == "old", sbx.files.list("."))
sbx.files.remove("notes")
check("files.remove (a folder with contents)", not sbx.files.exists("notes"))
try:
    sbx.files.read("notes/hello.txt")
    check("reading a missing file raises NotFoundException", False, "no exception")
except NotFoundException:
    check("reading a missing file raises NotFoundException", True)

r = sbx.commands.run("echo hi; echo oops >&2")
check("commands.run", (r.stdout, r.stderr, r.exit_code) == ("hi\n", "oops\n", 0), r)
r = sbx.commands.run('pwd; echo "$GREETING"', envs={"GREETING": "hey"}, cwd="/tmp")
check("commands.run with cwd and envs", r.stdout == "/tmp\nhey\n", r)
r = sbx.commands.run("id -un; stat -c %U keep.txt multi multi/a.txt")
check("commands and written files are user's", r.stdout == "user\n" * 4, r)
r = sbx.commands.run("id -u", user="root")
check("commands.run(user='root')", r.stdout == "0\n", r)
try:
    sbx.commands.run("echo partial; exit 3")
    check("a failing command raises CommandExitException", False, "no exception")
except CommandExitException as e:
    check("a failing command raises CommandExitException", e.exit_code == 3 and e.stdout == "partial\n", e)
lines = []
sbx.commands.run("for i in 1 2 3; do echo $i; sleep 0.1; done", on_stdout=lines.append)
check("on_stdout streams the output", "".join(lines) == "1\n2\n3\n", lines)
h = sbx.commands.run("cat", background=True, stdin=True)
check("a background command is listed", h.pid in [p.pid for p in sbx.commands.list()])
sbx.commands.send_stdin(h.pid, "piped\n")
sbx.commands.close_stdin(h.pid)
check("stdin reaches a background command", h.wait().stdout == "piped\n")
h = sbx.commands.run("sleep 3; echo late", background=True)
watcher = sbx.commands.connect(h.pid)
check("commands.connect follows a running command", watcher.wait().stdout == "late\n")
h = sbx.commands.run("sleep 300", background=True)
check("commands.kill", sbx.commands.kill(h.pid) is True)
try:
    h.wait()
    check("a killed command ends with an error", False, "no exception")
except CommandExitException as e:
    check("a killed command ends with an error", e.exit_code != 0, e)
check("killing it again finds nothing", sbx.commands.kill(h.pid) is False)
started = time.time()
try:
    sbx.commands.run("sleep 300", timeout=2)
    check("a command past its timeout raises TimeoutException", False, "no exception")
except TimeoutException:
    check("a command past its timeout raises TimeoutException", time.time() - started < 20)
ps = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null"
check("... and the command was killed", eventually(lambda: "sleep 300" not in sbx.commands.run(ps).stdout))

# ---- bad input, straight over HTTP -----------------------------------------------------------
with httpx.Client(base_url=URL, timeout=60) as http:
    r = http.post("/execute", content=b"{not json", headers={"content-type": "application/json"})
    check("malformed JSON is a 4xx", 400 <= r.status_code < 500, r.status_code)
    r = http.post("/execute", json={"code": "1 + 1", "surprise": True})
    check("unknown fields are ignored", r.status_code == 200 and '"text":"2"' in r.text, r.text)
    r = http.post("/execute", json={"code": "1", "context_id": "default", "language": "python"})
    check("context and language together are a 400", r.status_code == 400, r.status_code)
    r = http.post("/execute", json={"code": "1", "context_id": "no-such-context"})
    check("an unknown context is a 404", r.status_code == 404, r.status_code)
    r = http.post("/execute", json={"code": "x = '" + "a" * (100 << 20) + "'"})
    check("a 100 MB cell is refused clearly", r.status_code == 413, r.status_code)

    # 50 requests in flight at once on one context run in arrival order.
    sbx.run_code("order = []")
    with httpx.Client(base_url=URL, timeout=120, limits=httpx.Limits(max_connections=60)) as c:
        managers, streams = [], []
        for i in range(50):     # each one has arrived (headers back) before the next is sent
            manager = c.stream("POST", "/execute", json={"code": f"order.append({i}); {i}"})
            managers.append(manager)
            streams.append(manager.__enter__())
        statuses = [s.status_code for s in streams]
        bodies = [s.read().decode() for s in streams]
        for manager in managers:
            manager.__exit__(None, None, None)
    order = json.loads(sbx.run_code("import json; json.dumps(order)").text)
    check("50 concurrent requests are all served",
          statuses == [200] * 50 and all(f'"text":"{i}"' in b for i, b in enumerate(bodies)), statuses)
    check("... in arrival order", order == list(range(50)), order)

    # A client that goes away mid-stream interrupts the cell; the server stays up.
    with http.stream("POST", "/execute", json={"code": "import time; time.sleep(120)"}) as stream:
        for _ in stream.iter_lines():
            break
    started = time.time()
    e = sbx.run_code("'still here'")
    check("after a disconnect the next cell runs at once",
          e.text == "still here" and time.time() - started < 20, time.time() - started)
    check("health", http.get("/health").status_code == 200)

with httpx.Client(base_url="http://localhost:49983", timeout=30) as envd:
    r = envd.post("/filesystem.Filesystem/Stat", content=b"{oops",
                  headers={"content-type": "application/json"})
    check("envd: malformed JSON is invalid_argument",
          r.status_code == 400 and r.json()["code"] == "invalid_argument", r.text)
    r = envd.post("/filesystem.Filesystem/CreateWatcher", json={"path": "/tmp"})
    watcher = r.json().get("watcherId")
    check("envd: a polled watcher starts", r.status_code == 200 and watcher, r.text)
    r = envd.post("/filesystem.Filesystem/RemoveWatcher", json={"watcherId": watcher})
    check("envd: ... and is removed", r.status_code == 200, r.text)
    r = envd.post("/filesystem.Filesystem/GetWatcherEvents", json={"watcherId": watcher})
    check("envd: a removed watcher is not_found",
          r.status_code == 404 and r.json()["code"] == "not_found", r.text)
    r = envd.post("/process.Process/Nope", json={})
    check("envd: an unknown method is unimplemented", r.status_code == 501, r.text)
    r = envd.post("/files?path=x.txt", content=b"data", headers={"content-type": "text/plain"})
    check("envd: an upload of another content type is refused", r.status_code == 415, r.text)
    check("envd: health", envd.get("/health").status_code == 204)

report()
