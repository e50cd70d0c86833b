"""The real daemon in a subprocess against a real, hostile log directory.

Writers: the real TraceLogger (rename rotation) and a hostile writer (copy-truncate rotation,
truncation, byte-by-byte partial lines, every kind of garbage, deletion and re-creation). The
store must end up holding exactly the event ids written — as a multiset, counted in the Delta
table's newest version as delta-rs reads it, not through the de-duplicating views — and every bad
line in quarantine.
"""

import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

from ingest import ingest_once
from ingest.cli import main as cli
from kaelum.events import TraceEvents
from kaelum.tracelog import TraceLogger

pytestmark = pytest.mark.timeout(180)


def _daemon(log_dir, store, *extra, log_file=None):
    cmd = [sys.executable, "-m", "ingest.cli", "--log-dir", str(log_dir), "--store", str(store), "--flush-ms", "50",
           "--rescan-ms", "200", "--no-progress", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log_file, "ab") if log_file else subprocess.PIPE)


def _table_rows(store, table, columns) -> list[tuple]:
    """Rows of the table's newest version, as any Delta reader sees them (no Kaelum code)."""
    path = os.path.join(str(store), table)
    if not os.path.isdir(os.path.join(path, "_delta_log")):
        return []
    t = DeltaTable(path).to_pyarrow_table(columns=columns)
    return list(zip(*(t.column(c).to_pylist() for c in columns)))


def _raw_ids(store) -> collections.Counter:
    return collections.Counter(r[0] for r in _table_rows(store, "events", ["id"]))


def _raw_quarantine(store) -> list[tuple]:
    return _table_rows(store, "quarantine", ["source_path", "offset", "raw", "reason"])


def _wait_for(store, ids, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(ids) <= set(_raw_ids(store)):
            return
        time.sleep(0.1)
    missing = set(ids) - set(_raw_ids(store))
    raise AssertionError(f"{len(missing)} event(s) never reached the store, e.g. {sorted(missing)[:3]}")


def _event_line(t: TraceEvents, i: int) -> tuple[str, bytes]:
    e = t.make("reflection", node_id=f"n{i}", text=f"thought number {i} " + "x" * (i % 40))
    return e.id, e.to_json_line()


class Hostile:
    """Writes the hostile files and remembers what it wrote: good ids and bad lines."""

    def __init__(self, log_dir):
        self.dir = log_dir
        self.trace = TraceEvents()
        self.i = 0
        self.ids: list[str] = []
        self.bad: list[bytes] = []  # raw bad lines (without newline), as they must appear in quarantine

    def good(self) -> bytes:
        self.i += 1
        eid, line = _event_line(self.trace, self.i)
        self.ids.append(eid)
        return line

    def append(self, name, data: bytes) -> None:
        with open(os.path.join(self.dir, name), "ab") as fh:
            fh.write(data)

    def garbage(self, name) -> None:
        e = json.loads(self.trace.make("reflection", node_id="x", text="y").to_json_line())
        lines = [
            b"\xff\xfe not utf-8 \xc3\x28",
            b"{this is not json",
            json.dumps({**e, "seq": -5}).encode(),  # valid JSON, breaks the contract
            json.dumps({**e, "type": "telepathy"}).encode(),
            json.dumps({**e, "v": 99}).encode(),
            b'{"oversize":"' + b"z" * 6000 + b'"}',
        ]
        for line in lines:
            self.append(name, self.good())
            self.append(name, line + b"\n")
            self.bad.append(line[:4096])


def test_follows_rotation_truncation_partial_lines_and_garbage_exactly_once(tmp_path):
    logs, store, log_file = tmp_path / "logs", tmp_path / "store", tmp_path / "daemon.log"
    logs.mkdir()
    h = Hostile(logs)
    h.append("bad.jsonl", h.good())  # a unique first line: the file's identity
    proc = _daemon(logs, store, "--max-line-bytes", "4096", log_file=log_file)
    try:
        _wait_for(store, h.ids)  # the daemon is up and following
        # 1. The real TraceLogger with small files: many rename-and-create rotations.
        tl_ids = []
        with TraceLogger(logs, max_bytes=4096, fsync="never") as tl:
            t = TraceEvents()
            for i in range(400):
                e = t.make("reflection", node_id=f"t{i}", text="step " * (i % 30))
                tl.log(e)
                tl_ids.append(e.id)
                if i % 25 == 0:
                    time.sleep(0.06)
            assert tl.rotations >= 10

        # 2. Copy-truncate rotation, three times; the copy holds lines not read yet.
        for k in range(3):
            for _ in range(30):
                h.append("app.jsonl", h.good())
            _wait_for(store, h.ids)
            for _ in range(5):
                h.append("app.jsonl", h.good())
            shutil.copy(logs / "app.jsonl", logs / f"app.jsonl.{k + 1}")
            with open(logs / "app.jsonl", "r+b") as fh:
                fh.truncate(0)
            time.sleep(0.1)

        # 3. Truncation below the position: once read, cut to nothing and rewritten.
        for _ in range(20):
            h.append("trunc.jsonl", h.good())
        _wait_for(store, h.ids)
        with open(logs / "trunc.jsonl", "r+b") as fh:
            fh.truncate(0)
        for _ in range(20):
            h.append("trunc.jsonl", h.good())

        # 4. Partial lines, written byte by byte.
        for _ in range(4):
            for b in h.good():
                h.append("slow.jsonl", bytes([b]))
                time.sleep(0.0005)

        # 5. Garbage of every kind.
        h.garbage("bad.jsonl")
        h.append("bad.jsonl", h.good())

        # 6. Deletion, then a new file under the same name (often the same inode).
        for _ in range(10):
            h.append("gone.jsonl", h.good())
        _wait_for(store, h.ids)
        os.unlink(logs / "gone.jsonl")
        for _ in range(10):
            h.append("gone.jsonl", h.good())

        expected = tl_ids + h.ids
        _wait_for(store, expected)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    log_text = log_file.read_text()
    assert rc == 0, log_text[-3000:]
    assert _raw_ids(store) == collections.Counter(expected)
    q = _raw_quarantine(store)
    assert sorted(r[2] for r in q) == sorted(h.bad)
    assert all(os.path.basename(r[0]) == "bad.jsonl" for r in q)
    # offsets point at the lines in the file
    content = (logs / "bad.jsonl").read_bytes()
    for path, offset, raw, reason in q:
        assert content[offset : offset + len(raw)] == raw, reason
    reasons = sorted(r[3].split(":")[0] for r in q)
    assert reasons == sorted(["invalid UTF-8", "invalid JSON", "breaks the event contract", "unknown event type",
                              "unknown newer schema version", "line of 6015 bytes exceeds the limit of 4096 bytes (raw text kept up to the limit)"])
    for kind in ("started", "file_added", "renamed", "switched", "truncated", "quarantined", "flushed", "file_removed", "stopping", "stopped"):
        assert f"event={kind} " in log_text, kind
    # Visible through the views too.
    import store as store_pkg

    con = store_pkg.connect(str(store))
    assert con.execute("select count(*) from quarantine").fetchall()[0][0] == len(h.bad)
    assert con.execute("select count(*) from events").fetchall()[0][0] == len(expected)


def test_twenty_kill9_at_random_moments_then_restart_exactly_once(tmp_path):
    logs, store, log_file = tmp_path / "logs", tmp_path / "store", tmp_path / "daemon.log"
    logs.mkdir()
    h = Hostile(logs)
    h.append("bad.jsonl", h.good())
    tl_ids: list[str] = []
    done = threading.Event()

    def write():
        rnd = random.Random(7)
        with TraceLogger(logs, max_bytes=16384, fsync="never") as tl:
            t = TraceEvents()
            i = 0
            while not done.is_set():
                e = t.make("reflection", node_id=f"t{i}", text="w" * rnd.randrange(200))
                tl.log(e)
                tl_ids.append(e.id)
                i += 1
                if i % 97 == 0:
                    h.append("app.jsonl", h.good())
                if i % 400 == 0:  # copy-truncate rotation of app.jsonl
                    if (logs / "app.jsonl").exists():
                        shutil.copy(logs / "app.jsonl", logs / f"app.jsonl.{i}")
                        with open(logs / "app.jsonl", "r+b") as fh:
                            fh.truncate(0)
                if i % 300 == 0:
                    h.garbage("bad.jsonl")
                if i % 13 == 0:
                    line = h.good()
                    h.append("slow.jsonl", line[:50])  # a partial line, completed a little later
                    time.sleep(0.003)
                    h.append("slow.jsonl", line[50:])
                time.sleep(0.0005)

    writer = threading.Thread(target=write)
    writer.start()
    rnd = random.Random(11)
    kills = 0
    try:
        while kills < 22:
            flushed = log_file.read_text().count("event=flushed") if log_file.exists() else 0
            proc = _daemon(logs, store, "--max-line-bytes", "4096", log_file=log_file)
            if kills % 2:
                # Half the kills land while it works: wait until it has committed once (however
                # slow the machine), then kill it somewhere in the commits that follow.
                deadline = time.monotonic() + 30
                while log_file.read_text().count("event=flushed") == flushed and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(rnd.uniform(0.05, 1.0))
            else:
                time.sleep(rnd.uniform(0.05, 1.6))  # anywhere, start-up included
            proc.kill()
            proc.wait()
            kills += 1
    finally:
        done.set()
        writer.join()
    assert kills >= 20 and len(tl_ids) > 1000
    assert log_file.read_text().count("event=flushed") >= 5  # the daemons did commit between kills
    out = subprocess.run([sys.executable, "-m", "ingest.cli", "--log-dir", str(logs), "--store", str(store), "--once", "--no-progress",
                          "--max-line-bytes", "4096"], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _raw_ids(store) == collections.Counter(tl_ids + h.ids)
    assert sorted(r[2] for r in _raw_quarantine(store)) == sorted(h.bad)


def test_two_daemons_on_one_log_dir_refuse_and_two_writers_share_a_store(tmp_path):
    logs1, logs2, store = tmp_path / "logs1", tmp_path / "logs2", tmp_path / "store"
    logs1.mkdir()
    logs2.mkdir()
    a = _daemon(logs1, store, "--writer-id", "host-a")
    try:
        h = Hostile(logs1)
        h.append("a.jsonl", h.good())
        _wait_for(store, h.ids)  # a is up and holds its lock
        second = subprocess.run([sys.executable, "-m", "ingest.cli", "--log-dir", str(logs1), "--store", str(store), "--writer-id", "host-b", "--no-progress"],
                                capture_output=True, timeout=60)
        assert second.returncode == 1
        assert b"is already ingesting" in second.stderr and b"stop it first" in second.stderr
        b = _daemon(logs2, store, "--writer-id", "host-b", "--no-watchdog")  # periodic rescan only
        try:
            h2 = Hostile(logs2)
            for _ in range(50):
                h.append("a.jsonl", h.good())
                h2.append("b.jsonl", h2.good())
            _wait_for(store, h.ids + h2.ids)
        finally:
            b.send_signal(signal.SIGINT)
            assert b.wait(timeout=30) == 0
    finally:
        a.send_signal(signal.SIGTERM)
        assert a.wait(timeout=30) == 0
    assert _raw_ids(store) == collections.Counter(h.ids + h2.ids)
    writers = dict(collections.Counter(r[0] for r in _table_rows(store, "events", ["writer"])))
    assert writers == {"host-a": len(h.ids), "host-b": len(h2.ids)}


# The real daemon (python -m ingest.cli) with every store commit held until a file appears: the
# commit itself is the store's, it only waits first. `held` is written when a commit is entered,
# `stopping` when the daemon was asked to stop (the first signal's handler ran).
_HELD_COMMIT = """
import os, sys, time
import ingest.daemon, store.writer
held, release, stopping = sys.argv.pop(1), sys.argv.pop(1), sys.argv.pop(1)
stop = ingest.daemon.Daemon.stop
def noted_stop(self):
    stop(self)
    open(stopping, "w").close()
ingest.daemon.Daemon.stop = noted_stop
commit = store.writer.StoreWriter.commit
def held_commit(self, *args, **kw):
    open(held, "w").close()
    while not os.path.exists(release):
        time.sleep(0.01)
    return commit(self, *args, **kw)
store.writer.StoreWriter.commit = held_commit
from ingest.cli import main
sys.argv[0] = "kaelum-ingest"
main()
"""


def test_second_signal_exits_at_once_without_waiting_for_the_flush_and_nothing_is_lost(tmp_path):
    logs, store = tmp_path / "logs", tmp_path / "store"
    logs.mkdir()
    h = Hostile(logs)
    with open(logs / "big.jsonl", "ab") as fh:
        for _ in range(2000):
            fh.write(h.good())
    harness, log_file = tmp_path / "held.py", tmp_path / "daemon.log"
    held, release, stopping = tmp_path / "held", tmp_path / "release", tmp_path / "stopping"
    harness.write_text(_HELD_COMMIT)
    proc = subprocess.Popen([sys.executable, str(harness), str(held), str(release), str(stopping), "--log-dir", str(logs), "--store", str(store),
                             "--flush-ms", "50", "--rescan-ms", "200", "--no-progress", "--compact-every-s", "0"],
                            stdout=subprocess.PIPE, stderr=open(log_file, "ab"))
    try:
        deadline = time.monotonic() + 60
        while not held.exists():  # the first commit is in progress, and held
            assert proc.poll() is None and time.monotonic() < deadline, log_file.read_text(errors="replace")
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        # The first signal asks for a flush and a clean exit: the daemon waits for the held commit,
        # so it is still running. (Wait for its handler: two signals sent together may arrive as one.)
        while not stopping.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log_file.read_text(errors="replace")
            time.sleep(0.02)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        # The second signal leaves at once, with the documented status, while the commit is still held.
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert not release.exists() and _raw_ids(store) == collections.Counter()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Nothing is lost: positions only advance after a commit, so a restart stores every event once.
    assert ingest_once(logs, store, progress=False).events == len(h.ids)
    assert _raw_ids(store) == collections.Counter(h.ids)
    assert ingest_once(logs, store, progress=False).events == 0  # nothing new: nothing twice


def test_status_reports_per_file_counts_lag_and_quarantine(tmp_path):
    logs, store = tmp_path / "logs", tmp_path / "store"
    logs.mkdir()
    h = Hostile(logs)
    h.append("a.jsonl", h.good())
    h.garbage("a.jsonl")
    h.append("b.jsonl", h.good() + b'{"partial')
    runner = CliRunner()
    r = runner.invoke(cli, ["--log-dir", str(logs), "--store", str(store), "--once", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["events"] == len(h.ids)
    r = runner.invoke(cli, ["status", "--store", str(store), "--log-dir", str(logs), "--json"])
    assert r.exit_code == 0, r.output
    (snap,) = json.loads(r.stdout)
    by_name = {os.path.basename(s["path"]): s for s in snap["sources"]}
    assert by_name["a.jsonl"]["events"] == 7 and by_name["a.jsonl"]["quarantined"] == 6
    assert by_name["a.jsonl"]["bytes"] == os.path.getsize(logs / "a.jsonl") and by_name["a.jsonl"]["lag_bytes"] == 0
    assert by_name["b.jsonl"]["events"] == 1 and by_name["b.jsonl"]["lag_bytes"] == len(b'{"partial')
    assert by_name["a.jsonl"]["last_error"].startswith("offset ")
    r = runner.invoke(cli, ["status", "--store", str(store), "--log-dir", str(logs)])
    assert "a.jsonl" in r.output and "quarantined=6" in r.output
    r = runner.invoke(cli, ["status", "--store", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "kaelum-ingest --once --log-dir" in r.output


def test_bad_flags_are_refused_with_every_problem(tmp_path):
    r = CliRunner().invoke(cli, ["--log-dir", str(tmp_path / "missing"), "--store", str(tmp_path / "s"), "--batch-events", "0", "--flush-ms", "0"])
    assert r.exit_code == 2
    assert "--log-dir" in r.output and "--batch-events must be at least 1" in r.output and "--flush-ms must be at least 1" in r.output


def test_the_documented_event_kinds_are_the_emitted_ones():
    """Every kind of ingest.observe.KINDS (and docs/ingest.md) is emitted somewhere, and nothing else is."""
    import re
    from pathlib import Path

    import ingest.observe

    root = Path(__file__).resolve().parents[1]
    emitted = {m for f in (root / "ingest").glob("*.py") for m in re.findall(r'emit\(\s*"(\w+)"', f.read_text(encoding="utf-8"))}
    row = next(line for line in (root / "docs" / "ingest.md").read_text(encoding="utf-8").splitlines() if line.startswith("| observe |"))
    documented = set(re.findall(r"`(\w+)`", row.split("one events interface:", 1)[1].split(";", 1)[0]))
    assert emitted == set(ingest.observe.KINDS) == documented
