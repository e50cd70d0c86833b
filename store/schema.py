"""Arrow schemas of what the store keeps, and the batch builders the ingester uses.

``EVENTS_SCHEMA`` is what a writer accepts: the envelope of each event, its payload as JSON text and
its lineage (which source file, which byte offset). A stored row (``SEGMENT_SCHEMA``) adds typed
columns that the writer extracts from the payload once, at write time (``store.upcast.V1_FIELDS``),
so that the views filter and join on plain Parquet columns instead of parsing JSON per query.
The payload itself is kept as written; the typed columns are derived and can be rebuilt from it.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

from .layout import StoreError

try:  # orjson is a dependency of the store extra; json is the fallback for bare installs
    import orjson

    def _dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode("utf-8")

except ImportError:  # pragma: no cover - exercised only without orjson
    import json

    def _dumps(obj: Any) -> str:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


TS_TYPE = pa.timestamp("us", tz="UTC")

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("v", pa.int32(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("trace_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("data", pa.string(), nullable=False),  # the payload as JSON text, as written
        pa.field("source", pa.string()),  # fingerprint of the source file (ingest lineage)
        pa.field("source_path", pa.string()),
        pa.field("offset", pa.int64()),  # byte offset of the line in the source file
        pa.field("writer", pa.string()),  # filled by the StoreWriter with its writer id
    ]
)

_DUCK_TO_ARROW = {
    "VARCHAR": pa.string(),
    "VARCHAR[]": pa.list_(pa.string()),
    "INTEGER": pa.int32(),
    "BOOLEAN": pa.bool_(),
    "DOUBLE": pa.float64(),
}


def _typed_fields() -> list[pa.Field]:
    from .upcast import V1_FIELDS

    return [pa.field(name, _DUCK_TO_ARROW[typ]) for name, (typ, _key) in V1_FIELDS.items()]


# Stored event rows: the accepted columns, then the derived typed columns (SEGMENT_SCHEMA keeps its
# historical name: the ingester and tests build against it).
SEGMENT_SCHEMA = pa.schema(list(EVENTS_SCHEMA) + _typed_fields())

# Quarantine: the exact raw bytes (BLOB; a line need not be valid UTF-8) plus a readable text
# form (invalid bytes escaped as \xNN) so that SQL users can look at it without casting.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("raw", pa.binary(), nullable=False),
        pa.field("raw_text", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("writer", pa.string(), nullable=False),
        pa.field("quarantined_at", TS_TYPE, nullable=False),
    ]
)

# Row groups of ~128k rows: big enough for zstd and for DuckDB's parallel scan (one row group per
# thread), small enough that min/max statistics on `type` and `trace_id` let a scan skip most of a
# file when a view asks for one event type.
ROW_GROUP_ROWS = 128 * 1024
ZSTD_LEVEL = 3  # compaction's level: its files live long; higher levels gain little on JSON text
# A writer's files are short-lived (compaction rewrites them at ZSTD_LEVEL) and on the ingest hot
# path: level 1 measured ~20% faster than 3 at the same size (16.0 vs 15.9 MiB per 200k events).
WRITER_ZSTD_LEVEL = 1


def _column(values: Any, n: int, typ: pa.DataType) -> pa.Array:
    """A column from a list, or a scalar broadcast to n rows (lineage is usually one file per batch)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == typ else values.cast(typ)
    if values is None or isinstance(values, (str, int)):
        return pa.array([values] * n, type=typ)
    return pa.array(values, type=typ)


def events_table(
    *,
    id: Sequence[str],
    v: Sequence[int],
    type: Sequence[str],
    trace_id: Sequence[str],
    seq: Sequence[int],
    ts: Sequence[str],
    data: Sequence[str],
    source: str | Sequence[str] | None = None,
    source_path: str | Sequence[str] | None = None,
    offset: Sequence[int] | None = None,
    writer: str | Sequence[str] | None = None,
) -> pa.Table:
    """A batch in ``EVENTS_SCHEMA`` from parallel lists (the cheapest form for the ingester).

    `ts` are the contract's RFC 3339 strings (``...Z``); `data` is each payload as JSON text.
    `source`, `source_path` and `writer` may be one string for the whole batch.
    """
    n = len(id)
    lengths = {"v": len(v), "type": len(type), "trace_id": len(trace_id), "seq": len(seq), "ts": len(ts), "data": len(data)}
    if offset is not None and not isinstance(offset, int):
        lengths["offset"] = len(offset)
    bad = [f"{k} has {m}" for k, m in lengths.items() if m != n]
    if bad:
        raise StoreError(f"events_table: every column needs {n} values (as many as id); " + ", ".join(bad))
    ts_arr = pa.array(ts, type=pa.string()).cast(TS_TYPE)
    return pa.Table.from_arrays(
        [
            pa.array(id, type=pa.string()),
            pa.array(v, type=pa.int32()),
            pa.array(type, type=pa.string()),
            pa.array(trace_id, type=pa.string()),
            pa.array(seq, type=pa.int64()),
            ts_arr,
            pa.array(data, type=pa.string()),
            _column(source, n, pa.string()),
            _column(source_path, n, pa.string()),
            _column(offset, n, pa.int64()),
            _column(writer, n, pa.string()),
        ],
        schema=EVENTS_SCHEMA,
    )


class BatchBuilder:
    """Collects parsed events of one source file row by row, then builds one ``EVENTS_SCHEMA`` table.

    ``add`` appends to plain lists (a few list appends and one ``orjson.dumps`` per event), so
    building is not the ingester's bottleneck.

        b = BatchBuilder(source=fingerprint, source_path=path)
        for offset, obj in parsed_lines:
            b.add(obj, offset)
        writer.commit(b.table(), sources=[...])
    """

    __slots__ = ("source", "source_path", "_id", "_v", "_type", "_trace", "_seq", "_ts", "_data", "_off")

    def __init__(self, source: str | None = None, source_path: str | None = None) -> None:
        self.source = source
        self.source_path = source_path
        self._id: list[str] = []
        self._v: list[int] = []
        self._type: list[str] = []
        self._trace: list[str] = []
        self._seq: list[int] = []
        self._ts: list[str] = []
        self._data: list[str] = []
        self._off: list[int | None] = []

    def __len__(self) -> int:
        return len(self._id)

    def add(self, event: Mapping[str, Any], offset: int | None = None, data_json: str | None = None) -> None:
        """Add one validated event (a parsed line). Pass `data_json` if the payload's JSON text is at hand."""
        self._id.append(event["id"])
        self._v.append(event["v"])
        self._type.append(event["type"])
        self._trace.append(event["trace_id"])
        self._seq.append(event["seq"])
        self._ts.append(event["ts"])
        self._data.append(data_json if data_json is not None else _dumps(event["data"]))
        self._off.append(offset)

    def table(self) -> pa.Table:
        return events_table(
            id=self._id,
            v=self._v,
            type=self._type,
            trace_id=self._trace,
            seq=self._seq,
            ts=self._ts,
            data=self._data,
            source=self.source,
            source_path=self.source_path,
            offset=self._off,
        )


def events_from_dicts(events: Iterable[Mapping[str, Any]], source: str | None = None, source_path: str | None = None, offsets: Sequence[int] | None = None) -> pa.Table:
    """Convenience: a batch from event dicts (``Event.to_dict()`` or parsed lines)."""
    b = BatchBuilder(source, source_path)
    for i, e in enumerate(events):
        b.add(e, offsets[i] if offsets is not None else None)
    return b.table()


def check_events_table(table: Any) -> pa.Table:
    """Return `table` in ``EVENTS_SCHEMA`` or raise StoreError naming every offending column."""

    if not isinstance(table, pa.Table):
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        else:
            raise StoreError(f"commit takes a pyarrow.Table in EVENTS_SCHEMA, got {type(table).__name__}")
    problems: list[str] = []
    names = table.schema.names
    for f in EVENTS_SCHEMA:
        if f.name not in names:
            if f.name == "writer":  # the writer fills it in
                continue
            problems.append(f"column {f.name!r} is missing (expected {f.type})")
            continue
        got = table.schema.field(f.name).type
        if got != f.type:
            problems.append(f"column {f.name!r} has type {got}, expected {f.type}")
        elif not f.nullable and table.column(f.name).null_count:
            problems.append(f"column {f.name!r} has {table.column(f.name).null_count} null value(s); it may not be null")
    extra = [n for n in names if n not in EVENTS_SCHEMA.names]
    if extra:
        problems.append(f"unexpected column(s) {', '.join(map(repr, extra))} (EVENTS_SCHEMA has {', '.join(EVENTS_SCHEMA.names)})")
    if problems:
        raise StoreError("batch does not match EVENTS_SCHEMA, nothing written: " + "; ".join(problems))
    if "writer" not in names:
        table = table.append_column(EVENTS_SCHEMA.field("writer"), pa.nulls(table.num_rows, pa.string()))
    return table.select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA)
