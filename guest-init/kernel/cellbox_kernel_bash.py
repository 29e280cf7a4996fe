"""cellbox kernel driver for bash: runs notebook cells in one bash process, so that
variables, functions, aliases and the working folder carry from cell to cell.

guest-init starts one process per context as `python3 cellbox_kernel_bash.py`, with the
protocol of cellbox_kernel.py:
  fd 3  requests, one JSON object per line: {"code": "...", "env": {"K": "V"}}
  fd 4  events,   one JSON object per line: ready, stdout, stderr, error, end
Each cell is written to a private file and sourced by the shell; its output comes back
as stdout/stderr events, in order, and a non-zero status of its last command as an
error. SIGINT (the parent's timeout or interrupt) goes to the shell's process group:
the running command stops and the rest of the cell is skipped, the shell survives.
A cell that ends the shell (`exit`) ends the kernel; the next cell gets a fresh one.
Only the standard library is needed.
"""
import codecs, os, selectors, shlex, signal, subprocess, tempfile

from cellbox_driver import emit, error, serve     # beside this script

CHUNK = 1 << 16


def start_shell():
    """bash in its own process group (so an interrupt reaches its commands, not us),
    reading commands from a pipe; an interrupted cell returns from `source`."""
    shell = subprocess.Popen(
        ["/bin/bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0)
    shell.stdin.write(b"trap 'return 130 2>/dev/null' INT\n")
    shell.stdin.flush()
    return shell


def export_lines(env):
    """Commands that set `env` for one cell, and the ones that undo it."""
    set_lines, undo_lines = [], []
    for key, value in env.items():
        if not key.isidentifier():
            continue                # not a shell variable name: ignored
        set_lines.append(f"__cellbox_had_{key}=${{{key}+x}} __cellbox_old_{key}=${{{key}-}}; "
                         f"export {key}={shlex.quote(value)}")
        undo_lines.append(f'if [ -n "$__cellbox_had_{key}" ]; then export {key}="$__cellbox_old_{key}"; '
                          f"else unset {key}; fi; unset __cellbox_had_{key} __cellbox_old_{key}")
    return set_lines, undo_lines


class Kernel:
    def __init__(self):
        self.cells = tempfile.mkdtemp(prefix="cellbox-bash-")
        # The shell reports each cell's status through this FIFO, opened only for
        # that echo: the cell's commands never hold it.
        self.status_path = os.path.join(self.cells, "status")
        os.mkfifo(self.status_path, 0o600)
        self.status_read = os.open(self.status_path, os.O_RDWR | os.O_NONBLOCK)
        self.shell = start_shell()
        self.count = 1

    def interrupt(self, signum, frame):
        try:
            os.killpg(self.shell.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def run(self, code, env):
        """Runs one cell: its output as events, then its status (None: the shell ended)."""
        path = os.path.join(self.cells, f"cell-{self.count}.sh")
        self.count += 1
        with open(path, "w") as cell:
            cell.write(code if code.endswith("\n") else code + "\n")
        set_lines, undo_lines = export_lines(env)
        script = "\n".join(set_lines + [f"source {shlex.quote(path)} </dev/null", "__cellbox_status=$?",
                            # After an interrupt bash mishandles the next SIGINT
                            # until it has run a program; run one.
                            '[ "$__cellbox_status" != 130 ] || /bin/true']
                           + undo_lines + [f'echo "$__cellbox_status" >{shlex.quote(self.status_path)}', ""])
        self.shell.stdin.write(script.encode())
        self.shell.stdin.flush()
        status = self.pump()
        os.unlink(path)
        return status

    def pump(self):
        decoders = {self.shell.stdout: ("stdout", codecs.getincrementaldecoder("utf-8")("replace")),
                    self.shell.stderr: ("stderr", codecs.getincrementaldecoder("utf-8")("replace"))}
        status = b""
        with selectors.DefaultSelector() as selector:
            for pipe in decoders:
                selector.register(pipe, selectors.EVENT_READ)
            selector.register(self.status_read, selectors.EVENT_READ)
            while True:
                ready = selector.select(timeout=0.5)
                if not ready and self.shell.poll() is not None:
                    self.drain(decoders)
                    return None             # the shell ended (`exit`, or killed)
                for key, _ in ready:
                    chunk = os.read(key.fd, CHUNK)
                    if key.fileobj == self.status_read:
                        status += chunk
                        if status.endswith(b"\n"):
                            self.drain(decoders)
                            return int(status) if status.strip().isdigit() else None
                    elif chunk:
                        kind, decoder = decoders[key.fileobj]
                        text = decoder.decode(chunk)
                        if text:
                            emit({"type": kind, "text": text})
                    else:
                        selector.unregister(key.fileobj)

    def drain(self, decoders):
        """What the cell's commands wrote just before it ended (a background command
        may keep the pipes open: take only what is there now)."""
        for pipe, (kind, decoder) in decoders.items():
            os.set_blocking(pipe.fileno(), False)
            try:
                while chunk := os.read(pipe.fileno(), CHUNK):
                    emit({"type": kind, "text": decoder.decode(chunk)})
            except (BlockingIOError, OSError):
                pass
            finally:
                os.set_blocking(pipe.fileno(), True)


def run(kernel, code, env):
    """One cell; True when it ended the shell (and with it this kernel)."""
    status = kernel.run(code, env)
    if status is None:
        error("ShellExited", "the shell ended; the next cell starts a fresh one")
        return True
    if status == 130:
        error("Interrupted", "the cell was interrupted")
    elif status:
        error("ExitCode", f"the cell's last command exited with status {status}")
    return False


def main():
    kernel = Kernel()
    signal.signal(signal.SIGINT, kernel.interrupt)
    serve(lambda code, env: run(kernel, code, env))
    kernel.shell.kill()
    os._exit(0)


if __name__ == "__main__":
    main()
