"""The code sandbox contains hostile code: every attack below ends as a failed run, the test process unharmed.

Real subprocesses, real sockets, real files. Where the kernel layer is available (running as root
with namespaces), the attacks are repeated with the in-process audit hook switched off to show
that the kernel layer holds on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from kaelum.domains import sandbox
from kaelum.domains.sandbox import SandboxLimits, run_python, run_tests, split_tests

FAST = dict(timeout_s=4.0, per_test_timeout_s=2.0, cpu_s=2, memory_mb=256, max_processes=16)
ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parents[1]


def _kernel_layer() -> bool:
    """Whether this machine grants the sandbox its namespaces (as root, or via user namespaces)."""
    isolation = run_python("pass\n", SandboxLimits(**FAST)).isolation
    return bool(isolation.get("netns") and isolation.get("mountns") and isolation.get("readonly_fs"))


KERNEL = sys.platform.startswith("linux") and _kernel_layer()
# (audit_hook, namespaces): both layers, the kernel's alone, the audit hook alone (what a user gets
# where the kernel refuses namespaces).
LAYERS = [pytest.param(dict(audit_hook=True, namespaces=True), id="audit+kernel"),
          pytest.param(dict(audit_hook=False, namespaces=True), id="kernel-only",
                       marks=pytest.mark.skipif(not KERNEL, reason="the kernel refuses the sandbox namespaces here")),
          pytest.param(dict(audit_hook=True, namespaces=False, allow_audit_only=True), id="audit-only")]


def _processes_of(*results: sandbox.SandboxResult) -> list[int]:
    """PIDs still running for these runs' sandboxes: by their per-run uids (root), else by their work directory."""
    uids = {u for r in results for u in r.isolation.get("uids", [])}
    dirs = [r.isolation["workdir"] for r in results if r.isolation.get("workdir")]
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if p.stat().st_uid in uids:
                pids.append(int(p.name))
                continue
            cmdline = (p / "cmdline").read_bytes().decode(errors="replace")
            if any(d in cmdline for d in dirs):
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


def _assert_host_unharmed(*results: sandbox.SandboxResult) -> None:
    """No process of these runs is left, their directories are gone, and this process still works."""
    assert _processes_of(*results) == []
    for r in results:
        assert not Path(r.isolation.get("workdir", "/nonexistent-kaelum")).exists()
    # The test process can still start processes and use the network stack.
    assert subprocess.run([sys.executable, "-c", "print(6*7)"], capture_output=True, text=True).stdout.strip() == "42"


def test_counts_passed_and_failed_tests():
    solution = "def add(a, b):\n    return a + b\nprint('loaded')\n"
    tests = ["assert add(1, 2) == 3\nassert add(2, 2) == 5",
             "from solution import add\ndef test_zero():\n    assert add(0, 0) == 0\n"]
    r = run_tests(solution, tests, SandboxLimits(**FAST))
    assert r.loaded and r.stdout == "loaded\n"
    assert [(t.name, t.passed) for t in r.tests] == [
        ("assert add(1, 2) == 3", True), ("assert add(2, 2) == 5", False), ("test_zero()", True)]
    assert r.tests[1].error == "AssertionError"
    assert r.fraction_passed == pytest.approx(2 / 3)


def test_split_tests_units():
    units = split_tests(["x = 2\nassert x == 2\ndef test_a():\n    pass\n", "assert (", "print(1)",
                         "for i in range(3):\n    assert i < 3\ny = 1", "def check(candidate):\n    assert candidate(1)\n"],
                        entry_point="f")
    kinds = [[u["kind"] for u in s] for s in units]
    assert kinds == [["stmt", "assert", "stmt", "testfn"], ["assert"], ["stmt"], ["check", "stmt"], ["stmt", "entry"]]
    # A call of a function the tests define is a test; a call into the solution is setup.
    called = split_tests(["def check(c):\n    assert c(1)\ncheck(f)\ns = f(0)\nf(2)\n"])[0]
    assert [u["kind"] for u in called] == ["stmt", "call", "stmt", "stmt"]
    assert units[4][1]["source"] == "check(f)"
    # Without an entry point, a check() nobody calls is only a definition (the grader then counts no assertion).
    assert [u["kind"] for u in split_tests(["def check(candidate):\n    assert candidate(1)\n"])[0]] == ["stmt"]


def test_forked_copies_of_the_harness_cannot_add_results():
    # The child of a fork runs the rest of the harness too; only the original's outcomes count.
    code = "import os\nif os.fork() == 0:\n    def f():\n        return 1\nelse:\n    os.wait()\n    def f():\n        return 2\n"
    r = run_tests(code, ["assert f() == 1"], SandboxLimits(**FAST))
    assert r.loaded and [t.passed for t in r.tests] == [False]


def test_syntax_error_in_solution_fails_every_test():
    r = run_tests("def f(:\n", ["assert f() == 1", "assert True"], SandboxLimits(**FAST))
    assert not r.loaded and "SyntaxError" in r.load_error
    assert [t.passed for t in r.tests] == [False, False]


def test_infinite_loop_is_stopped():
    start = time.monotonic()
    r = run_tests("def f():\n    return 1\n", ["while True:\n    pass\nassert f() == 1", "assert f() == 1"],
                  SandboxLimits(**{**FAST, "per_test_timeout_s": 0.5}))
    # The per-test alarm stops the loop; the other test still runs.
    assert [t.passed for t in r.tests] == [False, True]
    assert r.tests[0].error == "setup failed: timeout"
    r2 = run_python("while True:\n    pass\n", SandboxLimits(**{**FAST, "per_test_timeout_s": 30, "timeout_s": 1.5}))
    assert not r2.loaded and r2.limit_hit in ("timeout", "cpu")
    assert time.monotonic() - start < 10
    _assert_host_unharmed(r, r2)


def test_loop_that_ignores_the_alarm_is_killed_by_the_wall_clock():
    code = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nimport time\nwhile True:\n    time.sleep(0.05)\n"
    r = run_tests(code, ["assert True"], SandboxLimits(**{**FAST, "timeout_s": 1.5, "per_test_timeout_s": 1}))
    assert r.timed_out and r.limit_hit == "timeout" and not r.tests[0].passed
    _assert_host_unharmed(r)


def test_fork_bomb_is_contained():
    bomb = ("import os, time\n"
            "for _ in range(10000):\n"
            "    try:\n"
            "        os.fork()\n"
            "    except OSError:\n"
            "        time.sleep(0.01)\n"
            "def f():\n    return 1\n")
    start = time.monotonic()
    r = run_tests(bomb, ["assert f() == 1"], SandboxLimits(**{**FAST, "timeout_s": 3, "max_processes": 8}))
    assert not all(t.passed for t in r.tests)
    assert time.monotonic() - start < 10
    _assert_host_unharmed(r)


def test_memory_hog_is_refused():
    r = run_tests("data = bytearray(2 * 1024**3)\ndef f():\n    return 1\n", ["assert f() == 1"],
                  SandboxLimits(**{**FAST, "memory_mb": 128}))
    assert not r.loaded and "MemoryError" in r.load_error and r.limit_hit == "memory"
    assert not r.tests[0].passed
    _assert_host_unharmed(r)


def test_file_size_limit():
    r = run_python("open('big.bin', 'wb').write(b'x' * (4 * 1024**2))\n", SandboxLimits(**{**FAST, "file_size_mb": 1}))
    assert not r.loaded
    assert r.limit_hit == "file_size" or "File too large" in (r.load_error or "")


@pytest.mark.parametrize("audit", LAYERS)
def test_writing_outside_the_work_directory_fails(tmp_path, audit):
    # A world-writable directory, so that only the sandbox (not file permissions) can stop the write.
    target_dir = tmp_path / "open"
    target_dir.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(target_dir, 0o777)
    targets = [target_dir / "escape.txt", Path("/tmp") / f"kaelum-escape-{uuid.uuid4().hex}"]
    code = "".join(f"open({str(t)!r}, 'w').write('pwned')\n" for t in targets) + "def f():\n    return 1\n"
    r = run_tests(code, ["assert f() == 1"], SandboxLimits(**FAST, **audit))
    assert not r.loaded and not r.tests[0].passed
    # Read-only mounts, the hook, or (under the covered /tmp) a directory that is not there.
    assert any(w in r.load_error for w in ("Read-only file system", "PermissionError", "FileNotFoundError"))
    for t in targets:
        assert not t.exists()
    # Inside its own directory the code may write.
    ok = run_python("open('note.txt', 'w').write('fine')\nimport os\nassert os.path.exists('note.txt')\n",
                    SandboxLimits(**FAST, **audit))
    assert ok.loaded, ok.load_error


def test_the_work_directory_is_deleted_afterwards(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox.tempfile, "tempdir", str(tmp_path))
    r = run_python("open('left.txt', 'w').write('x')\n", SandboxLimits(**FAST))
    assert r.loaded
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("audit", LAYERS)
def test_environment_secrets_are_not_inherited(tmp_path, audit):
    # The secret is in the real environment block of the process that runs the sandbox (what
    # /proc/<pid>/environ shows), not only in os.environ. The code searches its own environment and
    # every /proc/*/environ it can open, and needs the secret to "pass".
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    code = ("import os, glob\n"
            "found = os.environ.get('KAELUM_FAKE_SECRET') or os.environ.get('OPENAI_API_KEY') or ''\n"
            "print(sorted(os.environ))\n"
            "readable = 0\n"
            "for p in glob.glob('/proc/[0-9]*/environ'):\n"
            "    try:\n"
            "        found += open(p).read()\n"
            "        readable += 1\n"
            "    except OSError:\n"
            "        pass\n"
            "print('readable environ files:', readable)\n"
            "def stolen():\n    return found\n")
    runner = ("import json, sys\n"
              "from kaelum.domains.sandbox import run_tests, SandboxLimits\n"
              "r = run_tests(sys.argv[1], [sys.argv[2]], SandboxLimits(**json.loads(sys.argv[3])))\n"
              "print(json.dumps({'loaded': r.loaded, 'passed': r.tests[0].passed, 'stdout': r.stdout, 'stderr': r.stderr}))\n")
    env = {**os.environ, "KAELUM_FAKE_SECRET": secret, "OPENAI_API_KEY": secret, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", runner, code, f"assert {secret!r} in stolen()", json.dumps({**FAST, **audit})],
                         env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["loaded"] and not r["passed"]
    assert secret not in out.stdout
    assert "KAELUM_FAKE_SECRET" not in r["stdout"] and "OPENAI_API_KEY" not in r["stdout"]
    _assert_host_unharmed()  # the run was another process's, which has exited


@pytest.mark.parametrize("audit", LAYERS)
def test_network_connection_is_refused(audit):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        code = ("import socket\n"
                f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                "s.sendall(b'exfiltrated')\n"
                "def f():\n    return 1\n")
        r = run_tests(code, ["assert f() == 1"], SandboxLimits(**FAST, **audit))
        assert not r.loaded and not r.tests[0].passed
        assert any(word in r.load_error for word in ("PermissionError", "unreachable", "refused", "OSError"))
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever connected
    finally:
        server.close()
    _assert_host_unharmed(r)


def test_isolation_report_names_the_layers():
    r = run_python("pass\n", SandboxLimits(**FAST))
    assert r.loaded
    if KERNEL:
        assert r.isolation.get("netns") and r.isolation.get("pidns") and r.isolation.get("readonly_fs")
        assert r.isolation.get("uid_drop") if ROOT else r.isolation.get("userns")
        assert r.isolation.get("proc") in ("fresh", "hidden") or r.isolation.get("uid_drop")


def test_invalid_limits_are_named_together():
    with pytest.raises(ValueError) as e:
        SandboxLimits(timeout_s=0, memory_mb=8, cpu_s=-1)
    msg = str(e.value)
    assert "timeout_s" in msg and "memory_mb" in msg and "cpu_s" in msg
    with pytest.raises(ValueError, match="allow_audit_only must be true or false"):
        SandboxLimits(allow_audit_only="yes")
    with pytest.raises(ValueError, match="unknown sandbox option"):
        SandboxLimits.from_options({"sandbox": {"timeout": 3}})
    assert SandboxLimits.from_options({"sandbox": {"timeout_s": 3}, "cpu_s": 2}) == SandboxLimits(timeout_s=3, cpu_s=2)


@pytest.mark.parametrize("audit", [
    pytest.param(dict(audit_hook=False, namespaces=True), id="kernel-only",
                 marks=pytest.mark.skipif(not KERNEL, reason="the kernel refuses the sandbox namespaces here")),
    pytest.param(dict(audit_hook=True, namespaces=False, allow_audit_only=True), id="audit-only")])
def test_the_callers_home_is_out_of_reach(tmp_path, monkeypatch, audit):
    # As root the code runs as another uid, so a 0600 file is unreadable; as a user it runs as the
    # caller's uid, so the home directory must be hidden instead.
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    token = home / ".config" / "token"
    token.write_text("hf_secret_token")
    os.chmod(token, 0o600)
    monkeypatch.setenv("HOME", str(home))
    code = (f"import os\nprint('listing:', os.listdir({str(home)!r}) if os.path.isdir({str(home)!r}) else None)\n"
            f"stolen = open({str(token)!r}).read()\n")
    r = run_python(code, SandboxLimits(**FAST, **audit))
    assert not r.loaded
    assert "FileNotFoundError" in r.load_error or "PermissionError" in r.load_error
    assert "hf_secret_token" not in r.stdout + r.stderr
    if not ROOT and audit["namespaces"]:
        # Covered itself, or with the scratch place it lies in (pytest's tmp_path is under /tmp).
        assert any(str(home) == h or str(home).startswith(h.rstrip("/") + "/") for h in r.isolation.get("hidden", []))


@pytest.mark.slow
@pytest.mark.skipif(not ROOT, reason="switching to another uid needs root")
def test_this_file_passes_as_a_real_non_root_user():
    """Every sandbox test above, run by an ordinary uid (nobody), with the same Python and checkout."""
    # Not under pytest's tmp_path: its root (/tmp/pytest-of-root) is closed to other uids.
    home = Path(tempfile.mkdtemp(prefix="kaelum-nobody-home-"))
    try:
        os.chown(home, 65534, 65534)
        _run_this_file_as_nobody(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run_this_file_as_nobody(home: Path) -> None:
    python = os.path.realpath(sys.executable)
    reach = sorted({sys.prefix, sys.base_prefix, os.path.dirname(python), str(REPO)})
    cmd = [sys.executable, str(REPO / "tests" / "run_as_user.py"), "65534", *reach, "--",
           python, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
           str(Path(__file__).resolve()), "-k", "not real_non_root_user"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONPATH": str(REPO),
           "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=home)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report[-4000:]
    passed = [line for line in report.splitlines() if line.startswith("PASSED")]
    assert len(passed) >= 20, report[-4000:]
    # Where this kernel lets an ordinary user create a user namespace, the kernel layer must have
    # been used (its tests ran, they were not skipped).
    probe = subprocess.run([*cmd[: cmd.index("--") + 1], python, "-c",
                            "import ctypes, os; print(ctypes.CDLL(None).unshare(0x10000000), os.getuid())"],
                           env=env, capture_output=True, text=True, timeout=60, cwd=home)
    assert probe.stdout.split()[1] == "65534", probe.stdout + probe.stderr
    if probe.stdout.split()[0] == "0":
        assert any("test_the_callers_home_is_out_of_reach[kernel-only]" in line for line in passed), report[-4000:]
        assert any("kernel-only" in line for line in passed), report[-4000:]
    assert any("test_the_callers_home_is_out_of_reach[audit-only]" in line for line in passed), report[-4000:]


def test_values_cross_as_exact_plain_types():
    """The wire codec: what the grader rebuilds is built-in types only, whatever the solution sent."""
    import math

    from kaelum.domains import _sandbox_wire as wire

    class Sneaky(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    value = {"t": (1, 2.5, "x"), (1, 2): {3, 4}, "f": frozenset([b"\x00\xff"]), "big": 10**5000, "neg": -(2**70),
             "c": 1 + 2j, "none": None, "flags": [True, False], "inf": float("-inf"), "sneaky": Sneaky(3)}
    line = wire.dumps({"ok": wire.encode(value)})
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    back = wire.decode(json.loads(line)["ok"])
    assert back == {**value, "sneaky": 3} and type(back["sneaky"]) is int and type(back["t"]) is tuple
    assert back["big"] == 10**5000 and type(back[(1, 2)]) is set
    nan = wire.decode(json.loads(wire.dumps({"v": wire.encode(float("nan"))}))["v"])
    assert math.isnan(nan)
    with pytest.raises(wire.NotPlainData):
        wire.encode(object())
    assert wire.encode(object(), ref=lambda v: {"$ref": 7}) == {"$ref": 7}
    for bad in ({"$eval": "1"}, {"$tuple": 3}, {"a": 1, "b": 2, "c": 3}, {"$ref": 1}):
        with pytest.raises(ValueError):
            wire.decode(bad)


def test_the_parent_reads_nothing_without_a_cap(tmp_path):
    """Files the parent reads after a run: never through a link, never blocking on a FIFO, at most the cap."""
    (tmp_path / "big").write_bytes(b"x" * 10_000)
    os.symlink("/dev/zero", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    assert len(sandbox._read_capped(tmp_path / "big", 100)) == 101
    start = time.monotonic()
    assert sandbox._read_capped(tmp_path / "link", 100) == b""
    assert sandbox._read_capped(tmp_path / "fifo", 100) == b""
    assert time.monotonic() - start < 1.0


def test_a_forked_survivor_does_not_stretch_the_run():
    # The child holds the output pipe open for as long as it lives; the parent stops at the message it expects.
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
    start = time.monotonic()
    r = run_python(code, SandboxLimits(**{**FAST, "timeout_s": 8}))
    assert r.loaded and not r.timed_out
    t = run_tests(code + "def f():\n    return 1\n", ["assert f() == 1"], SandboxLimits(**{**FAST, "timeout_s": 8}))
    assert [x.passed for x in t.tests] == [True] and not t.timed_out
    assert time.monotonic() - start < 6
    _assert_host_unharmed(r, t)


def test_the_grader_imports_only_standard_modules_for_the_solution():
    # Tests may use a module the solution imported (`math`); the grader imports it itself, but only from
    # the standard library, since importing runs the module's code in the grader's process.
    r = run_tests("import math, this\ndef f(x):\n    return math.sqrt(x)\n",
                  ["assert math.isclose(f(4), 2)", "assert 'this' not in globals()"], SandboxLimits(**FAST))
    assert [t.passed for t in r.tests] == [True, True]
