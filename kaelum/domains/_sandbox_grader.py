"""Runs inside the grader's sandbox: runs the tests against the solution, which lives in another process.

Copied into its own work directory with `_sandbox_wire.py` and `_sandbox_guard.py` and run by the
launcher like the solution's harness. It reads `plan.json` (the test units and the channels' file
descriptors), waits for the solution's `load` message, and builds a module `solution` whose
functions and values stand in for the solution's: a call sends the arguments as plain data to the
solution's process and rebuilds its answer as plain data here. The tests run in this process, so
`==`, `repr` and `hash` in an assert are always the built-in types' own; a value that is not
plain data arrives as a `Remote`, which compares equal only to itself.

Each test outcome goes to the parent on a pipe the solution never holds, as one line of JSON that
carries the run's secret. Every `assert` the tests execute is counted (the statement is rewritten
to bump a counter first), so the parent can refuse tests that ran no assertion at all.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import os
import signal
import sys
import time
import types

_COUNTER = "__kaelum_assertion__"
# Standard-library modules the grader imports on the solution's behalf (not those that act on import).
_IMPORTABLE = frozenset(sys.stdlib_module_names) - {"antigravity", "this", "idlelib", "turtle", "turtledemo",
                                                    "tkinter", "webbrowser", "pydoc", "__main__"}


def _load_helper(name: str) -> types.ModuleType:
    """A helper copied next to this file, as a module (not via importlib.util: its import costs a start)."""
    module = types.ModuleType(name)
    with open(name + ".py") as f:
        exec(compile(f.read(), name + ".py", "exec"), module.__dict__)  # noqa: S102 - our own helper
    return module


class _TestTimeout(BaseException):
    """BaseException so that a bare `except Exception` in a test cannot swallow it."""


class SolutionError(Exception):
    """An exception the solution raised whose type has no built-in counterpart here."""


class SolutionUnavailable(Exception):
    """The solution's process stopped answering (it died, timed out or broke the protocol)."""


def _alarm(_signum: int, _frame: object) -> None:
    raise _TestTimeout()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _TestTimeout):
        return "timeout"
    if isinstance(exc, AssertionError):
        msg = str(exc)
        return "AssertionError" + (f": {msg}" if msg else "")
    import traceback  # only when something failed: its import costs every start otherwise

    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-500:]


class _CountAsserts(ast.NodeTransformer):
    """`assert x` -> `__kaelum_assertion__(); assert x`, at every depth (inside check(), loops, ...)."""

    def visit_Assert(self, node: ast.Assert) -> list[ast.stmt]:  # noqa: N802 - ast visitor name
        bump = ast.Expr(ast.Call(ast.Name(_COUNTER, ast.Load()), [], []))
        return [ast.copy_location(bump, node), node]


def _compile(source: str, filename: str) -> types.CodeType:
    tree = _CountAsserts().visit(ast.parse(source, filename))
    return compile(ast.fix_missing_locations(tree), filename, "exec")


class Channel:
    """Requests to the solution's process; its answers rebuilt as plain data (or `Remote`s)."""

    def __init__(self, wire: types.ModuleType, fd_out: int, fd_in: int, cap: int) -> None:
        self.wire, self.fd_out = wire, fd_out
        self.reader = wire.LineReader(fd_in, cap)
        self.seq = 0
        self.deadline = time.monotonic()
        self.broken: str | None = None

    def request(self, op: str, ref: int, args: tuple = (), kwargs: dict | None = None, **extra: object) -> object:
        if self.broken:
            raise SolutionUnavailable(self.broken)
        wire = self.wire
        try:
            enc_args = [wire.encode(a, _ref_of) for a in args]
            enc_kwargs = [[k, wire.encode(v, _ref_of)] for k, v in (kwargs or {}).items()]
        except wire.NotPlainData as e:
            raise TypeError(f"only plain data can be passed to the solution: {e}") from None
        self.seq += 1
        remaining = self.deadline - time.monotonic()
        message = {"seq": self.seq, "op": op, "ref": ref, "args": enc_args, "kwargs": enc_kwargs,
                   "deadline_s": max(remaining, 0.001), **extra}
        try:
            wire.write_all(self.fd_out, wire.dumps(message))
            while True:
                # The solution's own alarm answers "timeout" at the deadline; a grace second more
                # covers one that ignores its alarm, which is then given up on.
                reply = self.reader.read(max(remaining, 0.0) + 1.0)
                if reply.get("seq") == self.seq:
                    break
        except (wire.ChannelClosed, wire.ChannelError, TimeoutError, OSError) as e:
            what = "stopped answering" if isinstance(e, TimeoutError) else f"ended ({e})"
            self.broken = f"the solution's process {what}"
            raise SolutionUnavailable(self.broken) from None
        if "ok" in reply:
            try:
                return wire.decode(reply["ok"], lambda i, t: Remote(self, i, t))
            except (ValueError, TypeError, RecursionError) as e:
                raise SolutionUnavailable(f"the solution answered with malformed data: {e}") from None
        raise _rebuild(reply)


def _rebuild(reply: dict) -> BaseException:
    """The solution's exception as one of the built-in types it derives from (its message as text)."""
    name, message = str(reply.get("raised")), str(reply.get("message", ""))[:500]
    if name == "timeout":
        return _TestTimeout()
    for base in reply.get("bases") or []:
        cls = getattr(builtins, str(base), None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(message)
            except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
                continue
    return SolutionError(message)


def _ref_of(value: object) -> dict:
    if isinstance(value, Remote):
        return {"$ref": object.__getattribute__(value, "_ref")}
    raise _WIRE.NotPlainData(f"{type(value).__name__} is not plain data")


class Remote:
    """A value that lives in the solution's process. Equal only to itself; never runs its code here."""

    __slots__ = ("_channel", "_ref", "_type")

    def __init__(self, channel: Channel, ref: int, type_name: str) -> None:
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_type", type_name)

    def _ask(self, op: str, *args: object, **kwargs: object) -> object:
        return object.__getattribute__(self, "_channel").request(op, object.__getattribute__(self, "_ref"), args,
                                                                 kwargs.pop("kwargs", None), **kwargs)

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self._ask("call", *args, kwargs=kwargs)

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name=name)

    def __iter__(self):  # noqa: ANN204
        items = self._ask("list")
        if not isinstance(items, list):
            raise TypeError("the solution's value did not list as a list")
        return iter(items)

    def __len__(self) -> int:
        n = self._ask("len")
        if type(n) is not int or n < 0:
            raise TypeError("the solution's len() is not a non-negative int")
        return n

    def __getitem__(self, key: object) -> object:
        return self._ask("getitem", key)

    def __contains__(self, key: object) -> bool:
        return self._ask("contains", key) is True

    def __bool__(self) -> bool:
        return self._ask("bool") is True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Remote) and object.__getattribute__(other, "_ref") == object.__getattribute__(self, "_ref")

    def __hash__(self) -> int:
        return hash(("remote", object.__getattribute__(self, "_ref")))

    def __repr__(self) -> str:
        return f"<{object.__getattribute__(self, '_type')} from the solution>"


_WIRE: types.ModuleType


def main() -> None:
    global _WIRE
    with open("plan.json") as f:
        plan = json.load(f)
    wire = _WIRE = _load_helper("_sandbox_wire")
    guard = _load_helper("_sandbox_guard")
    strict = "strict" in sys.argv[1:]
    if plan.get("audit", True) or strict:
        guard.install(os.path.realpath(os.getcwd()), [os.path.realpath(d) for d in plan.get("private_dirs", [])],
                      [os.path.realpath(d) for d in plan.get("allowed_dirs", [])], strict,
                      int(plan.get("max_write_opens", 16)))
    secret, result_fd = plan["secret"], int(plan["fd_result"])

    def record(**row: object) -> None:
        wire.write_all(result_fd, wire.dumps({**row, "secret": secret}))

    timeout = float(plan["per_test_timeout_s"])
    channel = Channel(wire, int(plan["fd_request"]), int(plan["fd_reply"]), int(plan["max_message_bytes"]))
    try:
        load = channel.reader.read(float(plan["load_timeout_s"]))
    except (wire.ChannelClosed, wire.ChannelError, TimeoutError) as e:
        reason = "did not finish loading in time" if isinstance(e, TimeoutError) else f"ended before it loaded ({e})"
        record(kind="load", ok=False, error=f"the solution's process {reason}")
        return
    if load.get("kind") != "load" or load.get("ok") is not True:
        record(kind="load", ok=False, error=str(load.get("error") or "the solution did not load")[:1000])
        return
    module = types.ModuleType("solution")
    try:
        for name, kind, payload in load.get("names") or []:
            if kind == "module":
                # The same module, imported here, so tests may use the solution's `math` or `np`:
                # only standard-library ones, since an import runs that module's code in the grader.
                if str(payload).split(".")[0] not in _IMPORTABLE:
                    continue
                try:
                    module.__dict__[str(name)] = importlib.import_module(str(payload))
                except Exception:  # noqa: BLE001 - a module the grader's interpreter lacks is left out
                    continue
            else:
                module.__dict__[str(name)] = wire.decode(payload, lambda i, t: Remote(channel, i, t))
    except (ValueError, TypeError, RecursionError) as e:
        record(kind="load", ok=False, error=f"the solution's names arrived malformed: {e}")
        return
    entry = plan.get("entry_point")
    if entry and not callable(module.__dict__.get(entry)):
        record(kind="load", ok=False, error=f"the solution defines no function named {entry!r} (the entry point)")
        return
    record(kind="load", ok=True, error=None)
    sys.modules["solution"] = module
    signal.signal(signal.SIGALRM, _alarm)
    assertions = [0]

    def bump() -> None:
        assertions[0] += 1

    def run(source: str, ns: dict, filename: str) -> str | None:
        channel.deadline = time.monotonic() + timeout
        # Exactly the per-test timeout: a loop in the test code itself runs in this process, whose
        # CPU limit is the solution's (cpu_s); a longer alarm let RLIMIT_CPU kill the grader first on
        # a quiet machine (SIGXCPU, every test lost). Waiting on a solution that ignores its own
        # alarm is bounded separately (the channel's reply wait has its grace second).
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            exec(_compile(source, filename), ns)  # noqa: S102 - the tests, in their own sandbox
            return None
        except BaseException as exc:  # noqa: BLE001 - SystemExit, MemoryError etc. fail the test too
            return _describe(exc)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    for s_index, units in enumerate(plan["snippets"]):
        ns = {k: v for k, v in module.__dict__.items() if not k.startswith("__")}
        ns.update(__name__="__test__", __builtins__=builtins, **{_COUNTER: bump})
        setup_error = None
        deferred = []
        for u_index, unit in enumerate(units):
            if unit["kind"] in ("testfn", "entry"):
                deferred.append((u_index, unit))
                continue
            if setup_error is not None:
                if unit["kind"] != "stmt":
                    record(kind="test", snippet=s_index, unit=u_index, ok=False, error=f"setup failed: {setup_error}")
                continue
            error = run(unit["source"], ns, f"test_{s_index}.py")
            if unit["kind"] != "stmt":
                record(kind="test", snippet=s_index, unit=u_index, ok=error is None, error=error)
            elif error is not None:
                setup_error = error
                if not any(u["kind"] != "stmt" for u in units[u_index + 1:]):
                    # Nothing after it would report the failure: it is an outcome of its own.
                    record(kind="test", snippet=s_index, unit=u_index, ok=False, error=error)
        for u_index, unit in deferred:
            if setup_error is not None:
                record(kind="test", snippet=s_index, unit=u_index, ok=False, error=f"setup failed: {setup_error}")
                continue
            error = run(unit["source"], ns, f"test_{s_index}.py")
            record(kind="test", snippet=s_index, unit=u_index, ok=error is None, error=error)
    record(kind="done", assertions=assertions[0])


if __name__ == "__main__":
    main()
