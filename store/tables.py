"""The store's two Delta tables: their schemas, their creation, and opening them with clear errors."""

from __future__ import annotations

import errno
from typing import Any, Callable, TypeVar

import pyarrow as pa

from .layout import StoreError, StoreInfo, credential_hint, is_url
from .schema import QUARANTINE_SCHEMA, SEGMENT_SCHEMA

T = TypeVar("T")

PARTITION = "date"
DATE_FIELD = pa.field(PARTITION, pa.date32(), nullable=False)
# The events table: the accepted envelope and payload, the typed columns derived from it, and the
# hive partition column `date` (the UTC date of `ts`), which Delta keeps in the file paths.
EVENTS_TABLE_SCHEMA = pa.schema(list(SEGMENT_SCHEMA) + [DATE_FIELD])
# The quarantine table: refused lines, the writer's commit number (`batch`, for recovery: see
# store/writer.py) and the partition `date` (the commit's UTC date).
QUARANTINE_TABLE_SCHEMA = pa.schema(list(QUARANTINE_SCHEMA) + [pa.field("batch", pa.int64(), nullable=False), DATE_FIELD])

# The per-trace summary (derived, rebuilt by compaction from one events version; docs/store.md).
SUMMARY_TABLE = "trace_summary"
META_EVENTS_VERSION = "kaelum.events_version"  # the events version a summary version was built from
META_SUMMARY_COLUMNS = "kaelum.summary_columns"  # its columns: a summary of other columns is not read

# Commit metadata (kept in the Delta log with each commit) must outlive the longest a writer may
# stay away: its read positions live there (store/writer.py). Compaction re-records every writer's
# positions in its own commit, so a year is a generous bound, not a requirement.
TABLE_CONFIGURATION = {"delta.logRetentionDuration": "interval 365 days"}


def delta_call(info: StoreInfo, what: str, fn: Callable[[], T]) -> T:
    """Run a delta-rs call, turning storage failures into StoreError messages that name the fix."""
    try:
        return fn()
    except StoreError:
        raise
    except Exception as exc:  # deltalake raises OSError, DeltaError, DeltaProtocolError, ... with the cause in the text
        raise storage_error(info, what, exc) from exc


def storage_error(info: StoreInfo, what: str, exc: BaseException) -> StoreError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = str(exc).lower()
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "no space left" in low:
        return StoreError(f"{what} failed on {info.uri}: the disk is full (nothing was committed; free space and run again)")
    if is_url(info.uri):
        reach = ("connect", "dns", "timed out", "timeout", "connection", "unreachable", "refused", "resolve", "error sending request")
        auth = ("403", "401", "forbidden", "accessdenied", "access denied", "invalidaccesskeyid", "signature", "credential", "missing region")
        if any(k in low for k in auth):
            return StoreError(f"{what}: {info.uri} refused the credentials ({text}); set {credential_hint(info.uri)}")
        if any(k in low for k in reach):
            return StoreError(f"{what}: cannot reach {info.uri} ({text}); check the URL and set {credential_hint(info.uri)}")
        if "nosuchbucket" in low or "bucket" in low and "not" in low:
            return StoreError(f"{what}: the bucket of {info.uri} does not exist ({text}); create it, or fix the URL")
    return StoreError(f"{what} failed on {info.uri}: {text}")


def tables_exist(info: StoreInfo) -> bool:
    from deltalake import DeltaTable

    if info.local is not None:
        return (info.local / "events" / "_delta_log").is_dir()
    return delta_call(info, "opening the store", lambda: DeltaTable.is_deltatable(info.events_uri, storage_options=info.options))


def create_tables(info: StoreInfo) -> None:
    """Create both tables if missing (idempotent; a table created meanwhile by another process is fine)."""
    from deltalake import DeltaTable

    for uri, schema in ((info.quarantine_uri, QUARANTINE_TABLE_SCHEMA), (info.events_uri, EVENTS_TABLE_SCHEMA)):
        # Quarantine first: a location whose events table exists has both (tables_exist looks at events).
        def make(uri: str = uri, schema: pa.Schema = schema) -> Any:
            return DeltaTable.create(uri, schema, mode="ignore", partition_by=[PARTITION], storage_options=info.options,
                                     configuration=TABLE_CONFIGURATION)

        try:
            delta_call(info, "creating the store", make)
        except StoreError:
            # Several writers creating one store at once race for version 0; the losers' errors vary
            # with the storage and the moment ("already exists", "protocol changed since last
            # commit", ...). What matters is whether the table exists now: then another process won.
            if not _is_table(info, uri):
                raise


def table_exists(info: StoreInfo, uri: str) -> bool:
    """Whether `uri` (a table of the store: the summary, the conflicts set) is a Delta table yet."""
    from deltalake import DeltaTable

    if info.local is not None:
        return (info.local / uri[len(info.uri) + 1:] / "_delta_log").is_dir()
    return delta_call(info, f"opening {uri}", lambda: DeltaTable.is_deltatable(uri, storage_options=info.options))


def _is_table(info: StoreInfo, uri: str) -> bool:
    from deltalake import DeltaTable

    try:
        return bool(DeltaTable.is_deltatable(uri, storage_options=info.options))
    except Exception:  # noqa: BLE001 - unreachable now as well: the creation error is the one to report
        return False


def open_table(info: StoreInfo, uri: str, version: int | None = None) -> Any:
    from deltalake import DeltaTable

    return delta_call(info, f"opening {uri}", lambda: DeltaTable(uri, version=version, storage_options=info.options))
