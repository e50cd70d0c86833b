"""The in-process barrier of the sandbox: a PEP 578 audit hook that the code it watches cannot switch off.

Copied into the sandbox with the harness. `install(...)` builds the hook as a closure over
everything it uses: the directories it guards (tuples of strings), and the C functions it calls
(`posix.lstat`, `posix.readlink`, `posix.getpid`, the built-in `isinstance`, ...), captured when it
is installed. The hook looks nothing up at run time, in no module and not in `builtins`, so code
that rebinds `os.path.realpath`, `posixpath._joinrealpath`, `builtins.isinstance` or any module
global changes nothing it does. The ways to reach the hook object itself (`gc.get_objects` and its
kin, trace and profile functions, `sys._current_frames`) are refused.

It refuses internet sockets and connecting or binding any socket; writes, renames and deletions
outside the work directory; opening another process's /proc entries; reading or listing the
private directories (the caller's home, the sandbox's own outer directory) outside the
interpreter's trees. With `strict` (no kernel layer: the code runs as the caller's uid, with the
host's mounts and processes in view) it also refuses what would leave the hook behind: starting a
program (exec, spawn, `subprocess`, `os.system`), loading native code with ctypes, and opening
unix sockets. Hooks cannot be removed from Python code; native code can still do anything the uid
may, which is why strict mode is opt-in (see `SandboxLimits.allow_audit_only`).
"""

from __future__ import annotations


def install(workdir: str, private: list[str], allowed: list[str], strict: bool, max_write_opens: int = 16) -> None:
    import builtins
    import itertools
    import posix
    import sys

    hook = _make_hook(workdir, tuple(private), tuple(allowed), strict, int(max_write_opens), itertools.count(1),
                      posix.lstat, posix.readlink, posix.getpid, posix.fspath,
                      builtins.isinstance, builtins.len, builtins.next, builtins.str, builtins.bytes, builtins.int,
                      builtins.PermissionError, builtins.OSError, builtins.ValueError, builtins.TypeError)
    sys.addaudithook(hook)


def _make_hook(workdir, private, allowed, strict, max_write_opens, write_opens, lstat, readlink, getpid, fspath,
               isinstance, len, next, str, bytes, int,
               PermissionError, OSError, ValueError, TypeError):  # noqa: A002, N803 - captured builtins
    """The hook. Every name it uses is one of this function's parameters or locals (see module doc)."""
    write_flags = 0o1 | 0o2 | 0o100 | 0o2000 | 0o1000  # O_WRONLY | O_RDWR | O_CREAT | O_APPEND | O_TRUNC
    inet = (-1, 2, 10)  # unspecified (defaults to AF_INET), AF_INET, AF_INET6
    # Events whose first (or first two) arguments are paths that must lie in the work directory.
    one_path = frozenset(("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "shutil.rmtree",
                          "os.utime", "os.mkfifo", "os.mknod", "os.chdir", "os.chroot"))
    two_paths = frozenset(("os.rename", "os.symlink", "os.link"))
    network = frozenset(("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                         "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"))
    unreachable = frozenset(("gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace",
                             "sys.setprofile", "sys._current_frames", "sys._current_exceptions",
                             "cpython.PyInterpreterState_Clear"))
    leave = frozenset(("os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "pty.spawn",
                       "os.forkpty", "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata",
                       "ctypes.cdata/buffer", "ctypes.call_function", "ctypes.addressof", "ctypes.string_at",
                       "ctypes.wstring_at", "ctypes.PyObj_FromPtr", "ctypes.set_errno", "os.startfile"))
    S_IFMT, S_IFLNK = 0o170000, 0o120000
    me = getpid()
    # No mutable state: a traceback through the hook shows its frames' locals, which must give the
    # code nothing to change.

    def absolute(path):
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        elif not isinstance(path, str):
            try:
                path = fspath(path)
            except TypeError:
                return None
            if isinstance(path, bytes):
                path = path.decode("utf-8", "surrogateescape")
        if not path.startswith("/"):
            path = workdir + "/" + path
        return path

    def resolve(path):
        """The real path: symlinks followed (at most 40), '.' and '..' applied, like os.path.realpath."""
        todo = [p for p in path.split("/") if p][::-1]
        parts = []
        hops = 0
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                if parts:
                    parts.pop()
                continue
            candidate = "/" + "/".join(parts + [name])
            try:
                mode = lstat(candidate).st_mode
            except (OSError, ValueError):
                parts.append(name)  # does not exist (yet): keep the name, as realpath does
                continue
            if mode & S_IFMT == S_IFLNK:
                hops += 1
                if hops > 40:
                    return candidate
                try:
                    target = readlink(candidate)
                except (OSError, ValueError):
                    parts.append(name)
                    continue
                if target.startswith("/"):
                    parts = []
                todo.extend([p for p in target.split("/") if p][::-1])
                continue
            parts.append(name)
        return "/" + "/".join(parts)

    def within(path, dirs):
        for d in dirs:
            if path == d or path.startswith(d.rstrip("/") + "/"):
                return True
        return False

    def full(path):
        p = absolute(path)
        return None if p is None else resolve(p)

    def inside(path):
        if isinstance(path, int):
            return True  # an already-open descriptor was checked when it was opened
        p = full(path)
        return p is not None and (within(p, (workdir,)) or p == "/dev/null")

    def is_private(p):
        return p is not None and within(p, private) and not within(p, allowed + (workdir,))

    def other_process(p):
        if p is None:
            return False
        parts = p.split("/")
        return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != me

    def hook(event, args):
        if event == "socket.__new__":
            if args[1] in inet or strict and args[1] == 1:
                raise PermissionError("network access is disabled in the sandbox")
        elif event in network:
            raise PermissionError("network access is disabled in the sandbox")
        elif event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)) or (
                isinstance(flags, int) and flags & write_flags)
            if writing and not inside(path):
                raise PermissionError(f"writing outside the sandbox directory is not allowed: {path!r}")
            if writing and strict and not isinstance(path, int) and next(write_opens) > max_write_opens:
                # No sized tmpfs here: RLIMIT_FSIZE caps each file, this caps how many are written.
                raise PermissionError(f"more than {max_write_opens} files opened for writing in the sandbox")
            p = None if isinstance(path, int) else full(path)
            if is_private(p):
                raise PermissionError(f"reading this directory is not allowed in the sandbox: {path!r}")
            if other_process(p):
                raise PermissionError(f"reading another process is not allowed in the sandbox: {path!r}")
        elif event in ("os.listdir", "os.scandir"):
            if len(args) and not isinstance(args[0], int) and is_private(full(args[0] if args[0] is not None else ".")):
                raise PermissionError(f"listing this directory is not allowed in the sandbox: {args[0]!r}")
        elif event in one_path or event in two_paths:
            for p in (args[:2] if event in two_paths else args[:1]):
                if not inside(p):
                    raise PermissionError(f"{event} outside the sandbox directory is not allowed: {p!r}")
        elif event in unreachable:
            raise PermissionError(f"{event} is not allowed in the sandbox")
        elif strict and event in leave:
            raise PermissionError(f"{event} is not allowed in the sandbox without its kernel layer")
        elif strict and event in ("os.kill", "os.killpg", "signal.pthread_kill") and args[0] != me:
            # Without a PID namespace every process of this uid is in reach.
            raise PermissionError(f"{event} of another process is not allowed in the sandbox")

    return hook
