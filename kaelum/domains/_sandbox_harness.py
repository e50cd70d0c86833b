"""Runs inside the solution's sandbox: loads the solution, then answers the grader's calls into it.

Copied into the sandbox's work directory with `_sandbox_wire.py` and `_sandbox_guard.py` and run
by the launcher as `python -I -B -c <boot>` (plus `strict` when the kernel layer is missing). It
reads `plan.json` (written by `kaelum.domains.sandbox`), installs the audit hook before any
untrusted code runs, executes the solution as module `solution`, and sends one `load` message on
its output pipe. In test mode it then serves requests from the grader (call a function of the
solution, read an attribute, list, len, item, contains, bool of a value the solution returned)
until the grader closes the pipe.

Nothing this process says is trusted: the grader, in another sandbox, runs the tests and decides
each outcome from plain data (see `_sandbox_wire`). The solution may rewrite this harness, the
builtins or the wire codec; all that buys it is answering calls with values of its choosing,
which is what any function does.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import types


def _load_helper(name: str) -> types.ModuleType:
    """A helper copied next to this file, as a module (not via importlib.util: its import costs a start)."""
    module = types.ModuleType(name)
    with open(name + ".py") as f:
        exec(compile(f.read(), name + ".py", "exec"), module.__dict__)  # noqa: S102 - our own helper
    return module


class _CallTimeout(BaseException):
    """BaseException so that a bare `except Exception` in the solution cannot swallow it."""


def _alarm(_signum: int, _frame: object) -> None:
    raise _CallTimeout()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _CallTimeout):
        return "timeout"
    import traceback  # only when something failed: its import costs every start otherwise

    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-500:]


def _raised(exc: BaseException) -> dict:
    names = [c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins"]
    return {"raised": "timeout" if isinstance(exc, _CallTimeout) else type(exc).__name__,
            "bases": names[:20], "message": _describe(exc)}


def main() -> None:
    with open("plan.json") as f:
        plan = json.load(f)
    wire = _load_helper("_sandbox_wire")
    guard = _load_helper("_sandbox_guard")
    strict = "strict" in sys.argv[1:]
    out_fd = int(plan["fd_out"])
    if plan.get("audit", True) or strict:
        guard.install(os.path.realpath(os.getcwd()), [os.path.realpath(d) for d in plan.get("private_dirs", [])],
                      [os.path.realpath(d) for d in plan.get("allowed_dirs", [])], strict,
                      int(plan.get("max_write_opens", 16)))
    signal.signal(signal.SIGALRM, _alarm)
    refs: list = []

    def register(value: object) -> dict:
        if len(refs) >= 100_000:
            raise wire.NotPlainData("too many values held for the grader")
        refs.append(value)
        return {"$ref": len(refs) - 1, "type": type(value).__name__}

    def send(message: dict) -> None:
        wire.write_all(out_fd, wire.dumps(message))

    main_pid = os.getpid()
    module = types.ModuleType("solution")
    module.__dict__["__name__"] = "__main__" if plan["mode"] == "script" else "solution"
    sys.modules["solution"] = module
    signal.setitimer(signal.ITIMER_REAL, float(plan["per_test_timeout_s"]))
    try:
        exec(compile(plan["solution"], "solution.py", "exec"), module.__dict__)  # noqa: S102 - this is the sandbox
        error = None
    except BaseException as exc:  # noqa: BLE001 - SystemExit, MemoryError etc. are failures too
        error = _describe(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if os.getpid() != main_pid:
        os._exit(0)  # a process the solution forked while loading: only the original answers
    names = []
    if error is None and plan["mode"] == "tests":
        for name, value in list(module.__dict__.items()):
            if name.startswith("__"):
                continue
            if isinstance(value, types.ModuleType):
                names.append([name, "module", value.__name__])
                continue
            try:
                names.append([name, "value", wire.encode(value, register)])
            except wire.NotPlainData:
                continue
    send({"kind": "load", "ok": error is None, "error": error, "names": names})
    if error is not None or plan["mode"] != "tests":
        return
    reader = wire.LineReader(int(plan["fd_in"]), int(plan["max_message_bytes"]))
    resolve = lambda i, _t: refs[i]  # noqa: E731 - the decoder's hook for references
    while True:
        try:
            request = reader.read(None)
        except (wire.ChannelClosed, wire.ChannelError):
            return
        send({"seq": request.get("seq"), **_serve(request, refs, resolve, register, wire)})


def _serve(request: dict, refs: list, resolve, register, wire) -> dict:  # noqa: ANN001 - local helpers
    """One request of the grader, answered as plain data (or the exception it raised)."""
    try:
        target = refs[int(request["ref"])]
        op = request["op"]
        args = [wire.decode(a, resolve) for a in request.get("args", [])]
        kwargs = {str(k): wire.decode(v, resolve) for k, v in request.get("kwargs", [])}
    except (KeyError, IndexError, ValueError, TypeError) as e:
        return {"raised": "ValueError", "bases": ["ValueError"], "message": f"bad request: {e}"}
    signal.setitimer(signal.ITIMER_REAL, max(0.001, float(request.get("deadline_s", 5.0))))
    try:
        if op == "call":
            result = target(*args, **kwargs)
        elif op == "getattr":
            result = getattr(target, str(request["name"]))
        elif op == "list":
            result = list(target)
        elif op == "len":
            result = len(target)
        elif op == "getitem":
            result = target[args[0]]
        elif op == "contains":
            result = args[0] in target
        elif op == "bool":
            result = bool(target)
        else:
            raise ValueError(f"unknown operation {op!r}")
        signal.setitimer(signal.ITIMER_REAL, 0)
        return {"ok": wire.encode(result, register)}
    except BaseException as exc:  # noqa: BLE001 - reported to the grader, which decides
        signal.setitimer(signal.ITIMER_REAL, 0)
        return _raised(exc)


if __name__ == "__main__":
    main()
