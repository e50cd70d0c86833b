"""The ingester against hostile log directories: odd names, unreadable files, links, look-alikes.

Unreadable files need a user that permissions apply to: as root the tests drop to `nobody` with
seteuid for the part that reads (root's reads ignore file modes), elsewhere they run as they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import pytest
from click.testing import CliRunner

import store
from ingest import ingest_once
from ingest.cli import EXIT_SKIPPED, main as cli
from ingest.observe import Hub, Recorder
from ingest.status import collect_status
from ingest.tailer import Tailer
from kaelum.events import TraceEvents

pytestmark = pytest.mark.timeout(180)
NOBODY = 65534


def _lines(n: int, trace: TraceEvents | None = None) -> tuple[list[str], bytes]:
    t = trace or TraceEvents()
    events = [t.make("reflection", node_id=f"n{i}", text=f"thought {i}") for i in range(n)]
    return [e.id for e in events], b"".join(e.to_json_line() for e in events)


def _stored(store_path) -> list[tuple[str, str]]:
    con = store.connect(str(store_path))
    try:
        return con.sql("select id, source_path from events order by source_path, seq").fetchall()
    finally:
        con.close()


@pytest.fixture
def shared_dir():
    """A folder every user can reach (pytest's tmp_path is root-only when run as root)."""
    d = tempfile.mkdtemp(prefix="kaelum-hostile-")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def unprivileged():
    """Run the block as a user that file permissions apply to."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_a_name_that_is_not_utf8_is_ingested_and_shown_escaped(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    ids, data = _lines(3)
    name = os.path.join(os.fsencode(logs), b"run-\xff\xfe.jsonl")  # not UTF-8: this killed the daemon
    with open(name, "wb") as fh:
        fh.write(data + b"{garbage\n")
    summary = ingest_once(logs, tmp_path / "traces", progress=False)
    assert (summary.events, summary.quarantined) == (3, 1)
    shown = f"{logs}/run-\\xff\\xfe.jsonl"
    assert _stored(tmp_path / "traces") == [(i, shown) for i in ids]
    con = store.connect(str(tmp_path / "traces"))
    assert con.sql("select source_path from quarantine").fetchall() == [(shown,)]
    con.close()
    # A restart (which crashed again on every start) reads nothing twice, and status shows it.
    with open(name, "ab") as fh:
        more_ids, more = _lines(2)
        fh.write(more)
    assert ingest_once(logs, tmp_path / "traces", progress=False).events == 2
    assert sorted(i for i, _ in _stored(tmp_path / "traces")) == sorted(ids + more_ids)
    (snap,) = collect_status(str(tmp_path / "traces"), str(logs))
    assert [(s.path, s.events, s.lag_bytes) for s in snap.sources] == [(shown, 5, 0)]


def test_links_out_of_the_log_directory_are_not_followed(tmp_path):
    logs = tmp_path / "logs"
    (logs / "archive").mkdir(parents=True)
    secret_ids, secret = _lines(2)
    (tmp_path / "secret.jsonl").write_bytes(secret + b"root:x:0:0:root:/root:/bin/bash\n")
    (logs / "passwd.jsonl").symlink_to("/etc/passwd")
    (logs / "secret.jsonl").symlink_to(tmp_path / "secret.jsonl")
    (logs / "up.jsonl").symlink_to("../secret.jsonl")
    inside_ids, inside = _lines(2)
    (logs / "archive" / "old.jsonl").write_bytes(inside)
    (logs / "current.jsonl").symlink_to("archive/old.jsonl")  # stays inside: followed
    summary = ingest_once(logs, tmp_path / "traces", progress=False)
    assert (summary.events, summary.quarantined) == (2, 0)
    assert _stored(tmp_path / "traces") == [(i, str(logs / "current.jsonl")) for i in inside_ids]
    assert summary.links_not_followed == {
        str(logs / "passwd.jsonl"): "a symbolic link to /etc/passwd, outside the log directory: not followed",
        str(logs / "secret.jsonl"): f"a symbolic link to {tmp_path / 'secret.jsonl'}, outside the log directory: not followed",
        str(logs / "up.jsonl"): f"a symbolic link to {tmp_path / 'secret.jsonl'}, outside the log directory: not followed",
    }
    assert summary.skipped == {}
    res = CliRunner().invoke(cli, ["--once", "--log-dir", str(logs), "--store", str(tmp_path / "traces"), "--no-progress"])
    assert res.exit_code == 0, res.output  # a link that is not followed is not an error


def test_once_stores_the_readable_files_names_the_unreadable_and_exits_3(shared_dir):
    logs = os.path.join(shared_dir, "logs")
    os.mkdir(logs)
    os.chmod(logs, 0o777)
    good_ids, good = _lines(3)
    locked_ids, locked = _lines(2)
    with open(os.path.join(logs, "good.jsonl"), "wb") as fh:
        fh.write(good)
    with open(os.path.join(logs, "locked.jsonl"), "wb") as fh:
        fh.write(locked)
    os.chmod(os.path.join(logs, "locked.jsonl"), 0)
    traces = os.path.join(shared_dir, "traces")
    args = ["--once", "--log-dir", logs, "--store", traces, "--no-progress", "--compact-every-s", "0"]
    with unprivileged():
        res = CliRunner().invoke(cli, args)
    assert res.exit_code == EXIT_SKIPPED == 3, res.output
    assert f"skipped {logs}/locked.jsonl: cannot be read: Permission denied" in res.stderr
    assert "1 file(s) skipped; everything readable is stored" in res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["skipped"] == {f"{logs}/locked.jsonl": "cannot be read: Permission denied"}
    assert sorted(i for i, _ in _stored(traces)) == sorted(good_ids)
    # Readable again: the next run picks it up, exactly once, and exits 0.
    os.chmod(os.path.join(logs, "locked.jsonl"), 0o644)
    with unprivileged():
        res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert sorted(i for i, _ in _stored(traces)) == sorted(good_ids + locked_ids)


def test_a_following_tailer_survives_a_file_becoming_unreadable_and_resumes_it(shared_dir):
    rec = Recorder()
    hub = Hub()
    hub.add(rec)
    a, b = os.path.join(shared_dir, "a.jsonl"), os.path.join(shared_dir, "b.jsonl")
    for p in (a, b):
        with open(p, "wb") as fh:
            fh.write(p[-7:].encode() + b"-1\n")
        os.chmod(p, 0o666)

    def drain(t: Tailer) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        t.scan()
        for src in t.readable(include_gone=True):
            got = t.read(src)
            if got is not None:
                out[os.path.basename(src.path)] = got.data
            src.committed = src.position
        t.settle()
        return out

    with unprivileged():
        t = Tailer(shared_dir, hub, idle_close_s=0.0)  # descriptors close when idle: reopen by name
        assert drain(t) == {"a.jsonl": b"a.jsonl-1\n", "b.jsonl": b"b.jsonl-1\n"}
        drain(t)  # idle: both closed
    os.chmod(a, 0)
    with open(a, "ab") as fh:
        fh.write(b"a-2\n")
    with open(b, "ab") as fh:
        fh.write(b"b-2\n")
    with unprivileged():
        assert drain(t) == {"b.jsonl": b"b-2\n"}  # the tailer caught only FileNotFoundError: it died here
        assert t.skipped == {a: "cannot be read: Permission denied"}
        assert ("file_skipped", {"path": a, "reason": "cannot be read: Permission denied"}) in rec.events
    os.chmod(a, 0o644)
    with unprivileged():
        assert drain(t) == {"a.jsonl": b"a-2\n"} and t.skipped == {}
        t.close()


def test_two_files_with_the_same_first_lines_are_both_stored(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    ids_a, a = _lines(2)
    ids_b, b = _lines(2)
    (logs / "a.jsonl").write_bytes(b"\n" + a)
    (logs / "b.jsonl").write_bytes(b"\n" + b)
    summary = ingest_once(logs, tmp_path / "traces", progress=False)
    assert (summary.events, summary.quarantined) == (4, 2)  # the two blank lines are quarantined
    assert sorted(_stored(tmp_path / "traces")) == sorted([(i, str(logs / "a.jsonl")) for i in ids_a] + [(i, str(logs / "b.jsonl")) for i in ids_b])
    assert ingest_once(logs, tmp_path / "traces", progress=False).events == 0
