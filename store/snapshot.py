"""What a reader sees: one version of each Delta table per query.

A snapshot is a version of the events table and a version of the quarantine table, with the data
files of each. Delta makes a commit visible atomically (its log entry), so a snapshot holds every
commit up to its version whole and nothing of a later or a failed one; OPTIMIZE and VACUUM never
change what a version holds, and VACUUM keeps the files of every version younger than its
retention (store/compact.py), so a query never loses a file it resolved.

``store.connect`` on a local store registers ``kaelum_files(kind, txid)``: the views pass their
transaction id, so every scan of one query uses the same snapshot and each new query resolves the
newest one (a long-lived connection sees each commit as soon as it is durable). With ``as_of``
(a version or a timestamp) the snapshot is fixed. A URL store is read through delta-rs's own
object-store client (``DeltaTable.to_pyarrow_dataset``), one version per connection.
"""

from __future__ import annotations

import atexit
import bisect
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Union

import pyarrow as pa
import pyarrow.parquet as pq

from .layout import StoreError, StoreInfo
from .tables import (EVENTS_TABLE_SCHEMA, META_EVENTS_VERSION, META_SUMMARY_COLUMNS, PARTITION, QUARANTINE_TABLE_SCHEMA, delta_call,
                     open_table, table_exists)

# A version of the events table, an RFC 3339 timestamp, or exact versions of both tables
# ({"events": 12, "quarantine": 3}: what a training manifest records).
AsOf = Union[int, str, datetime, Mapping[str, int], None]

EMPTY_PARTITION = "date=1970-01-01"  # the zero-row schema files' partition; views skip it


@dataclass(frozen=True)
class Summary:
    """One version of the per-trace summary table: built from `events_version` of the events."""

    version: int
    events_version: int
    columns: str  # the columns it was built with (``,``-joined)
    files: tuple[str, ...]
    base_files: frozenset[str]  # the events files of `events_version`: rows the summary covers
    conflict_files: tuple[str, ...] = ()  # the losing copies of conflicting ids at `events_version` (store/conflicts.py)


@dataclass(frozen=True)
class Snapshot:
    events_version: int
    quarantine_version: int
    events_files: tuple[str, ...]
    quarantine_files: tuple[str, ...]
    summary: Summary | None = None

    @property
    def fresh_files(self) -> tuple[str, ...]:
        """Events files the summary does not cover (all of them without a summary)."""
        if self.summary is None:
            return self.events_files
        return tuple(f for f in self.events_files if f not in self.summary.base_files)

    @property
    def versions(self) -> dict[str, int]:
        return {"events": self.events_version, "quarantine": self.quarantine_version}


def parse_as_of(text: str) -> AsOf:
    """``--as-of``: a table version (``12``), ``events=12,quarantine=3``, or an RFC 3339 timestamp."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if "=" in text:
        out = {}
        for part in text.split(","):
            k, _, v = part.partition("=")
            if k.strip() not in ("events", "quarantine") or not v.strip().isdigit():
                raise StoreError(f"--as-of {text!r}: expected events=N,quarantine=M with table versions")
            out[k.strip()] = int(v)
        return out
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise StoreError(
            f"--as-of {text!r} is neither a table version (e.g. 12) nor an RFC 3339 timestamp (e.g. 2026-03-01T12:00:00Z)"
        ) from None
    if ts.tzinfo is None:
        raise StoreError(f"--as-of {text!r}: give the timestamp's offset (e.g. 2026-03-01T12:00:00Z), so it means one moment")
    return ts


def _commit_time(table: Any, version: int) -> datetime:
    for commit in table.history():
        if commit.get("version") == version:
            return datetime.fromtimestamp(commit["timestamp"] / 1000, tz=timezone.utc)
    raise StoreError(f"version {version} of the events table is not in its log")


class Snapshots:
    """Resolves snapshots of one store: the newest on every call, or one fixed by `as_of`."""

    def __init__(self, info: StoreInfo, as_of: AsOf = None) -> None:
        self.info = info
        self._events = open_table(info, info.events_uri)
        self._quarantine = open_table(info, info.quarantine_uri)
        self._lock = threading.Lock()
        self._summary_table: Any = None
        self._summaries: dict[int, Summary] = {}
        self.fixed: Snapshot | None = None
        self._ranges: dict[str, tuple[str | None, str | None]] = {}
        self._ranges_version: int | None = None
        if as_of is not None:
            self._pin(as_of)

    # -- the per-trace summary ------------------------------------------------------------------

    def _summary_at(self, events_version: int, newest: bool) -> Summary | None:
        """The newest summary built from an events version at most `events_version` (None when there
        is none: the views then compute every trace from the events)."""
        from deltalake import DeltaTable

        opts = self.info.options
        if self._summary_table is None:
            if not table_exists(self.info, self.info.summary_uri):
                return None
            self._summary_table = open_table(self.info, self.info.summary_uri)
        table = self._summary_table
        if newest:
            table.update_incremental()
        for commit in table.history():
            ev = commit.get(META_EVENTS_VERSION)
            if ev is None or int(ev) > events_version:
                continue
            v = commit["version"]
            cached = self._summaries.get(v)
            if cached is None:
                conflicts = self._conflicts_at(int(ev))
                if conflicts is None:  # built by a kaelum without the conflicts set: not usable
                    return None
                at = DeltaTable(self.info.summary_uri, version=v, storage_options=opts)
                base = frozenset(DeltaTable(self.info.events_uri, version=int(ev), storage_options=opts).file_uris())
                cached = Summary(v, int(ev), commit.get(META_SUMMARY_COLUMNS, ""), tuple(at.file_uris()), base, conflicts)
                self._summaries = {v: cached}  # one kept: a reader moves forward
            return cached
        return None

    def _conflicts_at(self, events_version: int) -> tuple[str, ...] | None:
        """The files of the stored conflicts set of exactly `events_version` (None: there is none)."""
        if not table_exists(self.info, self.info.conflicts_uri):
            return None
        table = open_table(self.info, self.info.conflicts_uri)
        for commit in table.history():
            if commit.get(META_EVENTS_VERSION) == str(events_version):
                table.load_as_version(commit["version"])
                return tuple(table.file_uris())
        return None

    def _pin(self, as_of: AsOf) -> None:
        ev, q = self._events, self._quarantine
        newest = ev.version()
        try:
            if isinstance(as_of, Mapping):
                ev.load_as_version(int(as_of["events"]))
                q.load_as_version(int(as_of.get("quarantine", q.version())))
            elif isinstance(as_of, int):
                if as_of > newest:
                    raise StoreError(f"--as-of {as_of}: the events table's newest version is {newest}")
                ev.load_as_version(as_of)
                q.load_as_version(_commit_time(ev, as_of))
            else:
                ts = parse_as_of(as_of) if isinstance(as_of, str) else as_of
                ev.load_as_version(ts)
                q.load_as_version(ts)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"--as-of {as_of}: {str(exc).splitlines()[0]} (the store's first commit is the earliest time it can show)") from exc
        self.fixed = self._snapshot()
        if self.info.local is not None:
            gone = [f for f in (*self.fixed.events_files, *self.fixed.quarantine_files) if not Path(f).exists()]
            if gone:
                raise StoreError(
                    f"--as-of {as_of}: the store as of then (events version {self.fixed.events_version}) is older than "
                    f"VACUUM's retention: {len(gone)} of its files were deleted (kaelum-sql compact --retention-s keeps more)"
                )

    def trace_id_ranges(self) -> dict[str, tuple[str | None, str | None]]:
        """(min, max) of ``trace_id`` per events file, by file URI, from the Delta log's per-file
        statistics (no data file is read). Files are immutable, so a range read at a newer version
        holds for every version that has the file; a file it lacks is simply not in the map."""
        with self._lock:
            version = self._events.version()
            if self._ranges_version != version:
                actions = pa.table(self._events.get_add_actions(flatten=True))
                root = self.info.events_uri.rstrip("/") + "/"
                names = set(actions.column_names)
                paths = actions.column("path").to_pylist()
                lo = actions.column("min.trace_id").to_pylist() if "min.trace_id" in names else [None] * len(paths)
                hi = actions.column("max.trace_id").to_pylist() if "max.trace_id" in names else [None] * len(paths)
                ranges = {}
                for path, a, b in zip(paths, lo, hi):
                    ranges[path if "://" in path or path.startswith("/") else root + path] = (a, b)
                self._ranges, self._ranges_version = ranges, version
            return self._ranges

    def _snapshot(self, newest: bool = False) -> Snapshot:
        ev = self._events.version()
        return Snapshot(ev, self._quarantine.version(), tuple(self._events.file_uris()), tuple(self._quarantine.file_uris()),
                        self._summary_at(ev, newest))

    def resolve(self) -> Snapshot:
        if self.fixed is not None:
            return self.fixed
        with self._lock:
            delta_call(self.info, "reading the store", lambda: (self._events.update_incremental(), self._quarantine.update_incremental()))
            return self._snapshot(newest=True)

    def datasets(self, snap: Snapshot) -> tuple[Any, Any]:
        """pyarrow datasets of both tables at `snap` (the reader of object-store URLs)."""
        with self._lock:
            self._events.load_as_version(snap.events_version)
            self._quarantine.load_as_version(snap.quarantine_version)
            return (delta_call(self.info, "reading the events table", self._events.to_pyarrow_dataset),
                    delta_call(self.info, "reading the quarantine table", self._quarantine.to_pyarrow_dataset))

    def summary_datasets(self, summary: Summary) -> tuple[Any, Any]:
        """pyarrow datasets of the summary and of its conflicts set (URL stores)."""
        from deltalake import DeltaTable

        opts = self.info.options
        conflicts = open_table(self.info, self.info.conflicts_uri)
        for commit in conflicts.history():
            if commit.get(META_EVENTS_VERSION) == str(summary.events_version):
                conflicts.load_as_version(commit["version"])
                break
        return (delta_call(self.info, "reading the trace summary",
                           lambda: DeltaTable(self.info.summary_uri, version=summary.version, storage_options=opts).to_pyarrow_dataset()),
                delta_call(self.info, "reading the conflicting-id set", conflicts.to_pyarrow_dataset))

    def events_subset(self, dataset: Any, uris: frozenset[str]) -> Any:
        """The part of an events dataset (``to_pyarrow_dataset``) in the files `uris` (``file_uris()``)."""
        import pyarrow.dataset as pds

        root = self.info.events_uri.rstrip("/") + "/"
        rel = {u[len(root):] if u.startswith(root) else u for u in uris}
        frags = [f for f in dataset.get_fragments() if f.path in rel or f.path in uris or f.path.lstrip("/") in rel]
        return pds.FileSystemDataset(frags, dataset.schema, dataset.format, dataset.filesystem)


class SnapshotFiles:
    """The ``kaelum_files(kind, txid)`` function of one local reader connection.

    Kinds: ``events``, ``quarantine``, ``summary`` (the per-trace summary's files), ``events_fresh``
    (events files the summary does not cover) and ``events_if_fresh`` (when any file is fresh, the
    events files that may hold events of the traces fresh events touch, ``live_files``; else none:
    the summary then covers every trace and the live recomputation reads nothing). One snapshot per transaction id (a query), so all scans of one query agree. Each list
    ends with a zero-row file of the table's columns, so that a scan has its columns even when the
    list is otherwise empty.
    """

    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = snapshots
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, Snapshot] = OrderedDict()
        self.resolved = 0  # how many snapshots were resolved (tests look at it)
        self.last: Snapshot | None = None
        # While the views are created DuckDB binds every scan; the empty schema files give it the
        # columns without resolving a snapshot per CREATE VIEW.
        self.binding = False
        self.summary_schema: Path | None = None  # set by the views: the summary's zero-row file
        self.summary_columns: str | None = None  # the columns this reader's summary has
        # The losing copies of conflicting ids, one small Parquet file per snapshot (store/conflicts.py).
        self._conflicts: OrderedDict[tuple[int, int | None], Path] = OrderedDict()
        self._conflicts_dir: Path | None = None
        self._conflicts_con: Any = None
        self._live: OrderedDict[tuple[int, int], tuple[str, ...]] = OrderedDict()  # live_files, per (events, summary) version

    def snapshot(self, txid: int) -> Snapshot:
        with self._lock:
            snap = self._cache.get(txid)
            if snap is None:
                snap = self.snapshots.resolve()
                self.resolved += 1
                self._cache[txid] = snap
                while len(self._cache) > 8:
                    self._cache.popitem(last=False)
            self.last = snap
            return snap

    def usable_summary(self, snap: Snapshot) -> Summary | None:
        s = snap.summary
        return s if s is not None and s.columns == self.summary_columns else None

    def conflicts_file(self, snap: Snapshot) -> Path:
        """The losing copies of `snap`, computed once per (events version, summary) and kept in a
        temporary file: every reference to ``events`` in a query reads that small file."""
        summary = self.usable_summary(snap)
        key = (snap.events_version, summary.version if summary else None)
        with self._lock:
            path = self._conflicts.get(key)
            if path is not None and path.exists():
                return path
            import duckdb
            import pyarrow.parquet as pq

            from .conflicts import compute_for_files

            if self._conflicts_con is None:
                self._conflicts_con = duckdb.connect(":memory:", config={"threads": "2"})
                self._conflicts_con.execute("SET TimeZone = 'UTC'")
                self._conflicts_dir = Path(tempfile.mkdtemp(prefix="kaelum-conflicts-"))
                atexit.register(shutil.rmtree, self._conflicts_dir, True)
            if summary is None:
                table = compute_for_files(self._conflicts_con, snap.events_files)
            else:
                fresh = [f for f in snap.events_files if f not in summary.base_files]
                table = compute_for_files(self._conflicts_con, snap.events_files, fresh, summary.conflict_files)
            path = Path(self._conflicts_dir or tempfile.gettempdir()) / f"conflicts-{snap.events_version}-{key[1]}.parquet"
            pq.write_table(table, path)
            self._conflicts[key] = path
            while len(self._conflicts) > 8:  # older snapshots' files: no query started now reads them
                _, old = self._conflicts.popitem(last=False)
                old.unlink(missing_ok=True)
            return path

    def live_files(self, snap: Snapshot, summary: Summary | None, fresh: tuple[str, ...]) -> tuple[str, ...]:
        """The events files the live recomputation must read: every file that may hold an event of
        a trace that fresh events touch (store/views.py, ``_touched``). Those are the fresh files and
        each other file whose ``trace_id`` range (Delta's per-file statistics) contains a touched
        trace or a trace of a live conflict; a file without statistics is always read. The live
        branch filters on those traces anyway, so a file left out holds none of their rows, and
        a query with a few fresh traces opens a few files instead of every one (56 of 229 ms of a
        search at 1M traces and 62 files, benchmarks/README.md)."""
        if summary is None:
            return snap.events_files
        key = (snap.events_version, summary.version)
        with self._lock:
            kept = self._live.get(key)
        if kept is not None:
            return kept
        touched: set[str] = set()
        for f in fresh:
            touched.update(t for t in pq.read_table(f, columns=["trace_id"]).column("trace_id").to_pylist() if t is not None)
        conflicts = pq.read_table(self.conflicts_file(snap), columns=["trace_id", "winner_trace_id", "live"]).to_pylist()
        touched.update(t for c in conflicts if c["live"] for t in (c["trace_id"], c["winner_trace_id"]) if t is not None)
        ids = sorted(touched)
        ranges = self.snapshots.trace_id_ranges()
        fresh_set = set(fresh)

        def may_hold(f: str) -> bool:
            lo, hi = ranges.get(f, (None, None))
            if f in fresh_set or lo is None or hi is None:
                return True
            # Statistics may be truncated prefixes: the true maximum is below hi + the largest character.
            i = bisect.bisect_left(ids, lo)
            return i < len(ids) and ids[i] <= hi + "\U0010ffff"

        kept = tuple(f for f in snap.events_files if may_hold(f))
        with self._lock:
            self._live[key] = kept
            while len(self._live) > 8:
                self._live.popitem(last=False)
        return kept

    def __call__(self, kind: str, txid: Any) -> list[str]:
        if kind == "conflicts":
            if self.binding:
                return [str(conflicts_schema_file())]
            return [str(self.conflicts_file(self.snapshot(int(txid))))]
        if kind == "summary":
            if self.summary_schema is None:
                raise ValueError("kaelum_files('summary') needs the summary's schema file")
            if self.binding:
                return [str(self.summary_schema)]
            s = self.usable_summary(self.snapshot(int(txid)))
            return [*(s.files if s else ()), str(self.summary_schema)]
        table = "quarantine" if kind == "quarantine" else "events"
        if self.binding:
            return [str(schema_file(table))]
        snap = self.snapshot(int(txid))
        if kind == "events":
            return [*snap.events_files, str(schema_file("events"))]
        if kind == "quarantine":
            return [*snap.quarantine_files, str(schema_file("quarantine"))]
        summary = self.usable_summary(snap)
        fresh = snap.events_files if summary is None else tuple(f for f in snap.events_files if f not in summary.base_files)
        if kind == "events_fresh":
            return [*fresh, str(schema_file("events"))]
        if kind == "events_if_fresh":
            return [*(self.live_files(snap, summary, fresh) if fresh else ()), str(schema_file("events"))]
        raise ValueError(f"unknown table {kind!r}")


_SCHEMA_FILES: dict[str, Path] = {}
_SCHEMA_LOCK = threading.Lock()


def conflicts_schema_file() -> Path:
    """A zero-row Parquet file of ``CONFLICTS_SCHEMA`` (what the views bind to)."""
    from .conflicts import CONFLICTS_SCHEMA

    with _SCHEMA_LOCK:
        path = _SCHEMA_FILES.get("conflicts")
        if path is None or not path.exists():
            d = Path(tempfile.mkdtemp(prefix="kaelum-store-schema-"))
            atexit.register(shutil.rmtree, d, True)
            path = d / "s-conflicts.parquet"
            pq.write_table(CONFLICTS_SCHEMA.empty_table(), path)
            _SCHEMA_FILES["conflicts"] = path
        return path


def schema_file(kind: str) -> Path:
    """A zero-row Parquet file with the columns of a table's data files (one per process).

    It lives in a temporary folder, under a ``date=1970-01-01`` partition the views skip, so that
    readers never write to the store.
    """
    with _SCHEMA_LOCK:
        path = _SCHEMA_FILES.get(kind)
        if path is None or not path.exists():
            schema = {"events": EVENTS_TABLE_SCHEMA, "quarantine": QUARANTINE_TABLE_SCHEMA}[kind]
            d = Path(tempfile.mkdtemp(prefix="kaelum-store-schema-"))
            atexit.register(shutil.rmtree, d, True)
            (d / EMPTY_PARTITION).mkdir()
            path = d / EMPTY_PARTITION / f"s-{kind}.parquet"
            data_schema = pa.schema([f for f in schema if f.name != PARTITION])
            pq.write_table(data_schema.empty_table(), path)
            _SCHEMA_FILES[kind] = path
        return path
