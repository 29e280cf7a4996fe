"""E2B's own CLI (`@e2b/cli` from npm, unmodified) against `cellbox serve` as E2B's
cloud: every command that needs no E2B account beyond the API (sandbox list, info,
logs, metrics, exec, connect, create, pause, resume, kill; template list).

Usage: E2B_API_URL=http://localhost:49980 E2B_SANDBOX_URL=http://localhost:49980 \
       E2B_API_KEY=... python test_cli.py PATH/TO/e2b   (with `cellbox serve` running;
       the Python is the one with E2B's SDK, which makes the sandboxes)
Terminals (connect, create) run under `script`, which gives the CLI a pseudo-terminal.
Prints one line per check and `N passed, M failed`; exits 1 if anything failed.
"""
import json
import os
import subprocess
import sys
import time
import uuid

os.environ.pop("E2B_DEBUG", None)

from e2b import Sandbox, SandboxQuery  # noqa: E402
from checks import check, eventually, raises, report  # noqa: E402  (beside this file)

E2B = sys.argv[1]
RUN = uuid.uuid4().hex[:8]



def cli(*args, timeout=60):
    """The CLI's exit status and output (stdout and stderr), colours off."""
    done = subprocess.run([E2B, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"})
    return done.returncode, done.stdout + done.stderr


def in_terminal(command, typed, timeout=60):
    """`command` run in a pseudo-terminal (`script`), `typed` fed to it line by line."""
    process = subprocess.Popen(["script", "-qec", command, "/dev/null"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "NO_COLOR": "1"})
    time.sleep(5)                               # the terminal connects
    for line in typed:
        process.stdin.write(line.encode() + b"\r")
        process.stdin.flush()
        time.sleep(2)
    process.stdin.close()
    output = process.stdout.read()
    return process.wait(timeout=timeout), output.decode(errors="replace")


def ids():
    paginator = Sandbox.list(query=SandboxQuery(metadata={"run": RUN}))
    found = []
    while paginator.has_next:
        found += [s.sandbox_id for s in paginator.next_items()]
    return found


sandbox = Sandbox.create(metadata={"run": RUN})
sandbox.commands.run("echo warm")
sid = sandbox.sandbox_id

status, out = cli("sandbox", "list", "--metadata", f"run={RUN}")
check("sandbox list", status == 0 and sid in out, out)
status, out = cli("sandbox", "info", sid)
check("sandbox info", status == 0 and "State: running" in out and RUN in out, out)
status, out = cli("sandbox", "logs", sid)
check("sandbox logs (pretty)", status == 0 and "started from template" in out, out)
status, out = cli("sandbox", "logs", "--format", "json", sid)
lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
check("sandbox logs (JSON lines with level and message)", status == 0 and lines
      and all("level" in line and "message" in line for line in lines), out)
status, out = cli("sandbox", "metrics", sid)
check("sandbox metrics", status == 0 and "CPU:" in out and "Memory:" in out, out)
status, out = cli("sandbox", "exec", sid, "--", "sh", "-c", "echo exec-$((6*7))")
check("sandbox exec", status == 0 and "exec-42" in out, out)
status, out = cli("sandbox", "exec", sid, "--", "sh", "-c", "exit 3")
check("sandbox exec passes on an exit status", status == 3, (status, out))
status, out = in_terminal(f"{E2B} sandbox connect {sid}", ["echo term-$((6*7))", "exit"])
check("sandbox connect (a terminal)", "term-42" in out and "Closing terminal" in out, out)
status, out = cli("sandbox", "pause", sid)
check("sandbox pause", status == 0 and sandbox.get_info().state.value == "paused", out)
status, out = cli("sandbox", "resume", sid)
check("sandbox resume", status == 0 and sandbox.get_info().state.value == "running", out)
status, out = in_terminal(f"{E2B} sandbox create base", ["echo spawned-$((6*7))", "exit"])
check("sandbox create (spawns one and connects a terminal)", "spawned-42" in out, out)
status, out = cli("template", "list")
check("template list (with the envd version)", status == 0 and "code-interpreter-v1" in out and "0.6.4" in out, out)
status, out = cli("sandbox", "kill", sid)
check("sandbox kill", status == 0 and sid not in ids(), out)
status, out = cli("sandbox", "kill", "no-such-sandbox")
check("sandbox kill of an unknown one says so", "found" in out, out)

report()
