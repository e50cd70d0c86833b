"""Run untrusted Python (model-written code) in contained subprocesses, and grade it from outside.

`run_tests(solution, tests)` runs the solution in one sandbox and the tests in another (the
grader), and reports which tests passed; `run_python(source)` runs a script. The verdict never
comes from the solution's process:

- the grader runs the tests with stand-ins for the solution's functions: each call crosses a pipe
  as plain data (`_sandbox_wire`), so `==` in an assert is always the built-in types' own, and
  nothing the solution does to its own interpreter (builtins, the harness, `json`) reaches it;
- the grader reports each outcome on a pipe the solution never holds, one JSON line carrying a
  per-run secret; the parent reads it without blocking (select, a deadline) and up to a size cap,
  and reads nothing else the code controls without a cap and `O_NOFOLLOW`;
- every `assert` the tests execute is counted: tests that ran none are refused.

Containment of each process, from the kernel outwards:

- limits (setrlimit in the child): CPU seconds, address space, file size, process count, no core;
  plus a wall-clock timeout enforced by the parent, which kills the whole process group;
- a fresh work directory (the child's cwd, HOME and TMPDIR) that is a tmpfs of bounded total
  size inside the sandbox, deleted afterwards;
- new mount, network, PID, IPC and UTS namespaces, with every other mount read-only and the
  shared scratch places (/tmp, /var/tmp, /run, /dev/shm) covered by an empty tmpfs, so the code
  cannot write outside its directory, reach any network (not even loopback or a host unix
  socket), or see host processes, and killing the namespace's init kills everything the code
  started. As root (CI, dev containers) each process also runs as its own per-run unprivileged
  uid/gid. As any other user the namespaces are created inside an unprivileged user namespace,
  the caller's home directory is hidden (the code runs as the caller's uid, so permissions would
  not keep it out), and the host's /proc is replaced or hidden;
- always: a minimal environment (PATH and LANG only: no inherited secrets), stdin closed,
  `python -I` (no user site, no PYTHON* variables), no_new_privs, and an audit hook
  (`_sandbox_guard`) that refuses internet sockets and writes outside the work directory.

Where the kernel refuses the namespaces (a container without user namespaces, or an AppArmor
policy that forbids them to unprivileged users) the hook is the only barrier, and native code can
get around any audit hook: such a run is refused unless `allow_audit_only` is set, and then the
hook also refuses exec, ctypes and unix sockets.

`SandboxResult.isolation` says which of these applied, so a caller can log it with the verdict.
"""

from __future__ import annotations

import ast
import json
import logging
import marshal
import os
import random
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import _sandbox_wire as _wire

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
_LAUNCHER = _HERE / "_sandbox_launch.py"
_HARNESS = _HERE / "_sandbox_harness.py"
_GRADER = _HERE / "_sandbox_grader.py"
_HELPERS = (_HERE / "_sandbox_wire.py", _HERE / "_sandbox_guard.py")
# Per-run uids come from a range no real account uses, so RLIMIT_NPROC counts only this run's
# processes and a stray process can be recognised (and killed) by its uid.
_UID_RANGE = (2_000_000, 2_900_000)
# The interpreter starts with -S (site's .pth processing costs ~50 ms a start, twice a run); the
# site-packages directories are put on sys.path directly, so installed packages still import.
_BOOT = ("import site, sys; sys.path.extend(p for p in site.getsitepackages() if p not in sys.path); "
         "exec(compile(open('harness.py').read(), 'harness.py', 'exec'))")
# Shared scratch places covered inside the sandbox: other programs' unix sockets live there.
_SCRATCH = ("/tmp", "/var/tmp", "/run", "/var/run", "/dev/shm")
_GRADER_OUTPUT_CAP = 8 * 2**20  # the grader's whole report; a run that says more fails


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not the code inside it failing)."""


class SandboxRefused(SandboxError):
    """The sandbox would not run the code: its kernel layer is missing and audit-only was not allowed."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed run. Options keys of the code domain use the same names."""

    timeout_s: float = 10.0  # wall clock for the whole run, enforced by the parent
    per_test_timeout_s: float = 5.0  # wall clock for the solution's load and for each test unit
    cpu_s: int = 5
    memory_mb: int = 512  # address space (RLIMIT_AS)
    file_size_mb: int = 16  # largest file the code may write, also caps its stdout/stderr
    max_processes: int = 32
    max_output_bytes: int = 20_000  # how much of stdout/stderr is kept in the result
    work_dir_mb: int = 64  # total size of the work directory (a tmpfs inside the sandbox)
    max_message_bytes: int = 4 * 2**20  # largest value the solution may hand the grader in one answer
    namespaces: bool = True  # use kernel namespaces + uid drop when running as root
    audit_hook: bool = True  # the in-process barrier; tests turn it off to prove the kernel layer alone
    # Without the kernel layer only the audit hook stands between the code and this user's files
    # and processes, and native code can get around it: such runs are refused unless this is set.
    allow_audit_only: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("timeout_s", "per_test_timeout_s", "cpu_s", "memory_mb", "file_size_mb", "max_processes",
                     "max_output_bytes", "work_dir_mb", "max_message_bytes"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive number, got {value!r}")
        for name in ("namespaces", "audit_hook", "allow_audit_only"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.memory_mb, (int, float)) and 0 < self.memory_mb < 32:
            problems.append(f"memory_mb must be at least 32 (the interpreter itself needs it), got {self.memory_mb}")
        if problems:
            raise ValueError("invalid sandbox limits: " + "; ".join(problems))

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "SandboxLimits":
        """Limits from domain options: either a nested `sandbox` mapping or top-level keys of the same names."""
        options = dict(options or {})
        nested = options.get("sandbox") or {}
        if not isinstance(nested, Mapping):
            raise ValueError(f"option 'sandbox' must be a mapping of limits, got {type(nested).__name__}")
        known = set(cls.__dataclass_fields__)
        picked = {k: v for k, v in options.items() if k in known}
        unknown = sorted(set(nested) - known)
        if unknown:
            raise ValueError(f"unknown sandbox option(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
        picked.update(nested)
        return cls(**picked)


@dataclass(frozen=True)
class TestOutcome:
    name: str  # the test's source (an assert line, or `test_x()`)
    passed: bool
    error: str | None = None


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    loaded: bool  # the solution ran to the end of its module body
    load_error: str | None
    tests: tuple[TestOutcome, ...] = ()
    limit_hit: str | None = None  # "timeout" | "cpu" | "file_size" | "memory" | "killed" when a limit ended the run
    isolation: Mapping[str, Any] = field(default_factory=dict)
    assertions: int = 0  # assert statements the tests executed (counted by the grader)
    grader_error: str | None = None  # the grader itself failed or broke the protocol (every test then fails)

    @property
    def passed_count(self) -> int:
        return sum(t.passed for t in self.tests)

    @property
    def fraction_passed(self) -> float:
        return self.passed_count / len(self.tests) if self.tests else 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly digest for Verdict details (outputs truncated)."""
        d = asdict(self)
        d["tests"] = [asdict(t) for t in self.tests]
        d["stdout"] = self.stdout[-2000:]
        d["stderr"] = self.stderr[-2000:]
        d["isolation"] = dict(self.isolation)
        return d


def split_tests(snippets: Sequence[str], entry_point: str | None = None) -> list[list[dict[str, str]]]:
    """Turn test snippets into ordered units the grader runs; every statement counts.

    A top-level `assert`, a top-level statement with an assert anywhere inside it (a loop of
    asserts), and a top-level call of a function the snippet defines (`check(f)`) are each one test. Each top-level argument-less
    `def test_*` is one test, called after the snippet's statements ran; with an `entry_point`, a
    top-level `def check(candidate)` that the snippet never calls is one test, `check(<entry
    point>)` (HumanEval's form). Other statements are setup: when one fails, the tests after it
    fail with it, and when no test follows, the failing statement is a failed test of its own. A
    snippet that does not parse becomes one failing test whose source is the snippet.
    """
    out: list[list[dict[str, str]]] = []
    for snippet in snippets:
        try:
            tree = ast.parse(snippet)
        except SyntaxError as e:
            out.append([{"kind": "assert", "source": f"raise SyntaxError({str(e)!r})", "name": snippet.strip()[:200]}])
            continue
        units: list[dict[str, str]] = []
        calls: list[dict[str, str]] = []
        called = _called_names(tree)
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for node in tree.body:
            src = ast.get_source_segment(snippet, node) or ast.unparse(node)
            name = src.strip()[:200]
            if isinstance(node, ast.Assert):
                units.append({"kind": "assert", "source": src, "name": name})
                continue
            if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
                    and node.value.func.id in defined):
                # A call of a function the tests define (`check(f)`, `run_all()`) is a test; a call
                # of the solution's (`s.push(1)`) is setup, or partial credit would come for free.
                units.append({"kind": "call", "source": src, "name": name})
                continue
            is_def = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if not is_def and any(isinstance(n, ast.Assert) for n in ast.walk(node)):
                units.append({"kind": "check", "source": src, "name": name})
                continue
            units.append({"kind": "stmt", "source": src, "name": f"statement: {name}"})
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test") and not node.args.args:
                calls.append({"kind": "testfn", "source": f"{node.name}()", "name": f"{node.name}()"})
            elif (entry_point and isinstance(node, ast.FunctionDef) and node.name == "check"
                  and len(node.args.args) == 1 and "check" not in called):
                calls.append({"kind": "entry", "source": f"check({entry_point})", "name": f"check({entry_point})"})
        out.append(units + calls)
    return out


def _called_names(tree: ast.Module) -> set[str]:
    """Names called by a top-level expression statement (`check(candidate)`)."""
    return {n.value.func.id for n in tree.body
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name)}


def _needed_paths() -> list[str]:
    """Trees the child's interpreter must be able to read (its prefix, and a venv's base)."""
    paths = {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix),
             os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(paths)


def _home_dirs() -> list[str]:
    """The caller's home directory (by passwd and by $HOME), to hide from code running as its uid."""
    homes = {os.path.expanduser("~")}
    try:
        import pwd

        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):
        pass
    return sorted({os.path.realpath(h) for h in homes if h})


def _scratch_dirs() -> list[str]:
    return sorted({*_SCRATCH, os.path.realpath(tempfile.gettempdir())})


def _minimal_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
    }


def _read_capped(path: Path, limit: int) -> bytes:
    """At most `limit` + 1 bytes of a regular file, never following a link or blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_head(path: Path, limit: int) -> str:
    data = _read_capped(path, limit)
    text = data[:limit].decode("utf-8", errors="replace")
    return text + ("\n[output truncated]" if len(data) > limit else "")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(_read_capped(path, 1 << 16) or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _kill_uid(uid: int, gid: int) -> None:
    """Kill every process still running under a run's uid (only needed without a PID namespace).

    kill(-1) from a process with that uid reaches exactly the processes of that uid. A fork (not an
    interpreter) does it, because the sandbox uid may not be able to read the interpreter's files.
    """
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _pick_uids(n: int) -> list[int]:
    uids: set[int] = set()
    while len(uids) < n:
        uids.add(random.randrange(*_UID_RANGE))
    return sorted(uids)


@dataclass
class _Box:
    """One sandboxed interpreter: its directories, its launcher process, its uid (as root)."""

    name: str
    outer: Path  # holds the work directory and what only the parent reads (outputs, report)
    uid: int | None
    proc: subprocess.Popen | None = None
    out_f: Any = None
    err_f: Any = None

    @property
    def workdir(self) -> Path:
        return self.outer / "work"

    def prepare(self, script: Path, plan: dict[str, Any]) -> None:
        self.workdir.mkdir(parents=True)
        shutil.copy(script, self.workdir / "harness.py")
        for helper in _HELPERS:
            shutil.copy(helper, self.workdir / helper.name)
        (self.workdir / "plan.json").write_text(json.dumps(plan))
        if self.uid is not None:
            os.chmod(self.outer, 0o711)  # traversable by the sandbox uid, not listable
            os.chmod(self.workdir, 0o700)
            for p in [self.workdir, *self.workdir.iterdir()]:
                os.chown(p, self.uid, self.uid)

    def start(self, limits: SandboxLimits, pass_fds: Sequence[int], needed: list[str], homes: list[str]) -> None:
        nproc = limits.max_processes
        if self.uid is None:
            # RLIMIT_NPROC counts all of this user's processes; allow the existing ones plus the budget.
            nproc += sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owned_by_me(p))
        cfg = {
            "workdir": str(self.workdir),
            "report": str(self.outer / "isolation.json"),
            # -c, not a script path: Python makes a script path absolute, and the sandbox uid may be
            # unable to traverse the ancestors of its (already entered) work directory.
            "argv": [os.path.realpath(sys.executable), "-I", "-S", "-B", "-c", _BOOT],
            "env": _minimal_env(str(self.workdir)),
            "uid": self.uid,
            "gid": self.uid,
            "needed_paths": needed,
            "namespaces": limits.namespaces,
            "allow_audit_only": bool(limits.allow_audit_only),
            "cpu_s": int(limits.cpu_s),
            "memory_bytes": int(limits.memory_mb * 2**20),
            "file_size_bytes": int(limits.file_size_mb * 2**20),
            "work_dir_bytes": int(limits.work_dir_mb * 2**20),
            "nproc": int(nproc),
            # Inside a user namespace (non-root) the kernel counts only that namespace's processes.
            "nproc_in_userns": int(limits.max_processes) + 2,
            "hide_dirs": [] if os.geteuid() == 0 else homes,
            "hide_always": _scratch_dirs(),
            "boot": _BOOT,  # run in the launcher's own interpreter (it execs `argv` without this)
            "keep_fds": list(pass_fds),
        }
        self.out_f = open(self.outer / "stdout", "wb")
        self.err_f = open(self.outer / "stderr", "wb")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", str(_LAUNCHER), marshal.dumps(cfg).hex()],
                stdin=subprocess.DEVNULL, stdout=self.out_f, stderr=self.err_f, cwd=str(self.outer),
                env=_minimal_env(str(self.workdir)), start_new_session=True, close_fds=True, pass_fds=tuple(pass_fds),
            )
        except OSError as e:
            raise SandboxError(f"could not start the sandbox interpreter {sys.executable}: {e}") from e

    def stop(self, wait_s: float) -> int | None:
        """Wait up to `wait_s` for a clean exit, then kill the group; the status of a clean exit, else None."""
        returncode: int | None = None
        if self.proc is not None:
            try:
                returncode = self.proc.wait(timeout=max(wait_s, 0.0))
            except subprocess.TimeoutExpired:
                returncode = None
            _killpg(self.proc.pid)  # stragglers (a no-op when the PID namespace took them)
            self.proc.wait()
        for f in (self.out_f, self.err_f):
            if f is not None:
                f.close()
        if self.uid is not None:
            _reap(self.uid, self.uid)
        return returncode

    def isolation(self) -> dict[str, Any]:
        return _read_json(self.outer / "isolation.json")


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if p.stat().st_uid == uid:
                    pids.append(int(p.name))
            except OSError:
                continue  # exited while we looked
    return pids


def _reap(uid: int, gid: int, wait_s: float = 3.0) -> None:
    """Return only once no process of the run's uid is left.

    With a PID namespace the kernel tears the namespace down when its init dies, but
    asynchronously; without one, survivors (a fork bomb that called setsid) are killed by uid.
    """
    deadline = time.monotonic() + wait_s
    while _pids_of_uid(uid):
        _kill_uid(uid, gid)
        if time.monotonic() > deadline:
            log.warning("sandbox processes of uid %s still present after %.1fs", uid, wait_s)
            return
        time.sleep(0.02)


def _owned_by_me(proc_dir: Path) -> bool:
    try:
        return proc_dir.stat().st_uid == os.getuid()
    except OSError:
        return False


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_messages(fd: int, deadline: float, cap: int, secret: str | None,
                   last: str) -> tuple[list[dict[str, Any]], str | None]:
    """The messages on a pipe until one of kind `last`, its close or the deadline; (messages, why it stopped early).

    Stopping at the last message expected, not at the pipe's close, keeps a process the code
    forked (which may hold the pipe open for as long as it lives) from stretching the run.
    """
    reader = _wire.LineReader(fd, cap)
    rows: list[dict[str, Any]] = []
    while True:
        try:
            row = reader.read(max(deadline - time.monotonic(), 0.0))
        except _wire.ChannelClosed:
            return rows, None
        except TimeoutError:
            return rows, "timeout"
        except _wire.ChannelError as e:
            return rows, str(e)
        if secret is not None and row.get("secret") != secret:
            return rows, "a message without the run's secret"
        rows.append(row)
        if row.get("kind") == last:
            return rows, None
        if len(rows) > 1_000_000:
            return rows, "too many messages"


def _execute(plan: dict[str, Any], limits: SandboxLimits) -> SandboxResult:
    """Run the solution's sandbox, and in test mode the grader's, wired by pipes; collect the verdict."""
    grading = plan["mode"] == "tests"
    uids = _pick_uids(2) if os.geteuid() == 0 else [None, None]  # type: ignore[list-item]
    outer = Path(tempfile.mkdtemp(prefix="kaelum-sbx-"))
    solution_box = _Box("solution", outer / "solution", uids[0])
    grader_box = _Box("grader", outer / "grader", uids[1])
    own: list[int] = []  # every pipe end this process still holds
    try:
        homes, needed = _home_dirs(), _needed_paths()
        # The solution may not read the grader's directory (where the kernel layer hides it anyway).
        dirs = {"private_dirs": homes + [str(outer)], "allowed_dirs": needed,
                # Audit-only mode has no sized tmpfs: files written x RLIMIT_FSIZE bound the total.
                "max_write_opens": max(1, int(limits.work_dir_mb // limits.file_size_mb))}
        out_r, out_w = os.pipe()  # solution -> grader (or -> parent, running a script)
        own += [out_r, out_w]
        cap = int(limits.max_message_bytes)
        solution_plan = {"mode": plan["mode"], "solution": plan["solution"], "audit": limits.audit_hook,
                         "per_test_timeout_s": plan["per_test_timeout_s"], "fd_out": out_w,
                         "max_message_bytes": cap, **dirs}
        secret = None
        if grading:
            req_r, req_w = os.pipe()  # grader -> solution
            res_r, res_w = os.pipe()  # grader -> parent: the verdict
            own += [req_r, req_w, res_r, res_w]
            secret = secrets.token_hex(16)
            solution_plan["fd_in"] = req_r
            grader_plan = {"snippets": plan["snippets"], "entry_point": plan.get("entry_point"),
                           "per_test_timeout_s": plan["per_test_timeout_s"], "secret": secret, "audit": limits.audit_hook,
                           "fd_request": req_w, "fd_reply": out_r, "fd_result": res_w, "max_message_bytes": cap,
                           "load_timeout_s": plan["per_test_timeout_s"] + 5.0,
                           "private_dirs": homes + [str(solution_box.outer)], "allowed_dirs": needed}
            grader_box.prepare(_GRADER, grader_plan)
        solution_box.prepare(_HARNESS, solution_plan)
        start = time.monotonic()
        deadline = start + limits.timeout_s
        solution_box.start(limits, [out_w] + ([req_r] if grading else []), needed, homes)
        if grading:
            grader_box.start(limits, [req_w, out_r, res_w], needed, homes)
        for fd in [out_w] + ([req_r, req_w, res_w, out_r] if grading else []):
            os.close(fd)
            own.remove(fd)
        # Only pipes are read, with select and a deadline: nothing the code does can block this.
        if grading:
            rows, stopped = _read_messages(res_r, deadline, _GRADER_OUTPUT_CAP, secret, "done")
            # A grader that broke the protocol may be blocked writing to a pipe no one reads: no wait.
            grader_rc = grader_box.stop(deadline - time.monotonic() if stopped is None else 0.0)
            if stopped is None and grader_rc not in (0, None):
                stopped = f"the grader exited with status {grader_rc}"
        else:
            rows, stopped = _read_messages(out_r, deadline, cap, None, "load")
            rows = rows[:1]
        timed_out = stopped == "timeout"
        # The solution ends by itself once the grader closed its pipe; a short wait, then the group goes.
        returncode = solution_box.stop(min(0.5, max(deadline - time.monotonic(), 0.0)) if not timed_out else 0.0)
        duration = time.monotonic() - start
        isolation = solution_box.isolation()
        if grading:
            isolation["grader"] = {k: v for k, v in grader_box.isolation().items() if k != "refused"}
        isolation["uids"] = [u for u in uids if u is not None]
        isolation["workdir"] = str(outer)
        refused = isolation.get("refused") or (grader_box.isolation().get("refused") if grading else None)
        if refused:
            raise SandboxRefused(refused)
        return _collect(plan, rows, stopped if stopped != "timeout" else None, solution_box, returncode, timed_out,
                        duration, isolation, limits)
    finally:
        for fd in own:
            os.close(fd)
        for box in (solution_box, grader_box):
            if box.proc is not None and box.proc.returncode is None:
                box.stop(0.0)
        shutil.rmtree(outer, ignore_errors=True)


def _limit_hit(returncode: int | None, timed_out: bool, load_error: str | None, stderr: str) -> str | None:
    if timed_out:
        return "timeout"
    if load_error == "timeout":
        return "timeout"
    if returncode is not None and returncode > 128:
        sig = returncode - 128
        return {signal.SIGXCPU: "cpu", signal.SIGXFSZ: "file_size"}.get(sig, "killed")
    if returncode is not None and returncode < 0:
        return "killed"
    if "MemoryError" in (load_error or "") or "MemoryError" in stderr[-2000:]:
        return "memory"
    return None


def _collect(plan: dict[str, Any], rows: list[dict[str, Any]], grader_error: str | None, box: _Box,
             returncode: int | None, timed_out: bool, duration: float, isolation: dict[str, Any],
             limits: SandboxLimits) -> SandboxResult:
    load = next((r for r in rows if r.get("kind") == "load"), None)
    done = next((r for r in rows if r.get("kind") == "done"), None)
    got = {(r.get("snippet"), r.get("unit")): r for r in rows if r.get("kind") == "test"}
    stdout = _read_head(box.outer / "stdout", limits.max_output_bytes)
    stderr = _read_head(box.outer / "stderr", limits.max_output_bytes)
    if load is None:
        load_error = "the process ended before the solution finished loading"
        if timed_out:
            load_error = "timeout"
        elif grader_error:
            load_error = f"the grader failed: {grader_error}"
        elif stderr.strip():
            load_error = stderr.strip().splitlines()[-1][:500]
    else:
        load_error = None if load.get("ok") is True else str(load.get("error") or "the solution did not load")[:1000]
    limit = _limit_hit(returncode, timed_out, load_error, stderr)
    missing = {"timeout": "timeout", "cpu": "CPU time limit exceeded", "file_size": "file size limit exceeded",
               "memory": "memory limit exceeded"}.get(limit or "", "the process ended before this test ran")
    if grader_error and not limit:
        missing = f"the grader failed: {grader_error}"
    tests = []
    for s_index, units in enumerate(plan["snippets"]):
        for u_index, unit in enumerate(units):
            row = got.get((s_index, u_index))
            if unit["kind"] == "stmt":
                if row is not None:  # a failing statement no test after it reported
                    tests.append(TestOutcome(unit["name"], False, _text(row.get("error"))))
                continue
            if row is None:
                tests.append(TestOutcome(unit["name"], False, missing if load is not None or limit else load_error))
            else:
                tests.append(TestOutcome(unit["name"], row.get("ok") is True, _text(row.get("error"))))
    complete = done is not None and grader_error is None
    if not grader_error and not complete and plan["mode"] == "tests" and load is not None and not load_error \
            and not timed_out:
        grader_error = "the grader did not finish"
    return SandboxResult(
        returncode=returncode, stdout=stdout, stderr=stderr, timed_out=timed_out, duration_s=round(duration, 4),
        loaded=bool(load and load.get("ok") is True), load_error=load_error, tests=tuple(tests), limit_hit=limit,
        isolation=isolation, assertions=int(done.get("assertions", 0)) if complete else 0,
        grader_error=grader_error,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:1000]


def run_tests(solution: str, tests: Sequence[str], limits: SandboxLimits | None = None,
              entry_point: str | None = None) -> SandboxResult:
    """Run `solution` in one sandbox and every test unit of `tests` in the grader's, against it.

    `entry_point` names the solution's function that HumanEval-style tests (`def check(candidate)`)
    are called with. Raises `SandboxRefused` where the kernel layer is missing and
    `limits.allow_audit_only` is not set.
    """
    limits = limits or SandboxLimits()
    if entry_point is not None and not str(entry_point).isidentifier():
        raise ValueError(f"entry_point must be a Python identifier, got {entry_point!r}")
    plan = {"mode": "tests", "solution": solution, "snippets": split_tests(tests, entry_point),
            "entry_point": entry_point, "per_test_timeout_s": limits.per_test_timeout_s}
    return _execute(plan, limits)


def run_python(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `source` as a script (`__name__ == "__main__"`); `loaded` says whether it ran without exception.

    The script's own process reports that, so it is only a claim: nothing here is graded.
    """
    limits = limits or SandboxLimits()
    plan = {"mode": "script", "solution": source, "snippets": [], "per_test_timeout_s": limits.timeout_s}
    return _execute(plan, limits)
