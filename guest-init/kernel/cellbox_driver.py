"""What cellbox's kernel drivers share (the bash driver and the Jupyter bridge whole,
the Python driver its request reading): the protocol of cellbox_kernel.py,
  fd 3  requests, one JSON object per line: {"code": "...", "env": {"K": "V"}}
  fd 4  events,   one JSON object per line: ready, stdout, stderr, result, error, end
Importing this module makes both fds close-on-exec: nothing a kernel starts may hold
or write them. Standard library only.
"""
import json, os

REQUEST_FD, EVENT_FD = 3, 4
for _fd in (REQUEST_FD, EVENT_FD):
    try:
        os.set_inheritable(_fd, False)
    except OSError:
        pass                        # not started by guest-init (a test importing this)


def emit(event):
    """Writes one event as a JSON line; a parent that is gone ends the process."""
    data = (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8", "replace")
    try:
        while data:
            data = data[os.write(EVENT_FD, data):]
    except OSError:
        os._exit(3)


def error(name, value, traceback=""):
    emit({"type": "error", "name": name, "value": value, "traceback": traceback})


def read_request(line):
    """A request line as (code, env); ValueError when it is not one."""
    request = json.loads(line)
    code = request.get("code") if isinstance(request, dict) else None
    if not isinstance(code, str):
        raise ValueError('a request needs a "code" string')
    env = request.get("env") or {}
    if not isinstance(env, dict):
        raise ValueError('"env" must be an object')
    return code, {str(k): str(v) for k, v in env.items()}


def serve(run):
    """Says the kernel is ready, then runs each request as run(code, env) until fd 3
    ends. Every request ends with exactly one `end` event; when run returns True the
    kernel is finished (its process exits after that end)."""
    emit({"type": "ready"})
    count = 1
    for line in open(REQUEST_FD, "rb", closefd=False):
        if not line.strip():
            continue
        finished = False
        try:
            finished = run(*read_request(line))
        except Exception as exc:    # a bad request, or the driver's own failure
            error(type(exc).__name__, str(exc))
        emit({"type": "end", "execution_count": count})
        count += 1
        if finished:
            os._exit(0)
