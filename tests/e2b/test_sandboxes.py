"""E2B's official Python SDK (e2b-code-interpreter from PyPI, unmodified) against
`cellbox serve` as E2B's cloud: many sandboxes through the control plane and the
sandbox traffic on one port (E2B_API_URL and E2B_SANDBOX_URL pointing at it,
E2B_API_KEY its key), not debug mode; forks and snapshots included.

Usage: E2B_API_URL=http://localhost:49980 E2B_SANDBOX_URL=http://localhost:49980 \
       E2B_API_KEY=... python test_sandboxes.py   (with `cellbox serve` running)
Prints one line per check and `N passed, M failed`; exits 1 if anything failed.
"""
import datetime
import os
import socket
import ssl
import subprocess
import threading
import sys
import time
import uuid

os.environ.pop("E2B_DEBUG", None)

import httpx  # noqa: E402  (comes with the SDK)
from e2b import PtySize, SandboxQuery, SandboxState  # noqa: E402
from e2b.exceptions import AuthenticationException, NotFoundException, SandboxException  # noqa: E402
from e2b_code_interpreter import Sandbox  # noqa: E402
from checks import check, eventually, raises, report  # noqa: E402  (beside this file)

API = os.environ["E2B_API_URL"]
KEY = os.environ["E2B_API_KEY"]
RUN = uuid.uuid4().hex[:8]          # this run's sandboxes carry it in their metadata





def ids(**query):
    found = []
    paginator = Sandbox.list(query=SandboxQuery(metadata={"run": RUN, **query.pop("metadata", {})}, **query))
    while paginator.has_next:
        found += [s.sandbox_id for s in paginator.next_items()]
    return sorted(found)


api = httpx.Client(base_url=API, headers={"X-API-Key": KEY}, timeout=30)

# ---- many sandboxes, no crosstalk ------------------------------------------------------------
a = Sandbox.create(metadata={"run": RUN, "who": "a"})
b = Sandbox.create(metadata={"run": RUN, "who": "b"}, envs={"WHO": "b"})
check("two sandboxes, two ids", a.sandbox_id != b.sandbox_id, (a.sandbox_id, b.sandbox_id))
a.run_code("x = 'a'")
b.run_code("x = 'b'")
check("each keeps its own variables",
      a.run_code("x").text == "a" and b.run_code("x").text == "b")
a.files.write("only-a.txt", "A")
check("each has its own files", a.files.exists("only-a.txt") and not b.files.exists("only-a.txt"))
check("create's envs reach code and commands",
      b.run_code("import os; os.environ.get('WHO')").text == "b"
      and b.commands.run("echo $WHO").stdout == "b\n" and a.commands.run("echo -n $WHO").stdout == "")
java = b.run_code('System.getenv("WHO") + System.getProperty("WHO")', language="java")
check("... and Java cells, as environment and system properties (as in E2B)", java.text == "bb", java)

# ---- file metadata ---------------------------------------------------------------------------
written = a.files.write("tagged.txt", "data", metadata={"Owner": "ada", "version": "2"})
info = a.files.get_info("tagged.txt")
listed = {e.name: e.metadata for e in a.files.list("/home/user")}
check("file metadata is kept (keys lowercased) and returned by write, get_info and list",
      written.metadata == {"owner": "ada", "version": "2"} and info.metadata == {"owner": "ada", "version": "2"}
      and listed.get("tagged.txt") == {"owner": "ada", "version": "2"} and not listed.get("only-a.txt"),
      (written, info.metadata, listed))
a.files.rename("tagged.txt", "renamed.txt")
check("metadata follows a rename", a.files.get_info("renamed.txt").metadata == {"owner": "ada", "version": "2"})

# ---- watching a folder -----------------------------------------------------------------------
a.files.make_dir("watched")
watcher = a.files.watch_dir("watched", recursive=True)
a.files.write("watched/one.txt", "1")
a.files.make_dir("watched/deeper")
time.sleep(0.5)
a.files.write("watched/deeper/two.txt", "2")
a.files.remove("watched/one.txt")
seen = []
eventually(lambda: seen.extend((e.name, e.type.value) for e in watcher.get_new_events())
           or {("deeper/two.txt", "write"), ("one.txt", "remove")} <= set(seen), 10)
watcher.stop()
check("watch_dir sees creations, writes and removals, in new folders too",
      ("one.txt", "create") in seen and ("deeper", "create") in seen
      and ("deeper/two.txt", "create") in seen and ("one.txt", "remove") in seen, seen)

# ---- list, filters, info ---------------------------------------------------------------------
check("list with a metadata filter", ids() == sorted([a.sandbox_id, b.sandbox_id]), ids())
check("list with two metadata pairs", ids(metadata={"who": "a"}) == [a.sandbox_id])
one_page = Sandbox.list(query=SandboxQuery(metadata={"run": RUN}), limit=1)
first = one_page.next_items()
check("pagination: one per page, then the next", len(first) == 1 and one_page.has_next
      and len(one_page.next_items()) == 1, first)
info = a.get_info()
check("get_info", info.sandbox_id == a.sandbox_id and info.state == SandboxState.RUNNING
      and info.metadata.get("who") == "a" and info.template_id == "code-interpreter-v1"
      and info.end_at > info.started_at, info)

# ---- as E2B's own suites expect (issue 26) ----------------------------------------------------
newest_first = [s.sandbox_id for s in Sandbox.list(query=SandboxQuery(metadata={"run": RUN})).next_items()]
oldest_first = [s.sandbox_id for s in Sandbox.list(query=SandboxQuery(metadata={"run": RUN}), order="asc").next_items()]
check("list: newest first by default, oldest first with order=asc",
      newest_first == [b.sandbox_id, a.sandbox_id] and oldest_first == [a.sandbox_id, b.sandbox_id],
      (newest_first, oldest_first))
started = b.get_info().started_at
check("list: started_after", ids(started_after=started) == [b.sandbox_id]
      and ids(started_after=started + datetime.timedelta(seconds=1)) == [], started)
check("list: by template", ids(template=info.template_id) == sorted([a.sandbox_id, b.sandbox_id])
      and ids(template="unknown-template") == [])
a.files.make_dir("tree/one/deep")
a.files.make_dir("tree/two")
a.files.write("tree/file.txt", "x")
a.commands.run("ln -s file.txt link.txt", cwd="tree")         # a relative cwd is under the home
entries = {e.name: e for e in a.files.list("tree")}
link = entries.get("link.txt")
check("files: owner, group, permissions; a link is its target's type, with the absolute target",
      (entries["file.txt"].owner, entries["file.txt"].group, entries["file.txt"].permissions) == ("user", "user", "-rw-r--r--")
      and entries["one"].permissions == "drwxr-xr-x" and link is not None and link.type.value == "file"
      and link.symlink_target == "/home/user/tree/file.txt", entries)
check("files: a deep list puts each folder before its contents",
      [e.path[len("/home/user/tree/"):] for e in a.files.list("tree", depth=3)]
      == ["file.txt", "link.txt", "one", "one/deep", "two"])
a.files.remove("tree/missing.txt")
check("files: removing what is not there is no error", not a.files.exists("tree/missing.txt"))
watcher = a.files.watch_dir("tree", include_entry=True)
a.files.write("tree/new.txt", "first")
a.files.write("tree/file.txt", "second")
seen = []
eventually(lambda: seen.extend(watcher.get_new_events()) or any(e.name == "file.txt" for e in seen), 10)
watcher.stop()
kinds = [(e.name, e.type.value) for e in seen]
check("watch: an upload is a create, chmod and write of its file (as E2B's envd shows it), with entries",
      kinds[:3] == [("new.txt", "create"), ("new.txt", "chmod"), ("new.txt", "write")]
      and ("file.txt", "write") in kinds and not any("cellbox" in name for name, _ in kinds)
      and all(e.entry is not None and e.entry.path == "/home/user/tree/" + e.name for e in seen), kinds)
tools = a.commands.run("python --version && curl --version && git --version && wget --version && ps -e && pgrep -f sleep || true")
check("the template has python, curl, git, wget and procps",
      "Python 3" in tools.stdout and "curl " in tools.stdout and "git version" in tools.stdout
      and "PID" in tools.stdout, tools)
secure = Sandbox.create(metadata={"run": RUN, "who": "secure"}, secure=True)
secure.files.write("secret.txt", "signed")
signed = secure.download_url("secret.txt", "user", use_signature_expiration=60)
r = httpx.get(signed)
check("a signed download URL works without headers", r.status_code == 200 and r.text == "signed", (r.status_code, r.text))
r = httpx.get(signed.replace("secret.txt", "other.txt"))
check("... for that path only", r.status_code == 401 and r.json()["message"] == "invalid signature", r.text)
r = httpx.get(secure.download_url("secret.txt", "user", use_signature_expiration=-120))
check("an expired signature is refused as E2B refuses it",
      r.status_code == 401 and r.json() == {"code": 401, "message": "signature is already expired"}, r.text)
r = httpx.post(secure.upload_url("up.txt", "user"), files={"file": ("up.txt", b"uploaded")})
check("a signed upload URL", r.status_code == 200 and secure.files.read("up.txt") == "uploaded", r.text)
secure.kill()

victim = Sandbox.create(metadata={"run": RUN, "who": "victim"})
victim.commands.run("true")                               # its cells now run in the heavy guest
victim.run_code("v = 1")
died = victim.run_code("import os; os.kill(os.getpid(), 9)")
after = victim.run_code("'v' in globals(), 2 + 2")
check("a kernel that dies is that cell's error; the next cell gets a fresh kernel",
      died.error is not None and "kernel died" in died.error.value and after.text == "(False, 4)", (died, after))
sleeper = victim.commands.run("sleep 60", background=True)
threading.Timer(1.0, victim.kill).start()
cell = raises(lambda: victim.run_code("import time; time.sleep(60)", timeout=120))
gone = raises(sleeper.wait)
check("a sandbox killed under a running cell or command: both requests fail saying so (E2B's words)",
      cell is not None and "sandbox was killed" in str(cell)
      and gone is not None and "sandbox was killed" in str(gone), (cell, gone))

# ---- secrets: values go in, never come out ----------------------------------------------------
from e2b import Secret  # noqa: E402
from e2b.exceptions import SecretException  # noqa: E402

value = f"sk-{RUN}-do-not-show"
made = Secret.create(f"key-{RUN}", value, metadata={"team": "a"})
check("Secret.create", made.name == f"key-{RUN}" and made.version == 1 and made.metadata == {"team": "a"}
      and not hasattr(made, "value"), made)
check("a second secret of that name is refused",
      raises(lambda: Secret.create(f"key-{RUN}", "x"), SecretException) is not None)
check("a name that cannot go into ${e2b.secrets.NAME} is refused",
      raises(lambda: Secret.create("bad}name", "x")) is not None)
other = Secret.create(f"other-{RUN}", "v")
updated = Secret.update(f"key-{RUN}", value + "-2")
check("Secret.update makes a new version, by name or id",
      updated.version == 2 and Secret.get_info(made.secret_id).version == 2
      and Secret.get_info(f"key-{RUN}").secret_id == made.secret_id, updated)
pages, paginator = [], Secret.list(limit=1)
while paginator.has_next:
    pages.append([s.name for s in paginator.next_items()])
names = [n for page in pages for n in page]
check("Secret.list in pages", f"key-{RUN}" in names and f"other-{RUN}" in names
      and all(len(page) <= 1 for page in pages), pages)
raw = api.get("/secrets").text + api.get(f"/secrets/{made.secret_id}").text
check("no answer holds a value", "do-not-show" not in raw and '"value"' not in raw, raw)
check("Secret.exists", Secret.exists(f"key-{RUN}") and not Secret.exists(f"none-{RUN}"))
check("Secret.destroy, once", Secret.destroy(made.secret_id) and not Secret.destroy(made.secret_id)
      and not Secret.exists(f"key-{RUN}"))
Secret.destroy(other.secret_id)

# ---- tokens and keys -------------------------------------------------------------------------
r = httpx.post(f"{API}/execute", json={"code": "1"},
               headers={"E2b-Sandbox-Id": a.sandbox_id, "E2b-Sandbox-Port": "49999"})
check("sandbox traffic without its token is refused", r.status_code == 401, r.status_code)
r = httpx.post(f"{API}/execute", json={"code": "1"},
               headers={"E2b-Sandbox-Id": a.sandbox_id, "E2b-Sandbox-Port": "49999",
                        "X-Access-Token": b._envd_access_token})
check("another sandbox's token is refused", r.status_code == 401, r.status_code)
check("a wrong API key is refused",
      raises(lambda: Sandbox.list(api_key="e2b_" + "0" * 40).next_items(), AuthenticationException) is not None)
check("an unknown template is refused",
      raises(lambda: Sandbox.create(template="no-such-template"), SandboxException) is not None)

# ---- servers in the sandbox, at get_host(port) -------------------------------------------------
# A server on the sandbox's loopback that shows the headers it got, echoes bodies and, asked
# to upgrade, echoes raw bytes in upper case (a WebSocket's way of taking over the connection).
ECHO_SERVER = r"""
import http.server, json
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.headers.get("Upgrade"):
            self.send_response(101)
            self.send_header("Upgrade", self.headers["Upgrade"])
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while data := self.rfile.read1(65536):
                self.wfile.write(data.upper())
                self.wfile.flush()
            self.close_connection = True
            return
        self.answer(json.dumps(dict(self.headers)).encode())
    def do_POST(self):
        self.answer(self.rfile.read(int(self.headers["Content-Length"])))
http.server.ThreadingHTTPServer(("127.0.0.1", 8123), Echo).serve_forever()
"""


def answers(url, **kwargs):
    try:
        return httpx.get(url, timeout=10, **kwargs).status_code == 200
    except httpx.HTTPError:
        return False


API_PORT = API.rsplit(":", 1)[1]
a.files.write("/tmp/echo_server.py", ECHO_SERVER)
echo = a.commands.run("python3 /tmp/echo_server.py", background=True)
host = a.get_host(8123)
check("get_host names the port and the sandbox under localhost",
      host == f"8123-{a.sandbox_id}.localhost:{API_PORT}", host)
addresses = {info[4][0] for info in socket.getaddrinfo(host.split(":")[0], None)}
check("... a name that resolves to this machine only (libnss-myhostname without systemd)",
      addresses and addresses <= {"127.0.0.1", "::1"}, addresses)
url = f"http://{host}"
check("a server on the sandbox's loopback answers there", eventually(lambda: answers(url)))
seen = httpx.get(f"{url}/headers", headers={"X-Access-Token": a._envd_access_token}).json()
check("it sees its own host and no token of cellbox's",
      seen.get("host") == host and not {"x-access-token", "e2b-traffic-access-token"} & set(seen), seen)
payload = os.urandom(3 << 20)
r = httpx.post(f"{url}/echo", content=payload, timeout=60)
check("3 MiB up and back", r.status_code == 200 and r.content == payload, (r.status_code, len(r.content)))
with socket.create_connection(("127.0.0.1", int(API_PORT)), timeout=10) as conn:
    conn.sendall(f"GET /upgrade HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(4096)
    conn.sendall(b"ping")
    upgraded = conn.recv(4096)
check("an upgraded connection carries bytes both ways", head.startswith(b"HTTP/1.1 101") and upgraded == b"PING",
      (head, upgraded))
r = httpx.get(f"http://{a.get_host(8124)}/")
check("a port nothing listens on is E2B's 502", r.status_code == 502
      and r.json()["message"] == "The sandbox is running but port is not open", r.text)
r = httpx.get(f"{API}/headers", headers={"E2b-Sandbox-Id": a.sandbox_id, "E2b-Sandbox-Port": "8123"})
check("E2B's routing headers reach it too", r.status_code == 200 and r.json().get("e2b-sandbox-port") == "8123", r.text)
check("its traffic token is its own, not the envd token", a.traffic_access_token not in (None, a._envd_access_token))
CA = os.environ["CELLBOX_TEST_CA"]   # the server's own CA (serve --tls-dir)
r = httpx.get(f"https://{host}/headers", verify=ssl.create_default_context(cafile=CA))
check("HTTPS at the same host and port, certified by the server's own CA",
      r.status_code == 200 and r.json().get("host") == host, r.text)
with socket.create_connection(("127.0.0.1", int(API_PORT)), timeout=10) as raw:
    refused = raises(lambda: ssl.create_default_context(cafile=CA).wrap_socket(raw, server_hostname="example.com"),
                     ssl.SSLError)
check("... and no certificate for a name outside localhost", refused is not None, refused)
# E2B's SDK as against its cloud, without E2B_SANDBOX_URL: every sandbox URL is built from the
# sandbox's domain, https://{port}-{id}.localhost:{api port}.
ALONE = f"""
import httpx
from e2b_code_interpreter import Sandbox
s = Sandbox.create(metadata={{"run": "{RUN}"}})
s.files.write("note.txt", "over https")
signed = s.download_url("note.txt", use_signature_expiration=60)
print(s.run_code("6 * 7").text, s.commands.run("cat note.txt").stdout.strip().replace(" ", "-"),
      httpx.get(signed).text.replace(" ", "-"), signed.split("/")[2] == s.get_host(49983))
s.kill()
"""
alone = {k: v for k, v in os.environ.items() if k != "E2B_SANDBOX_URL"}
alone["SSL_CERT_FILE"] = CA
out = subprocess.run([sys.executable, "-c", ALONE], env=alone, capture_output=True, text=True, timeout=300)
check("E2B's SDK without E2B_SANDBOX_URL: code, files, commands and a signed file URL over HTTPS at the sandbox's domain",
      out.stdout.split() == ["42", "over-https", "over-https", "True"], (out.stdout, out.stderr[-3000:]))
echo.kill()
private = Sandbox.create(network={"allow_public_traffic": False}, metadata={"run": RUN, "who": "private"})
private.files.write("/tmp/echo_server.py", ECHO_SERVER)
private_server = private.commands.run("python3 /tmp/echo_server.py", background=True)
private_url = f"http://{private.get_host(8123)}"
token = {"E2B-Traffic-Access-Token": private.traffic_access_token}
check("allow_public_traffic=False: answers with its traffic token", eventually(lambda: answers(private_url, headers=token)))
check("... 403 without it, or with its envd token",
      httpx.get(private_url).status_code == 403
      and httpx.get(private_url, headers={"E2B-Traffic-Access-Token": private._envd_access_token}).status_code == 403)
private.kill()

# ---- volumes ---------------------------------------------------------------------------------
from e2b import Volume  # noqa: E402

os.environ["E2B_VOLUME_API_URL"] = API   # the content API is on the same port
vol = Volume.create(f"data-{RUN}")
check("Volume.create: an id and a token; listed, and found by id",
      vol.volume_id and vol.token and vol.volume_id in [v.volume_id for v in Volume.list()]
      and Volume.get_info(vol.volume_id).name == vol.name)
vol.make_dir("/notes")
written = vol.write_file("/notes/hello.txt", "from the API")
check("files written through the volume API while no sandbox runs, owned by user",
      written.size == 12 and written.uid == 1000 and vol.read_file("/notes/hello.txt") == "from the API",
      written)
one = Sandbox.create(volume_mounts={"/mnt/data": vol}, metadata={"run": RUN, "who": "volume-1"})
r = one.commands.run("cat /mnt/data/notes/hello.txt; echo; echo from-sandbox > /mnt/data/notes/back.txt; "
                     "stat -c %U /mnt/data/notes/back.txt")
check("a sandbox sees the volume at its path and writes to it as user", r.stdout == "from the API\nuser\n", r)
check("... what it wrote, the volume API reads", vol.read_file("/notes/back.txt") == "from-sandbox\n")
check("its info names its volumes", one.get_info().volume_mounts == [{"name": vol.name, "path": "/mnt/data"}],
      one.get_info().volume_mounts)
two = Sandbox.create(volume_mounts={"/data": vol.name}, metadata={"run": RUN, "who": "volume-2"})
check("a second sandbox mounts it at once, by name, and sees the first's writes",
      two.files.read("/data/notes/back.txt") == "from-sandbox\n")
listed = sorted(e.path for e in vol.list("/", depth=2))
check("the volume API lists it", listed == ["/notes", "/notes/back.txt", "/notes/hello.txt"], listed)
check("a sandbox without it has nothing there", not b.files.exists("/mnt/data"))
# A link planted by a sandbox leads the volume API nowhere outside the volume: a host file
# stays unread and unchanged.
canary = f"/tmp/cellbox-volume-canary-{RUN}"
with open(canary, "w") as f:
    f.write("host secret")
one.commands.run(f"ln -s {canary} /mnt/data/escape; ln -s ../../../../../../../tmp /mnt/data/up")
read_link = raises(lambda: vol.read_file("/escape"))
read_up = raises(lambda: vol.read_file(f"/up/{os.path.basename(canary)}"))
raises(lambda: vol.write_file(f"/up/{os.path.basename(canary)}", "overwritten"))
vol.write_file("/escape", "replaces the link only")
check("a planted link leads the volume API nowhere outside the volume",
      read_link is not None and read_up is not None and open(canary).read() == "host secret"
      and vol.get_info("/escape").type.value == "file", (read_link, read_up))
os.remove(canary)
busy = raises(lambda: Volume.destroy(vol.volume_id))
one.kill()
two.kill()
check("a mounted volume is not destroyed; unmounted, it is",
      busy is not None and Volume.destroy(vol.volume_id) is True
      and raises(lambda: Volume.get_info(vol.volume_id)) is not None, busy)
check("mounting a volume that does not exist is a clear error",
      "not found" in str(raises(lambda: Sandbox.create(volume_mounts={"/x": "no-such-volume"}))))

# ---- metrics and logs ------------------------------------------------------------------------
metrics = a.get_metrics()
check("metrics", len(metrics) >= 1 and metrics[-1].mem_total > 0 and metrics[-1].cpu_count >= 1
      and metrics[-1].disk_total > 0, metrics)
logs = api.get(f"/v2/sandboxes/{a.sandbox_id}/logs").json()["logs"]
messages = [entry["message"] for entry in logs]
check("the log tells what happened", any("started" in m for m in messages)
      and any(m.startswith("code run") for m in messages)
      and any(m.startswith("file written") for m in messages), messages)
warnings = api.get(f"/v2/sandboxes/{a.sandbox_id}/logs", params={"level": "error"}).json()["logs"]
check("logs filtered by level", all(entry["level"] == "error" for entry in warnings), warnings)

# ---- pause and resume keep variables and processes ------------------------------------------
ticker = a.commands.run("while :; do date +%s%N >> /tmp/ticks; sleep 0.05; done", background=True)
time.sleep(1)
a.pause()
check("a paused sandbox says so", a.get_info().state == SandboxState.PAUSED)
check("list by state", a.sandbox_id in ids(state=[SandboxState.PAUSED])
      and a.sandbox_id not in ids(state=[SandboxState.RUNNING]))
check("pausing it again says it was paused already", a.pause() is False)
time.sleep(2)
a2 = Sandbox.connect(a.sandbox_id)
check("connect resumes it", a2.get_info().state == SandboxState.RUNNING)
check("variables survive a pause", a2.run_code("x").text == "a")
lines = a2.files.read("/tmp/ticks").split()
gaps = [(int(t2) - int(t1)) / 1e9 for t1, t2 in zip(lines, lines[1:])]
check("the background process was stopped while paused, and goes on",
      max(gaps) >= 1.5 and ticker.pid in [p.pid for p in a2.commands.list()], max(gaps, default=0))
ticker.kill()

# ---- a terminal ------------------------------------------------------------------------------
terminal = a2.pty.create(PtySize(rows=24, cols=80), timeout=60)
a2.pty.send_stdin(terminal.pid, b"stty size; tty; echo marker-$((6 * 7))\n")
time.sleep(1)
a2.pty.resize(terminal.pid, PtySize(rows=40, cols=100))
a2.pty.send_stdin(terminal.pid, b"stty size; exit 3\n")
screen = []
result = raises(lambda: terminal.wait(on_pty=lambda data: screen.append(bytes(data))))
screen = b"".join(screen).decode(errors="replace")
check("a terminal: its size, its tty, what was typed, a resize, its exit code",
      "24 80" in screen and "/dev/pts/" in screen and "marker-42" in screen and "40 100" in screen
      and getattr(result, "exit_code", None) == 3, (screen[-400:], result))

# ---- timeouts, kill, auto-pause --------------------------------------------------------------
short = Sandbox.create(timeout=2, metadata={"run": RUN, "who": "short"})
check("a sandbox ends at its timeout", eventually(lambda: short.sandbox_id not in ids()))
check("its traffic then says it is not running", not short.is_running()
      and raises(lambda: short.run_code("1")) is not None)
kept = Sandbox.create(timeout=2, metadata={"run": RUN, "who": "kept"})
kept.set_timeout(60)
time.sleep(3)
check("set_timeout extends it", kept.sandbox_id in ids() and kept.run_code("1 + 1").text == "2")
b.kill()
check("kill ends it at once", b.sandbox_id not in ids() and not b.is_running())
check("connect to a killed sandbox is not found",
      raises(lambda: Sandbox.connect(b.sandbox_id), NotFoundException) is not None)
sleepy = Sandbox.create(timeout=2, metadata={"run": RUN, "who": "sleepy"},
                        lifecycle={"on_timeout": "pause", "auto_resume": True})
sleepy.run_code("y = 7")
check("auto-pause: paused at its timeout",
      eventually(lambda: sleepy.get_info().state == SandboxState.PAUSED))
check("auto-resume: traffic resumes it with its state", sleepy.run_code("y * 6").text == "42"
      and sleepy.get_info().state == SandboxState.RUNNING)
sleepy_server = sleepy.commands.run("python3 -m http.server 8000 >/dev/null 2>&1", background=True)  # kept: envd kills a command whose stream ends
sleepy_url = f"http://{sleepy.get_host(8000)}"
check("... and a server in it answers", eventually(lambda: answers(sleepy_url)))
check("paused again at its timeout", eventually(lambda: sleepy.get_info().state == SandboxState.PAUSED))
check("auto-resume: a request to its server resumes it (as in E2B)",
      answers(sleepy_url) and sleepy.get_info().state == SandboxState.RUNNING)

# ---- fork and snapshots ----------------------------------------------------------------------
parent = Sandbox.create(metadata={"run": RUN, "who": "parent"})
parent.run_code("import numpy as np\n"
                "def area(r):\n    return 3 * r * r\n"
                "class Box:\n    def __init__(self, v):\n        self.v = v\n"
                "box = Box(np.arange(3))\nn = 10")
parent.files.write("keep.txt", "kept")
STATE = "area(n), int(box.v.sum()), np.__name__, open('keep.txt').read()"
forks = parent.fork(count=2, timeout=120)
check("fork(count=2) gives two new sandboxes",
      len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks)
      and len({f.sandbox_id for f in forks} | {parent.sandbox_id}) == 3, forks)
fork1, fork2 = forks
check("a fork has the parent's variables, functions, classes, imports and files",
      fork1.run_code(STATE).text == "(300, 3, 'numpy', 'kept')", fork1.run_code(STATE))
fork1.run_code("n = 1")
fork1.files.write("keep.txt", "changed")
check("forks are independent of their parent and of each other",
      parent.run_code("n").text == "10" and fork2.run_code("n").text == "10"
      and parent.files.read("keep.txt") == "kept" and fork1.run_code(STATE).text == "(3, 3, 'numpy', 'changed')")
check("forks are listed, with the parent's metadata",
      {fork1.sandbox_id, fork2.sandbox_id} <= set(ids(metadata={"who": "parent"})))
snapshot = parent.create_snapshot()
parent.kill()
one = Sandbox.create(snapshot.snapshot_id, metadata={"run": RUN, "who": "one"})
two = Sandbox.create(snapshot.snapshot_id, metadata={"run": RUN, "who": "two"})
check("two sandboxes from one snapshot, after its sandbox was killed",
      one.run_code(STATE).text == "(300, 3, 'numpy', 'kept')"
      and two.run_code(STATE).text == "(300, 3, 'numpy', 'kept')")
one.run_code("n = 0")
check("... and they are independent", two.run_code("n").text == "10")
listed = Sandbox.list_snapshots(sandbox_id=parent.sandbox_id).next_items()
check("list_snapshots finds it by its sandbox", [s.snapshot_id for s in listed] == [snapshot.snapshot_id], listed)
named = fork2.create_snapshot(name=f"snap-{RUN}")
check("a named snapshot", named.snapshot_id == f"snap-{RUN}:default" and named.names == [named.snapshot_id], named)
check("delete_snapshot deletes once",
      Sandbox.delete_snapshot(snapshot.snapshot_id) and not Sandbox.delete_snapshot(snapshot.snapshot_id))
Sandbox.delete_snapshot(named.snapshot_id)
check("a deleted snapshot starts nothing",
      raises(lambda: Sandbox.create(snapshot.snapshot_id)) is not None)

# Network: none unless asked for; E2B's allow_internet_access, allowOut and
# denyOut. "The outside" is the test servers the Rust test started on
# TEST-NET-2 addresses in a network namespace of their own (tests/network_rig.rs):
# nothing leaves this machine.
SERVER = os.environ["CELLBOX_TEST_ALLOWED"]
OTHER = os.environ["CELLBOX_TEST_DENIED"]
PORT = int(os.environ["CELLBOX_TEST_PORT"])
probe = (f"import socket\ntry:\n    socket.create_connection(('{SERVER}', {PORT}), 5).close(); r = 'connected'\n"
         "except OSError as e:\n    r = type(e).__name__\nr")
e = a.run_code(probe)
check("network: none by default", e.text not in (None, "connected"), e)
online = Sandbox.create(allow_internet_access=True, metadata={"run": RUN, "who": "online"})
e = online.run_code(probe)
check("network: allow_internet_access reaches the outside", e.text == "connected", e)
check("network: get_info tells", online.get_info().allow_internet_access is True)
denied = Sandbox.create(allow_internet_access=True, network={"deny_out": [f"{SERVER}/32"]},
                        metadata={"run": RUN, "who": "denied"})
e = denied.run_code(probe)
check("network: deny_out refuses an address", e.text == "ConnectionRefusedError", e)
only = Sandbox.create(allow_internet_access=False, network={"allow_out": [SERVER]},
                      metadata={"run": RUN, "who": "only"})
e = only.run_code(probe)
check("network: allow_out alone reaches what it names", e.text == "connected", e)
e = only.run_code(f"socket.create_connection(('{OTHER}', {PORT}), 5)")
check("network: ... and nothing else", e.error is not None and e.error.name == "ConnectionRefusedError", e.error)
bad = raises(lambda: Sandbox.create(network={"deny_out": ["example.com"]}), SandboxException)
check("network: a domain in deny_out is a clear error", bad is not None and "example.com" in str(bad) and "denied" in str(bad), bad)

# Egress by host name, per-host header rules and secrets (E2B's network `rules`,
# Secret.fill, update_network). The servers: tests/network_rig.rs and tests/egress_rig.rs,
# HTTP and HTTPS named api.cellbox.test (SERVER) and other.cellbox.test (OTHER), which the
# server resolves from its own hosts file; each logs the request heads it gets to SEEN
# (which the sandbox cannot read). The egress proxy never uses the sandbox's own answers:
# it resolves each name itself.
from e2b import ALL_TRAFFIC  # noqa: E402
from e2b.sandbox.commands.command_handle import CommandExitException  # noqa: E402
API_NAME = os.environ["CELLBOX_TEST_API_NAME"]
OTHER_NAME = os.environ["CELLBOX_TEST_OTHER_NAME"]
SEEN = os.environ["CELLBOX_TEST_SEEN"]
RIG_CA = "/tmp/rig-ca.pem"  # in the sandbox: the servers' own CA, for connections passed through


def seen_since(mark):
    with open(SEEN, encoding="utf-8", errors="replace") as f:
        return f.read()[mark:]


def mark():
    return len(open(SEEN, encoding="utf-8", errors="replace").read())


def curl(sbx, *args):
    """(exit code, output) of curl in the sandbox."""
    try:
        r = sbx.commands.run("curl -sS -m 10 " + " ".join(args), timeout=30)
        return r.exit_code, r.stdout
    except CommandExitException as e:
        return e.exit_code, e.stdout + e.stderr


secret_name = f"egress-{RUN}"
Secret.create(secret_name, f"tok-{RUN}-one")
rules = {API_NAME: [{"transform": {"headers": {"Authorization": f"Bearer {Secret.fill(secret_name)}"}}}]}
egress = Sandbox.create(allow_internet_access=True, metadata={"run": RUN, "who": "egress"},
                        network={"allow_out": [API_NAME], "deny_out": [ALL_TRAFFIC], "rules": rules})
r = egress.commands.run(f"getent hosts {API_NAME}")
check("egress: the sandbox's DNS (internet closed) answers a name the rules allow, as the host resolves it",
      r.stdout.split()[:2] == [SERVER, API_NAME], r)
e = raises(lambda: egress.commands.run(f"getent hosts {RUN}-data.example.com"), CommandExitException)
check("egress: ... and no other name exists (no data carried out in names)", e is not None and e.exit_code == 2, e)
# The rest is told in /etc/hosts, to see what the proxy does with names it refuses.
egress.commands.run(f"echo '{OTHER} {OTHER_NAME}' >> /etc/hosts", user="root")
egress.files.write(RIG_CA, open(os.environ["CELLBOX_TEST_EGRESS_CA"]).read())
m = mark()
code, out = curl(egress, f"https://{API_NAME}/")
head = seen_since(m)
check("egress: HTTPS to an allowed name, verified against the sandbox's own CA", (code, out) == (0, f"hello from {SERVER}"), (code, out))
check("egress: ... and the rule's header carries the secret, filled in outside the sandbox",
      f"authorization: bearer tok-{RUN}-one" in head.lower(), head)
code, out = curl(egress, f"http://{API_NAME}/")
check("egress: plain HTTP by Host too", (code, out) == (0, f"hello from {SERVER}") and f"tok-{RUN}-one" in seen_since(m), (code, out))
Secret.update(secret_name, f"tok-{RUN}-two")
m = mark()
curl(egress, f"https://{API_NAME}/")
check("egress: an updated secret counts at the next request", f"Bearer tok-{RUN}-two" in seen_since(m), seen_since(m))
r = egress.commands.run(f"(env; cat /etc/hosts /etc/ssl/certs/ca-certificates.crt; ls -a /tmp /root) 2>&1 | grep -c tok-{RUN} || true", user="root")
check("egress: the secret's value is nowhere inside the sandbox", r.stdout.strip() == "0", r.stdout)
code, out = curl(egress, "--cacert", RIG_CA, f"https://{OTHER_NAME}/")
check("egress: HTTPS to a name not allowed is refused", code != 0 and "hello" not in out, (code, out))
code, out = curl(egress, f"http://{OTHER_NAME}/")
check("egress: plain HTTP to it too (403 from the proxy)", "not allowed" in out and "hello" not in out, (code, out))
for literal in (f"http://{OTHER}/", f"http://{SERVER}/"):
    code, out = curl(egress, literal)
    check(f"egress: an address instead of the name is refused ({literal})", "hello" not in out, (code, out))
code, out = curl(egress, "-k", f"https://{SERVER}/")
check("egress: ... over TLS too (no server name)", code != 0 and "hello" not in out, (code, out))
code, out = curl(egress, "-w ' %{http_code}'", f"https://{API_NAME}/", "-H", f"'Host: {OTHER_NAME}'")
check("egress: a Host other than the TLS server name is refused (421)", out.endswith(" 421") and "hello" not in out, (code, out))
m = mark()
code, out = curl(egress, "--resolve", f"{API_NAME}:443:{OTHER}", f"https://{API_NAME}/")
check("egress: the sandbox's own DNS answer (the denied address) is not followed",
      out == f"hello from {SERVER}" and f"to {OTHER}" not in seen_since(m), (code, out))
check("egress: get_info shows the rules with placeholders, not values",
      api.get(f"/sandboxes/{egress.sandbox_id}").json()["network"]["rules"][API_NAME][0]["transform"]["headers"]["Authorization"]
      == f"Bearer {Secret.fill(secret_name)}")
egress.update_network({"allow_out": [OTHER_NAME], "deny_out": [ALL_TRAFFIC]})
code, out = curl(egress, "--cacert", RIG_CA, f"https://{OTHER_NAME}/")
check("egress: update_network lets the newly allowed name through at once", (code, out) == (0, f"hello from {OTHER}"), (code, out))
code, out = curl(egress, f"http://{API_NAME}/")
check("egress: ... and the name no longer allowed no longer resolves", code == 6, (code, out))
code, out = curl(egress, "--resolve", f"{API_NAME}:80:{SERVER}", f"http://{API_NAME}/")
check("egress: ... nor passes the proxy when the sandbox knows its address", "not allowed" in out, (code, out))
m = mark()
placeholder = "${e2b.secrets." + secret_name + "}"
curl(egress, f"http://{OTHER_NAME}/", "-H", f"'X-Steal: {placeholder}'")
check("egress: a placeholder the sandbox writes itself is not filled", f"tok-{RUN}" not in seen_since(m) and placeholder in seen_since(m), seen_since(m))
egress.update_network({"allow_out": ["*.cellbox.test"], "deny_out": [ALL_TRAFFIC]})
check("egress: a wildcard allows every name under it",
      [curl(egress, "--cacert", RIG_CA, f"https://{n}/")[1] for n in (API_NAME, OTHER_NAME)] == [f"hello from {SERVER}", f"hello from {OTHER}"])
bad = raises(lambda: Sandbox.create(network={"egress_proxy": {"address": "127.0.0.1:1080"}}), SandboxException)
check("egress: a SOCKS5 egress_proxy is a clear error", bad is not None and "egressProxy" in str(bad), bad)
egress.kill()

# A custom template (tests/e2b/template/e2b.Dockerfile, built before the server started with
# --cmd "python3 -m http.server 8000" --ready-cmd "curl -sf localhost:8000" --cpu-count 2 --memory-mb 1024).
listed = httpx.get(f"{API}/templates", headers={"X-API-Key": KEY}).json()
check("GET /templates lists the default and the built template",
      [t["templateID"] for t in listed][:1] == ["code-interpreter-v1"]
      and "sdk-test" in [t["templateID"] for t in listed], listed)
custom = Sandbox.create("sdk-test", metadata={"run": RUN, "who": "custom"})
e = custom.run_code("import os; (os.getcwd(), os.environ.get('FROM_TEMPLATE'), open('hello.txt').read(), open('/opt/built.txt').read())")
check("a sandbox from a built template has its files, ENV and WORKDIR",
      e.text == "('/home/user/project', 'yes', 'hello from the template\\n', 'built\\n')", e)
r = custom.commands.run("cat hello.txt; echo $FROM_TEMPLATE")
check("... and so do its commands", r.stdout == "hello from the template\nyes\n", r)
r = custom.commands.run("curl -s localhost:8000/hello.txt")
info = custom.get_info()
check("its start command runs, ready (its ready command passed) when create returns",
      r.stdout == "hello from the template\n", r)
check("... with the template's vCPUs and memory", (info.cpu_count, info.memory_mb) == (2, 1024), info)
check("GET /templates shows them", [(t["cpuCount"], t["memoryMB"]) for t in listed if t["templateID"] == "sdk-test"]
      == [(2, 1024)], listed)

for sandbox in [a, kept, sleepy, fork1, fork2, one, two, online, denied, only, custom]:
    sandbox.kill()
check("all gone", ids() == [], ids())
report()
