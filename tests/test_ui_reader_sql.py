"""The UI's one-scan reads agree with the plain queries over ``traces`` they replaced.

A real Delta store (the UI benchmark's generator, a few thousand traces), compacted so that the
per-trace summary holds them, then fresh events on top (new traces and a feedback that changes
a summarised trace): the text search over ``search_text`` and the one-scan charts must give
exactly what the old per-column search and the three chart queries give over ``traces``, in
both states.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

import store
from store import SourceRange, StoreWriter
from store.schema import EVENTS_SCHEMA
from ui import reader

ROOT = Path(__file__).resolve().parents[1]
TRACES = 3000


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import ui_bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return ui_bench


def _fresh(bench, path: Path, lo: int, hi: int, traces: int) -> None:
    """Commit the generator's traces [lo, hi) (spread as if the store held `traces`) without compacting."""
    gen = duckdb.connect(":memory:")
    gen.execute("SET TimeZone = 'UTC'")
    gen.execute(bench.UUID7_SQL)
    rel = gen.sql(bench.GEN_SQL, params={"t_lo": lo, "t_hi": hi, "traces": traces, "slots": bench.SLOTS})
    table = gen.sql(
        "SELECT id, v, type, trace_id, seq, ts, data, 'fresh' AS source, 'fresh.jsonl' AS source_path, "
        "(row_number() OVER () * 400)::BIGINT AS \"offset\", NULL::VARCHAR AS writer FROM rel"
    ).to_arrow_table().cast(EVENTS_SCHEMA)
    with StoreWriter(path, writer_id="fresh") as w:
        w.commit(table, sources=[SourceRange("fresh", "fresh.jsonl", 0, table.num_rows * 400, table.num_rows)])


@pytest.fixture(scope="module")
def stores(tmp_path_factory, bench):
    compacted = tmp_path_factory.mktemp("ui-sql") / "store"
    bench.build(compacted, TRACES)
    return compacted


def _old_search(cur, text: str) -> list[str]:
    return [r[0] for r in cur.execute(
        "select trace_id from traces where (contains(lower(query), ?) or contains(lower(coalesce(final_answer, '')), ?)) "
        "order by started_at desc nulls last, trace_id", [text, text]).fetchall()]


def _old_charts(cur, bucket: str | None, where: str = "true", params: list | None = None) -> dict:
    params = params or []
    if not bucket:
        lo, hi = cur.execute(f"select min(started_at), max(started_at) from traces where {where}", params).fetchone()
        span = (hi - lo).total_seconds() if lo is not None and hi is not None else 0
        bucket = "hour" if span <= 3 * 86400 else "day" if span <= 120 * 86400 else "week"
    series = reader.rows(
        cur,
        f"select domain, date_trunc('{bucket}', started_at) as bucket, count(*) as traces, "
        "avg(case when verified then 1.0 else 0.0 end) as verified_rate, avg(reward) as mean_reward "
        f"from traces where started_at is not null and {where} group by all order by bucket, domain",
        params,
    )
    hist = dict(cur.execute(
        f"select least(floor(reward * 20), 19)::int as b, count(*) from traces where reward is not null and {where} group by 1", params).fetchall())
    return {"bucket": bucket, "series": series, "histogram": [int(hist.get(i, 0)) for i in range(20)]}


def _same_charts(new: dict, old: dict) -> None:
    assert new["bucket"] == old["bucket"]
    assert [h["count"] for h in new["histogram"]] == old["histogram"]
    assert len(new["series"]) == len(old["series"]) > 0
    for a, b in zip(new["series"], old["series"]):
        assert (a["domain"], a["bucket"], a["traces"]) == (b["domain"], b["bucket"], b["traces"])
        assert a["verified_rate"] == pytest.approx(b["verified_rate"])
        assert (a["mean_reward"] is None) == (b["mean_reward"] is None)
        if a["mean_reward"] is not None:
            assert a["mean_reward"] == pytest.approx(b["mean_reward"])


def _check(path: Path) -> None:
    con = store.connect(path)
    try:
        cur = con.cursor()
        assert reader.view_columns(cur, "traces") and "search_text" not in reader.view_columns(cur, "traces")
        for text in ("times 42", "problem 12", "in math", "no such text at all", "42"):
            got = reader.list_traces(cur, {"q": text, "limit": "500"})
            want = _old_search(cur, text)
            assert got["matched"] == len(want)
            assert [t["trace_id"] for t in got["traces"]] == want[:500]
        # A deep page goes through the two-step read; it must agree too.
        deep = reader.list_traces(cur, {"q": "in math", "limit": "50", "offset": "450"})
        assert [t["trace_id"] for t in deep["traces"]] == _old_search(cur, "in math")[450:500]
        for bucket in (None, "hour", "day", "week", "month"):
            _same_charts(reader.charts(cur, {"bucket": bucket} if bucket else {}), _old_charts(cur, bucket))
        _same_charts(reader.charts(cur, {"domain": "logic"}), _old_charts(cur, None, "domain = ?", ["logic"]))
        _same_charts(reader.charts(cur, {"q": "times 4"}), _old_charts(
            cur, None, "(contains(lower(query), ?) or contains(lower(coalesce(final_answer, '')), ?))", ["times 4", "times 4"]))
        empty = reader.charts(cur, {"q": "no such text at all"})
        assert empty["bucket"] == "hour" and empty["series"] == [] and sum(h["count"] for h in empty["histogram"]) == 0
    finally:
        con.close()


def test_search_and_charts_match_plain_queries_compacted_then_fresh(stores, bench):
    _check(stores)
    # Fresh events: 40 new traces, and events of a summarised trace (its re-sent completion makes
    # the live branch recompute it): both sides of the summary's UNION are searched and charted.
    _fresh(bench, stores, TRACES, TRACES + 40, TRACES)
    _fresh(bench, stores, 7, 8, TRACES)
    con = store.connect(stores)
    try:
        assert con.execute("select count(*) from traces").fetchone()[0] == TRACES + 40
    finally:
        con.close()
    _check(stores)


def test_chart_span_picks_the_bucket(tmp_path, bench):
    """Spans of under 3 days chart by hour, under 120 days by day, longer by week (as before)."""
    for traces, days, want in ((300, 2, "hour"), (300, 60, "day"), (300, 200, "week")):
        path = tmp_path / f"s{days}"
        # GEN_SQL spreads traces over 60 days; scale the spacing by how many the store pretends to hold.
        gen_traces = max(1, int(traces * 60 / days))
        _fresh(bench, path, 0, traces, gen_traces)
        con = store.connect(path)
        try:
            cur = con.cursor()
            lo, hi = cur.execute("select min(started_at), max(started_at) from traces").fetchone()
            assert (hi - lo) <= timedelta(days=days)
            got = reader.charts(cur, {})
            assert got["bucket"] == want
            _same_charts(got, _old_charts(cur, None))
        finally:
            con.close()


def test_the_live_part_reads_only_files_that_may_hold_touched_traces(tmp_path, bench):
    """With a summary, fresh events are recomputed from the events files whose trace_id range (the
    Delta log's statistics) can hold a touched trace, not from every file; an old trace touched
    again brings its file back, and the views still equal the same store without a summary."""
    from store.compact import build_summary
    from store.layout import open_store

    path = tmp_path / "store"
    for lo in range(0, 3000, 1000):  # three commits, three files of disjoint (time-ordered) trace ids
        _fresh(bench, path, lo, lo + 1000, 3000)
    build_summary(open_store(path))

    def live_files() -> list[str]:
        con = store.connect(path)
        try:
            files = con.execute("select kaelum_files('events_if_fresh', txid_current())").fetchone()[0]
            rows = con.execute("select trace_id, reward, status, feedback_count from traces order by trace_id").fetchall()
        finally:
            con.close()
        plain = store.connect(path)
        try:  # the same rows computed from every event, without the summary
            want = plain.execute("select trace_id, reward, status, feedback_count from (" + _all_events_traces() + ") order by trace_id").fetchall()
        finally:
            plain.close()
        assert rows == want
        return [f for f in files if "/events/" in f]

    assert live_files() == []  # nothing fresh: the live part reads nothing
    _fresh(bench, path, 3000, 3010, 3000)  # new traces, later ids than every stored file
    assert len(live_files()) == 1  # only the fresh file
    _fresh(bench, path, 1500, 1501, 3000)  # an old trace of the second file, re-sent
    got = live_files()
    assert len(got) == 3  # the two fresh files and the file that holds trace 1500


def _all_events_traces() -> str:
    """`traces` computed over every event (store.views' own SQL, no summary)."""
    from store.views import _trace_columns_sql, _trace_views

    ctes = ", ".join(f"{n} AS ({b})" for n, b in _trace_views("_x", "events"))
    return f"WITH {ctes} {_trace_columns_sql('_x')}"


def test_a_local_store_reader_is_never_reopened_and_still_sees_new_commits(tmp_path, bench):
    """``StoreReader`` on a local store: every query resolves the newest snapshot itself, so the
    connection is kept however old it gets (a reopen installs every view again), and a commit made
    after it opened shows in the next request."""
    import time

    path = tmp_path / "s"
    _fresh(bench, path, 0, 20, 20)
    r = reader.StoreReader(str(path), refresh_s=0.0)
    try:
        first = r._con
        with r.cursor() as cur:
            before = reader.list_traces(cur, {})["total"]
        _fresh(bench, path, 20, 30, 30)
        time.sleep(0.05)
        with r.cursor() as cur:
            after = reader.list_traces(cur, {})["total"]
        time.sleep(0.2)  # a reopen, had one started, would have replaced the connection by now
        assert (before, after) == (20, 30)
        assert r._con is first and not r._refreshing and r.refresh_s < 0
    finally:
        r.close()
