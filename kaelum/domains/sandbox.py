"""Run untrusted Python (model-written code) in a contained subprocess.

`run_tests(solution, tests)` executes the solution and each test unit in a child process and
reports which passed; `run_python(source)` runs a script. Containment, from the kernel outwards:

- limits (setrlimit in the child): CPU seconds, address space, file size, process count, no core;
  plus a wall-clock timeout enforced by the parent, which kills the whole process group;
- a fresh temporary work directory (the child's cwd, HOME and TMPDIR), deleted afterwards;
- new mount, network, PID, IPC and UTS namespaces, with every other mount read-only, so the code
  cannot write outside its directory, reach any network (not even loopback), or see host
  processes, and killing the namespace's init kills everything the code started. As root (CI, dev
  containers) the code also runs as a per-run unprivileged uid/gid. As any other user the
  namespaces are created inside an unprivileged user namespace, the caller's home directory is
  hidden (the code runs as the caller's uid, so permissions would not keep it out), and the host's
  /proc is replaced or hidden;
- always: a minimal environment (PATH and LANG only: no inherited secrets), stdin closed,
  `python -I` (no user site, no PYTHON* variables), no_new_privs, and an audit hook in the child
  that refuses internet sockets and writes outside the work directory (the only network and write
  barrier where the kernel refuses namespaces: a container without user namespaces, or an AppArmor
  policy that forbids them to unprivileged users).

`SandboxResult.isolation` says which of these applied, so a caller can log it with the verdict.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
_LAUNCHER = _HERE / "_sandbox_launch.py"
_HARNESS = _HERE / "_sandbox_harness.py"
# Per-run uids come from a range no real account uses, so RLIMIT_NPROC counts only this run's
# processes and a stray process can be recognised (and killed) by its uid.
_UID_RANGE = (2_000_000, 2_900_000)
_BOOT = "exec(compile(open('harness.py').read(), 'harness.py', 'exec'))"


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not the code inside it failing)."""


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
    namespaces: bool = True  # use kernel namespaces + uid drop when running as root
    audit_hook: bool = True  # the in-process barrier; tests turn it off to prove the kernel layer alone

    def __post_init__(self) -> None:
        problems = []
        for name in ("timeout_s", "per_test_timeout_s", "cpu_s", "memory_mb", "file_size_mb", "max_processes",
                     "max_output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive number, got {value!r}")
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


def split_tests(snippets: Sequence[str]) -> list[list[dict[str, str]]]:
    """Turn test snippets into ordered units the harness runs.

    Each top-level `assert` is one test; each top-level `def test_*` is one test, called after the
    snippet's other statements ran; everything else is setup, run in order. A snippet that does not
    parse becomes one failing test whose source is the snippet.
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
        for node in tree.body:
            src = ast.get_source_segment(snippet, node) or ast.unparse(node)
            if isinstance(node, ast.Assert):
                units.append({"kind": "assert", "source": src, "name": src.strip()[:200]})
                continue
            units.append({"kind": "stmt", "source": src, "name": ""})
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                if not node.args.args and isinstance(node, ast.FunctionDef):
                    calls.append({"kind": "testfn", "source": f"{node.name}()", "name": f"{node.name}()"})
        if not units or all(u["kind"] == "stmt" for u in units) and not calls:
            # Statements without any assertion: running them without an exception is the test.
            units = [{"kind": "assert", "source": snippet, "name": snippet.strip()[:200]}]
        out.append(units + calls)
    return out


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


def _minimal_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
    }


def _read_head(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    text = data[:limit].decode("utf-8", errors="replace")
    return text + ("\n[output truncated]" if len(data) > limit else "")


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


def _execute(plan: dict[str, Any], limits: SandboxLimits) -> SandboxResult:
    is_root = os.geteuid() == 0
    uid = random.randrange(*_UID_RANGE) if is_root else None
    gid = uid
    outer = Path(tempfile.mkdtemp(prefix="kaelum-sbx-"))
    workdir = outer / "work"  # what the code sees; `outer` also holds outputs the code cannot reach
    workdir.mkdir()
    try:
        shutil.copy(_HARNESS, workdir / "harness.py")
        # Where the kernel layer is missing (no namespaces, or root whose interpreter another uid
        # cannot read, so no uid drop) the code runs as the caller's own uid, and the audit hook
        # is what keeps it out of the caller's home; the interpreter's trees stay readable.
        homes, needed = _home_dirs(), _needed_paths()
        plan = {**plan, "private_dirs": homes, "allowed_dirs": needed}
        (workdir / "plan.json").write_text(json.dumps(plan))
        if is_root:
            os.chmod(outer, 0o711)  # traversable by the sandbox uid, not listable
            for p in [workdir, *workdir.iterdir()]:
                os.chown(p, uid, gid)
        nproc = limits.max_processes
        if not is_root:
            # RLIMIT_NPROC counts all of this user's processes; allow the existing ones plus the budget.
            nproc += sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owned_by_me(p))
        cfg = {
            "workdir": str(workdir),
            "report": str(outer / "isolation.json"),
            # -c, not a script path: Python makes a script path absolute, and the sandbox uid may be
            # unable to traverse the ancestors of its (already entered) work directory.
            "argv": [os.path.realpath(sys.executable), "-I", "-B", "-c", _BOOT],
            "env": _minimal_env(str(workdir)),
            "uid": uid,
            "gid": gid,
            "needed_paths": needed,
            "namespaces": limits.namespaces,
            "cpu_s": int(limits.cpu_s),
            "memory_bytes": int(limits.memory_mb * 2**20),
            "file_size_bytes": int(limits.file_size_mb * 2**20),
            "nproc": int(nproc),
            # Inside a user namespace (non-root) the kernel counts only that namespace's processes.
            "nproc_in_userns": int(limits.max_processes) + 2,
            "hide_dirs": [] if is_root else homes,
        }
        out_path, err_path = outer / "stdout", outer / "stderr"
        start = time.monotonic()
        timed_out = False
        with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-B", str(_LAUNCHER), json.dumps(cfg)],
                    stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f, cwd=str(outer),
                    env=_minimal_env(str(workdir)), start_new_session=True, close_fds=True,
                )
            except OSError as e:
                raise SandboxError(f"could not start the sandbox interpreter {sys.executable}: {e}") from e
            try:
                returncode: int | None = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _killpg(proc.pid)
                proc.wait()
                returncode = None
            finally:
                _killpg(proc.pid)  # stragglers in the group (no-op when the PID namespace took them)
        duration = time.monotonic() - start
        isolation = _read_json(outer / "isolation.json")
        if uid is not None:
            _reap(uid, gid)
        return _collect(plan, workdir, out_path, err_path, returncode, timed_out, duration, isolation, limits)
    finally:
        shutil.rmtree(outer, ignore_errors=True)


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


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


def _collect(plan: dict[str, Any], workdir: Path, out_path: Path, err_path: Path, returncode: int | None,
             timed_out: bool, duration: float, isolation: dict[str, Any], limits: SandboxLimits) -> SandboxResult:
    rows = []
    results = workdir / "results.jsonl"
    if results.exists():
        for line in results.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a kill
    start = next((r for r in rows if r.get("kind") == "start"), None)
    main_pid = start.get("pid") if start else None
    rows = [r for r in rows if r.get("pid") == main_pid]
    load = next((r for r in rows if r.get("kind") == "load"), None)
    got = {(r.get("snippet"), r.get("unit")): r for r in rows if r.get("kind") == "test"}
    stdout = _read_head(out_path, limits.max_output_bytes)
    stderr = _read_head(err_path, limits.max_output_bytes)
    if load is None:
        load_error = "the process ended before the solution finished loading"
        if timed_out:
            load_error = "timeout"
        elif stderr.strip():
            load_error = stderr.strip().splitlines()[-1][:500]
    else:
        load_error = load.get("error")
    limit = _limit_hit(returncode, timed_out, load_error, stderr)
    missing = {"timeout": "timeout", "cpu": "CPU time limit exceeded", "file_size": "file size limit exceeded",
               "memory": "memory limit exceeded"}.get(limit or "", "the process ended before this test ran")
    tests = []
    for s_index, units in enumerate(plan["snippets"]):
        for u_index, unit in enumerate(units):
            if unit["kind"] == "stmt":
                continue
            row = got.get((s_index, u_index))
            if row is None:
                tests.append(TestOutcome(unit["name"], False, missing if load is not None or limit else load_error))
            else:
                tests.append(TestOutcome(unit["name"], bool(row.get("ok")), row.get("error")))
    return SandboxResult(
        returncode=returncode, stdout=stdout, stderr=stderr, timed_out=timed_out, duration_s=round(duration, 4),
        loaded=bool(load and load.get("ok")), load_error=load_error, tests=tuple(tests), limit_hit=limit,
        isolation=isolation,
    )


def run_tests(solution: str, tests: Sequence[str], limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `solution`, then every test unit of `tests` (assert lines / test_* functions) against it."""
    limits = limits or SandboxLimits()
    plan = {"mode": "tests", "solution": solution, "snippets": split_tests(tests),
            "per_test_timeout_s": limits.per_test_timeout_s, "audit": limits.audit_hook}
    return _execute(plan, limits)


def run_python(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `source` as a script (`__name__ == "__main__"`); `loaded` says whether it ran without exception."""
    limits = limits or SandboxLimits()
    plan = {"mode": "script", "solution": source, "snippets": [],
            "per_test_timeout_s": limits.timeout_s, "audit": limits.audit_hook}
    return _execute(plan, limits)
