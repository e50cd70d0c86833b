"""`kaelum ui` benchmark: every page's API call on a store of 1M traces, against a plain view query.

Builds (once; `--reuse` keeps it) a store of `--traces` synthetic traces written as Arrow tables
straight through `store.StoreWriter` (no JSONL, no ingester) and compacted once (`store.compact.compact`): each trace has
a start, a root and two terminal children (one passes its verification, one fails, so every trace
yields a preference pair), two verifications and a completion, and every 20th trace a feedback —
7.05 events per trace. Then it starts the real server (uvicorn on 127.0.0.1, a free port) and times
each page's API request over HTTP, side by side with a baseline on the same views through
`store.connect`: the reads the UI made before `store.reads` (every query over the views) and the
dataset page before `train.data.count_selection` (every example of the view read, then selected). Each page
is timed on the compacted store, then again after one feedback (fresh events on top of the
per-trace summary, as while kaelum-ingest runs). It prints p50 and p95 per page.

    python benchmarks/ui_bench.py --traces 20000 --workdir /tmp/kaelum-ui-bench-20k      # small, a minute
    python benchmarks/ui_bench.py --traces 1000000 --workdir /tmp/kaelum-ui-bench        # the issue's size
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import duckdb

from store import StoreWriter, SourceRange
from store.compact import compact
from store.schema import EVENTS_SCHEMA

TRACES_PER_COMMIT = 50_000
SLOTS = 8  # 0 start, 1-3 nodes, 4-5 verifications, 6 completion, 7 feedback (every 20th trace)

GEN_SQL = """
WITH s AS (
  SELECT t, slot, hash(t * 100 + slot) AS h,
         ['math','code','logic','factual','creative','analysis'][1 + t % 6] AS domain,
         TIMESTAMPTZ '2026-10-01 00:00:00+00' + to_microseconds((t * 60 * 86400000000 // $traces)::BIGINT) AS t0,
         (hash(t) % 1000) / 1000.0 AS r, hash(t * 7 + 3) % 100 AS u
  FROM range($t_lo, $t_hi) a(t), range($slots) b(slot)
  WHERE slot < 7 OR t % 20 = 0
), j AS (
  SELECT *, 'Problem ' || t::VARCHAR || ' in ' || domain || ': what is ' || (t % 97)::VARCHAR || ' times ' || (t % 89)::VARCHAR || '?' AS query,
         ((t % 97) * (t % 89))::VARCHAR AS good
  FROM s
)
SELECT uuid7_at(t0 + to_microseconds(slot * 250000), t::VARCHAR || '-' || slot::VARCHAR) AS id, 1::INT AS v,
       CASE slot WHEN 0 THEN 'trace_started' WHEN 1 THEN 'node_expanded' WHEN 2 THEN 'node_expanded' WHEN 3 THEN 'node_expanded'
                 WHEN 4 THEN 'verification' WHEN 5 THEN 'verification' WHEN 6 THEN 'trace_completed' ELSE 'feedback' END AS type,
       uuid7_at(t0, 'trace-' || t::VARCHAR) AS trace_id, slot::BIGINT AS seq,
       t0 + to_microseconds(slot * 250000) AS ts,
       CASE slot
         WHEN 0 THEN json_object('query', query, 'domain', domain, 'router', json_object('domain', domain, 'confidence', 0.9, 'method', 'keywords'),
             'worker_model', CASE WHEN t % 3 = 0 THEN 'SmolLM2-360M' ELSE 'SmolLM2-135M' END,
             'params', json_object('simulations', 4, 'max_depth', 3, 'branching', 2, 'exploration', 1.0, 'temperature', 0.7, 'seed', t),
             'tags', ['bench', CASE WHEN t % 10 = 0 THEN 'hard' ELSE 'easy' END])
         WHEN 1 THEN json_object('node_id', 'n0', 'parent_id', NULL, 'depth', 0, 'thought', query, 'terminal', false, 'answer', NULL, 'llm', NULL)
         WHEN 2 THEN json_object('node_id', 'n1', 'parent_id', 'n0', 'depth', 1, 'thought', 'Multiply the two numbers: the product is ' || good || '.',
             'terminal', true, 'answer', good, 'llm', json_object('model', 'SmolLM2-135M', 'prompt_tokens', 120 + h % 40, 'completion_tokens', 20 + h % 10, 'latency_ms', 30.5))
         WHEN 3 THEN json_object('node_id', 'n2', 'parent_id', 'n0', 'depth', 1, 'thought', 'Add the two numbers instead, which gives ' || (t % 97 + t % 89)::VARCHAR || '.',
             'terminal', true, 'answer', (t % 97 + t % 89)::VARCHAR, 'llm', json_object('model', 'SmolLM2-135M', 'prompt_tokens', 120 + h % 40, 'completion_tokens', 20 + h % 10, 'latency_ms', 31.5))
         WHEN 4 THEN json_object('node_id', 'n1', 'answer', good, 'passed', true, 'score', 1.0, 'verifier', domain || CASE WHEN t % 4 = 0 THEN '.consistency' ELSE '.reference' END, 'details', json_object())
         WHEN 5 THEN json_object('node_id', 'n2', 'answer', (t % 97 + t % 89)::VARCHAR, 'passed', false, 'score', 0.0, 'verifier', domain || '.reference', 'details', json_object())
         WHEN 6 THEN json_object('status', CASE WHEN u < 92 THEN 'ok' ELSE 'failed' END, 'final_answer', good,
             'best_path', ['n0', 'n1'], 'verified', u < 70, 'reward', r, 'reward_components', json_object('verifier', 1.0),
             'node_stats', [json_object('node_id', 'n0', 'visits', 3, 'value', 0.6)],
             'usage', json_object('llm_calls', 2, 'prompt_tokens', 260, 'completion_tokens', 50), 'duration_ms', 820.0,
             'error', CASE WHEN u >= 92 THEN 'no verified answer' END)
         ELSE json_object('reward', 0.95, 'label', 'correct', 'by', 'reviewer')
       END::VARCHAR AS data
FROM j
"""


# Ids as the runtime makes them (kaelum.events.new_event_id): UUIDv7, a millisecond timestamp then
# random bits, so that ids, like the runtime's, grow with time (and the store's statistics on them
# are as useful as in a real store); the random bits come from a hash of `seed`.
UUID7_SQL = """
CREATE MACRO uuid7_at(ts, seed) AS
  substr(lower(lpad(to_hex(epoch_ms(ts)), 12, '0')), 1, 8) || '-' || substr(lower(lpad(to_hex(epoch_ms(ts)), 12, '0')), 9, 4)
  || '-7' || substr(md5(seed), 1, 3) || '-8' || substr(md5(seed), 4, 3) || '-' || substr(md5(seed), 7, 12)
"""


def build(store_dir: Path, traces: int) -> dict[str, float]:
    shutil.rmtree(store_dir, ignore_errors=True)
    gen = duckdb.connect(":memory:")
    gen.execute("SET TimeZone = 'UTC'")
    gen.execute(UUID7_SQL)
    t0 = time.perf_counter()
    events = 0
    with StoreWriter(store_dir, writer_id="ui-bench") as w:
        for chunk, lo in enumerate(range(0, traces, TRACES_PER_COMMIT)):
            hi = min(traces, lo + TRACES_PER_COMMIT)
            rel = gen.sql(GEN_SQL, params={"t_lo": lo, "t_hi": hi, "traces": traces, "slots": SLOTS})
            table = gen.sql(
                f"SELECT id, v, type, trace_id, seq, ts, data, 'bench-{chunk:05d}' AS source, 'bench-{chunk:05d}.jsonl' AS source_path, "
                "(row_number() OVER () * 400)::BIGINT AS \"offset\", NULL::VARCHAR AS writer FROM rel"
            ).to_arrow_table().cast(EVENTS_SCHEMA)
            w.commit(table, sources=[SourceRange(f"bench-{chunk:05d}", f"bench-{chunk:05d}.jsonl", 0, table.num_rows * 400, table.num_rows)])
            events += table.num_rows
            print(f"  committed {hi:,} traces ({events:,} events) in {time.perf_counter() - t0:.0f} s", flush=True)
    t_write = time.perf_counter() - t0
    t1 = time.perf_counter()
    compact(store_dir)
    t_compact = time.perf_counter() - t1
    # A few refused lines so that the quarantine page has something to page through.
    from store import QuarantineRecord

    with StoreWriter(store_dir, writer_id="ui-bench-q") as w:
        w.commit(quarantine=[QuarantineRecord("bad.jsonl", "bad", i * 100, b'{"v": 1, broken', "invalid JSON") for i in range(200)])
    return {"events": events, "write_s": t_write, "compact_s": t_compact}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn, repeat: int, limit_s: float | None = None) -> tuple[list[float], str | None]:
    """One warm-up call, then `repeat` timed calls (seconds); with `limit_s`, a call that runs
    longer is stopped (by `fn` itself) and the note says so."""
    times: list[float] = []
    for i in range(repeat + 1):
        t = time.perf_counter()
        note = fn()
        dt = time.perf_counter() - t
        if note:
            return times or [dt], note
        if i:
            times.append(dt)
    return times, None


def pct(times: list[float], q: float) -> float:
    """The q-quantile of `times` (nearest rank: with few samples p95 is the slowest)."""
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class OldReads:
    """The reads the UI made before store.reads (session 3's ui.reader): every query over the views,
    filtered afterwards, so that each page's figure has the old way of reading beside it."""

    LIMIT_S = 120.0

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def q(self, sql: str, *params: object) -> str | None:
        from ui.reader import TooSlow, time_limit

        try:
            with time_limit(self.con, self.LIMIT_S, "the old read"):
                self.con.execute(sql, list(params)).fetchall()
        except TooSlow as exc:
            return str(exc)
        return None

    def list(self, where: str = "true", sort: str = "started_at desc", offset: int = 0):
        from ui.reader import LIST_COLUMNS

        def call() -> str | None:
            return self.q(f"select count(*), count(*) filter (where {where}) from traces") or self.q(
                f"select {LIST_COLUMNS} from traces where {where} order by {sort} nulls last, trace_id limit 50 offset {offset}")
        return call

    def trace(self, tid: str):
        def call() -> str | None:
            return (self.q("select * from traces where trace_id = ?", tid)
                    or self.q("select * from nodes where trace_id = ? order by seq", tid)
                    or self.q("select type, seq, ts, node_id, data from events where trace_id = ? and type <> 'node_expanded' order by ts, seq", tid))
        return call

    def pairs(self, tid: str):
        return lambda: self.q("select * from preference_pairs where trace_id = ? order by branch_node_id", tid)

    def datasets(self, domain: str | None, min_reward: float, where: str | None = None):
        """The dataset page before `train.data.count_selection`: every example of the view read, then
        the trainer's `select_rows` over them."""
        def call() -> str | None:
            from train.data import select_rows

            table = self.con.sql("select * from training_examples").to_arrow_table()
            select_rows(table, view="training_examples", domain=domain, min_reward=min_reward, where=where)
            return None
        return call

    def same(self, fn):
        """A page whose reads did not change: the same reader function, in-process on this connection."""
        def call() -> str | None:
            with self.con.cursor() as cur:
                fn(cur)
            return None
        return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=1_000_000)
    ap.add_argument("--workdir", default="/tmp/kaelum-ui-bench")
    ap.add_argument("--repeat", type=int, default=20, help="Timed calls per page (after one warm-up).")
    ap.add_argument("--baseline-repeat", type=int, default=3, help="Timed calls per old read (slow at 1M).")
    ap.add_argument("--reuse", action="store_true", help="Use the store already in --workdir.")
    args = ap.parse_args()
    store_dir = Path(args.workdir) / "store"
    if not (args.reuse and store_dir.exists()):
        print(f"building {args.traces:,} traces in {store_dir} ...", flush=True)
        b = build(store_dir, args.traces)
        print(f"built {b['events']:,} events: written in {b['write_s']:.1f} s, compacted in {b['compact_s']:.1f} s", flush=True)

    import httpx
    import uvicorn

    import store
    from ui import reader
    from ui.server import UIConfig, create_app

    port = free_port()
    app = create_app(UIConfig(store=str(store_dir), port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
    con = store.connect(store_dir)
    n_traces = con.execute("select count(*) from traces").fetchall()[0][0]
    tid = con.execute("select trace_id from traces where domain = 'math' order by started_at desc limit 1 offset 1234").fetchall()[0][0]
    old = OldReads(con)

    def get(path: str, **params: str):
        def call() -> str | None:
            r = http.get(path, params=params)
            if r.status_code == 503:  # a query past its time limit (ui.reader.time_limit)
                return "503: " + r.json()["error"]
            r.raise_for_status()
            return None
        return call

    filt = "domain = 'math' and verified = true and reward >= 0.8"
    csrf = http.get("/api/session").json()["csrf"]

    def cases():
        return [
            ("/ list, first page", get("/api/traces"), old.list()),
            ("/ list, 3 filters", get("/api/traces", domain="math", verified="true", reward_min="0.8"), old.list(filt)),
            ("/ list, text search", get("/api/traces", q="times 42"),
             old.list("(contains(lower(query), 'times 42') or contains(lower(coalesce(final_answer, '')), 'times 42'))")),
            ("/ list, by reward, page 201", get("/api/traces", sort="reward", order="asc", offset="10000"), old.list(sort="reward asc", offset=10000)),
            ("/ facets (filter menus)", get("/api/facets"), old.same(reader.facets)),
            ("/traces/{id}", get(f"/api/traces/{tid}"), old.trace(tid)),
            ("/traces/{id} pairs", get(f"/api/traces/{tid}/pairs"), old.pairs(tid)),
            ("/charts", get("/api/charts"), old.same(lambda cur: reader.charts(cur, {}))),
            ("/quarantine", get("/api/quarantine"), old.same(lambda cur: reader.quarantine(cur, {}))),
            ("/datasets (math, min 0.9)", get("/api/datasets", domain="math", min_reward="0.9", examples="3"), old.datasets("math", 0.9)),
            ("/datasets (min 0.7, --where)", get("/api/datasets", where="n_steps >= 1 and reward < 0.95", examples="3"),
             old.datasets(None, 0.7, "n_steps >= 1 and reward < 0.95")),
        ]

    def measure(title: str) -> None:
        load = " ".join(open("/proc/loadavg").read().split()[:3])
        print(f"\n{title}: {n_traces:,} traces; load average {load}; {args.repeat} calls per page (old reads: "
              f"{args.baseline_repeat}), after one warm-up\n")
        print(f"{'page':30} {'API p50':>9} {'p95':>8}   {'old p50':>9} {'p95':>8}   note")
        for name, call, base in cases():
            t_new, note = timed(call, args.repeat)
            row = f"{name:30} {pct(t_new, .5) * 1000:7.0f} ms {pct(t_new, .95) * 1000:5.0f} ms"
            t_old, old_note = timed(base, args.baseline_repeat)
            row += f"   {pct(t_old, .5) * 1000:7.0f} ms {pct(t_old, .95) * 1000:5.0f} ms"
            note = note or old_note and f"old: {old_note}"
            mark = "" if pct(t_new, .95) < 0.3 else "> 300 ms"
            print(f"{row}   {mark}{'  ' + note if note else ''}", flush=True)

    measure("compacted store (every trace in the summary)")
    # One feedback through the API: fresh events on top of the summary, as while kaelum-ingest runs.
    r = http.post(f"/api/traces/{tid}/feedback", json={"reward": 0.5, "label": "bench"}, headers={"X-Kaelum-CSRF": csrf})
    r.raise_for_status()
    measure("after one feedback (fresh events: one trace recomputed from its events)")
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"\nload average after: {load}")
    server.should_exit = True
    th.join(timeout=10)


if __name__ == "__main__":
    os.environ.setdefault("KAELUM_UI_USER", "bench")
    main()
