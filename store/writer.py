"""StoreWriter: one atomic Delta commit per batch — events, the writer's read positions, quarantine.

Exactly once rests on two Delta features (docs/store.md, "Write protocol"):

- **app transactions**: every commit of writer ``w`` carries ``Transaction(app_id=w, version=seq)``
  with ``seq`` one more than the last; ``DeltaTable.transaction_version(w)`` is the writer's last
  committed seq, read from the table alone. Two processes committing under one writer id conflict
  (Delta refuses the second commit), so a writer id cannot silently commit twice.
- **commit metadata**: the same commit holds the writer's cumulative read positions in every source
  file (``kaelum.positions``). Positions and events become visible in one atomic log entry.

The events table's commit is the commit point. Quarantined lines of a batch go to the quarantine
table first, in a commit with the same app transaction ``(w, seq)`` and ``batch = seq`` on each
row. A crash between the two commits leaves quarantine rows of a batch whose positions never
committed: the next writer of that id finds ``quarantine.transaction_version(w) > seq_events`` and
deletes those rows (``batch > seq_events``) before it resumes, so the re-read lines are
quarantined once. Nothing else needs recovery: files of a failed commit are never in the log
(readers cannot see them; VACUUM removes them).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from .layout import StoreError, StoreInfo, check_writer_id, open_store
from .schema import EVENTS_SCHEMA, QUARANTINE_SCHEMA, ROW_GROUP_ROWS, SEGMENT_SCHEMA, WRITER_ZSTD_LEVEL, check_events_table
from .tables import EVENTS_TABLE_SCHEMA, PARTITION, QUARANTINE_TABLE_SCHEMA, delta_call, open_table
from .upcast import CURRENT, Contract

log = logging.getLogger("store.writer")

META_WRITER = "kaelum.writer"
META_SEQ = "kaelum.seq"
META_POSITIONS = "kaelum.positions"
META_RANGES = "kaelum.ranges"
# The positions checkpoint (``checkpoint_positions``): every writer's newest seq and positions as of
# events version ``base``, recorded by compaction in an empty commit of the events table, so that
# readers of positions read only the commits after ``base`` instead of the whole log.
META_CHECKPOINT = "kaelum.positions_checkpoint"


@dataclass(frozen=True)
class SourceRange:
    """The byte range ``[start, end)`` of a source file consumed by one commit."""

    fingerprint: str
    path: str
    start: int
    end: int
    events: int
    quarantined: int = 0


@dataclass(frozen=True)
class QuarantineRecord:
    """A line that was refused: exact raw bytes (need not be UTF-8) and the reason."""

    source_path: str
    fingerprint: str
    offset: int
    raw: bytes
    reason: str


@dataclass(frozen=True)
class SourcePosition:
    """Where a writer durably stands in one source file."""

    fingerprint: str
    path: str
    offset: int  # durable end offset: the next byte to read
    events: int  # events committed from this file so far
    quarantined: int  # lines quarantined from this file so far
    bytes: int  # bytes consumed from this file so far
    committed_at: datetime  # time of the last commit that advanced it
    writer: str


@dataclass(frozen=True)
class CommitInfo:
    seq: int
    events: int
    quarantined: int
    version: int | None  # the events table version of this commit (None: nothing was committed)
    committed_at: datetime
    positions: dict[str, SourcePosition] = field(default_factory=dict)


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def _positions_json(positions: Mapping[str, SourcePosition]) -> str:
    return json.dumps(
        {fp: {"path": p.path, "offset": p.offset, "events": p.events, "quarantined": p.quarantined, "bytes": p.bytes,
              "committed_at": _iso(p.committed_at)} for fp, p in positions.items()},
        separators=(",", ":"),
    )


def _positions_of(obj: str | dict[str, Any], writer: str) -> dict[str, SourcePosition]:
    out = {}
    for fp, p in (json.loads(obj) if isinstance(obj, str) else obj).items():
        out[fp] = SourcePosition(fp, p["path"], p["offset"], p["events"], p["quarantined"], p["bytes"], _parse_iso(p["committed_at"]), writer)
    return out


def _history(table: Any) -> Iterable[dict[str, Any]]:
    """The table's commits, newest first, read in growing chunks (recovery usually needs few)."""
    limit, seen = 64, 0
    while True:
        chunk = table.history(limit=limit)
        yield from chunk[seen:]
        if len(chunk) < limit:
            return
        seen, limit = len(chunk), limit * 4


def _newest_per_writer(table: Any, upto: int | None = None, writer: str | None = None) -> dict[str, tuple[int, dict[str, Any]]]:
    """{writer: (seq, positions as JSON objects)} of each writer's newest commit (at most version
    `upto`), reading the log newest first and stopping at the newest positions checkpoint: the
    commits after its base, then the checkpoint itself for the writers they do not name. With
    `writer`, it stops as soon as that writer is found."""
    found: dict[str, tuple[int, dict[str, Any]]] = {}
    base: int | None = None
    checkpoint: dict[str, Any] = {}
    for commit in _history(table):
        version = commit.get("version")
        if upto is not None and version is not None and version > upto:
            continue  # committed after the version asked about
        if base is not None and version is not None and version <= base:
            break
        w = commit.get(META_WRITER)
        if w and w not in found and commit.get(META_SEQ):
            found[w] = (int(commit[META_SEQ]), json.loads(commit.get(META_POSITIONS, "{}")))
            if w == writer:
                return found
        cp = commit.get(META_CHECKPOINT)
        if cp is not None and base is None:
            parsed = json.loads(cp)
            base, checkpoint = int(parsed["base"]), parsed["writers"]
    for w, entry in checkpoint.items():
        found.setdefault(w, (int(entry["seq"]), entry["positions"]))
    return found


def writer_positions(table: Any, writer: str, seq: int) -> dict[str, SourcePosition]:
    """The positions committed by `writer`'s commit number `seq` (from the commit's metadata, or
    from the positions checkpoint that recorded it)."""
    if seq <= 0:
        return {}
    got = _newest_per_writer(table, writer=writer).get(writer)
    if got is not None and got[0] == seq:
        return _positions_of(got[1], writer)
    raise StoreError(
        f"writer {writer!r} committed seq {seq} but that commit is no longer in the Delta log of the events table "
        "(log retention expired?); its read positions are lost — use a new --writer-id to re-ingest"
    )


def positions(location: str | os.PathLike[str] | StoreInfo) -> dict[tuple[str, str], SourcePosition]:
    """Durable read positions of every writer of the store: {(writer_id, fingerprint): position}.

    Each writer's newest commit holds its cumulative positions; the log is read newest first down
    to the newest positions checkpoint (written by compaction), not further.
    """
    info = location if isinstance(location, StoreInfo) else open_store(location)
    table = open_table(info, info.events_uri)
    newest = delta_call(info, "reading the events table's log", lambda: _newest_per_writer(table))
    out: dict[tuple[str, str], SourcePosition] = {}
    for w, (_seq, entry) in newest.items():
        for fp, pos in _positions_of(entry, w).items():
            out[(w, fp)] = pos
    return out


def checkpoint_positions(location: str | os.PathLike[str] | StoreInfo) -> int | None:
    """Record every writer's newest seq and positions in one empty commit of the events table
    (``kaelum.positions_checkpoint``); returns its version, or None when no writer committed since
    the last checkpoint. Positions stay where they always were (each writer's own commits, atomic
    with its events); the checkpoint only shortens the part of the log that readers of positions
    read. Safe beside concurrent writers: a commit after `base` is read before the checkpoint's entry.
    """
    from deltalake import CommitProperties, write_deltalake

    info = location if isinstance(location, StoreInfo) else open_store(location)
    table = open_table(info, info.events_uri)
    base = table.version()
    last = next(iter(table.history(limit=1)), {})
    if last.get(META_CHECKPOINT) is not None:
        return None  # nothing committed since the newest checkpoint
    newest = delta_call(info, "reading the events table's log", lambda: _newest_per_writer(table, upto=base))
    if not newest:
        return None
    meta = {META_CHECKPOINT: json.dumps({"base": base, "writers": {w: {"seq": seq, "positions": p} for w, (seq, p) in newest.items()}},
                                        separators=(",", ":"))}
    delta_call(info, "writing the positions checkpoint", lambda: write_deltalake(
        table, EVENTS_TABLE_SCHEMA.empty_table(), mode="append", partition_by=[PARTITION],
        commit_properties=CommitProperties(custom_metadata=meta)))
    return table.version()


class StoreWriter:
    """Appends batches to the store at `location` (a folder or a URL) under `writer_id`.

    Creates the store if missing. Calls are serialised by a lock. On a local store one process at
    a time may hold a writer id (an advisory lock enforces it); on object storage Delta refuses the
    second of two commits under one writer id. Close it (or use ``with``).
    """

    def __init__(self, location: str | os.PathLike[str] | StoreInfo, writer_id: str, contract: Contract = CURRENT,
                 options: Mapping[str, str] | None = None) -> None:
        self.writer_id = check_writer_id(writer_id)
        self.info = open_store(location, create=True, options=options)
        self.contract = contract
        self._mutex = threading.Lock()
        self._lock_fd = -1
        self._closed = False
        if self.info.local is not None:
            self._lock_local()
        self._events = open_table(self.info, self.info.events_uri)
        self._quarantine = open_table(self.info, self.info.quarantine_uri)
        self._seq = self._events.transaction_version(self.writer_id) or 0
        self._positions = delta_call(self.info, "recovering the writer's positions",
                                     lambda: writer_positions(self._events, self.writer_id, self._seq))
        self._remove_orphan_quarantine()
        self._duck = duckdb.connect(":memory:", config={"threads": "2"})
        self._duck.execute("SET TimeZone = 'UTC'")

    def _lock_local(self) -> None:
        d = self.info.path / "_locks"
        d.mkdir(exist_ok=True)
        self._lock_fd = os.open(d / f"writer-{self.writer_id}.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise StoreError(
                f"writer id {self.writer_id!r} is already in use by another process on {self.info.uri}; "
                "give each ingester its own --writer-id"
            ) from None

    def _remove_orphan_quarantine(self) -> None:
        """Quarantine rows of a batch whose events commit never happened (a crash between the two)."""
        q = self._quarantine.transaction_version(self.writer_id) or 0
        if q <= self._seq:
            return
        pred = f"writer = '{self.writer_id}' AND batch > {self._seq}"
        res = delta_call(self.info, "removing quarantine rows of an interrupted commit", lambda: self._quarantine.delete(pred))
        log.warning("removed %s quarantine row(s) of writer %s left by an interrupted commit (batch %d)",
                    res.get("num_deleted_rows"), self.writer_id, q)

    # -- reading own state ------------------------------------------------------------------------

    def positions(self) -> dict[str, SourcePosition]:
        """This writer's durable position per source fingerprint (as recovered from the store).

        Lock-free: a commit replaces the dict whole, after it is durable, so a reader (the daemon's
        status) never waits for a commit in progress."""
        return dict(self._positions)

    @property
    def last_seq(self) -> int:
        return self._seq

    # -- committing -------------------------------------------------------------------------------

    def commit(
        self,
        events: pa.Table | None = None,
        quarantine: Sequence[QuarantineRecord] = (),
        sources: Sequence[SourceRange] = (),
    ) -> CommitInfo:
        """Durably append one batch: its events, its quarantined lines and the new source positions.

        Raises StoreError (nothing written) if `events` does not match ``EVENTS_SCHEMA`` or holds
        a schema version newer than this writer's contract, and StoreError naming the cause when
        the storage fails (nothing of the batch is then visible and the positions did not move).
        """
        with self._mutex:
            if self._closed:
                raise StoreError("this StoreWriter is closed; open a new one")
            table = check_events_table(events) if events is not None else None
            quarantine = list(quarantine)
            sources = list(sources)
            self._check_inputs(table, quarantine, sources)
            now = datetime.now(timezone.utc)
            prepared = self._derive(table) if table is not None and table.num_rows else None
            if prepared is None and not quarantine and not sources:
                return CommitInfo(self._seq, 0, 0, None, now, dict(self._positions))
            seq = self._seq + 1
            new_positions = dict(self._positions)
            for r in sources:
                old = new_positions.get(r.fingerprint)
                new_positions[r.fingerprint] = SourcePosition(
                    fingerprint=r.fingerprint, path=r.path, offset=r.end,
                    events=(old.events if old else 0) + r.events,
                    quarantined=(old.quarantined if old else 0) + r.quarantined,
                    bytes=(old.bytes if old else 0) + (r.end - r.start),
                    committed_at=now, writer=self.writer_id,
                )
            if quarantine:
                self._append(self._quarantine, _quarantine_table(quarantine, self.writer_id, now, seq), seq,
                             {META_WRITER: self.writer_id, META_SEQ: str(seq)}, "committing quarantined lines")
            meta = {META_WRITER: self.writer_id, META_SEQ: str(seq), META_POSITIONS: _positions_json(new_positions),
                    META_RANGES: json.dumps([[r.fingerprint, r.start, r.end] for r in sources], separators=(",", ":"))}
            rows = prepared if prepared is not None else EVENTS_TABLE_SCHEMA.empty_table()
            version = self._append(self._events, rows, seq, meta, "committing events")
            self._seq = seq
            self._positions = new_positions
            return CommitInfo(seq, rows.num_rows, len(quarantine), version, now, dict(new_positions))

    def _append(self, table: Any, rows: pa.Table, seq: int, meta: dict[str, str], what: str) -> int:
        """One append commit carrying ``Transaction(writer, seq)``; returns the new table version.

        A failure that may have committed anyway (a lost reply from object storage) is resolved by
        reading the writer's transaction version back: the commit happened iff it is `seq`.
        """
        from deltalake import CommitProperties, Transaction, WriterProperties, write_deltalake

        props = WriterProperties(compression="ZSTD", compression_level=WRITER_ZSTD_LEVEL, max_row_group_size=ROW_GROUP_ROWS)
        try:
            write_deltalake(
                table, rows, mode="append", partition_by=[PARTITION], writer_properties=props,
                commit_properties=CommitProperties(custom_metadata=meta, app_transactions=[Transaction(self.writer_id, seq)]),
            )
        except Exception as exc:
            if "concurrent transaction" in str(exc).lower():  # Delta refused it: a definite no
                raise StoreError(
                    f"{what}: another process committed under writer id {self.writer_id!r} on {self.info.uri} at the same time; "
                    "give each ingester its own --writer-id"
                ) from exc
            try:
                table.update_incremental()
                done = (table.transaction_version(self.writer_id) or 0) >= seq
            except Exception:
                done = False
            if not done:
                from .tables import storage_error

                raise storage_error(self.info, what, exc) from exc
            log.warning("%s: the storage reported %s, but commit %d of %s is in the table", what, type(exc).__name__, seq, self.writer_id)
        return table.version()

    def _check_inputs(self, table: pa.Table | None, quarantine: list[QuarantineRecord], sources: list[SourceRange]) -> None:
        problems = []
        if table is not None and table.num_rows:
            vmin, vmax = pc.min_max(table.column("v")).values()
            if vmax.as_py() > self.contract.version or vmin.as_py() < 1:
                problems.append(
                    f"column 'v': versions {vmin.as_py()}..{vmax.as_py()} outside 1..{self.contract.version} "
                    "(quarantine lines of unknown versions instead of committing them)"
                )
        for i, q in enumerate(quarantine):
            if not isinstance(q, QuarantineRecord):
                problems.append(f"quarantine[{i}] is a {type(q).__name__}, expected QuarantineRecord")
            elif not isinstance(q.raw, (bytes, bytearray)):
                problems.append(f"quarantine[{i}].raw must be bytes, got {type(q.raw).__name__}")
        for i, r in enumerate(sources):
            if not isinstance(r, SourceRange):
                problems.append(f"sources[{i}] is a {type(r).__name__}, expected SourceRange")
            elif not (0 <= r.start <= r.end):
                problems.append(f"sources[{i}] ({r.path}): range [{r.start}, {r.end}) is not a valid byte range")
        if problems:
            raise StoreError("commit refused, nothing written: " + "; ".join(problems))

    def typed_columns(self, table: pa.Table) -> pa.Table:
        """The typed columns of `table` (``EVENTS_SCHEMA``), one row per event, in its order.

        Only ``v``, ``type`` and ``data`` go through DuckDB (one ``json_transform`` per row, which
        measured ~0.14 s per 200k events); the other columns stay in Arrow. Round-tripping the whole
        batch through DuckDB cost 2-3x that: it copies the large ``data`` column twice.
        """
        c = self.contract
        struct = c.extract_sql("_d")
        if c.upcasters and not c.typed_columns_as_stored:  # else the raw payload gives the same typed columns
            cases = " ".join(f"WHEN {v} THEN {c.upcast_sql(v)}" for v in range(1, c.version))
            data_cur = f"CASE v {cases} ELSE data::JSON END"
        else:
            data_cur = "data::JSON"
        typed = ", ".join(f"{c.column_of('_x', name)} AS \"{name}\"" for name in c.fields)
        # No ORDER BY: DuckDB keeps the scan's row order for a projection (preserve_insertion_order,
        # the default); the row count and a test guard the alignment with the Arrow columns.
        sql = f"SELECT {typed} FROM (SELECT {struct} AS _x FROM (SELECT {data_cur} AS _d FROM batch))"
        self._duck.register("batch", table.select(["v", "type", "data"]))
        try:
            out = self._duck.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise StoreError(f"batch does not match EVENTS_SCHEMA, nothing written: column 'data' must hold JSON objects ({exc})") from exc
        finally:
            self._duck.unregister("batch")
        if out.num_rows != table.num_rows:  # pragma: no cover - would be a DuckDB bug
            raise StoreError(f"internal error: typed columns for {out.num_rows} of {table.num_rows} rows")
        return out.cast(pa.schema([SEGMENT_SCHEMA.field(name) for name in c.fields]))

    def _derive(self, table: pa.Table) -> pa.Table:
        """The stored rows: the batch, its typed columns and its date, sorted for good statistics."""
        typed = self.typed_columns(table)
        columns = [table.column(name) for name in EVENTS_SCHEMA.names if name != "writer"]
        columns.append(pa.repeat(pa.scalar(self.writer_id, pa.string()), table.num_rows))
        columns.append(table.column("ts").cast(pa.date32()))  # the partition: UTC date of ts (~8 ms per 200k rows)
        out = pa.Table.from_arrays(columns[:-1] + typed.columns + columns[-1:], schema=EVENTS_TABLE_SCHEMA)
        # Sorted by (type, trace_id, seq) so min/max statistics let a view skip other event types.
        # Arrow's sort_indices + take measured ~3x faster than DuckDB's ORDER BY on the whole batch.
        order = pc.sort_indices(out, [("type", "ascending"), ("trace_id", "ascending"), ("seq", "ascending")])
        return out.take(order)

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._duck.close()
            if self._lock_fd >= 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = -1

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # release the lock if the owner forgot to close
        try:
            self.close()
        except Exception:
            pass


# The name the ingester and older code use; the class writes Delta commits, not segments, now.
SegmentWriter = StoreWriter


def _quarantine_table(records: list[QuarantineRecord], writer: str, now: datetime, seq: int) -> pa.Table:
    raw = [bytes(q.raw) for q in records]
    n = len(records)
    return pa.Table.from_arrays(
        [
            pa.array([q.fingerprint for q in records], pa.string()),
            pa.array([q.source_path for q in records], pa.string()),
            pa.array([q.offset for q in records], pa.int64()),
            pa.array(raw, pa.binary()),
            pa.array([r.decode("utf-8", errors="backslashreplace") for r in raw], pa.string()),
            pa.array([q.reason for q in records], pa.string()),
            pa.array([writer] * n, pa.string()),
            pa.array([now] * n, QUARANTINE_SCHEMA.field("quarantined_at").type),
            pa.array([seq] * n, pa.int64()),
            pa.array([now.date()] * n, pa.date32()),
        ],
        schema=QUARANTINE_TABLE_SCHEMA,
    )
