"""Trace store benchmark: typical view queries on the Delta store vs the same questions on raw JSONL.

Builds a synthetic but realistically shaped store (LATS traces of ~54 events: a started event, a
20-node tree with evaluations, verifications of the 10 leaves, reflections, the completion, and
feedback on every tenth trace; step texts of a few hundred characters), writes the same events
as JSONL, and reports side by side:

- count of training_examples for one domain with reward > 0.9,
- fetch 1,000 trajectories,
- count traces by domain,
- the events view itself: count(*) against count(DISTINCT id) (each id once), completions by type,

each on the store (before and after compaction) and on the raw JSONL through DuckDB's
``read_ndjson`` with the very same view definitions (the typed columns extracted from the JSON per
query). Also the file count before and after ``compact`` (Delta OPTIMIZE + VACUUM), and the
queries with the last ``--fresh`` events committed in small batches after compaction (what a
store looks like between two compactions of a following daemon), with the first query after
those commits on its own line: it also checks the fresh ids for conflicting copies
(store/conflicts.py), once per table version. Event ids are UUIDv7-shaped, as the runtime writes them.

    python benchmarks/store_bench.py --events 5000000 --workdir /tmp/kaelum-bench
"""

from __future__ import annotations

import argparse
import os
import logging
import shutil
import statistics
import time
from pathlib import Path

import duckdb

from store import SourceRange, StoreWriter
from store.compact import compact, count_files
from store.layout import open_store
from store.schema import EVENTS_SCHEMA
from store.snapshot import conflicts_schema_file, schema_file
from store.upcast import CURRENT
from store.views import Scans, connect, install_views

EVENTS_PER_TRACE = 54.1  # 54 per trace plus a feedback event on every tenth trace
TRACES_PER_COMMIT = 5000  # ~270k events per commit, like an ingester flushing a busy log

# One row per (trace, slot); slot decides the event. Node i of the 20-node tree has parent
# (i-1)//2, depth floor(log2(i+1)); nodes 10..19 are the leaves (terminal). The best path is the
# root-to-leaf path of leaf 10 + t % 10.
GEN_SQL = """
WITH s AS (
  SELECT t, slot, hash(t * 1000 + slot) AS h,
         ['math','code','logic','factual','creative','analysis'][1 + t % 6] AS domain,
         TIMESTAMPTZ '2026-11-01 00:00:00+00' + to_microseconds((t * 7 * 86400000000 // $traces)::BIGINT) AS t0,
         (hash(t) % 1000) / 1000.0 AS r, hash(t * 7 + 3) % 100 AS u
  FROM range($t_lo, $t_hi) a(t), range(55) b(slot)
  WHERE slot < 54 OR t % 10 = 0
), e AS (
  SELECT *,
    CASE WHEN slot = 0 THEN 'trace_started' WHEN slot <= 40 AND slot % 2 = 1 THEN 'node_expanded'
         WHEN slot <= 40 THEN 'node_evaluated' WHEN slot <= 50 THEN 'verification'
         WHEN slot <= 52 THEN 'reflection' WHEN slot = 53 THEN 'trace_completed' ELSE 'feedback' END AS type,
    CASE WHEN slot BETWEEN 1 AND 40 THEN (slot - 1) // 2 WHEN slot BETWEEN 41 AND 50 THEN slot - 31 ELSE 10 + t % 10 END AS node,
    10 + t % 10 AS leaf
  FROM s
), j AS (
  SELECT *,
    floor(log2(node + 1))::INT AS depth,
    -- ~45 words drawn per event from a small vocabulary: compresses like real step text, not like a repeat
    'Step: ' || array_to_string(list_transform(range(45), lambda k: $words[1 + (hash(h + k) % 64)::BIGINT]), ' ') AS thought,
    'Solve the following ' || domain || ' problem number ' || t::VARCHAR || ': ' || repeat('given the constraints, ', 4) || 'what is the result?' AS query,
    (leaf + 1) AS lp, floor(log2(leaf + 1))::INT AS ld
  FROM e
)
-- ids are UUIDv7 as the runtime writes them: the event's millisecond time, then random bits
SELECT lpad(lower(to_hex(epoch_ms(t0 + to_microseconds(slot * 150000)))), 12, '0') AS _ms, md5(t::VARCHAR || '-' || slot::VARCHAR) AS _r,
       substr(_ms, 1, 8) || '-' || substr(_ms, 9, 4) || '-7' || substr(_r, 1, 3) || '-8' || substr(_r, 4, 3) || '-' || substr(_r, 7, 12) AS id,
       1::INT AS v, type,
       md5('trace-' || t::VARCHAR)::UUID::VARCHAR AS trace_id, slot::BIGINT AS seq,
       t0 + to_microseconds(slot * 150000) AS ts,
       CASE type
         WHEN 'trace_started' THEN json_object('query', query, 'domain', domain,
             'router', json_object('domain', domain, 'confidence', 0.9, 'method', 'keywords'), 'worker_model', 'HuggingFaceTB/SmolLM2-135M-Instruct',
             'params', json_object('simulations', 10, 'max_depth', 5, 'branching', 2, 'exploration', 1.414, 'temperature', 0.7, 'seed', t),
             'tags', ['bench', domain])
         WHEN 'node_expanded' THEN json_object('node_id', 'n' || node::VARCHAR,
             'parent_id', CASE WHEN node = 0 THEN NULL ELSE 'n' || ((node - 1) // 2)::VARCHAR END, 'depth', depth,
             'thought', CASE WHEN node = 0 THEN query ELSE thought END, 'terminal', node >= 10,
             'answer', CASE WHEN node >= 10 THEN (h % 100)::VARCHAR END,
             'llm', CASE WHEN node > 0 THEN json_object('model', 'HuggingFaceTB/SmolLM2-135M-Instruct', 'prompt_tokens', 180 + h % 50, 'completion_tokens', 40 + h % 30, 'latency_ms', 35.5) END)
         WHEN 'node_evaluated' THEN json_object('node_id', 'n' || node::VARCHAR, 'value', (h % 1000) / 1000.0,
             'signals', json_object('llm', (h % 1000) / 1000.0, 'consistency', 0.5))
         WHEN 'verification' THEN json_object('node_id', 'n' || node::VARCHAR, 'answer', (h % 100)::VARCHAR,
             'passed', node = leaf OR h % 3 = 0, 'score', CASE WHEN node = leaf OR h % 3 = 0 THEN 1.0 ELSE 0.0 END,
             -- three in four verdicts checked against a reference, one in four by agreement (out of the default training_examples)
             'verifier', domain || CASE WHEN h % 4 = 0 THEN '.consistency' ELSE '.reference' END, 'details', json_object('checked', true))
         WHEN 'reflection' THEN json_object('node_id', 'n1' || (slot - 51)::VARCHAR, 'text', 'The previous attempt made an arithmetic slip; recompute carefully.')
         WHEN 'trace_completed' THEN json_object('status', CASE WHEN u < 92 THEN 'ok' ELSE 'failed' END,
             'final_answer', (hash(t * 1000 + 40 + leaf - 9) % 100)::VARCHAR,
             'best_path', list_transform(range(0, ld + 1), lambda d: 'n' || ((lp >> (ld - d)) - 1)::VARCHAR),
             'verified', u < 70, 'reward', r,
             'reward_components', json_object('verifier', 1.0, 'value', r),
             'node_stats', [json_object('node_id', 'n0', 'visits', 10, 'value', 0.6)],
             'usage', json_object('llm_calls', 20, 'prompt_tokens', 4000, 'completion_tokens', 900),
             'duration_ms', 1234.5, 'error', CASE WHEN u >= 92 THEN 'no verified answer' END)
         ELSE json_object('reward', 0.95, 'label', 'correct', 'by', 'reviewer', 'rating', 5, 'comment', NULL)
       END::VARCHAR AS data
FROM j
"""

# The raw JSONL read as the store's `_events_all` would be: the typed columns are extracted from
# the JSON in every query, which is what a user without the store has to do.
def raw_events_source(glob: str) -> str:
    typed = ", ".join(f'_x."{key}" AS "{name}"' for name, (_t, key) in CURRENT.fields.items())
    return (
        f"SELECT id, v, type, trace_id, seq, ts, NULL::VARCHAR AS source, NULL::VARCHAR AS source_path, NULL::BIGINT AS \"offset\", "
        f"NULL::VARCHAR AS writer, ts::DATE AS date, data, {typed} FROM ("
        f"SELECT *, {CURRENT.extract_sql('data')} AS _x FROM read_ndjson('{glob}', columns = "
        "{'v': 'INTEGER', 'id': 'VARCHAR', 'type': 'VARCHAR', 'trace_id': 'VARCHAR', 'seq': 'BIGINT', 'ts': 'TIMESTAMPTZ', 'data': 'JSON'}))"
    )


WORDS = (
    "the sum of both sides equals so we divide by two and then subtract three from each term which gives "
    "a remainder because the function returns list index value when loop ends check edge case empty input "
    "therefore answer must be positive integer since area width height multiply carefully recompute total "
    "next we compare both results against expected output then verify units and round final figure"
).split()[:64]

QUERIES = {
    "count training_examples (math, reward > 0.9)": "SELECT count(*) FROM training_examples WHERE domain = 'math' AND reward > 0.9",
    "fetch 1,000 trajectories": "SELECT * FROM trajectories WHERE domain = 'code' LIMIT 1000",
    "count traces by domain": "SELECT domain, count(*) FROM traces GROUP BY domain",
    # The events view itself (each id once, conflicting copies out: store/conflicts.py).
    "count events, distinct ids": "SELECT count(*), count(DISTINCT id) FROM events",
    "count completions (events)": "SELECT count(*) FROM events WHERE type = 'trace_completed'",
}


def _chunks(gen: duckdb.DuckDBPyConnection, log_dir: Path, traces: int, lo_hi: list[tuple[int, int]], first_chunk: int = 0):
    for chunk, (lo, hi) in enumerate(lo_hi, start=first_chunk):
        rel = gen.sql(GEN_SQL, params={"t_lo": lo, "t_hi": hi, "traces": traces, "words": WORDS})
        gen.execute("CREATE OR REPLACE TEMP TABLE chunk AS SELECT * FROM rel")
        jsonl = log_dir / f"kaelum-bench-{chunk:05d}.jsonl"
        gen.execute(
            "COPY (SELECT v, id, type, trace_id, seq, strftime(ts, '%Y-%m-%dT%H:%M:%S.%fZ') AS ts, data::JSON AS data FROM chunk) "
            f"TO '{jsonl}' (FORMAT json)"
        )
        table = gen.sql(
            f"SELECT id, v, type, trace_id, seq, ts, data, '{chunk:05d}' AS source, '{jsonl}' AS source_path, "
            "(row_number() OVER () * 600)::BIGINT AS \"offset\", NULL::VARCHAR AS writer FROM chunk"
        ).to_arrow_table().cast(EVENTS_SCHEMA)
        yield chunk, jsonl, table, hi - lo


def build(workdir: Path, n_events: int) -> tuple[Path, Path, int, list[tuple[int, float]]]:
    """The store and its logs; also (events, seconds) of every StoreWriter.commit, to time commits alone."""
    store_dir, log_dir = workdir / "store", workdir / "logs"
    shutil.rmtree(workdir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    traces = max(1, round(n_events / EVENTS_PER_TRACE))
    gen = duckdb.connect(":memory:")
    gen.execute("SET TimeZone = 'UTC'")
    written, commits = 0, []
    from tqdm import tqdm

    with StoreWriter(store_dir, writer_id="bench") as w, tqdm(total=traces, desc="generate+commit", unit="trace") as bar:
        ranges = [(lo, min(traces, lo + TRACES_PER_COMMIT)) for lo in range(0, traces, TRACES_PER_COMMIT)]
        for chunk, jsonl, table, n_traces in _chunks(gen, log_dir, traces, ranges):
            size = jsonl.stat().st_size
            t0 = time.perf_counter()
            w.commit(table, sources=[SourceRange(f"{chunk:05d}", str(jsonl), 0, size, table.num_rows)])
            commits.append((table.num_rows, time.perf_counter() - t0))
            written += table.num_rows
            bar.update(n_traces)
    return store_dir, log_dir, written, commits


def timed(con: duckdb.DuckDBPyConnection, sql: str, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = con.execute(sql).fetchall()
        times.append(time.perf_counter() - t0)
        result = rows[0] if len(rows) == 1 else len(rows)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5_000_000, help="number of synthetic events (default 5,000,000)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/kaelum-store-bench"))
    ap.add_argument("--repeat", type=int, default=3, help="runs per query on the store (median reported)")
    ap.add_argument("--raw-repeat", type=int, default=1, help="runs per query on the raw JSONL")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh", type=int, default=100_000, help="events committed after compaction, in commits of ~2,700 (0: skip)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    t0 = time.perf_counter()
    store_dir, log_dir, n, commits = build(args.workdir, args.events)
    build_s = time.perf_counter() - t0
    info = open_store(store_dir)
    store_mb = sum(p.stat().st_size for p in store_dir.rglob("*.parquet")) / 1e6
    jsonl_mb = sum(p.stat().st_size for p in log_dir.glob("*.jsonl")) / 1e6
    seg_before = count_files(info)

    store_con = connect(store_dir, threads=args.threads)
    before = {name: timed(store_con, sql, args.repeat) for name, sql in QUERIES.items()}
    t1 = time.perf_counter()
    res = compact(store_dir, retention_s=0)
    compact_s = time.perf_counter() - t1
    after = {name: timed(store_con, sql, args.repeat) for name, sql in QUERIES.items()}
    fresh: dict[str, tuple[float, object]] = {}
    fresh_first = None
    if args.fresh:
        traces = max(1, round(n / EVENTS_PER_TRACE))
        per = 50  # ~2,700 events per commit: a following daemon's flushes
        extra = max(1, round(args.fresh / EVENTS_PER_TRACE))
        ranges = [(lo, min(traces + extra, lo + per)) for lo in range(traces, traces + extra, per)]
        gen = duckdb.connect(":memory:")
        gen.execute("SET TimeZone = 'UTC'")
        with StoreWriter(store_dir, writer_id="bench-fresh") as w:
            for chunk, jsonl, table, _n in _chunks(gen, log_dir, traces + extra, ranges, first_chunk=100_000):
                w.commit(table, sources=[SourceRange(f"{chunk:05d}", str(jsonl), 0, jsonl.stat().st_size, table.num_rows)])
        # The first query of a new version also checks the fresh ids for conflicts (store/conflicts.py).
        fresh_first, _ = timed(store_con, next(iter(QUERIES.values())), 1)
        fresh = {name: timed(store_con, sql, args.repeat) for name, sql in QUERIES.items()}

    raw_con = duckdb.connect(":memory:")
    raw_con.execute(f"SET threads = {args.threads}")
    raw_con.execute("SET TimeZone = 'UTC'")
    no_quarantine = f"read_parquet('{schema_file('quarantine')}', hive_partitioning = true, hive_types = {{'date': DATE}})"
    # The synthetic events have no conflicting ids: the raw side is given an empty conflicts set, so
    # that it answers the same questions at the cost it had before conflicts were resolved.
    no_conflicts = f"read_parquet('{conflicts_schema_file()}')"
    install_views(raw_con, Scans(events="", quarantine=no_quarantine, conflicts=no_conflicts),
                  events_source=raw_events_source(str(log_dir / "*.jsonl")))
    raw = {name: timed(raw_con, sql, args.raw_repeat) for name, sql in QUERIES.items()}

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average (1/5/15 min) at the end: {load}")
    print(f"{n:,} events ({n / EVENTS_PER_TRACE:,.0f} traces): built in {build_s:.1f} s; "
          f"Parquet store {store_mb:,.0f} MB vs JSONL {jsonl_mb:,.0f} MB; DuckDB threads={args.threads}")
    per_s = sorted(e / s for e, s in commits)
    print(f"commit: {len(commits)} commits of ~{commits[0][0]:,} events, median {statistics.median(s for _e, s in commits):.2f} s each, "
          f"{statistics.median(per_s):,.0f} events/s (slowest {per_s[0]:,.0f}/s)")
    print(f"data files: {seg_before} before compaction, {res.files_after} after ({compact_s:.1f} s)")
    if fresh_first is not None:
        print(f"+fresh: first query after the fresh commits {fresh_first:.3f} s (it also checks the fresh ids for conflicting copies)")
    print()
    w = max(map(len, QUERIES))
    print(f"{'query':<{w}}  {'store':>9}  {'compacted':>9}  {'+fresh':>9}  {'raw JSONL':>9}  {'speed-up':>8}  "
          "result (store = compacted; raw = +fresh: the JSONL holds the fresh events too)")
    for name in QUERIES:
        (b, rb), (a, ra), (r, rr) = before[name], after[name], raw[name]
        f = f"{fresh[name][0]:8.3f}s" if fresh else f"{'-':>9}"
        rf = fresh[name][1] if fresh else ra
        same = "ok" if rb == ra and rf == rr else f"MISMATCH {rb} {ra} {rf} {rr}"
        print(f"{name:<{w}}  {b:8.3f}s  {a:8.3f}s  {f}  {r:8.3f}s  {r / a:7.1f}x  {ra} {same}")


if __name__ == "__main__":
    main()
