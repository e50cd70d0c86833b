"""Snapshots: uncommitted segments stay hidden, compaction generations re-merge, the per-trace summary
stays exact while fresh events (late feedback, re-sent ids) arrive after compaction."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

import store
from store import SegmentWriter, SourceRange, events_from_dicts
from store.compact import compact
from store.snapshot import read_manifest, resolve
from store.views import PUBLIC_VIEWS
from test_store_views import _simple, _traces  # the e2e traces (tests/ is on sys.path)
from kaelum.events import TraceEvents


def _dicts(evs):
    return events_from_dicts([e.to_dict() for e in evs])


def _snapshot(root: Path) -> dict[str, list]:
    con = store.connect(root)
    out = {v: sorted(map(repr, con.execute(f"SELECT * FROM {v}").fetchall())) for v in PUBLIC_VIEWS}
    con.close()
    return out


def _glob_views(root: Path) -> dict[str, list]:
    """The same views through the views-only file (glob mode: everything de-duplicated per query)."""
    import duckdb

    target = store.views.write_views_file(root, root.parent / f"{root.name}-views.duckdb")
    con = duckdb.connect(str(target), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    out = {v: sorted(map(repr, con.execute(f"SELECT * FROM {v}").fetchall())) for v in PUBLIC_VIEWS}
    con.close()
    return out


def test_segments_of_an_uncommitted_multi_date_commit_stay_hidden(tmp_path: Path):
    t = TraceEvents()
    a = dict(t.make("reflection", node_id="n", text="x").to_dict(), ts="2026-01-01T23:59:59.999999Z")
    b = dict(t.make("reflection", node_id="n", text="y").to_dict(), ts="2026-01-02T00:00:00.000001Z")
    with SegmentWriter(tmp_path, "w") as w:
        info = w.commit(events_from_dicts([a, b]), sources=[SourceRange("fp", "/l", 0, 10, 2)])
    con = store.connect(tmp_path)
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    # The same two segments under seq 2, without a commit record: a commit in flight (or a crash).
    for rel in info.segments:
        src = tmp_path / rel
        shutil.copy(src, src.with_name(src.name.replace("-000000000001-", "-000000000002-")))
    assert con.execute("SELECT count(*) FROM _events_all").fetchone()[0] == 2  # same long-lived connection
    assert len(resolve(store.open_store(tmp_path)).fresh) == 2
    # Once the record exists (here: written by hand, as commit() does last), both appear at once.
    rec = tmp_path / "_commits" / "w" / "000000000001.json"
    rec.with_name("000000000002.json").write_bytes(rec.read_bytes())
    assert con.execute("SELECT count(*) FROM _events_all").fetchone()[0] == 4
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 2  # same ids: de-duplicated


def test_compaction_generations_re_merge_and_views_never_change(tmp_path: Path):
    root = tmp_path / "st"
    traces = list(_traces().values())
    snaps = []
    with SegmentWriter(root, "host-a") as w:
        for i, (_tid, evs) in enumerate(traces):
            w.commit(_dicts(evs), sources=[SourceRange(f"fp{i}", f"/l{i}", 0, 10, len(evs))])
            if i in (2, 4):
                snaps.append(_snapshot(root))
                compact(root, grace_s=0)
                assert _snapshot(root) == snaps[-1]
        w.commit(_dicts(traces[0][1]), sources=[SourceRange("again", "/again", 0, 10, len(traces[0][1]))])  # re-sent
    before = _snapshot(root)
    assert before == _glob_views(root)
    res = compact(root, grace_s=0)
    info = store.open_store(root)
    m = read_manifest(info)
    assert m is not None and m.gen == 3 and m.covered == {"host-a": 8}
    # The earlier generations' segments were merged again: one file per (date, event type), no writer segment left.
    names = [p.name for p in (root / "events").glob("*/*.parquet") if not p.name.startswith("s-")]
    assert names and all(n.startswith("c-") for n in names) and sorted(m.compacted) == sorted(
        str(p.relative_to(root)) for p in (root / "events").glob("*/c-*.parquet"))
    for rel in m.compacted:
        assert len(set(pq.read_table(root / rel).column("type").to_pylist())) == 1
    assert res.merged_inputs >= 2 and len(list((root / "derived").glob("*.parquet"))) == 1
    assert _snapshot(root) == before


def test_summary_is_exact_for_traces_that_fresh_events_touch(tmp_path: Path):
    root = tmp_path / "st"
    tid, evs = _simple("What is 6+6?", True, 0.5, "12")
    with SegmentWriter(root, "w") as w:
        w.commit(_dicts(evs[:4]), sources=[SourceRange("fp", "/l", 0, 4, 4)])  # half a trace...
        compact(root, grace_s=0)
        con = store.connect(root)
        assert con.execute("SELECT count(*) FROM trajectories").fetchone()[0] == 0
        w.commit(_dicts(evs[4:]), sources=[SourceRange("fp", "/l", 4, 9, 5)])  # ...the rest arrives later
        assert con.execute("SELECT trace_id, steps, complete, reward FROM training_examples JOIN trajectories USING (trace_id, steps, reward)").fetchall() == [
            (tid, ["Add the numbers.", "So the result is 12."], True, 0.5)]
        compact(root, grace_s=0)
        t = TraceEvents(tid)
        t._seq = len(evs)
        w.commit(events_from_dicts([t.make("feedback", reward=0.97, label="great", by="carol").to_dict()]), sources=[SourceRange("fp", "/l", 9, 10, 1)])
        assert con.execute("SELECT reward, feedback_label FROM training_examples").fetchall() == [(0.97, "great")]
        assert con.execute("SELECT reward, feedback_count FROM traces").fetchall() == [(0.97, 1)]
        compact(root, grace_s=0)
        assert con.execute("SELECT reward, feedback_label FROM training_examples").fetchall() == [(0.97, "great")]
        assert not list((root / "events").glob("*/w-*.parquet"))
