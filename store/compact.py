"""Compaction: merge small segments into larger, well-sorted ones and derive the per-trace summary.

Each run publishes a new *generation* (``_snapshots/<gen>.json``, see store/snapshot.py): the set
of compacted event segments — one file per (date, event type), sorted by (trace_id, seq), ids
unique across all of them — the per-trace summary derived from exactly those segments, and per
writer the last commit seq folded in. Readers switch to a generation atomically (the manifest's
rename), so compacted segments can be merged again any number of times without a reader ever
seeing a row twice or not at all.

Safe against everything that runs beside it:
- readers: a query resolves its files from the newest manifest it finds; the files a generation
  replaced are deleted only after a grace period, so a query that resolved the old generation a
  moment earlier can still open them;
- writers: only segments whose commit record is durable (seq <= the writer's committed seq) are
  merged, so a commit in flight is never half-taken; positions live in the commit records and are
  not touched;
- crashes: outputs are invisible until the manifest names them; the next compaction deletes
  outputs that no manifest names and inputs that the newest manifest covers;
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
from .snapshot import DERIVED_DIR, Manifest, Snapshot, SnapshotFiles, resolve, write_manifest
from .views import DEDUP_ORDER
from .writer import parse_segment_name

COMPACT_ROW_GROUP_ROWS = 64 * 1024  # per event type: trace_id ranges narrow enough to prune

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
    """Fold every committed writer segment into the compacted segments of its date partition, merging
    compacted segments of fewer than `small_rows` rows again (quarantine: runs of up to `max_rows`
    rows), and rebuild the per-trace summary. A partition is rewritten when it has at least
    `min_inputs` inputs. Replaced files are removed `grace_s` seconds after the new generation."""
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
        snap = resolve(info)
        _remove_leftovers(info, snap)
        committed = snap.committed
        plans_dir = info.path / PLANS_DIR
        plans_dir.mkdir(exist_ok=True)
        con = duckdb.connect(":memory:")
        con.execute("SET TimeZone = 'UTC'")
        outputs: list[str] = []
        replaced: list[Path] = []
        to_remove: list[tuple[Path, list[Path]]] = []
        merged = rows_total = 0
        try:
            # Events: per date partition, the fresh segments plus the small compacted ones.
            kept: list[Path] = []
            parts: dict[Path, tuple[list[Path], list[Path]]] = {}
            for seg in snap.fresh:
                parts.setdefault(seg.parent, ([], []))[0].append(seg)
            for seg in snap.compacted:
                if not seg.exists():
                    raise StoreError(f"compacted segment {seg} named by the newest manifest is missing; the store was damaged")
                small = pq.ParquetFile(seg).metadata.num_rows < small_rows
                if small:
                    parts.setdefault(seg.parent, ([], []))[1].append(seg)
                else:
                    kept.append(seg)
            for part, (fresh, small_c) in sorted(parts.items()):
                inputs = fresh + small_c
                if not inputs or len(inputs) < min_inputs or (not fresh and len(small_c) < 2):
                    kept.extend(small_c)
                    continue
                others = [p for p in kept if p.parent == part]
                for out_rel, n in _merge_events(con, info, part, fresh, small_c, others):
                    outputs.append(out_rel)
                    rows_total += n
                replaced.extend(inputs)
                merged += len(inputs)
            new_compacted = sorted([str(p.relative_to(info.path)) for p in kept] + outputs)
            # Quarantine: runs of small committed segments per partition, as before.
            for part in sorted(p for p in info.quarantine_dir.iterdir() if p.is_dir() and p.name != SCHEMA_PARTITION):
                for group in _groups(part, committed, small_rows, max_rows, min_inputs):
                    out_rel, n = _merge(con, info, info.quarantine_dir, part, group, plans_dir)
                    outputs.append(out_rel)
                    to_remove.append((plans_dir / f"{Path(out_rel).stem}.json", group))
                    merged += len(group)
                    rows_total += n
        finally:
            con.close()
        if replaced or snap.manifest is None or set(new_compacted) != set(snap.manifest.compacted):
            old = snap.manifest
            derived = _build_derived(info, [info.path / r for r in new_compacted])
            covered = dict(old.covered) if old else {}
            for w, seq in committed.items():
                covered[w] = max(covered.get(w, 0), seq)
            write_manifest(info, Manifest((old.gen if old else 0) + 1, tuple(new_compacted), (derived,), covered))
            if old:
                replaced.extend(info.path / r for r in old.derived)
        if replaced or to_remove:
            # Queries that resolved the previous generation just before this one may still open its files.
            time.sleep(grace_s)
            for seg in replaced:
                seg.unlink(missing_ok=True)
            for plan_file, group in to_remove:
                for seg in group:
                    seg.unlink(missing_ok=True)
                plan_file.unlink(missing_ok=True)
            for d in {seg.parent for seg in replaced} | {seg.parent for _p, g in to_remove for seg in g} | {plans_dir}:
                if d.is_dir():
                    fsync_dir(d)
        after = count_segments(info)
        return CompactionResult(before, after, merged, tuple(outputs), rows_total, time.perf_counter() - t0)
    finally:
        os.close(lock_fd)


def _remove_leftovers(info: StoreInfo, snap) -> None:  # noqa: ANN001 - a store.snapshot.Snapshot
    """Files of an interrupted compaction: outputs no manifest names, inputs the manifest covers."""
    if snap.manifest is None:
        return
    named = set(snap.manifest.compacted) | set(snap.manifest.derived)
    covered = snap.manifest.covered
    for seg in info.events_dir.glob("*/*.parquet"):
        rel = str(seg.relative_to(info.path))
        if seg.name.startswith("c-") and rel not in named:
            seg.unlink(missing_ok=True)
        elif seg.name.startswith("w-"):
            ws = parse_segment_name(seg.name)
            if ws and ws[1] <= covered.get(ws[0], 0):
                seg.unlink(missing_ok=True)
    ddir = info.path / DERIVED_DIR
    if ddir.is_dir():
        for f in ddir.glob("*.parquet"):
            if str(f.relative_to(info.path)) not in named:
                f.unlink(missing_ok=True)


def _files(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _merge_events(
    con: duckdb.DuckDBPyConnection, info: StoreInfo, part: Path, fresh: list[Path], small_c: list[Path], others: list[Path]
) -> list[tuple[str, int]]:
    """Merge one partition's inputs into one segment per event type; returns (relative path, rows)."""
    inputs = small_c + fresh
    # De-duplicate like the views: a compacted copy wins over a fresh one (the views show it), then
    # the views' choice among fresh copies; none of an id that a kept compacted segment holds.
    con.execute(
        "CREATE OR REPLACE TEMP TABLE merged AS SELECT * EXCLUDE (filename, _c) FROM ("
        f"SELECT *, NOT contains(filename, '/w-') AS _c FROM read_parquet({_files(inputs)}, hive_partitioning = false, filename = true) "
        f"QUALIFY row_number() OVER (PARTITION BY type, trace_id, id ORDER BY _c DESC, {DEDUP_ORDER}) = 1) f"
        + (
            f" WHERE NOT EXISTS (SELECT 1 FROM read_parquet({_files(others)}, hive_partitioning = false) c "
            "WHERE c.type = f.type AND c.trace_id = f.trace_id AND c.id = f.id)"
            if others
            else ""
        )
    )
    out = []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    for (typ,) in con.execute("SELECT DISTINCT type FROM merged ORDER BY type").fetchall():
        safe = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in typ)[:40]
        name = f"c-{stamp}-{safe}-{secrets.token_hex(4)}.parquet"
        tmp = part / f".{name}.partial"
        # One event type per file, sorted by trace: a view that reads one type opens only its files,
        # and min/max statistics on trace_id let a scan for a few traces skip most row groups.
        con.execute(
            f"COPY (SELECT * FROM merged WHERE type = ? ORDER BY trace_id, seq, id) TO '{tmp}' "
            f"(FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL {ZSTD_LEVEL}, ROW_GROUP_SIZE {COMPACT_ROW_GROUP_ROWS})",
            [typ],
        )
        fsync_file(tmp)
        target = part / name
        os.replace(tmp, target)
        out.append((str(target.relative_to(info.path)), pq.ParquetFile(target).metadata.num_rows))
    fsync_dir(part)
    con.execute("DROP TABLE merged")
    log.info("compacted %d segments of %s into %d (one per event type)", len(inputs), part.name, len(out))
    return out


def _build_derived(info: StoreInfo, compacted: list[Path]) -> str:
    """Write the per-trace summary of exactly `compacted` (the views' ``_trace_live`` over them)."""
    from .views import install_views

    ddir = info.path / DERIVED_DIR
    ddir.mkdir(exist_ok=True)
    name = f"traces-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}.parquet"
    tmp = ddir / f".{name}.partial"
    fixed = Snapshot(None, {}, (), tuple(compacted), (), (), False)
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        install_views(con, info, mode="snapshot", files=SnapshotFiles(info, fixed=fixed))
        con.execute(
            f"COPY (SELECT * FROM _trace_live ORDER BY trace_id) TO '{tmp}' "
            f"(FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL {ZSTD_LEVEL}, ROW_GROUP_SIZE {COMPACT_ROW_GROUP_ROWS})"
        )
    finally:
        con.close()
    fsync_file(tmp)
    os.replace(tmp, ddir / name)
    fsync_dir(ddir)
    return f"{DERIVED_DIR}/{name}"


def _groups(part: Path, committed: dict[str, int], small_rows: int, max_rows: int, min_inputs: int) -> list[list[Path]]:
    """Runs of small committed quarantine segments of one partition, each run at most `max_rows` rows.

    The quarantine view de-duplicates on (source, offset), so an output and its inputs may be
    visible together during the grace period."""
    small: list[tuple[Path, int]] = []
    for seg in sorted(part.glob("*.parquet")):
        if seg.name.startswith("w-"):
            parsed = parse_segment_name(seg.name)
            if parsed is None or parsed[1] > committed.get(parsed[0], 0):
                continue  # a commit in flight (or a crash leftover its writer will remove)
        elif not seg.name.startswith("c-"):
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
