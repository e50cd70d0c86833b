"""Snapshots: a query reads one Delta version of each table; files of a failed commit never show;
OPTIMIZE changes no view; VACUUM keeps what young versions need; time travel by version and time."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from deltalake import DeltaTable

import store
from store import SourceRange, StoreError, StoreWriter, events_from_dicts
from store.compact import compact, count_files
from store.views import PUBLIC_VIEWS, snapshot_of
from store_traces import _simple, _traces  # the e2e traces (tests/ is on sys.path)
from kaelum.events import TraceEvents


def _dicts(evs):
    return events_from_dicts([e.to_dict() for e in evs])


def _snapshot(root: Path, **kw) -> dict[str, list]:
    con = store.connect(root, **kw)
    out = {v: sorted(map(repr, con.execute(f"SELECT * FROM {v}").fetchall())) for v in PUBLIC_VIEWS}
    con.close()
    return out


def test_files_of_an_uncommitted_multi_date_commit_stay_hidden(tmp_path: Path):
    t = TraceEvents()
    a = dict(t.make("reflection", node_id="n", text="x").to_dict(), ts="2026-01-01T23:59:59.999999Z")
    b = dict(t.make("reflection", node_id="n", text="y").to_dict(), ts="2026-01-02T00:00:00.000001Z")
    with StoreWriter(tmp_path, "w") as w:
        w.commit(events_from_dicts([a, b]), sources=[SourceRange("fp", "/l", 0, 10, 2)])
        con = store.connect(tmp_path)
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 2
        # Data files in both partitions that no log entry names: a commit that failed or is in flight.
        for f in DeltaTable(str(tmp_path / "events")).file_uris():
            shutil.copy(f, Path(f).with_name("part-00000-uncommitted-c000.zstd.parquet"))
        assert con.execute("SELECT count(*) FROM _events_all").fetchone()[0] == 2  # same long-lived connection
        # A commit appears whole to the long-lived connection: both of its dates at once.
        c = dict(a, id="other-1", ts="2026-01-03T00:00:00.000000Z")
        d = dict(b, id="other-2", ts="2026-01-04T00:00:00.000000Z")
        w.commit(events_from_dicts([c, d]), sources=[SourceRange("fp", "/l", 10, 20, 2)])
        assert con.execute("SELECT count(*), count(DISTINCT date) FROM _events_all").fetchone() == (4, 4)
        assert snapshot_of(con).events_version == 2


def test_optimize_changes_no_view_and_time_travel_reads_each_version(tmp_path: Path):
    root = tmp_path / "st"
    traces = list(_traces().values())
    snaps = {}
    with StoreWriter(root, "host-a") as w:
        for i, (_tid, evs) in enumerate(traces):
            v = w.commit(_dicts(evs), sources=[SourceRange(f"fp{i}", f"/l{i}", 0, 10, len(evs))]).version
            snaps[v] = _snapshot(root)
        w.commit(_dicts(traces[0][1]), sources=[SourceRange("again", "/again", 0, 10, len(traces[0][1]))])  # re-sent
    before = _snapshot(root)
    n_before = count_files(store.open_store(root))
    res = compact(root, retention_s=3600)
    assert res.files_removed >= len(traces) and res.files_after < n_before and res.files_deleted == 0  # retention kept them
    assert _snapshot(root) == before
    for v, expected in snaps.items():  # every version before OPTIMIZE still reads as it was
        assert _snapshot(root, as_of=v) == expected
    # A timestamp means the table as it was then.
    stamp = datetime.now(timezone.utc)
    time.sleep(0.05)
    with StoreWriter(root, "host-b") as w:
        w.commit(_dicts(_simple("What is 9+9?", True, 0.9, "18")[1]), sources=[SourceRange("late", "/late", 0, 10, 9)])
    assert _snapshot(root, as_of=stamp.isoformat()) == before != _snapshot(root)
    assert _snapshot(root, as_of=stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")) == before
    with pytest.raises(StoreError, match="newest version is"):
        store.connect(root, as_of=999)
    with pytest.raises(StoreError, match="neither a table version"):
        store.connect(root, as_of="yesterday")


def test_vacuum_deletes_only_what_no_young_version_names(tmp_path: Path):
    root = tmp_path / "st"
    with StoreWriter(root, "w") as w:
        for c in range(4):
            w.commit(events_from_dicts([TraceEvents().make("reflection", node_id="n", text=str(c)).to_dict()]),
                     sources=[SourceRange("fp", "/l", c, c + 1, 1)])
    pinned = store.connect(root, as_of=2)  # a reader of an old version, e.g. a query in progress
    assert pinned.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    compact(root, retention_s=60)  # version 2 is younger than a minute: its files stay
    assert pinned.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    time.sleep(1.1)
    res = compact(root, retention_s=1)
    assert res.files_deleted == 4  # the inputs of the first OPTIMIZE, older than the retention now
    assert store.connect(root).execute("SELECT count(*) FROM events").fetchone()[0] == 4


def test_summary_is_exact_for_traces_that_fresh_events_touch(tmp_path: Path):
    root = tmp_path / "st"
    tid, evs = _simple("What is 6+6?", True, 0.5, "12")
    with StoreWriter(root, "w") as w:
        w.commit(_dicts(evs[:4]), sources=[SourceRange("fp", "/l", 0, 4, 4)])  # half a trace...
        compact(root, retention_s=0)
        con = store.connect(root)
        assert con.execute("SELECT count(*) FROM trajectories").fetchone()[0] == 0
        w.commit(_dicts(evs[4:]), sources=[SourceRange("fp", "/l", 4, 9, 5)])  # ...the rest arrives later
        assert con.execute("SELECT trace_id, steps, complete, reward FROM training_examples JOIN trajectories USING (trace_id, steps, reward)").fetchall() == [
            (tid, ["Add the numbers.", "So the result is 12."], True, 0.5)]
        compact(root, retention_s=0)
        t = TraceEvents(tid)
        t._seq = len(evs)
        w.commit(events_from_dicts([t.make("feedback", reward=0.97, label="great", by="carol").to_dict()]), sources=[SourceRange("fp", "/l", 9, 10, 1)])
        assert con.execute("SELECT reward, feedback_label FROM training_examples").fetchall() == [(0.97, "great")]
        assert con.execute("SELECT reward, feedback_count FROM traces").fetchall() == [(0.97, 1)]
        compact(root, retention_s=0)
        assert con.execute("SELECT reward, feedback_label FROM training_examples").fetchall() == [(0.97, "great")]
        # The summary table covers the compacted version: no event is fresh, no trace recomputed.
        snap = snapshot_of(con)
        assert snap.summary is not None and snap.fresh_files == ()  # (VACUUM's own commits add no files)
        assert con.execute("SELECT count(*) FROM _touched").fetchone()[0] == 0
        assert DeltaTable(str(root / "trace_summary")).to_pyarrow_table(columns=["trace_id", "reward"]).to_pylist() == [
            {"trace_id": tid, "reward": 0.97}]
        assert len(DeltaTable(str(root / "events")).file_uris()) == 1
