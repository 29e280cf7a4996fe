"""cellbox warm template: one Python with IPython, numpy, pandas and matplotlib imported and
a shell made, from which each new namespace sandbox's Python kernel is forked (its memory
shared copy-on-write until written), instead of starting a Python and importing again.

`guest-init --zygote` starts it on the host as root in its own mount namespace (the guest's
read-only root file system, tmpfs on /home/user and /tmp) and network namespace (loopback
only), holding CAP_SYS_ADMIN and CAP_SYS_CHROOT only, with
  fd 3  the host's control socket (SOCK_SEQPACKET): each message registers one sandbox,
        {"cpu_seconds": N, "namespaces": ["net", "user", ...]} with descriptors
        [connection, those namespaces of the sandbox's PID 1 in that order, the sandbox's
        user cgroup.procs...]; after the imports it sends b"ready"
  fd 4  the guest's seccomp programs (u32 length + BPF, repeated; installed in order).
It runs no code but its own and the guest's packages: nothing of a user's ever runs here.
On a sandbox's connection guest-init asks for kernels: {"cwd", "env", "uid", "gid"} with
descriptors [requests, events, stdout, stderr]; the answer is b"forked" or b"error: ...".
The forked child joins the control group, then the sandbox's namespaces (its PID
namespace by the fork), becomes uid/gid with no capabilities, no_new_privs and the
seccomp filters, and only then touches what the request says (folder, environment)
and runs cellbox_kernel.run. Everything per-sandbox is made fresh there: random state,
environment, working folder; the shell has never run a cell (execution count 1).
Not fresh: the hash seed of str/bytes (fixed at the template's start, as in any fork).
"""
import ctypes, json, os, resource, selectors, signal, socket, struct, sys

CONTROL_FD, SECCOMP_FD = 3, 4
MAX_MESSAGE = 1 << 16
MAX_FDS = 16
NAMESPACES = {"net": 0x40000000, "user": 0x10000000, "mnt": 0x00020000, "ipc": 0x08000000,
              "uts": 0x04000000, "cgroup": 0x02000000, "pid": 0x20000000}
JOINED = ("net", "user", "mnt", "ipc", "uts", "cgroup")   # in this order; pid by the fork
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 4, 24, 38, 22
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER = 47, 4, 2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def read_seccomp_programs(fd):
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, fd, inheritable=False)              # fds 0-4 stay taken: see become_kernel
    os.close(null)
    programs = []
    while data:
        (size,) = struct.unpack_from("<I", data)
        programs.append(data[4:4 + size])
        data = data[4 + size:]
    return programs


def drop_privileges(uid, gid, programs):
    """In the sandbox's user namespace, as its root: become uid/gid for good."""
    for cap in range(64):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)    # EINVAL past the last one
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header, data = _CapHeader(0x20080522, 0), (ctypes.c_uint32 * 6)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")   # as after an exec
    for program in programs:
        buffer = ctypes.create_string_buffer(program, len(program))
        fprog = _Fprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
        _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0),
               "installing the seccomp filter")


class Sandbox:
    """One registered sandbox: its connection and what its kernels join."""

    def __init__(self, connection, namespaces, cgroup_fds, cpu_seconds):
        self.connection, self.namespaces = connection, namespaces
        self.cgroup_fds, self.cpu_seconds = cgroup_fds, cpu_seconds

    def fds(self):
        return [*self.namespaces.values(), *self.cgroup_fds]

    def close(self):
        for fd in self.fds():
            os.close(fd)
        self.connection.close()


def receive(sock):
    """One message and its descriptors (extra descriptors are closed)."""
    message, ancillary, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4))
    fds = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(data) // 4}i", data[:len(data) // 4 * 4]))
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise ValueError("message too long")
    return message, fds


class Zygote:
    def __init__(self, shell, programs):
        self.shell, self.programs = shell, programs
        self.control = socket.socket(fileno=CONTROL_FD)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.control, selectors.EVENT_READ, None)
        self.own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def serve(self):
        self.control.sendall(b"ready")
        while True:
            for key, _ in self.selector.select():
                if key.data is None:
                    self.register()
                else:
                    self.answer(key.data)

    def register(self):
        message, fds = receive(self.control)
        if not message:
            os._exit(0)                                   # the host is gone
        try:
            registration = json.loads(message)
            cpu_seconds = int(registration["cpu_seconds"])
            names = [str(name) for name in registration["namespaces"]]
            if sorted(names) != sorted(NAMESPACES) or len(fds) < 1 + len(names):
                raise ValueError("every namespace, once")
            namespaces = dict(zip(names, fds[1:]))
            connection = socket.socket(fileno=fds[0])
            sandbox = Sandbox(connection, namespaces, fds[1 + len(names):], cpu_seconds)
        except (ValueError, KeyError, IndexError, TypeError, OSError):
            for fd in fds:
                os.close(fd)
            return
        self.selector.register(connection, selectors.EVENT_READ, sandbox)

    def answer(self, sandbox):
        try:
            message, fds = receive(sandbox.connection)
        except (OSError, ValueError):
            message, fds = b"", []
        if not message:                                   # the sandbox ended
            self.selector.unregister(sandbox.connection)
            sandbox.close()
            return
        pid = None
        try:
            request = json.loads(message)
            cwd, env = str(request["cwd"]), {str(k): str(v) for k, v in request["env"].items()}
            uid, gid = int(request["uid"]), int(request["gid"])
            if len(fds) != 4:
                raise ValueError("a kernel needs four descriptors")
            pid = self.fork(sandbox)
        except Exception as e:                            # noqa: BLE001 -- the answer says it
            reply = f"error: {e}".encode()
        else:
            reply = b"forked"
        if pid == 0:
            self.become_kernel(sandbox, fds, cwd, env, uid, gid)
        for fd in fds:
            os.close(fd)
        try:
            sandbox.connection.send(reply, socket.MSG_DONTWAIT)
        except OSError:                                   # a sandbox that does not read: dropped
            self.selector.unregister(sandbox.connection)
            sandbox.close()

    def fork(self, sandbox):
        """Forks a child in the sandbox's PID namespace (the zygote stays in its own)."""
        _check(_libc.setns(sandbox.namespaces["pid"], NAMESPACES["pid"]), "joining the PID namespace")
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                _check(_libc.setns(self.own_pid_ns, NAMESPACES["pid"]),
                       "returning to its PID namespace")
        return pid

    def become_kernel(self, sandbox, fds, cwd, env, uid, gid):
        try:
            # The zygote's sockets must not close descriptors the kernel reuses later.
            for key in list(self.selector.get_map().values()):
                key.fileobj.detach()
            self.selector.close()
            requests, events, stdout, stderr = (os.dup(fd) for fd in fds)
            for target, fd in ((1, stdout), (2, stderr), (3, requests), (4, events)):
                os.dup2(fd, target)
            keep = sandbox.fds()
            os.closerange(5, min(keep))
            for low, high in zip(sorted(keep), sorted(keep)[1:] + [1 << 20]):
                os.closerange(low + 1, high)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in sandbox.cgroup_fds:
                os.write(fd, b"0")
                os.close(fd)
            limit = sandbox.cpu_seconds
            resource.setrlimit(resource.RLIMIT_CPU, (limit, limit))
            # The network namespace belongs to the host's user namespace: joined first.
            for name in JOINED:
                _check(_libc.setns(sandbox.namespaces[name], NAMESPACES[name]),
                       f"joining the {name} namespace")
            for fd in sandbox.namespaces.values():
                os.close(fd)
            null = os.open(os.devnull, os.O_RDONLY)       # the sandbox's, not the template's
            os.dup2(null, 0)
            os.close(null)
            drop_privileges(uid, gid, self.programs)
            os.setsid()
            os.environ.clear()
            os.environ.update(env)
            os.chdir(cwd)
            fresh_session(self.shell, cwd)
        except BaseException as e:                        # noqa: BLE001 -- guest-init logs it
            os.write(2, f"the warm kernel could not start: {e}\n".encode())
            os._exit(70)
        import cellbox_kernel
        cellbox_kernel.run(self.shell)


def fresh_session(shell, cwd):
    """What the template's fork would otherwise share with every other sandbox."""
    import cellbox_kernel
    cellbox_kernel.reseed()
    sys.argv[:] = [cellbox_kernel_path()]
    shell.starting_dir = cwd
    shell.user_ns.get("_dh", [])[:] = [cwd]
    os.makedirs(shell.profile_dir.location, exist_ok=True)
    shell.profile_dir.check_dirs()


def cellbox_kernel_path():
    import cellbox_kernel
    return cellbox_kernel.__file__


def warm_up():
    """Imports what notebooks use most and makes the kernel's shell."""
    import cellbox_kernel
    shell = cellbox_kernel.prepare()
    cellbox_kernel.preload(shell)
    return shell


def main():
    programs = read_seccomp_programs(SECCOMP_FD)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)        # kernels are reaped by the kernel
    shell = warm_up()
    Zygote(shell, programs).serve()


if __name__ == "__main__":
    main()
