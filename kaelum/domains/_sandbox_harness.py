"""Runs inside the sandbox: loads the solution, runs each test unit, records one JSON line per outcome.

Copied into the sandbox's work directory and run with `python -I -B _sandbox_harness.py`. It reads
`plan.json` (written by `kaelum.domains.sandbox`) and appends to `results.jsonl`, flushing after each
line so that the outcomes recorded before a kill (timeout, memory) survive it.

Before any untrusted code runs it installs an audit hook (PEP 578) that refuses internet sockets,
writes outside the work directory, opening another process's /proc entries, and reading or
listing the caller's home directory outside the interpreter's own trees. Hooks cannot be removed
from Python code; they are the second layer behind the kernel's (namespaces, read-only mounts,
unprivileged uid) and the only one where the kernel refuses namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
import types

_WORKDIR = os.path.realpath(os.getcwd())
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_INET_FAMILIES = (-1, 2, 10)  # unspecified (defaults to AF_INET), AF_INET, AF_INET6
_PATH_EVENTS = {"os.rename": 2, "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.symlink": 2, "os.link": 2,
                "os.chmod": 1, "os.chown": 1, "os.truncate": 1, "shutil.rmtree": 1, "os.utime": 1}


_PRIVATE: list[str] = []  # the caller's home: no reads
_ALLOWED: list[str] = []  # the interpreter's trees, readable even inside a private directory


def _resolved(path: object) -> str | None:
    """The real absolute path `path` names (relative to the work directory); None for a non-path."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return None
    return os.path.realpath(os.path.join(_WORKDIR, path))


def _within(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip(os.sep) + os.sep) for d in dirs)


def _inside(path: object) -> bool:
    if isinstance(path, int):
        return True  # an already-open descriptor was checked when it was opened
    full = _resolved(path)
    return full is not None and (_within(full, [_WORKDIR]) or full.startswith("/dev/null"))


def _private(path: object) -> bool:
    """Whether `path` lies in the caller's home (and not in the interpreter's trees or the work dir)."""
    full = _resolved(path) if _PRIVATE else None
    return full is not None and _within(full, _PRIVATE) and not _within(full, _ALLOWED + [_WORKDIR])


def _other_process(path: object) -> bool:
    """Whether `path` is in another process's /proc directory (its environment, memory, files)."""
    full = _resolved(path)
    if full is None:
        return False
    parts = full.split(os.sep)
    return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != os.getpid()


def _audit(event: str, args: tuple) -> None:
    if event == "socket.__new__" and args[1] in _INET_FAMILIES:
        raise PermissionError("network access is disabled in the sandbox")
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo", "socket.gethostbyname"):
        raise PermissionError("network access is disabled in the sandbox")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if writing and not _inside(path):
            raise PermissionError(f"writing outside the sandbox directory is not allowed: {path!r}")
        if _private(path):
            raise PermissionError(f"reading the caller's home directory is not allowed in the sandbox: {path!r}")
        if _other_process(path):
            # Without a PID namespace and a uid of its own, the code shares the caller's uid and
            # could read the caller's environment (API keys) from /proc.
            raise PermissionError(f"reading another process is not allowed in the sandbox: {path!r}")
    elif event in ("os.listdir", "os.scandir") and args and _private(args[0]):
        raise PermissionError(f"listing the caller's home directory is not allowed in the sandbox: {args[0]!r}")
    elif event in _PATH_EVENTS:
        for p in args[: _PATH_EVENTS[event]]:
            if not _inside(p):
                raise PermissionError(f"{event} outside the sandbox directory is not allowed: {p!r}")


class _TestTimeout(BaseException):
    """BaseException so that a bare `except Exception` in the code under test cannot swallow it."""


def _alarm(_signum: int, _frame: object) -> None:
    raise _TestTimeout()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _TestTimeout):
        return "timeout"
    if isinstance(exc, AssertionError):
        msg = str(exc)
        return "AssertionError" + (f": {msg}" if msg else "")
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip()[-500:]


def _run(code: str, ns: dict, filename: str, timeout_s: float) -> str | None:
    """Execute `code` in `ns` under a wall-clock alarm; the error text, or None on success."""
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        exec(compile(code, filename, "exec"), ns)  # noqa: S102 - this is the sandbox
        return None
    except BaseException as exc:  # noqa: BLE001 - SystemExit, MemoryError etc. are test failures too
        return _describe(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> None:
    with open("plan.json") as f:
        plan = json.load(f)
    out = open("results.jsonl", "a", buffering=1)

    main_pid = os.getpid()

    def record(**row: object) -> None:
        # Processes the code forks run this harness on too; the parent keeps only this pid's rows.
        out.write(json.dumps({**row, "pid": os.getpid()}) + "\n")
        out.flush()

    record(kind="start", main=main_pid)

    if plan.get("audit", True):
        _PRIVATE.extend(os.path.realpath(d) for d in plan.get("private_dirs", []))
        _ALLOWED.extend(os.path.realpath(d) for d in plan.get("allowed_dirs", []))
        sys.addaudithook(_audit)
    signal.signal(signal.SIGALRM, _alarm)
    timeout = float(plan["per_test_timeout_s"])

    # The solution is importable as module `solution` (tests may `from solution import f`).
    module = types.ModuleType("solution")
    module.__dict__["__name__"] = "__main__" if plan["mode"] == "script" else "solution"
    sys.modules["solution"] = module
    error = _run(plan["solution"], module.__dict__, "solution.py", timeout)
    record(kind="load", ok=error is None, error=error)
    if error is not None:
        return
    for s_index, units in enumerate(plan["snippets"]):
        ns = dict(module.__dict__)
        ns["__name__"] = "__test__"
        setup_error = None
        deferred = []
        for u_index, unit in enumerate(units):
            if unit["kind"] == "testfn":
                deferred.append((u_index, unit))
                continue
            if setup_error is not None:
                if unit["kind"] == "assert":
                    record(kind="test", snippet=s_index, unit=u_index, ok=False, error=f"setup failed: {setup_error}")
                continue
            error = _run(unit["source"], ns, f"test_{s_index}.py", timeout)
            if unit["kind"] == "assert":
                record(kind="test", snippet=s_index, unit=u_index, ok=error is None, error=error)
            else:
                setup_error = error
        for u_index, unit in deferred:
            if setup_error is not None:
                record(kind="test", snippet=s_index, unit=u_index, ok=False, error=f"setup failed: {setup_error}")
                continue
            # The function was defined by the snippet's statements; the unit's source calls it.
            error = _run(unit["source"], ns, f"test_{s_index}.py", timeout)
            record(kind="test", snippet=s_index, unit=u_index, ok=error is None, error=error)
    record(kind="done")


if __name__ == "__main__":
    main()
