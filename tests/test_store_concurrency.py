"""Real processes: readers query while a writer commits and while compaction runs.

Every commit holds exactly BATCH events, so a reader that ever saw a partial commit would see a
count that is not a multiple of BATCH.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import store
from store import SourceRange, StoreWriter, events_table
from store.compact import compact, count_files
from store.views import PUBLIC_VIEWS

BATCH = 400

WRITER = r"""
import sys, time
from store import SourceRange, StoreWriter, events_table
root, n_commits, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with StoreWriter(root, "writer-proc") as w:
    for c in range(n_commits):
        ids = [f"c{c}-e{i}" for i in range(batch)]
        w.commit(
            events_table(id=ids, v=[1] * batch, type=["reflection"] * batch, trace_id=[f"t{c}"] * batch, seq=list(range(batch)),
                         ts=["2026-03-01T10:00:00.000000Z"] * batch, data=['{"node_id": "n", "text": "again"}'] * batch,
                         source="fp", source_path="/l", offset=[c * batch + i for i in range(batch)]),
            sources=[SourceRange("fp", "/l", c * batch, (c + 1) * batch, batch)],
        )
"""

READER = r"""
import json, os, sys, time
import store
root, stop_file, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen, errors, bad, queries, last = [], [], [], 0, -1
deadline = time.time() + 120
while time.time() < deadline:
    stop = os.path.exists(stop_file)
    try:
        con = store.connect(root)  # a fresh connection per round, like a CLI call
        n = con.execute("SELECT count(*) FROM events").fetchone()[0]
        raw = con.execute("SELECT count(*) FROM _events_all WHERE date <> DATE '1970-01-01'").fetchone()[0]
        con.execute("SELECT count(*) FROM training_examples").fetchone()
        con.close()
        queries += 1
        if n % batch or n < last or raw % batch:
            bad.append((n, raw, last))
        last = n
        seen.append(n)
        open(stop_file + f".ready-{os.getpid()}", "w").close()  # this reader has queried once
    except Exception as exc:
        errors.append(repr(exc))
    if stop:
        break
print(json.dumps({"queries": queries, "errors": errors, "bad": bad, "max": max(seen or [0]), "distinct": len(set(seen))}))
"""


def _spawn(code: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    return json.loads(out)


def test_readers_never_see_a_partial_commit_and_never_fail(tmp_path: Path):
    root, stop = tmp_path / "st", tmp_path / "stop"
    StoreWriter(root, "init").close()
    readers = [_spawn(READER, root, stop, BATCH) for _ in range(2)]
    # Commits start once both readers have queried: on a quiet machine the writer otherwise finished
    # before the readers' interpreters had started, and they saw a single version.
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("stop.ready-*"))) < 2:
        assert time.monotonic() < deadline and all(r.poll() is None for r in readers), "the readers did not start"
        time.sleep(0.05)
    writer = _spawn(WRITER, root, 25, BATCH)
    out, err = writer.communicate(timeout=180)
    assert writer.returncode == 0, err
    stop.touch()
    results = [_result(r) for r in readers]
    for r in results:
        assert r["errors"] == [] and r["bad"] == [], r
        assert r["queries"] >= 2
    assert max(r["max"] for r in results) == 25 * BATCH
    assert any(r["distinct"] >= 2 for r in results), results  # the readers really ran during the commits
    assert store.positions(root)[("writer-proc", "fp")].offset == 25 * BATCH


def _snapshot(root: Path) -> dict[str, list]:
    con = store.connect(root)
    out = {v: sorted(map(repr, con.execute(f"SELECT * FROM {v}").fetchall())) for v in PUBLIC_VIEWS}
    con.close()
    return out


def test_compaction_changes_no_view_and_fails_no_concurrent_query(tmp_path: Path):
    root, stop = tmp_path / "st", tmp_path / "stop"
    # A store of many small commits from two writers, with a re-sent duplicate and quarantine rows.
    from store_traces import _ingest, _traces  # the e2e traces: every view has rows (tests/ is on sys.path)
    from kaelum.tracelog import TraceLogger

    traces = _traces()
    with StoreWriter(root, "host-a") as a, StoreWriter(root, "host-b") as b:
        for i, (_k, (_tid, evs)) in enumerate(traces.items()):
            logs = tmp_path / f"logs{i}"
            with TraceLogger(logs, fsync="never") as lg:
                lg.log_many(evs)
                lg.write_line(b"garbage\n")
            _ingest(a if i % 2 else b, next(logs.glob("*.jsonl")), f"fp{i}")
        _ingest(a, next((tmp_path / "logs0").glob("*.jsonl")), "fp0-again")  # re-sent
    before = _snapshot(root)
    info = store.open_store(root)
    n_before = count_files(info)
    readers = [_spawn(READER.replace("n % batch or ", "").replace("or raw % batch", ""), root, stop, 1) for _ in range(2)]
    time.sleep(1.0)
    res = compact(root, retention_s=60)  # OPTIMIZE + VACUUM; every reader's query is younger than the retention
    stop.touch()
    results = [_result(r) for r in readers]
    for r in results:
        assert r["errors"] == [], r
    assert n_before >= 10 and res.files_before == n_before
    assert count_files(info) == res.files_after < n_before
    assert _snapshot(root) == before
    # Positions are untouched by compaction.
    assert store.positions(root)[("host-a", "fp1")].offset > 0
