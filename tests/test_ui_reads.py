"""store.reads: one trace's rows, computed over that trace's events, equal the views' rows for it.

The store is built the real way (TraceLogger JSONL → ingest) with branching traces (preference
pairs at two branch nodes), a 2,000-node tree, feedback, every line ingested twice (re-sent
events: the same ids under a second writer) and an event id reused by another trace (a conflict
the quarantine lists). It is checked before and after compaction (then the views read the
per-trace summary) and with fresh events on top of the summary.
"""

from __future__ import annotations

import pytest

import store
from store.compact import compact
from store.reads import EVENTS, events_of, nodes_of, pairs_of, scoped_sql, trace_ids_clause, trace_of
from ui_stores import build_store, value, write_logs

from kaelum.events import Event, TraceEvents

VIEWS = {"events": events_of, "nodes": nodes_of, "preference_pairs": pairs_of, "traces": trace_of}


def _sorted(rows):
    return sorted(rows, key=repr)


def _check_all(store_dir, trace_ids):
    con = store.connect(store_dir)
    checked = {}
    for tid in trace_ids:
        for view, scoped in VIEWS.items():
            rel = scoped(con, tid)
            want_rel = con.sql(f"select * from {view} where trace_id = $tid", params={"tid": tid})
            assert rel.columns == want_rel.columns, view
            got, want = _sorted(rel.fetchall()), _sorted(want_rel.fetchall())
            assert got == want, (view, tid)
            checked[view] = checked.get(view, 0) + len(got)
    con.close()
    return checked


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from ingest import ingest_once

    root = tmp_path_factory.mktemp("ui-reads")
    store_dir, logs, ids = build_store(root)
    ingest_once(logs, store_dir, writer_id="ui-test-resend", progress=False)  # every event a second time
    con = store.connect(store_dir)
    # A node_evaluated id of the branch trace, reused by an event of another trace: a conflict.
    reused = con.execute("select id from events where trace_id = ? and type = 'node_evaluated' limit 1", [ids["branch"]]).fetchall()[0][0]
    seq = con.execute("select max(seq) + 1 from events where trace_id = ?", [ids["simple_math"]]).fetchall()[0][0]
    con.close()
    clash = value(TraceEvents(trace_id=ids["simple_math"]), "n1", 0.05).to_dict() | {"id": reused, "seq": seq}
    feedback = Event(type="feedback", trace_id=ids["branch"], seq=100, data={"by": "tester", "reward": 0.4, "label": "meh"}).to_dict()
    store.append_events(store_dir, [clash, feedback], writer_id="ui-test-extra")
    return store_dir, ids, reused


def test_the_store_has_what_the_test_is_about(built):
    store_dir, ids, reused = built
    con = store.connect(store_dir)
    copies = con.execute("select count(*) from _events_all where trace_id = ?", [ids["branch"]]).fetchall()[0][0]
    kept = con.execute("select count(*) from events where trace_id = ?", [ids["branch"]]).fetchall()[0][0]
    assert copies > kept > 0  # re-sent events, each kept once
    # The reused id is listed as a conflict (whatever the reason's exact wording).
    assert con.execute("select count(*) from quarantine where reason like ? and reason like '%conflicts with%'",
                       [f"event id {reused}%"]).fetchall()[0][0] >= 1
    assert con.execute("select count(*) from preference_pairs where trace_id = ?", [ids["branch"]]).fetchall()[0][0] == 2
    assert con.execute("select feedback_reward from traces where trace_id = ?", [ids["branch"]]).fetchall() == [(0.4,)]


def test_scoped_reads_equal_the_views(built):
    store_dir, ids, _ = built
    checked = _check_all(store_dir, list(ids.values()) + ["no-such-trace", "it's quoted"])
    assert checked["preference_pairs"] >= 2 and checked["traces"] == len(ids) and checked["nodes"] > 2000


@pytest.fixture(scope="module")
def fresh_copy(built, tmp_path_factory):
    """A compacted copy of the store (the views read the per-trace summary), then fresh events on
    top, committed without compaction: a new reflection of the branch trace, a new trace, and an
    event of it reusing an id of the branch trace (a conflict fresh events start; the fresh copy
    wins, its writer sorting first)."""
    import shutil

    from ui_stores import simple_trace

    store_dir, ids, reused = built
    tmp = tmp_path_factory.mktemp("ui-reads-fresh")
    copy = tmp / "store"
    shutil.copytree(store_dir, copy)
    compact(copy, retention_s=0)
    con = store.connect(copy)
    con.execute("select count(*) from traces").fetchall()
    assert store.snapshot_of(con).summary is not None  # the views now read the per-trace summary
    con.close()
    compacted = tmp / "compacted"
    shutil.copytree(copy, compacted)
    con = store.connect(copy)
    other = con.execute("select id from events where trace_id = ? and type = 'node_evaluated' and id <> ? order by id limit 1",
                        [ids["branch"], reused]).fetchall()[0][0]
    con.close()
    new_tid, new_events = simple_trace("Fresh one?", "analysis", True, 0.9)
    more = [Event(type="reflection", trace_id=ids["branch"], seq=200, data={"node_id": "n4", "text": "Seven is wrong too."}).to_dict(),
            value(TraceEvents(trace_id=new_tid), "n1", 0.05).to_dict() | {"id": other, "seq": 99}]
    store.append_events(copy, [e.to_dict() for e in new_events] + more, writer_id="ui-test-fresh")
    return compacted, copy


def test_scoped_reads_equal_the_views_after_compaction_and_with_fresh_events(built, fresh_copy):
    _, ids, _ = built
    compacted, fresh = fresh_copy
    _check_all(compacted, list(ids.values()))
    _check_all(fresh, list(ids.values()))


def _views_from_events(con):
    """A connection whose views compute every trace from the events of `con`'s last snapshot:
    no per-trace summary, no stored conflicts set (the views' definitions, nothing precomputed)."""
    import duckdb

    from store.reads import sql_string
    from store.snapshot import schema_file
    from store.views import Scans, install_views

    snap = store.snapshot_of(con)
    hive = "hive_partitioning = true, hive_types = {'date': DATE}"

    def scan(files, table):
        return "read_parquet([" + ", ".join(sql_string(str(f)) for f in [*files, schema_file(table)]) + f"], {hive})"

    raw = duckdb.connect(":memory:")
    raw.execute("SET TimeZone = 'UTC'")
    install_views(raw, Scans(scan(snap.events_files, "events"), scan(snap.quarantine_files, "quarantine")))
    return raw


@pytest.mark.parametrize("view", ["traces", "_trace_summary", "trajectories", "training_examples_all"])
def test_traces_with_fresh_events_over_the_summary_are_the_traces_of_all_events(fresh_copy, view):
    """The live part of `traces` / `_trace_summary` (touched traces recomputed, read once per query)
    gives the rows the views give without any summary, for re-sent, conflicting and fresh events."""
    _, fresh = fresh_copy
    con = store.connect(fresh)
    with con.cursor() as cur:
        cur.execute("BEGIN TRANSACTION")  # the two reads below and the snapshot looked up: one snapshot
        touched = cur.execute("select count(*) from _touched").fetchall()[0][0]
        got = _sorted(cur.execute(f"select * from {view}").fetchall())
        snap = store.snapshot_of(con)
        cur.execute("ROLLBACK")
    assert snap.summary is not None and snap.fresh_files and touched >= 2
    raw = _views_from_events(con)
    want = _sorted(raw.execute(f"select * from {view}").fetchall())
    assert got == want and got
    con.close()
    raw.close()


def test_scoped_sql_reads_one_snapshot_and_quotes_the_id(built):
    store_dir, ids, _ = built
    con = store.connect(store_dir)
    sql = scoped_sql("x' or true or '", f"select count(*) from {EVENTS}")
    assert con.execute(sql).fetchall() == [(0,)]  # the id is a literal, not SQL
    with pytest.raises(TypeError, match="trace_id must be a string"):
        scoped_sql(42, "select 1")  # type: ignore[arg-type]


def test_the_trace_ids_clause_selects_exactly_those_traces_and_quotes_them(built):
    store_dir, _, _ = built
    con = store.connect(store_dir)
    every = sorted(r[0] for r in con.execute("select trace_id from traces").fetchall())
    assert len(every) >= 4
    # Neighbours and ids far apart (the range then spans others, which the IN-list drops), repeated.
    for wanted in (every[:2], [every[0], every[-1]], [every[-1], every[1], every[-1]]):
        got = sorted(r[0] for r in con.execute(f"select trace_id from traces where {trace_ids_clause(wanted)}").fetchall())
        assert got == sorted(set(wanted))
    injected = trace_ids_clause(["x' or true or '"])
    assert con.execute(f"select count(*) from traces where {injected}").fetchall() == [(0,)]  # literals, not SQL
    with pytest.raises(ValueError, match="at least one"):
        trace_ids_clause([])


@pytest.mark.parametrize("params", [{}, {"sort": "reward", "order": "asc", "limit": "3", "offset": "2"}, {"domain": "math", "sort": "domain"},
                                    {"sort": "feedback_count", "limit": "2", "offset": "5"}])
def test_a_deep_page_in_two_steps_is_the_page_of_one_query(built, monkeypatch, params):
    from ui import reader

    store_dir, _, _ = built
    con = store.connect(store_dir)
    one = reader.list_traces(con.cursor(), params)
    monkeypatch.setattr(reader, "DEEP_PAGE", 0)  # every page in two steps
    two = reader.list_traces(con.cursor(), params)
    assert two == one and one["traces"]


def test_quarantine_pages_are_the_whole_list_in_order_conflicting_ids_included(built):
    from ui import reader

    store_dir, _, reused = built
    con = store.connect(store_dir)
    whole = reader.quarantine(con.cursor(), {"limit": "500"})
    assert whole["total"] == whole["matched"] == len(whole["lines"]) >= 2
    assert any(line["reason"].startswith(f"event id {reused} conflicts with") for line in whole["lines"])
    pages = [line for i in range(0, whole["total"], 2) for line in reader.quarantine(con.cursor(), {"limit": "2", "offset": str(i)})["lines"]]
    assert pages == whole["lines"]
    con.close()
