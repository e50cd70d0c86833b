"""The UI's reads against the plain queries they replaced, alternating on one store connection.

For a store built by ``ui_bench.py`` (``--workdir W`` keeps it in ``W/store``):

- text search: ``ui.reader.list_traces(q=...)`` (one filter on ``_trace_summary.search_text``)
  against the two plain queries over ``traces`` with ``contains(lower(query), ?) or
  contains(lower(final_answer), ?)`` (counts, then the page);
- charts: ``ui.reader.charts`` (one scan) against its three plain queries (span, series by day,
  histogram);
- ``train.data.count_selection`` with a ``--where``: a child process per call against one kept
  ``train.where.WhereWorker``;
- the summary's row order (``--summary-order``): the summary's rows sorted by trace_id ascending
  (as ``store.compact.build_summary`` stores them) and descending, each one Parquet file in a
  temporary folder read by plain DuckDB, under the list's default query (newest first) and the
  dataset page's first examples (the trainer's order, by trace_id).

Median of ``--repeat`` calls after one warm-up, each pair measured back to back, ``--rounds`` times.

    python benchmarks/ui_reads_ab.py --store /tmp/kaelum-ui-bench/store
"""

from __future__ import annotations

import argparse
import statistics
import time

import store
from train.data import count_selection
from train.where import WhereWorker
from ui import reader


def timed(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--text", default="times 42")
    ap.add_argument("--where", default="n_steps >= 1 and reward < 0.95")
    ap.add_argument("--summary-order", action="store_true", help="only the summary row order comparison")
    args = ap.parse_args()
    if args.summary_order:
        summary_order(args)
        return
    con = store.connect(args.store)
    cur = con.cursor()
    x = args.text

    def old_search() -> None:
        clause = "(contains(lower(query), ?) or contains(lower(coalesce(final_answer, '')), ?))"
        with reader.one_snapshot(cur):
            cur.execute(f"select count(*), count(*) filter (where {clause}) from traces", [x, x]).fetchall()
            cur.execute(f"select trace_id, query from traces where {clause} order by started_at desc nulls last, trace_id limit 50", [x, x]).fetchall()

    def old_charts() -> None:
        cur.execute("select min(started_at), max(started_at) from traces").fetchall()
        cur.execute("select domain, date_trunc('day', started_at) as bucket, count(*) as traces, avg(case when verified then 1.0 else 0.0 end), "
                    "avg(reward) from traces where started_at is not null group by all order by bucket, domain").fetchall()
        cur.execute("select least(floor(reward * 20), 19)::int as b, count(*) from traces where reward is not null group by 1").fetchall()

    selection = dict(method="sft", domain=None, min_reward=0.7, where=args.where, limit=3)
    traces = cur.execute("select count(*) from traces").fetchone()[0]
    print(f"{traces:,} traces in {args.store}; median of {args.repeat} calls")
    with WhereWorker() as worker:
        for r in range(args.rounds):
            load = open("/proc/loadavg").read().split()[0]
            print(
                f"round {r + 1} (load {load}): text search {timed(lambda: reader.list_traces(cur, {'q': x}), args.repeat):.0f} ms "
                f"(plain {timed(old_search, args.repeat):.0f} ms); charts {timed(lambda: reader.charts(cur, {}), args.repeat):.0f} ms "
                f"(plain {timed(old_charts, args.repeat):.0f} ms); --where with a kept worker "
                f"{timed(lambda: count_selection(cur, **selection, where_worker=worker), args.repeat):.0f} ms "
                f"(a child per call {timed(lambda: count_selection(cur, **selection), args.repeat):.0f} ms)",
                flush=True,
            )
    con.close()


def summary_order(args: argparse.Namespace) -> None:
    import os
    import tempfile

    import duckdb
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    from store.schema import ROW_GROUP_ROWS
    from ui.reader import LIST_COLUMNS

    rows = DeltaTable(os.path.join(args.store, "trace_summary")).to_pyarrow_table()
    with tempfile.TemporaryDirectory(prefix="kaelum-summary-order-") as tmp:
        files = {}
        for name in ("ascending", "descending"):
            files[name] = os.path.join(tmp, f"{name}.parquet")
            pq.write_table(rows.take(pc.sort_indices(rows, [("trace_id", name)])), files[name], row_group_size=ROW_GROUP_ROWS, compression="zstd")
        con = duckdb.connect()
        print(f"{rows.num_rows:,} summary rows; median of {args.repeat} calls")
        queries = {"newest-first page": f"select {LIST_COLUMNS} from read_parquet('{{f}}') order by started_at desc nulls last, trace_id limit 50",
                   "first 3 examples by trace_id": "select * from read_parquet('{f}') where complete and verified and reward >= 0.9 order by trace_id limit 3"}
        for r in range(args.rounds):
            load = open("/proc/loadavg").read().split()[0]
            parts = []
            for label, q in queries.items():
                t = {name: timed(lambda f=f: con.execute(q.format(f=f)).fetchall(), args.repeat) for name, f in files.items()}
                parts.append(f"{label}: ascending (as stored) {t['ascending']:.0f} ms, descending {t['descending']:.0f} ms")
            print(f"round {r + 1} (load {load}): " + "; ".join(parts), flush=True)

if __name__ == "__main__":
    main()
