"""Benchmark: kaelum-ingest catch-up throughput against DuckDB's own bulk load, and freshness.

One run, one synthetic file of realistic events (whole LATS traces: trace_started, node_expanded,
node_evaluated, verification, trace_completed with realistic payload sizes):

(a) catch-up: `kaelum-ingest --once` (a subprocess, the real CLI) over the file into a new store;
(b) ceiling: DuckDB's `COPY (SELECT * FROM read_ndjson(file)) TO ... (FORMAT parquet)`;
(c) freshness: the daemon follows a directory while a TraceLogger appends 1,000 events/s; a
    reader polls `store.connect()` and records, per event, write → first visible.

With ``--moto`` the catch-up and the freshness run again against an S3 store on a moto_server
started on a free loopback port (the real delta-rs S3 client), reported as a ratio to the local
folder.

    python benchmarks/ingest_bench.py --events 1000000 [--moto]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import duckdb
import orjson

from kaelum.events import DOMAINS, SCHEMA_VERSION, Event, new_event_id, utc_now  # DOMAINS: the domain registry's names
from kaelum.tracelog import TraceLogger

WORDS = ("the of a to in is we that for it with as on by this be are from at an so let then sum total value step "
         "compute answer check carry remainder prime factor equation solve derivative integral variable").split()


def _text(r: random.Random, n: int) -> str:
    return " ".join(r.choice(WORDS) for _ in range(n))


def synthetic_trace(r: random.Random) -> list[dict]:
    """The events of one LATS search, shaped like the runtime's (see docs/architecture.md)."""
    tid = new_event_id()
    out: list[dict] = []

    def ev(t: str, data: dict) -> None:
        out.append({"v": SCHEMA_VERSION, "id": new_event_id(), "type": t, "trace_id": tid, "seq": len(out), "ts": utc_now(), "data": data})

    d = r.choice(DOMAINS)
    ev("trace_started", {"query": _text(r, 25), "domain": d, "router": {"domain": d, "confidence": r.random(), "method": "keywords"},
                         "worker_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                         "params": {"simulations": 8, "max_depth": 5, "branching": 2, "exploration": 1.414, "temperature": 0.7, "seed": None}, "tags": ["bench"]})
    ev("node_expanded", {"node_id": "n0", "parent_id": None, "depth": 0, "thought": _text(r, 25), "terminal": False, "answer": None, "llm": None})
    path = ["n0"]
    for i in range(1, r.randint(6, 14)):
        term = r.random() < 0.2
        ev("node_expanded", {"node_id": f"n{i}", "parent_id": f"n{i - 1}", "depth": i, "thought": f"Step {i}: " + _text(r, r.randint(8, 40)),
                             "terminal": term, "answer": "42" if term else None,
                             "llm": {"model": "smol", "prompt_tokens": r.randint(50, 400), "completion_tokens": r.randint(5, 60), "latency_ms": r.random() * 300}})
        ev("node_evaluated", {"node_id": f"n{i}", "value": r.random(), "signals": {"llm": r.random(), "consistency": r.random()}})
        path.append(f"n{i}")
        if term:
            ev("verification", {"node_id": f"n{i}", "answer": "42", "passed": True, "score": 1.0, "verifier": "math.sympy", "details": {"expected": "42"}})
    ev("trace_completed", {"status": "ok", "final_answer": "42", "best_path": path, "verified": True, "reward": r.random(),
                           "reward_components": {"verifier": 1.0, "value": 0.5}, "node_stats": [{"node_id": n, "visits": 3, "value": 0.5} for n in path],
                           "usage": {"llm_calls": len(path), "prompt_tokens": 900, "completion_tokens": 200}, "duration_ms": 1234.5, "error": None})
    return out


def write_file(path: str, n: int, seed: int = 0) -> int:
    r = random.Random(seed)
    count = 0
    with open(path, "wb") as fh:
        while count < n:
            for e in synthetic_trace(r)[: n - count]:
                fh.write(orjson.dumps(e) + b"\n")
                count += 1
    return count


def duckdb_ceiling(path: str, out: str) -> float:
    con = duckdb.connect()
    t = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM read_ndjson('{path}')) TO '{out}' (FORMAT parquet)")
    return time.perf_counter() - t


def parse_only(path: str, block: int | None = None, keep: list | None = None) -> float:
    """The ingester's read + parse + contract check over the file, without writing the store."""
    from ingest.daemon import IngestConfig
    from ingest.parse import parse_block

    block = block or IngestConfig.block_bytes  # the daemon's block size

    t = time.perf_counter()
    with open(path, "rb") as fh:
        pos, rest = 0, b""
        while True:
            chunk = fh.read(block)
            if not chunk:
                break
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            parsed = parse_block(data[:cut], pos)
            if keep is not None:
                keep.append(parsed.events)
            pos += cut
            rest = data[cut:]
    return time.perf_counter() - t


def commit_only(tables: list, store: str) -> float:
    """The store's share: StoreWriter.commit (one Delta commit) of the already parsed blocks, one commit each."""
    import pyarrow as pa

    from store import StoreWriter

    with StoreWriter(store, writer_id="bench-commit-only") as w:
        t = time.perf_counter()
        for tb in tables:
            n = tb.num_rows
            w.commit(tb.append_column("source", pa.array(["fp"] * n, pa.string())).append_column("source_path", pa.array(["p"] * n, pa.string())))
        return time.perf_counter() - t


def catch_up(log_dir: str, store: str, build: str | None = None) -> tuple[float, dict]:
    """`kaelum-ingest --once` in a subprocess: this checkout's, or (`build`) another checkout's code."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "ingest.cli", "--log-dir", log_dir, "--store", store, "--once", "--no-progress", "--log-level", "warning"],
                         capture_output=True, check=True, cwd=build or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    wall = time.perf_counter() - t
    return wall, json.loads(out.stdout.decode().strip().splitlines()[-1])


def start_moto() -> tuple[subprocess.Popen, str]:
    """A moto_server on a free loopback port, the AWS variables pointing at it, a bucket `kaelum-bench`."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    import boto3

    boto3.client("s3").create_bucket(Bucket="kaelum-bench")
    return proc, "s3://kaelum-bench"


def _store_exists(store: str) -> bool:
    from deltalake import DeltaTable

    from store.layout import is_url, storage_options

    if is_url(store):
        return DeltaTable.is_deltatable(store + "/events", storage_options=storage_options(store))
    return os.path.isdir(os.path.join(store, "events", "_delta_log"))


def freshness(work: str, seconds: float, rate: int, extra: list[str] = (), store_base: str | None = None) -> dict:
    log_dir = os.path.join(work, "fresh-logs" + ("-s3" if store_base else ""))
    store = (store_base + "/fresh-store") if store_base else os.path.join(work, "fresh-store")
    os.makedirs(log_dir)
    daemon = subprocess.Popen([sys.executable, "-m", "ingest.cli", "--log-dir", log_dir, "--store", store, "--no-progress", "--log-level", "info", *extra],
                              stderr=open(os.path.join(work, "fresh-daemon.log"), "wb"))
    import store as store_pkg

    written: dict[str, float] = {}
    seen: dict[str, float] = {}
    stop = threading.Event()
    # wait until the daemon has created the store
    deadline = time.monotonic() + 60
    while not _store_exists(store) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)

    def poll() -> None:
        # Local: one connection, as a notebook or the trainer would hold it: its views see new
        # commits on every query. A URL store's connection reads one version, so the poller
        # connects per query there. A row is visible no later than the start of the query.
        from store.layout import is_url

        con = store_pkg.connect(store)
        while not stop.is_set() or len(seen) < len(written):
            now = time.time()
            if is_url(store):
                con.close()
                con = store_pkg.connect(store)
            rows = con.execute("select id from events where ts >= now() - interval 10 second").fetchall()
            for (i,) in rows:
                if i not in seen:
                    seen[i] = now
            if stop.is_set() and time.time() - stop_time[0] > 10:
                break
            time.sleep(0.02)

    stop_time = [0.0]
    poller = threading.Thread(target=poll)
    poller.start()
    r = random.Random(1)
    with TraceLogger(log_dir, fsync="never") as tl:
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < seconds:
            target = t0 + i / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            e = Event(type="reflection", trace_id="bench", seq=i, data={"node_id": f"n{i}", "text": _text(r, 30)})
            tl.log(e)
            written[e.id] = time.time()
            i += 1
    stop_time[0] = time.time()
    stop.set()
    poller.join()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=60)
    delays = sorted(seen[k] - written[k] for k in written if k in seen)
    q = statistics.quantiles(delays, n=100) if len(delays) > 1 else [float("nan")] * 99
    return {"written": len(written), "seen": len(delays), "p50_s": q[49], "p99_s": q[98], "max_s": delays[-1] if delays else float("nan"),
            "achieved_rate": len(written) / seconds}


def compare_builds(args: argparse.Namespace, work: str, log_dir: str, path: str, n: int) -> None:
    """Per round: the ceiling, then catch-up with the other checkout and with this one (the order
    alternating from round to round), each into a new store."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows: dict[str, list[float]] = {"other": [], "this": []}
    for k in range(args.repeat):
        load = open("/proc/loadavg").read().split()[0]
        c = duckdb_ceiling(path, os.path.join(work, f"duckdb-{k}.parquet"))
        line = [f"round {k + 1} (load {load}): ceiling {c:.2f}s"]
        for name in (("other", "this") if k % 2 == 0 else ("this", "other")):
            store = os.path.join(work, f"store-{name}-{k}")
            _w, summary = catch_up(log_dir, store, args.compare_build if name == "other" else here)
            assert summary["events"] == n, summary
            rows[name].append(summary["seconds"])
            line.append(f"{name} {summary['seconds']:.2f}s ({c / summary['seconds']:.0%} of COPY; end-of-run {summary.get('compaction_seconds', 0.0):.2f}s)")
            shutil.rmtree(store, ignore_errors=True)
        print("; ".join(line), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"median catch-up: {args.compare_build} {med['other']:.2f}s, this checkout {med['this']:.2f}s ({med['other'] / med['this']:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--fresh-seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="(ceiling, catch-up) pairs; the median pair is reported")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--fresh-only", action="store_true", help="only the freshness part")
    ap.add_argument("--daemon-arg", action="append", default=[], help="extra kaelum-ingest flag for the freshness daemon (repeat)")
    ap.add_argument("--moto", action="store_true", help="also run catch-up and freshness on S3 (a moto_server on loopback)")
    ap.add_argument("--compare-build", default=None, metavar="CHECKOUT",
                    help="also run each pair's catch-up with the code of another checkout (e.g. a git worktree of main), "
                         "alternating with this one's, and report both (then only catch-up is measured)")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="kaelum-ingest-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        if args.fresh_only:
            f = freshness(work, args.fresh_seconds, args.rate, args.daemon_arg)
            print(f"freshness at {f['achieved_rate']:.0f} events/s {' '.join(args.daemon_arg)}: p50 {f['p50_s'] * 1000:.0f} ms, "
                  f"p99 {f['p99_s'] * 1000:.0f} ms, max {f['max_s'] * 1000:.0f} ms ({f['seen']}/{f['written']} seen)")
            return
        log_dir = os.path.join(work, "logs")
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, "synthetic.jsonl")
        t = time.perf_counter()
        n = write_file(path, args.events)
        size = os.path.getsize(path)
        print(f"synthetic file: {n} events, {size / 2**20:.1f} MiB ({time.perf_counter() - t:.1f}s to write)", flush=True)

        if args.compare_build:
            compare_builds(args, work, log_dir, path, n)
            return
        # Pairs (ceiling, catch-up) back to back: on a shared machine the load drifts, and a
        # ratio from adjacent runs is more telling than one from runs minutes apart.
        pairs = []
        for k in range(args.repeat):
            c = duckdb_ceiling(path, os.path.join(work, f"duckdb-{k}.parquet"))
            w, summary = catch_up(log_dir, os.path.join(work, f"store-{k}"))
            assert summary["events"] == n, summary
            pairs.append((c, summary["seconds"], w, summary.get("compaction_seconds", 0.0)))
            print(f"pair {k + 1}: ceiling {c:.2f}s, catch-up {summary['seconds']:.2f}s -> {c / summary['seconds']:.0%}", flush=True)
            shutil.rmtree(os.path.join(work, f"store-{k}"), ignore_errors=True)
        ceiling, own, wall, end_s = sorted(pairs, key=lambda p: p[0] / p[1])[len(pairs) // 2]  # the median pair
        tables: list = []
        parse_s = parse_only(path, keep=tables)
        commit_s = commit_only(tables, os.path.join(work, "commit-only-store"))
        del tables
        os.sync()  # the phases above wrote GBs; their writeback would stall the daemon's fsyncs
        fresh = freshness(work, args.fresh_seconds, args.rate, args.daemon_arg)

        mib = size / 2**20
        print()
        print(f"{'(median pair; halves measured once after)':38} {'seconds':>9} {'events/s':>12} {'MiB/s':>8}")
        print(f"{'DuckDB COPY read_ndjson -> parquet':38} {ceiling:9.2f} {n / ceiling:12,.0f} {mib / ceiling:8.1f}")
        print(f"{'  ingest read+parse+check only':38} {parse_s:9.2f} {n / parse_s:12,.0f} {mib / parse_s:8.1f}")
        print(f"{'  store StoreWriter.commit only':38} {commit_s:9.2f} {n / commit_s:12,.0f} {mib / commit_s:8.1f}")
        print(f"{'kaelum-ingest --once (in-process)':38} {own:9.2f} {n / own:12,.0f} {mib / own:8.1f}")
        print(f"{'  of which end-of-run summary/compaction':38} {end_s:9.2f}")
        print(f"{'kaelum-ingest --once (incl. startup)':38} {wall:9.2f} {n / wall:12,.0f} {mib / wall:8.1f}")
        print(f"catch-up / ceiling (median of {len(pairs)} pairs): {ceiling / own:.0%} (goal >= 50%); incl. interpreter startup: {ceiling / wall:.0%}; "
              f"all pairs: {', '.join(f'{c / o:.0%}' for c, o, _w, _e in pairs)}")
        print(f"freshness at {fresh['achieved_rate']:.0f} events/s: p50 {fresh['p50_s'] * 1000:.0f} ms, p99 {fresh['p99_s'] * 1000:.0f} ms, "
              f"max {fresh['max_s'] * 1000:.0f} ms ({fresh['seen']}/{fresh['written']} seen; goal p99 <= 500 ms)")
        if args.moto:
            moto, base = start_moto()
            try:
                w_s3, summary_s3 = catch_up(log_dir, base + "/store-s3")
                assert summary_s3["events"] == n, summary_s3
                fresh_s3 = freshness(work, args.fresh_seconds, args.rate, args.daemon_arg, store_base=base)
            finally:
                moto.terminate()
            print(f"S3 (moto on loopback) catch-up: {summary_s3['seconds']:.2f}s = {own / summary_s3['seconds']:.2f}x the local folder's throughput; "
                  f"freshness p50 {fresh_s3['p50_s'] * 1000:.0f} ms, p99 {fresh_s3['p99_s'] * 1000:.0f} ms "
                  f"({fresh_s3['p99_s'] / fresh['p99_s']:.1f}x the local p99; {fresh_s3['seen']}/{fresh_s3['written']} seen)")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
