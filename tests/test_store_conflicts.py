"""Conflicting event ids through the real ingest path (ingest_once → Delta tables → views).

The same id with another type or trace is a contract violation: the copy first in DEDUP_ORDER
(writer, source, offset) is the event, every other (type, trace) copy is in no view but
`quarantine`, with a reason naming the kept copy. A re-sent identical copy is de-duplicated
silently. The answer depends on the stored rows alone: before and after compaction, with fresh
commits on top of a compacted store, and whatever order concurrent writers commit in.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from deltalake import DeltaTable

import store
from ingest.daemon import ingest_once
from kaelum.events import TraceEvents
from kaelum.tracelog import TraceLogger
from store.compact import compact
from store_traces import _simple


def _write(log_dir: Path, lines: list[dict]) -> Path:
    with TraceLogger(log_dir, fsync="never") as lg:
        for obj in lines:
            lg.write_line(json.dumps(obj).encode() + b"\n")
    return next(log_dir.glob("*.jsonl"))


def _offset_of(path: Path, event_id: str) -> int:
    off = 0
    for line in path.read_bytes().splitlines(keepends=True):
        if json.loads(line)["id"] == event_id:
            return off
        off += len(line)
    raise AssertionError(event_id)


def _check_one_copy_per_id(con) -> None:
    total, distinct = con.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone()
    assert total == distinct


def _copy(event: dict, into_trace: str, type_: str | None = None, **data) -> dict:
    """A line with `event`'s id but another trace (and type): a conflicting copy."""
    out = {**event, "trace_id": into_trace, "seq": 99}
    if type_ is not None:
        out["type"], out["data"] = type_, data
    return out


def test_first_copy_wins_conflicts_are_quarantined_and_resent_copies_are_silent(tmp_path: Path):
    t1_id, t1 = _simple("What is 2+3?", True, 0.9)
    t2_id, t2 = _simple("What is 4+4?", True, 0.8, "8")
    t1, t2 = [e.to_dict() for e in t1], [e.to_dict() for e in t2]
    t1_done = next(e for e in t1 if e["type"] == "trace_completed")
    t1_n1 = next(e for e in t1 if e["type"] == "node_expanded" and e["data"]["node_id"] == "n1")
    st = tmp_path / "store"
    path_a = _write(tmp_path / "logs-a", t1)
    # Host b: its own trace, a re-sent identical copy of T1's start (silent), and a node_evaluated of
    # T2 that reuses the id of T1's completion (a conflict: T1's copy, from writer a-host, wins).
    conflicting = _copy(t1_done, t2_id, "node_evaluated", node_id="n1", value=0.01, signals={})
    path_b = _write(tmp_path / "logs-b", t2 + [t1[0], conflicting])
    ingest_once(tmp_path / "logs-a", st, writer_id="a-host", progress=False)
    ingest_once(tmp_path / "logs-b", st, writer_id="b-host", progress=False)

    def check(con, expect_reason_writer="a-host", expect_path=path_a, winner=t1_done) -> None:
        _check_one_copy_per_id(con)
        (row,) = con.execute("SELECT type, trace_id, writer FROM events WHERE id = ?", [t1_done["id"]]).fetchall()
        assert row == (winner["type"], winner["trace_id"], expect_reason_writer)
        q = con.execute("SELECT source_path, \"offset\", writer, reason, raw_text FROM quarantine").fetchall()
        assert len(q) == 1, q  # the re-sent identical start is not there
        qpath, qoff, qwriter, reason, raw_text = q[0]
        assert (qpath, qoff, qwriter) == (str(path_b), _offset_of(path_b, conflicting["id"]), "b-host")
        assert reason == (
            f"event id {t1_done['id']} conflicts with the copy kept in events: a trace_completed of trace {t1_id} "
            f"(writer {expect_reason_writer}, {expect_path} offset {_offset_of(expect_path, t1_done['id'])}); "
            f"this copy is a node_evaluated of trace {t2_id}")
        assert json.loads(raw_text)["data"]["value"] == 0.01
        # Trace views: T1 keeps its completion, T2's node n1 has only its own evaluation.
        assert con.execute("SELECT trace_id, reward FROM training_examples ORDER BY reward DESC").fetchall() == [(t1_id, 0.9), (t2_id, 0.8)]
        assert con.execute("SELECT evaluations, value FROM nodes WHERE trace_id = ? AND node_id = 'n1'", [t2_id]).fetchone() == (1, 0.7)
        assert con.execute("SELECT count(*) FROM events WHERE trace_id = ? AND type = 'trace_started'", [t1_id]).fetchone()[0] == 1

    check(store.connect(st))  # never compacted: every id checked
    compact(st, retention_s=0)
    assert (st / "id_conflicts" / "_delta_log").is_dir()
    check(store.connect(st))  # from the stored set

    # A fresh commit on the compacted store: host 0-early (first in DEDUP_ORDER) sends a copy of T1's
    # node n1 as a reflection of a third trace. It wins over T1's older copy, so T1 loses its node n1
    # (its best path now names a node never expanded: no longer a training example) although no
    # fresh event belongs to T1.
    t3 = TraceEvents()
    early = _copy(t1_n1, t3.trace_id, "reflection", node_id="n0", text="a copy with T1's node id")
    path_0 = _write(tmp_path / "logs-0", [early])
    con = store.connect(st)
    ingest_once(tmp_path / "logs-0", st, writer_id="0-early", progress=False)
    for c in (con, store.connect(st)):  # a connection opened before the commit sees it too
        _check_one_copy_per_id(c)
        assert c.execute("SELECT type, trace_id FROM events WHERE id = ?", [t1_n1["id"]]).fetchone() == ("reflection", t3.trace_id)
        assert c.execute("SELECT trace_id FROM training_examples").fetchall() == [(t2_id,)]
        assert c.execute("SELECT complete FROM trajectories WHERE trace_id = ?", [t1_id]).fetchone() == (False,)
        reasons = [r for (r,) in c.execute("SELECT reason FROM quarantine ORDER BY reason").fetchall()]
        assert len(reasons) == 2 and any(f"(writer 0-early, {path_0} offset 0); this copy is a node_expanded of trace {t1_id}" in r
                                         for r in reasons)
    compact(st, retention_s=0)
    c = store.connect(st)
    _check_one_copy_per_id(c)
    assert c.execute("SELECT trace_id FROM training_examples").fetchall() == [(t2_id,)]
    assert c.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 2


def test_conflicts_from_concurrent_writers_end_with_one_copy_per_id(tmp_path: Path):
    """Three hosts ingest at once, each sending its own copy (another trace) of the same 200 ids."""
    hosts = ["h1", "h2", "h3"]
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(200)]
    for h in hosts:
        t = TraceEvents()
        lines = []
        for i, event_id in enumerate(ids):
            e = t.make("reflection", node_id=f"n{i}", text=f"{h} copy {i}").to_dict()
            e["id"] = event_id
            lines.append(e)
        _write(tmp_path / f"logs-{h}", lines)
    st = tmp_path / "store"
    store.StoreWriter(st, "creator").close()
    errors = []

    def run(h: str) -> None:
        try:
            ingest_once(tmp_path / f"logs-{h}", st, writer_id=h, progress=False)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(h,)) for h in hosts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    con = store.connect(st)
    _check_one_copy_per_id(con)
    assert con.execute("SELECT count(*), min(writer), max(writer) FROM events").fetchone() == (200, "h1", "h1")
    assert con.execute("SELECT writer, count(*) FROM quarantine GROUP BY writer ORDER BY writer").fetchall() == [("h2", 200), ("h3", 200)]
    compact(st, retention_s=0)
    con = store.connect(st)
    assert con.execute("SELECT count(*), count(DISTINCT id), min(writer), max(writer) FROM events").fetchone() == (200, 200, "h1", "h1")
    assert con.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 400


@pytest.mark.parametrize("copies", [False, True])
def test_a_first_summary_equals_the_summary_the_views_compute_without_one(tmp_path: Path, copies: bool):
    """The first summary of a store (the end of a bulk --once) is built over all events, skipping
    the de-duplication when no id has a second copy: with or without re-sent and conflicting
    copies, it holds the rows the views compute from the events themselves."""
    t1_id, t1 = _simple("What is 2+3?", True, 0.9)
    t2_id, t2 = _simple("What is 4+4?", True, 0.8, "8")
    t1, t2 = [e.to_dict() for e in t1], [e.to_dict() for e in t2]
    lines = t1 + t2
    if copies:
        t1_done = next(e for e in t1 if e["type"] == "trace_completed")
        t2_n1 = next(e for e in t2 if e["type"] == "node_expanded" and e["data"]["node_id"] == "n1")
        # A re-sent start of T1, a later conflicting copy of T1's completion, and T2's node n1 sent
        # again with another thought (a re-sent id: the first copy's thought must be the step).
        lines += [t1[0], _copy(t1_done, t2_id, "node_evaluated", node_id="n1", value=0.01, signals={}),
                  {**t2_n1, "data": {**t2_n1["data"], "thought": "a later copy"}}]
    _write(tmp_path / "logs", lines)
    st = tmp_path / "store"
    ingest_once(tmp_path / "logs", st, progress=False)  # builds the first summary
    stored = DeltaTable(str(st / "trace_summary")).to_pyarrow_table().sort_by("trace_id")
    # The same store without its summary: the views compute every trace from its events.
    bare = tmp_path / "bare"
    shutil.copytree(st, bare)
    shutil.rmtree(bare / "trace_summary")
    shutil.rmtree(bare / "id_conflicts")
    live = store.connect(bare).sql("SELECT * FROM _trace_summary ORDER BY trace_id").to_arrow_table()
    assert stored.num_rows == 2
    assert stored.to_pylist() == live.to_pylist()
    steps = dict(zip(stored.column("trace_id").to_pylist(), stored.column("steps").to_pylist()))
    assert "a later copy" not in steps[t2_id]
