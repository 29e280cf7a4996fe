"""cellbox kernel driver for a language that has a Jupyter kernel (R, through Debian's
IRkernel): starts that kernel and translates between it and cellbox's kernel protocol.

guest-init starts one process per context as `python3 cellbox_kernel_jupyter.py NAME`
(NAME: a kernelspec in /usr/share/jupyter/kernels), with the protocol of cellbox_kernel.py:
  fd 3  requests, one JSON object per line: {"code": "...", "env": {"K": "V"}}
  fd 4  events,   one JSON object per line: ready, stdout, stderr, result, error, end
The kernel is started here from its kernelspec, in this process's group (jupyter_client's
launcher would give it a session of its own, which guest-init's kill of the group would
miss), listening on loopback with a fresh HMAC key. SIGINT (the parent's timeout or
interrupt) is passed on to it; a kernel that dies ends this driver, so guest-init reports
the death and starts a fresh one for the next cell.
"""
import json, os, queue, re, secrets, signal, subprocess, sys, tempfile, time

# A handler, not SIG_IGN (which the kernel would inherit): an interrupt before the
# kernel is up, or between cells, does nothing.
signal.signal(signal.SIGINT, lambda signum, frame: None)

from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

import cellbox_results                             # beside this script
from cellbox_driver import emit, error, serve

KERNELS = "/usr/share/jupyter/kernels"
START_TIMEOUT = 120             # seconds for the kernel's first reply (guest-init has its own limit)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# Per-run environment variables, set before a cell and restored after it, in the
# kernel's own language. A JSON string is also a valid R string literal.
ENV_CODE = {
    "ir": (
        lambda env: ".cellbox_env <- Sys.getenv(c({keys}), unset = NA, names = TRUE); Sys.setenv({pairs})".format(
            keys=", ".join(json.dumps(k) for k in env),
            pairs=", ".join(f"`{k}` = {json.dumps(v, ensure_ascii=False)}" for k, v in env.items())),
        lambda env: "for (.k in names(.cellbox_env)) if (is.na(.cellbox_env[[.k]])) Sys.unsetenv(.k) "
                    "else do.call(Sys.setenv, as.list(.cellbox_env[.k])); rm(.cellbox_env, .k)",
    ),
}


class Kernel:
    def __init__(self, name):
        with open(os.path.join(KERNELS, name, "kernel.json")) as spec_file:
            spec = json.load(spec_file)
        self.name = name
        self.folder = tempfile.mkdtemp(prefix="cellbox-jupyter-")
        connection, _ = write_connection_file(
            os.path.join(self.folder, "connection.json"), ip="127.0.0.1",
            key=secrets.token_hex(16).encode())
        argv = [connection if arg == "{connection_file}" else arg for arg in spec["argv"]]
        env = dict(os.environ, **spec.get("env", {}))
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env)
        self.client = BlockingKernelClient(connection_file=connection)
        self.client.load_connection_file()
        # No heartbeat channel: the process is our child, and its exit is what
        # tells a dead kernel (see wait_ready).
        self.client.start_channels(hb=False)
        self.wait_ready()

    def wait_ready(self):
        """Until the kernel answers kernel_info on its shell channel and IOPub works."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"the {self.name} kernel exited while starting (status {self.process.returncode})")
            self.client.kernel_info()
            try:
                reply = self.client.get_shell_msg(timeout=1)
            except queue.Empty:
                continue
            if reply["msg_type"] != "kernel_info_reply":
                continue
            try:
                self.client.get_iopub_msg(timeout=1)    # its status: IOPub is connected too
                return
            except queue.Empty:
                continue
        sys.exit(f"the {self.name} kernel did not answer within {START_TIMEOUT} s")

    def interrupt(self, signum, frame):
        try:
            os.kill(self.process.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def execute(self, code, silent=False):
        """Runs code in the kernel and sends what it says as events (nothing when
        `silent`); returns once the kernel is idle again."""
        msg_id = self.client.execute(code, silent=silent, store_history=not silent,
                                     allow_stdin=False)
        while True:
            try:
                message = self.client.get_iopub_msg(timeout=0.5)
            except queue.Empty:     # nothing yet: is the kernel still there?
                if self.process.poll() is not None:
                    sys.stderr.write(f"the {self.name} kernel exited with status {self.process.returncode}\n")
                    os._exit(1)
                continue
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "status" and content.get("execution_state") == "idle":
                return
            if silent:
                continue
            if kind == "stream":
                emit({"type": "stdout" if content.get("name") == "stdout" else "stderr",
                      "text": content.get("text", "")})
            elif kind in ("execute_result", "display_data"):
                emit(cellbox_results.result_event(content.get("data", {}),
                                                  main=kind == "execute_result"))
            elif kind == "error":
                error(content.get("ename", "Error"), content.get("evalue", ""),
                      ANSI.sub("", "\n".join(content.get("traceback", []))))

    def run(self, code, env):
        set_code, restore_code = ENV_CODE.get(self.name, (None, None))
        env = {k: v for k, v in env.items() if k.isidentifier()}
        if env and set_code:
            self.execute(set_code(env), silent=True)
        try:
            self.execute(code)
        finally:
            if env and set_code:
                self.execute(restore_code(env), silent=True)


def main():
    kernel = Kernel(sys.argv[1])
    signal.signal(signal.SIGINT, kernel.interrupt)
    serve(kernel.run)
    kernel.process.kill()
    os._exit(0)


if __name__ == "__main__":
    main()
