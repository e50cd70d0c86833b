"""Compaction: Delta OPTIMIZE (merge small files) and VACUUM (delete files no young version needs).

OPTIMIZE rewrites small files of each date partition into larger ones in one commit that removes
the inputs and adds the outputs: every version before it still names the inputs, every version
after it the outputs, both hold the same rows, so no view changes and no reader sees a row twice.
It never conflicts with appends (Delta's conflict check lets blind appends and a compaction of
other files commit side by side), so writers never wait for it.

VACUUM deletes files that no version younger than ``retention_s`` names. A reader resolves its
snapshot when a query starts and opens the files during the query, so a retention longer than the
longest query (default one hour; ``kaelum-sql compact --retention-s``) means a running query never
loses a file. Time travel (``--as-of``) reaches back as far as the retention: older versions may
name files that VACUUM deleted, and reading them fails with a clear message.

After OPTIMIZE, a positions checkpoint (``store.writer.checkpoint_positions``): every writer's
positions in one empty events commit, so that reading positions stops there. Then the per-trace
summary (folders and URLs): ``_trace_summary`` of the newest events version, written as a new
version of the ``trace_summary`` Delta table whose commit metadata names that events version, after
the losing copies of conflicting ids of the same version (``id_conflicts``, store/conflicts.py).
Readers use it for every trace that no later events touch (store/views.py), so the per-trace
views of a compacted store read one row per trace instead of every event. It is derived data: the
events stay the truth, and a summary of another kaelum's columns is ignored.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pyarrow.compute as pc

from .conflicts import CONFLICT_COLUMNS, CONFLICTS_SCHEMA
from .layout import StoreInfo, open_store
from .writer import checkpoint_positions
from .schema import ROW_GROUP_ROWS, ZSTD_LEVEL
from .tables import META_EVENTS_VERSION, META_SUMMARY_COLUMNS, TABLE_CONFIGURATION, delta_call, open_table, table_exists

DEFAULT_RETENTION_S = 3600.0  # longer than the longest reader's query; also how far back --as-of reaches
TARGET_FILE_BYTES = 128 << 20
# A "small" file is what a following daemon's flushes write (a few thousand events, well under a
# MiB); a bulk catch-up's commits of up to 100k events write files of ~8 MiB, which are left alone
# by the daemon's schedule, so that --once never spends longer compacting than ingesting.
SMALL_FILE_BYTES = 4 << 20


@dataclass(frozen=True)
class CompactionResult:
    files_before: int
    files_after: int
    files_removed: int  # merged by OPTIMIZE
    files_added: int
    files_deleted: int  # deleted by VACUUM
    seconds: float
    summary_events_version: int | None = None  # the events version the summary now covers (None: no summary)

    # The names the daemon's status and older callers use.
    @property
    def segments_before(self) -> int:
        return self.files_before

    @property
    def segments_after(self) -> int:
        return self.files_after


def count_files(info: StoreInfo) -> int:
    """Data files in the newest version of both tables (what a reader opens)."""
    return sum(len(open_table(info, uri).file_uris()) for uri in (info.events_uri, info.quarantine_uri))


def small_files(info: StoreInfo, small_bytes: int = SMALL_FILE_BYTES) -> int:
    """Files in the newest version of both tables smaller than `small_bytes`: what OPTIMIZE would merge."""
    n = 0
    for uri in (info.events_uri, info.quarantine_uri):
        actions = open_table(info, uri).get_add_actions(flatten=True)
        n += sum(1 for size in actions.column("size_bytes").to_pylist() if size < small_bytes)
    return n


def compact(
    location: str | os.PathLike[str] | StoreInfo,
    retention_s: float = DEFAULT_RETENTION_S,
    target_bytes: int = TARGET_FILE_BYTES,
    vacuum: bool = True,
) -> CompactionResult:
    """OPTIMIZE both tables (one commit each, when there is anything to merge), then VACUUM files
    that no version younger than `retention_s` names."""
    from deltalake import WriterProperties

    t0 = time.perf_counter()
    info = location if isinstance(location, StoreInfo) else open_store(location)
    before = count_files(info)
    removed = added = deleted = 0
    props = WriterProperties(compression="ZSTD", compression_level=ZSTD_LEVEL, max_row_group_size=ROW_GROUP_ROWS)
    for uri in (info.events_uri, info.quarantine_uri):
        table = open_table(info, uri)
        metrics = delta_call(info, f"compacting {uri}", lambda: table.optimize.compact(target_size=target_bytes, writer_properties=props))
        removed += int(metrics.get("numFilesRemoved", 0))
        added += int(metrics.get("numFilesAdded", 0))
    # Every writer's positions in one commit, so that `store.positions` (kaelum-ingest status) and
    # recovery read the log back to here only.
    checkpoint_positions(info)
    # After OPTIMIZE: the summary covers the files of the version readers will see from now on.
    summary_version = build_summary(info, props)
    if vacuum:
        tables = [info.events_uri, info.quarantine_uri] + ([info.summary_uri, info.conflicts_uri] if summary_version is not None else [])
        for uri in tables:
            table = open_table(info, uri)
            deleted += len(delta_call(info, f"vacuuming {uri}", lambda: _vacuum(table, retention_s)))
    return CompactionResult(before, count_files(info), removed, added, deleted, time.perf_counter() - t0, summary_version)


def build_summary(info: StoreInfo, props=None) -> int | None:  # noqa: ANN001 - deltalake.WriterProperties
    """Write the per-trace summary of the newest events version (unless it is current already),
    and before it the losing copies of conflicting ids of the same version (``id_conflicts``: the
    summary is only read together with them); returns the events version they cover."""
    from deltalake import CommitProperties, DeltaTable, write_deltalake

    from .views import connect, summary_schema_file

    events = open_table(info, info.events_uri)
    version = events.version()
    uri = info.summary_uri
    con = connect(info, as_of={"events": version, "quarantine": open_table(info, info.quarantine_uri).version()}, through="_trace_summary")
    # No progress bar: a background or cron job's stderr is a log, not a terminal.
    con.execute("SET enable_progress_bar = false")
    try:
        columns = summary_schema_file(con)[1]
        if table_exists(info, uri):
            last = next((c for c in open_table(info, uri).history() if c.get(META_EVENTS_VERSION) is not None), None)
            # Current when built with these columns over the same files (VACUUM adds versions, not rows).
            if last is not None and last.get(META_SUMMARY_COLUMNS) == columns:
                built_on = int(last[META_EVENTS_VERSION])
                same = built_on == version or set(open_table(info, info.events_uri, built_on).file_uris()) == set(events.file_uris())
                if same and _has_conflicts_of(info, built_on):
                    return built_on
        # Sorted by trace_id: one trace's row is then in one row group, found by its statistics, and
        # the trainer's order (by trace_id) is the stored order, so the dataset page's first examples
        # are a top-N that stops after the first row group. (Descending, the newest UUIDv7 traces
        # first, made the UI's newest-first page 2.7-2.9x faster over the file, but the dataset page
        # 2.3x slower, 134 -> 309 ms at 1M traces: benchmarks/README.md.) Sorted in Arrow: DuckDB's
        # ORDER BY carries every wide column (steps, texts) through its sort; sorting the keys and
        # taking the rows measured 0.1-0.6 s less wall time at 1M events (same rows).
        rows = con.sql(f"SELECT * FROM {_summary_relation(con, columns)}").to_arrow_table()
        rows = rows.take(pc.sort_indices(rows, [("trace_id", "ascending")]))
        # Stored as of this version: nothing in it is newer than the set itself (live = false).
        conflicts = con.sql(f"SELECT {CONFLICT_COLUMNS} FROM (SELECT * REPLACE (false AS live) FROM _conflicts) ORDER BY id").to_arrow_table().cast(CONFLICTS_SCHEMA)
    finally:
        con.close()
    meta = {META_EVENTS_VERSION: str(version), META_SUMMARY_COLUMNS: columns}
    # The conflicts first: a reader takes a summary only when the conflicts of its version exist.
    delta_call(info, "writing the conflicting-id set", lambda: write_deltalake(
        info.conflicts_uri, conflicts, mode="overwrite", schema_mode="overwrite", writer_properties=props, storage_options=info.options,
        configuration=TABLE_CONFIGURATION, commit_properties=CommitProperties(custom_metadata={META_EVENTS_VERSION: str(version)})))
    delta_call(info, "writing the trace summary", lambda: write_deltalake(
        uri, rows, mode="overwrite", schema_mode="overwrite", writer_properties=props, configuration=TABLE_CONFIGURATION,
        storage_options=info.options,
        commit_properties=CommitProperties(custom_metadata=meta)))
    return version


def _summary_relation(con, columns: str) -> str:  # noqa: ANN001 - a store.connect connection
    """What to read the new summary from: ``_trace_summary`` when the connection has a summary of
    these columns (it then recomputes only the traces newer files touch), else the per-trace SQL
    over all events (the first build, e.g. after a bulk ``--once`` into a new store).

    The full build reads ``events``, or ``_events_all`` when no id has a second copy: then the two
    hold the same rows (no re-sent copy to drop, no conflicting copy), and the de-duplicating window
    over every event is skipped. At 1M events (2 cores) that measured 2.5 s of CPU against 3.8 s
    over ``events`` and 4.8-5.4 s through ``_trace_summary``, for 0.23 s of CPU for the check.
    """
    from .views import _summary_sql, _trace_views, snapshot_of

    summary = snapshot_of(con).summary
    if summary is not None and summary.columns == columns:
        return "_trace_summary"
    ((copies,),) = con.execute("SELECT count(*) FROM (SELECT id FROM _events_all GROUP BY id HAVING count(*) > 1)").fetchall()
    src = "_events_all" if copies == 0 else "events"
    for name, body in _trace_views("_full", src):
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {body}")
    return f"({_summary_sql('_full')})"


def _has_conflicts_of(info: StoreInfo, events_version: int) -> bool:
    if not table_exists(info, info.conflicts_uri):
        return False
    return any(c.get(META_EVENTS_VERSION) == str(events_version) for c in open_table(info, info.conflicts_uri).history())


def _vacuum(table, retention_s: float) -> list[str]:  # noqa: ANN001 - a deltalake.DeltaTable
    """VACUUM with a retention in seconds (delta-rs takes whole hours; below one hour we pass 0 hours
    and keep the files of versions younger than `retention_s` ourselves via ``keep_versions``)."""
    hours = int(retention_s // 3600)
    if hours >= 1 and retention_s % 3600 == 0:
        return table.vacuum(retention_hours=hours, dry_run=False, enforce_retention_duration=False)
    now_ms = time.time() * 1000
    young = [c["version"] for c in table.history() if now_ms - c["timestamp"] < retention_s * 1000]
    return table.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False, keep_versions=young or None)
