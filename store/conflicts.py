"""Conflicting event ids: the same id stored with another type or trace (a contract violation).

Semantics (docs/store.md, "Re-sent and conflicting events"): of all stored copies of an id, the
one first in ``DEDUP_ORDER`` — ``(writer, source, offset)``, a function of the stored rows alone,
so any number of writers committing in any order end with the same answer — is the *winning
copy*. Copies with the winner's ``(type, trace_id)`` are re-sent copies (the ``events`` view keeps
one of them silently). Every copy with another ``(type, trace_id)`` is a *losing copy*: it is in no
view but ``quarantine``, where it is listed with a reason naming the winning copy.

Finding losing copies needs every stored id, which a view cannot afford per query (a window or a
GROUP BY over all ids measured 4-5x slower for every view). So the set is computed once per
snapshot (events version), outside the views, and handed to them as a small relation
(``kaelum_files('conflicts', txid)`` on a local store; a registered Arrow table on a URL store):

- compaction stores the set of the events version it compacted in the ``id_conflicts`` Delta
  table, next to the per-trace summary of the same version (store/compact.py);
- a reader takes that set, drops the ids that occur in events files newer than it (``fresh``) and
  recomputes those ids from all their copies: a scan of the ``id``, ``type`` and ``trace_id``
  columns semi-joined to the fresh ids, then full rows only for the (rare) conflicting ids;
- without a stored set (a store never compacted) every id is checked: one GROUP BY over all ids.
"""

from __future__ import annotations

from typing import Sequence

import duckdb
import pyarrow as pa

CONFLICTS_TABLE = "id_conflicts"

# Which copy of an event id the views keep (re-sent or conflicting); compaction never changes which.
DEDUP_ORDER = 'writer, source, "offset"'

# One row per losing copy. (id, type, trace_id) is what the views anti-join; the rest is what
# `quarantine` shows; winner_trace_id and live tell the per-trace summary which traces to recompute.
CONFLICTS_SCHEMA = pa.schema([
    ("id", pa.string()), ("type", pa.string()), ("trace_id", pa.string()),
    ("source", pa.string()), ("source_path", pa.string()), ("offset", pa.int64()), ("writer", pa.string()),
    ("date", pa.date32()), ("reason", pa.string()), ("raw_text", pa.string()),
    ("winner_trace_id", pa.string()),
    ("live", pa.bool_()),  # computed from events newer than the stored set (its traces are recomputed)
])
CONFLICT_COLUMNS = ", ".join(f'"{n}"' for n in CONFLICTS_SCHEMA.names)


def conflicts_sql(rel: str, candidates: str | None, live: bool, id_range: tuple[str, str] | None = None) -> str:
    """SQL for the losing copies among the stored rows `rel` (columns of the events table).

    `candidates` (a relation with an ``id`` column) limits the check to those ids; all their
    copies in `rel` are looked at. `id_range` (the candidates' least and greatest id) adds the
    filter ``id BETWEEN lo AND hi``, implied by the first but a constant that reaches the Parquet
    scan: event ids are UUIDv7 (time-ordered), so row groups of older events are skipped by their
    min/max statistics. `live` is the value of the ``live`` column.
    """
    where = f"WHERE id IN (SELECT id FROM {candidates})" if candidates else ""
    if candidates and id_range is not None:
        lo, hi = (v.replace("'", "''") for v in id_range)
        where += f" AND id BETWEEN '{lo}' AND '{hi}'"
    key = f"({DEDUP_ORDER})"
    # A conflicting id has two or more copies: `dup` finds those ids with a count per id (0.2-0.3 s
    # of CPU for 1M ids, measured on 2 cores), and only their copies are compared on type and
    # trace_id (min/max of two strings per id over every id measured 0.7-0.9 s). Re-sent copies are
    # rare, so the second scan, of the duplicated ids only, is small.
    dup_where = f"{where} AND" if where else "WHERE"
    return f"""
    WITH dup AS (
        SELECT id FROM {rel} {where} GROUP BY id HAVING count(*) > 1
    ),
    k AS (
        SELECT id FROM {rel} {dup_where} id IN (SELECT id FROM dup)
        GROUP BY id HAVING min(type) <> max(type) OR min(trace_id) <> max(trace_id)
    ),
    c AS (SELECT id, v, type, trace_id, seq, data, source, source_path, "offset", writer, date FROM {rel}
          {where.replace(f"SELECT id FROM {candidates}", "SELECT id FROM k") if where else "WHERE id IN (SELECT id FROM k)"}),
    w AS (
        SELECT id, arg_min(type, {key}) AS wtype, arg_min(trace_id, {key}) AS wtrace, arg_min(writer, {key}) AS wwriter,
               arg_min(source_path, {key}) AS wpath, arg_min("offset", {key}) AS woffset
        FROM c GROUP BY id
    )
    SELECT c.id, c.type, c.trace_id, c.source, c.source_path, c."offset", c.writer, c.date,
           'event id ' || c.id || ' conflicts with the copy kept in events: a ' || w.wtype || ' of trace ' || w.wtrace
             || ' (writer ' || coalesce(w.wwriter, '?') || ', ' || coalesce(w.wpath, '?') || ' offset ' || coalesce(w.woffset::VARCHAR, '?')
             || '); this copy is a ' || c.type || ' of trace ' || c.trace_id AS reason,
           json_object('v', c.v, 'id', c.id, 'type', c.type, 'trace_id', c.trace_id, 'seq', c.seq, 'data', c.data::JSON)::VARCHAR AS raw_text,
           w.wtrace AS winner_trace_id, {'true' if live else 'false'} AS live
    FROM c JOIN w ON w.id = c.id AND (w.wtype IS DISTINCT FROM c.type OR w.wtrace IS DISTINCT FROM c.trace_id)
    """


def _read(files: Sequence[str], hive: bool = True) -> str:
    opts = "hive_partitioning = true, hive_types = {'date': DATE}" if hive else "hive_partitioning = false"
    return "read_parquet([" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + f"], {opts})"


def compute_conflicts(
    con: duckdb.DuckDBPyConnection,
    all_rel: str,
    fresh_rel: str | None = None,
    stored_rel: str | None = None,
) -> pa.Table:
    """The losing copies of one snapshot, as an Arrow table of ``CONFLICTS_SCHEMA``.

    `all_rel` holds every stored events row of the snapshot. With `stored_rel` (the set compaction
    stored for an older version) and `fresh_rel` (the rows of events files newer than it), only the
    ids in fresh rows are checked again; without them, every id.
    """
    if stored_rel is None or fresh_rel is None:
        sql = conflicts_sql(all_rel, None, live=False)
    else:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _fresh_ids AS SELECT DISTINCT id FROM {fresh_rel}")
        ((lo, hi),) = con.execute("SELECT min(id), max(id) FROM _fresh_ids").fetchall()
        if lo is None:
            return con.sql(f"SELECT {CONFLICT_COLUMNS} FROM (SELECT * REPLACE (false AS live) FROM {stored_rel})"
                           ).to_arrow_table().cast(CONFLICTS_SCHEMA)
        sql = (f"SELECT {CONFLICT_COLUMNS} FROM (SELECT * REPLACE (false AS live) FROM {stored_rel}) "
               "WHERE id NOT IN (SELECT id FROM _fresh_ids) "
               f"UNION ALL SELECT * FROM ({conflicts_sql(all_rel, '_fresh_ids', live=True, id_range=(lo, hi))})")
    return con.sql(sql).to_arrow_table().cast(CONFLICTS_SCHEMA)


def compute_for_files(
    con: duckdb.DuckDBPyConnection,
    events_files: Sequence[str],
    fresh_files: Sequence[str] | None = None,
    stored_files: Sequence[str] | None = None,
) -> pa.Table:
    """``compute_conflicts`` over Parquet files (a local snapshot)."""
    if not events_files:
        return CONFLICTS_SCHEMA.empty_table()
    all_rel = _read(events_files)
    if stored_files is None or fresh_files is None:
        return compute_conflicts(con, all_rel)
    if not fresh_files:  # nothing newer than the stored set: it is the answer
        if not stored_files:
            return CONFLICTS_SCHEMA.empty_table()
        return con.sql(f"SELECT {CONFLICT_COLUMNS} FROM (SELECT * REPLACE (false AS live) FROM {_read(stored_files, hive=False)})"
                       ).to_arrow_table().cast(CONFLICTS_SCHEMA)
    stored = _read(stored_files, hive=False) if stored_files else "(SELECT * FROM conflicts_empty)"
    if not stored_files:
        con.register("conflicts_empty", CONFLICTS_SCHEMA.empty_table())
    return compute_conflicts(con, all_rel, _read(fresh_files), stored)
