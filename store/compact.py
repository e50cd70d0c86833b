"""Compaction: merge a partition's small segments into one larger, well-sorted segment.

Safe against everything that runs beside it:
- readers: the merged segment is renamed in *before* its inputs are removed, so a query sees the
  rows once or twice, never zero times; the views de-duplicate (events on id, quarantine on
  (source, offset)), so every view's result is unchanged. Inputs are removed only after a grace
  period, so a query that listed the old files a moment earlier can still open them;
- writers: only segments whose commit record is durable (seq <= the writer's last committed seq)
  are merged, so a commit in flight is never half-taken; positions live in the commit records
  and are not touched;
- crashes: the plan (inputs, output) is written durably before the output is renamed in; the next
  compaction finishes a plan whose output exists (removes its inputs) and drops one whose output
  does not (the inputs are still all there);
- another compaction: an advisory lock makes a second one fail fast with a clear error.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from .layout import SCHEMA_PARTITION, StoreError, StoreInfo, fsync_dir, fsync_file, open_store, write_durable
from .schema import ROW_GROUP_ROWS, ZSTD_LEVEL
from .views import DEDUP_ORDER
from .writer import committed_seqs, parse_segment_name

log = logging.getLogger("store.compact")

PLANS_DIR = "_compaction"


@dataclass(frozen=True)
class CompactionResult:
    segments_before: int
    segments_after: int
    merged_inputs: int
    outputs: tuple[str, ...]
    rows: int
    seconds: float


def count_segments(info: StoreInfo) -> int:
    """Data segments of the store (the zero-row schema segments excluded)."""
    return sum(1 for base in (info.events_dir, info.quarantine_dir) for p in base.glob("*/*.parquet") if not p.name.startswith("s-"))


def _finish_plans(info: StoreInfo) -> None:
    plans = info.path / PLANS_DIR
    if not plans.is_dir():
        return
    for plan_file in sorted(plans.glob("*.json")):
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
        if (info.path / plan["output"]).exists():
            for rel in plan["inputs"]:
                (info.path / rel).unlink(missing_ok=True)
            log.info("finished interrupted compaction %s", plan_file.name)
        plan_file.unlink()
    fsync_dir(plans)


def compact(
    path: str | os.PathLike[str],
    small_rows: int = 1_000_000,
    max_rows: int = 8_000_000,
    grace_s: float = 10.0,
    min_inputs: int = 1,
) -> CompactionResult:
    """Merge, per partition, committed segments of fewer than `small_rows` rows (up to `max_rows`
    rows per output). A single committed writer segment is rewritten too, so that afterwards the
    views read it without de-duplication. Inputs are removed `grace_s` seconds after the output
    became visible."""
    t0 = time.perf_counter()
    info = open_store(path)
    info.locks_dir.mkdir(exist_ok=True)
    lock_fd = os.open(info.locks_dir / "compact.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another compaction is running on {info.path}; wait for it to finish") from None
        _finish_plans(info)
        before = count_segments(info)
        committed = committed_seqs(info)
        plans_dir = info.path / PLANS_DIR
        plans_dir.mkdir(exist_ok=True)
        outputs: list[str] = []
        to_remove: list[tuple[Path, list[Path]]] = []
        merged = rows_total = 0
        con = duckdb.connect(":memory:")
        con.execute("SET TimeZone = 'UTC'")
        try:
            for base in (info.events_dir, info.quarantine_dir):
                for part in sorted(p for p in base.iterdir() if p.is_dir() and p.name != SCHEMA_PARTITION):
                    for group in _groups(part, committed, small_rows, max_rows, min_inputs):
                        out_rel, n = _merge(con, info, base, part, group, plans_dir)
                        outputs.append(out_rel)
                        to_remove.append((plans_dir / f"{Path(out_rel).stem}.json", group))
                        merged += len(group)
                        rows_total += n
        finally:
            con.close()
        if to_remove:
            # Queries that listed the inputs just before the outputs appeared may still open them.
            time.sleep(grace_s)
            for plan_file, group in to_remove:
                for seg in group:
                    seg.unlink(missing_ok=True)
                plan_file.unlink(missing_ok=True)
            for d in {seg.parent for _p, g in to_remove for seg in g} | {plans_dir}:
                fsync_dir(d)
        after = count_segments(info)
        return CompactionResult(before, after, merged, tuple(outputs), rows_total, time.perf_counter() - t0)
    finally:
        os.close(lock_fd)


def _groups(part: Path, committed: dict[str, int], small_rows: int, max_rows: int, min_inputs: int) -> list[list[Path]]:
    """Runs of small committed segments of one partition, each run at most `max_rows` rows."""
    small: list[tuple[Path, int]] = []
    for seg in sorted(part.glob("*.parquet")):
        if seg.name.startswith("w-"):
            parsed = parse_segment_name(seg.name)
            if parsed is None or parsed[1] > committed.get(parsed[0], 0):
                continue  # a commit in flight (or a crash leftover its writer will remove)
        elif not (seg.name.startswith("c-") and part.parent.name == "quarantine"):
            # Compacted event segments are never merged again: each holds ids no other one holds,
            # and merging two would show both copies during the grace period.
            continue
        n = pq.ParquetFile(seg).metadata.num_rows
        if n < small_rows:
            small.append((seg, n))
    groups: list[list[Path]] = []
    cur: list[Path] = []
    cur_rows = 0
    for seg, n in small:
        if cur and cur_rows + n > max_rows:
            groups.append(cur)
            cur, cur_rows = [], 0
        cur.append(seg)
        cur_rows += n
    if cur:
        groups.append(cur)
    return [g for g in groups if len(g) >= min_inputs]


def _merge(con: duckdb.DuckDBPyConnection, info: StoreInfo, base: Path, part: Path, group: list[Path], plans_dir: Path) -> tuple[str, int]:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    name = f"c-{stamp}-{secrets.token_hex(4)}.parquet"
    target = part / name
    tmp = part / f".{name}.partial"
    files = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in group) + "]"
    # Sorting by type then trace makes row-group min/max statistics selective: a view that reads
    # one event type skips the row groups of the others.
    if base == info.events_dir:
        # De-duplicate like the `events` view: one copy per id, the view's choice among the
        # inputs, and none of an id that a compacted segment of the partition already holds.
        older = [p for p in part.glob("c-*.parquet")]
        anti = ""
        if older:
            olist = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in older) + "]"
            anti = (
                f"WHERE NOT EXISTS (SELECT 1 FROM read_parquet({olist}, hive_partitioning = false) c "
                "WHERE c.type = f.type AND c.trace_id = f.trace_id AND c.id = f.id)"
            )
        select = (
            f"SELECT * FROM (SELECT * FROM read_parquet({files}, hive_partitioning = false) "
            f"QUALIFY row_number() OVER (PARTITION BY type, trace_id, id ORDER BY {DEDUP_ORDER}) = 1) f {anti} "
            "ORDER BY type, trace_id, seq, id"
        )
    else:
        select = f"SELECT * FROM read_parquet({files}, hive_partitioning = false) ORDER BY source, \"offset\""
    con.execute(
        f"COPY ({select}) TO '{tmp}' "
        f"(FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL {ZSTD_LEVEL}, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
    )
    fsync_file(tmp)
    n = pq.ParquetFile(tmp).metadata.num_rows
    rel = str(target.relative_to(info.path))
    plan = {"output": rel, "inputs": [str(p.relative_to(info.path)) for p in group], "rows": n}
    write_durable(plans_dir / f"{target.stem}.json", json.dumps(plan).encode())
    os.replace(tmp, target)
    fsync_dir(part)
    log.info("compacted %d segments of %s into %s (%d rows)", len(group), part.name, name, n)
    return rel, n
