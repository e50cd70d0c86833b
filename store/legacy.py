"""``kaelum-sql migrate``: convert a store of layout version 1 (our own segment format) to Delta.

Layout 1 kept Parquet segments under ``events/date=*/`` and ``quarantine/date=*/``, the writers'
positions in commit records ``_commits/<writer>/<seq>.json`` and compaction generations in
``_snapshots/<gen>.json``. What a reader saw — and what is migrated — is:

- events: the compacted segments the newest generation names, plus each writer's segments with a
  seq above what that generation covers and at most the writer's newest commit record (segments
  of a crashed commit were never visible and are not migrated);
- quarantine: committed writer segments and compacted ones, each (source, offset) once, as the
  old view showed them;
- positions: each writer's newest commit record, re-committed as that writer's app transaction
  and commit metadata, so its ingester resumes exactly where it stood.

The conversion works in place and may be interrupted at any point and rerun: the old files move
to ``_v1/`` first, the Delta tables are rebuilt from there, the marker switches to layout 2 last,
and only then is ``_v1/`` removed (kept with ``keep_old=True``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb

from .layout import MARKER, StoreError, StoreInfo, normalise, storage_options, write_marker
from .tables import EVENTS_TABLE_SCHEMA, QUARANTINE_TABLE_SCHEMA, create_tables

OLD_DIR = "_v1"
_OLD_ENTRIES = ("events", "quarantine", "_commits", "_snapshots", "derived", "_compaction", "_locks", "views.duckdb")


@dataclass(frozen=True)
class MigrationResult:
    events: int
    quarantined: int
    writers: dict[str, int]  # writer -> seq of its newest commit record


def _records(old: Path) -> dict[str, dict]:
    out = {}
    commits = old / "_commits"
    for wdir in sorted(commits.iterdir()) if commits.is_dir() else []:
        for rec_path in sorted(wdir.glob("*.json"), reverse=True):
            try:
                rec = json.loads(rec_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict) and isinstance(rec.get("seq"), int):
                out[wdir.name] = rec
                break
    return out


def _manifest(old: Path) -> dict | None:
    for p in sorted((old / "_snapshots").glob("*.json"), reverse=True) if (old / "_snapshots").is_dir() else []:
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None


def _writer_seq(name: str) -> tuple[str, int] | None:
    if not (name.startswith("w-") and name.endswith(".parquet")):
        return None
    try:
        writer, seq, _rand = name[2:-8].rsplit("-", 2)
        return writer, int(seq)
    except ValueError:
        return None


def visible_files(old: Path) -> tuple[list[Path], list[Path], dict[str, dict]]:
    """(event segments, quarantine segments, newest commit record per writer) a v1 reader saw."""
    records = _records(old)
    committed = {w: r["seq"] for w, r in records.items()}
    manifest = _manifest(old)
    covered = {str(k): int(v) for k, v in (manifest or {}).get("covered", {}).items()}
    events: list[Path] = [old / rel for rel in (manifest or {}).get("compacted", [])]
    for seg in sorted((old / "events").glob("date=*/*.parquet")):
        if seg.parent.name == "date=1970-01-01":
            continue
        ws = _writer_seq(seg.name)
        if ws and covered.get(ws[0], 0) < ws[1] <= committed.get(ws[0], 0):
            events.append(seg)
        elif seg.name.startswith("c-") and manifest is None:
            events.append(seg)
    quarantine: list[Path] = []
    for seg in sorted((old / "quarantine").glob("date=*/*.parquet")):
        if seg.parent.name == "date=1970-01-01":
            continue
        ws = _writer_seq(seg.name)
        if (ws and ws[1] <= committed.get(ws[0], 0)) or seg.name.startswith("c-"):
            quarantine.append(seg)
    missing = [p for p in events if not p.exists()]
    if missing:
        raise StoreError(f"the old store is damaged: {len(missing)} segment(s) its newest generation names are missing, e.g. {missing[0]}")
    return events, quarantine, records


def _files(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def migrate(location: str | os.PathLike[str], keep_old: bool = False) -> MigrationResult:
    """Convert the layout-1 store at `location` (a local folder) into the Delta layout, in place."""
    from deltalake import CommitProperties, Transaction, write_deltalake

    from .writer import META_POSITIONS, META_SEQ, META_WRITER

    root = Path(normalise(location))
    marker = root / MARKER
    if not marker.exists():
        raise StoreError(f"no store at {root} (the folder has no {MARKER}); nothing to migrate")
    version = json.loads(marker.read_text(encoding="utf-8")).get("layout_version")
    if version == 2 and not (root / OLD_DIR).exists():
        raise StoreError(f"{root} is already in the Delta layout (layout_version 2); nothing to migrate")
    old = root / OLD_DIR
    old.mkdir(exist_ok=True)
    for name in _OLD_ENTRIES:  # an interrupted run may have moved some already
        if (root / name).exists() and not (old / name).exists() and not (root / name / "_delta_log").exists():
            os.replace(root / name, old / name)
    for table in ("events", "quarantine"):  # the Delta tables of an interrupted run: rebuild them
        if (root / table / "_delta_log").exists():
            shutil.rmtree(root / table)
    events, quarantine, records = visible_files(old)
    info = StoreInfo(str(root), 2, storage_options(str(root)))
    os.chmod(root, 0o750)  # store files are not for every user of the machine
    create_tables(info)
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    opts = "hive_partitioning = true, hive_types = {'date': DATE}, union_by_name = true"
    n_events = n_quarantined = 0
    if events:
        cols = ", ".join(f'"{f.name}"' for f in EVENTS_TABLE_SCHEMA)
        rows = con.sql(f"SELECT {cols} FROM read_parquet({_files(events)}, {opts})").to_arrow_table().cast(EVENTS_TABLE_SCHEMA)
        n_events = rows.num_rows
        write_deltalake(info.events_uri, rows, mode="append", partition_by=["date"],
                        commit_properties=CommitProperties(custom_metadata={"kaelum.migrated_from": "layout_version 1"}))
    if quarantine:
        # batch 0: below every writer's seq, so no recovery ever takes these rows for an orphan batch.
        cols = ", ".join("0::BIGINT AS batch" if f.name == "batch" else f'"{f.name}"' for f in QUARANTINE_TABLE_SCHEMA)
        rows = con.sql(
            f"SELECT {cols} FROM read_parquet({_files(quarantine)}, {opts}) "
            'QUALIFY row_number() OVER (PARTITION BY source, "offset" ORDER BY quarantined_at, writer) = 1'
        ).to_arrow_table().cast(QUARANTINE_TABLE_SCHEMA)
        n_quarantined = rows.num_rows
        write_deltalake(info.quarantine_uri, rows, mode="append", partition_by=["date"],
                        commit_properties=CommitProperties(custom_metadata={"kaelum.migrated_from": "layout_version 1"}))
    con.close()
    for writer, rec in sorted(records.items()):  # each writer's positions, as its own app transaction
        positions = {fp: {k: p[k] for k in ("path", "offset", "events", "quarantined", "bytes", "committed_at")}
                     for fp, p in rec.get("positions", {}).items()}
        meta = {META_WRITER: writer, META_SEQ: str(rec["seq"]), META_POSITIONS: json.dumps(positions, separators=(",", ":")),
                "kaelum.migrated_from": "layout_version 1"}
        write_deltalake(info.events_uri, EVENTS_TABLE_SCHEMA.empty_table(), mode="append", partition_by=["date"],
                        commit_properties=CommitProperties(custom_metadata=meta, app_transactions=[Transaction(writer, rec["seq"])]))
    write_marker(root)  # the switch: from here on the store is read as Delta
    if not keep_old:
        shutil.rmtree(old)
    return MigrationResult(n_events, n_quarantined, {w: r["seq"] for w, r in records.items()})
