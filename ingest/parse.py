"""Turn a block of complete lines into event rows and quarantined lines.

A block is bytes that end with a newline, read from one source at a known byte offset. Every
line ends up in exactly one of two places: a row of the events table, or a ``BadLine`` with its
offset, raw bytes and the reason. Nothing is dropped.

Speed: the whole block is checked at once (UTF-8 by one decode, lines split with numpy, the
contract by a DuckDB expression derived from the spec, see ``fastcheck``); only lines the bulk
check does not accept are looked at one by one with ``orjson`` + ``validate_event``, which
either accepts them after all or names the reason.

Nesting: a line whose JSON nests deeper than ``MAX_NESTING`` levels (the envelope object is level
1) is quarantined, by both paths alike. The exact path measures the depth; the bulk path (DuckDB
reads any depth) sends each line with more than ``MAX_NESTING`` opening brackets, an upper bound
of its depth, to the exact path (counting them: 90-250 ms per 32 MiB block against a 1.8-2.6 s
bulk parse, measured at a load average of 10; to be rerun on a quiet machine).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from kaelum.events import SCHEMA_VERSION, EventError, validate_event

from .fastcheck import build_query

DEFAULT_MAX_LINE_BYTES = 1 << 20
SCAN_CHUNK_ROWS = 4096
SMALL_BLOCK_LINES = 200  # up to this many lines, the exact per-line path is faster than the bulk query
# Kaelum's events nest a few levels; orjson reads at most 1024 and writes at most 254, and
# Python's json module recurses: deeper lines are quarantined rather than stored unreadable.
MAX_NESTING = 128

# Columns this module produces for each event; the emitter adds source, source_path and writer.
PARSED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("v", pa.int32()),
        ("type", pa.string()),
        ("trace_id", pa.string()),
        ("seq", pa.int64()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("data", pa.string()),
        ("offset", pa.int64()),
    ]
)


@dataclass(frozen=True)
class BadLine:
    """A line that cannot become an event: where it is, what it was, why."""

    offset: int
    raw: bytes
    reason: str

    def __post_init__(self) -> None:
        # Blocks may be bytearrays (ingest.source reads into one): a quarantined line keeps an
        # immutable copy of its bytes, not a view that the next read could change.
        if not isinstance(self.raw, bytes):
            object.__setattr__(self, "raw", bytes(self.raw))


@dataclass
class Parsed:
    events: pa.Table  # PARSED_SCHEMA
    bad: list[BadLine]
    lines: int


_QUERY = build_query("block")
_local = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    # One in-memory DuckDB per thread; it only ever evaluates _QUERY over an Arrow table.
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect(":memory:")
        # Every core: the check is most of a catch-up's work, and a block alone parses twice as fast
        # on 2 threads (four 32 MiB blocks: 0.80 s against 1.28-1.58 s with 1, quiet 2-core machine).
        # Beside the store's commit thread the whole catch-up gained less (1.04x at 1M events,
        # benchmarks/README.md): both cores are then busy, and what is left is the CPU it takes.
        con.execute(f"SET threads = {max(1, os.cpu_count() or 1)}")
        # The query as a view: each block then sends a few bytes of SQL instead of 12 kB that the
        # client tokenizes and parses again (measured 48 -> 31 ms of CPU per block). The view is
        # bound to whatever table is registered as `block` when it is queried.
        con.register("block", pa.table({"line": pa.array([], pa.string()), "off": pa.array([], pa.int64())}))
        con.execute(f"CREATE TEMP VIEW checked_block AS {_QUERY}")
        con.unregister("block")
        _local.con = con
    return con


def oversize_reason(length: int, limit: int) -> str:
    return f"line of {length} bytes exceeds the limit of {limit} bytes (raw text kept up to the limit)"


def nesting_reason() -> str:
    return f"JSON nested deeper than {MAX_NESTING} levels"


def _depth_over(obj: object, limit: int) -> bool:
    """Whether `obj` nests deeper than `limit` levels (a scalar is 0, `{}` or `[]` is 1)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _exact(line: bytes, offset: int) -> tuple[dict | None, str | None]:
    """The slow, exact path for one line (newline stripped): a row dict or a reason."""
    if not line.strip():
        return None, "empty line"
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        if str(e).startswith("depth limit exceeded"):
            return None, nesting_reason()
        return None, f"invalid JSON: {e}"
    if line.count(b"{") + line.count(b"[") > MAX_NESTING and _depth_over(obj, MAX_NESTING):
        return None, nesting_reason()
    try:
        validate_event(obj)
    except EventError as e:
        reason = str(e)
        if reason.startswith("v: schema version"):
            return None, f"unknown newer schema version: {reason}"
        if reason.startswith("type:"):
            return None, f"unknown event type: {reason}"
        return None, f"breaks the event contract: {reason}"
    if not 1 <= obj["v"] <= SCHEMA_VERSION:
        # Older versions (validated against their own payloads) are stored as written and upcast
        # by the store's readers; validate_event already refused newer and non-positive ones.
        return None, f"breaks the event contract: v: unsupported schema version {obj['v']}"
    ts = obj["ts"]
    try:
        when = datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError as e:
        return None, f"breaks the event contract: ts: {ts!r} is not a real date and time ({e})"
    if obj["seq"] >= 2**63:
        return None, f"breaks the event contract: seq: {obj['seq']} does not fit in 64 bits"
    return {
        "id": obj["id"],
        "v": obj["v"],
        "type": obj["type"],
        "trace_id": obj["trace_id"],
        "seq": obj["seq"],
        "ts": when,
        "data": orjson.dumps(obj["data"]).decode("utf-8"),
        "offset": offset,
    }, None


def _utf8_valid(data: bytes | bytearray) -> bool:
    """Whether all of `data` is UTF-8, checked by Arrow's vectorised validator without building a
    str (decoding a 32 MiB block into a str measured ~8% of the parse, most of it page faults)."""
    one = pa.LargeStringArray.from_buffers(1, pa.py_buffer(np.array([0, len(data)], dtype=np.int64)), pa.py_buffer(data))
    try:
        one.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _utf8_bad_lines(data: bytes | bytearray, base: int) -> list[tuple[int, int]]:
    """(start, end) within `data` of every line that is not valid UTF-8 (end excludes the newline)."""
    bad: list[tuple[int, int]] = []
    if _utf8_valid(data):
        return bad
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        try:
            str(view[pos:], "utf-8")
            break
        except UnicodeDecodeError as e:
            where = pos + e.start
            start = data.rfind(b"\n", 0, where) + 1
            end = data.find(b"\n", where)
            end = len(data) if end < 0 else end
            bad.append((start, end))
            pos = end + 1
    return bad


def parse_block(data: bytes, base_offset: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Parsed:
    """Parse `data` (complete lines, ending with a newline) that starts at byte `base_offset`."""
    if not data:
        return Parsed(PARSED_SCHEMA.empty_table(), [], 0)
    if not data.endswith(b"\n"):
        raise ValueError("parse_block takes complete lines only (the block must end with a newline)")
    bad: list[BadLine] = []
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)  # index of each line's newline
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    skip = np.zeros(len(ends), dtype=bool)

    for s, _e in _utf8_bad_lines(data, base_offset):
        i = int(np.searchsorted(starts, s))
        skip[i] = True
        raw = data[s : ends[i]]
        reason = "invalid UTF-8"
        if len(raw) > max_line_bytes:
            raw, reason = raw[:max_line_bytes], f"{reason}; {oversize_reason(len(raw), max_line_bytes)}"
        bad.append(BadLine(base_offset + s, raw, reason))
    for i in np.flatnonzero((lengths > max_line_bytes) & ~skip):
        skip[i] = True
        bad.append(BadLine(base_offset + int(starts[i]), data[starts[i] : starts[i] + max_line_bytes], oversize_reason(int(lengths[i]), max_line_bytes)))

    keep = np.flatnonzero(~skip)
    if len(keep) <= SMALL_BLOCK_LINES:
        # Following a live file gives a few lines at a time; planning the bulk query costs more
        # than checking them one by one.
        rows = []
        for i in keep:
            s, e = int(starts[i]), int(ends[i])
            row, reason = _exact(data[s:e], base_offset + s)
            if row is None:
                bad.append(BadLine(base_offset + s, data[s:e], reason or "rejected"))
            else:
                rows.append(row)
        bad.sort(key=lambda b: b.offset)
        return Parsed(pa.Table.from_pylist(rows, schema=PARSED_SCHEMA), bad, len(ends))
    # Lines that may nest too deeply: more opening brackets than MAX_NESTING. The exact path decides.
    deep = np.zeros(len(ends), dtype=bool)
    opens = np.flatnonzero((arr | 0x20) == ord("{"))  # '[' is 0x5B, '{' is 0x7B: one test for both
    if len(opens) > MAX_NESTING:
        per_line = np.diff(np.searchsorted(opens, np.append(starts, len(data))))
        deep = (per_line > MAX_NESTING) & ~skip
        if deep.any():
            skip = skip | deep
            keep = np.flatnonzero(~skip)
    if len(keep) == len(ends):
        offsets = np.empty(len(ends) + 1, dtype=np.int32)
        offsets[0] = 0
        offsets[1:] = ends + 1
        # Zero-copy: each value is one line with its newline (JSON allows trailing whitespace).
        lines = pa.StringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data))
        offs = starts
    else:
        offs = starts[keep]
        lines = pa.array([data[starts[i] : ends[i] + 1] for i in keep], type=pa.binary()).cast(pa.string())
    block = pa.table({"line": lines, "off": pa.array(offs.astype(np.int64))})
    # Several record batches (zero-copy slices), so DuckDB scans them on all its threads.
    block = pa.Table.from_batches(block.to_batches(max_chunksize=SCAN_CHUNK_ROWS), schema=block.schema)
    con = _connection()
    con.register("block", block)
    try:
        result = con.sql("SELECT * FROM checked_block").to_arrow_table()
    finally:
        con.unregister("block")

    exact_rows = []
    for i in np.flatnonzero(deep):
        s, e = int(starts[i]), int(ends[i])
        row, reason = _exact(data[s:e], base_offset + s)
        if row is None:
            bad.append(BadLine(base_offset + s, data[s:e], reason or "rejected"))
        else:
            exact_rows.append(row)
    ok = result.column("ok").to_numpy(zero_copy_only=False)
    good = result.filter(pa.array(ok)) if not ok.all() else result
    events = pa.table(
        {
            "id": good.column("id"),
            "v": good.column("v"),
            "type": good.column("type"),
            "trace_id": good.column("trace_id"),
            "seq": good.column("seq"),
            "ts": good.column("ts").cast(pa.timestamp("us", tz="UTC")),
            "data": good.column("data"),
            "offset": pc.add(good.column("off"), base_offset),
        },
        schema=PARSED_SCHEMA,
    )
    if not ok.all() or exact_rows:
        rows = exact_rows
        offs_failed = result.column("off").filter(pa.array(~ok)).to_numpy()
        for off in offs_failed:
            off = int(off)
            end = data.index(b"\n", off)
            row, reason = _exact(data[off:end], base_offset + off)
            if row is None:
                bad.append(BadLine(base_offset + off, data[off:end], reason or "rejected"))
            else:
                rows.append(row)
        if rows:
            events = pa.concat_tables([events, pa.Table.from_pylist(rows, schema=PARSED_SCHEMA)]).sort_by("offset")
    bad.sort(key=lambda b: b.offset)
    return Parsed(events, bad, len(ends))
