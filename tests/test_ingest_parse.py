"""Parsing blocks of lines: the bulk DuckDB check agrees with validate_event, every bad line has a reason."""

import copy
import json

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pytest

from ingest.fastcheck import build_query
from ingest.parse import _exact, parse_block
from kaelum.events import PAYLOAD_SPECS, TraceEvents


def _valid_events() -> list[dict]:
    t = TraceEvents()
    return [
        t.make("trace_started", query="2+2?", domain="math", router={"domain": "math", "confidence": 0.9, "method": "keywords"},
               worker_model="m", params={"simulations": 4, "max_depth": 3, "branching": 2, "exploration": 1.4, "temperature": 0.7, "seed": None}, tags=["a", "b"]).to_dict(),
        t.make("node_expanded", node_id="n0", parent_id=None, depth=0, thought="2+2?", terminal=False, answer=None, llm=None).to_dict(),
        t.make("node_expanded", node_id="n1", parent_id="n0", depth=1, thought="Step 1: add", terminal=True, answer="4",
               llm={"model": "m", "prompt_tokens": 10, "completion_tokens": 5, "latency_ms": 12.5}).to_dict(),
        t.make("node_evaluated", node_id="n1", value=0.8, signals={"llm": 0.8}).to_dict(),
        t.make("verification", node_id="n1", answer="4", passed=True, score=1.0, verifier="math.sympy", details={}).to_dict(),
        t.make("reflection", node_id="n1", text="fine").to_dict(),
        t.make("trace_completed", status="ok", final_answer="4", best_path=["n0", "n1"], verified=True, reward=0.9,
               reward_components={"v": 1.0}, node_stats=[{"node_id": "n0", "visits": 2, "value": 0.5}],
               usage={"llm_calls": 1, "prompt_tokens": 10, "completion_tokens": 5}, duration_ms=3.0, error=None).to_dict(),
        t.make("feedback", by="alice", reward=0.2).to_dict(),
    ]


_VALUES = [None, "x", "math", "ok", 0, 1, -1, 2, 1.5, 2**70, True, [], ["x", 1], {}, {"node_id": 1}]


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _mutants(event: dict):
    for path in _paths(event):
        parent = event
        for p in path[:-1]:
            parent = parent[p]
        for value in _VALUES + ["__delete__"]:
            m = copy.deepcopy(event)
            target = m
            for p in path[:-1]:
                target = target[p]
            if value == "__delete__":
                if isinstance(target, dict):
                    del target[path[-1]]
                else:
                    continue
            else:
                target[path[-1]] = value
            yield m


VALID = _valid_events()


def _lines() -> list[bytes]:
    out = []
    for e in VALID:
        out.append(orjson.dumps(e))
        out.extend(json.dumps(m).encode() for m in _mutants(e))
    # Things DuckDB's reader takes and strict JSON does not, and other hostile spellings.
    e = _valid_events()[3]
    good = json.dumps(e)
    out += [
        good.replace('"value": 0.8', '"value": NaN').encode(),
        good.replace('"value": 0.8', '"value": Infinity').encode(),
        good.replace('"value": 0.8', '"value": 1e400').encode(),
        good.replace('"value": 0.8', '"value": 0.8,').encode(),
        good.replace('"type": "node_evaluated"', '"type": "node_\\u0065valuated"').encode(),
        good.replace('"seq": 3', '"seq": 3.0').encode(),
        good.replace('Z"', '+00:00"').encode(),
        good.replace('Z"', 'z"').encode(),
        good.replace('T', ' ', 1).encode(),
        b"", b"   ", b"[1,2]", b'"a string"', b"{", b"null",
    ]
    return out


def test_bulk_check_is_sound_and_the_result_equals_the_exact_path():
    lines = _lines()
    assert len(lines) > 2000
    data = b"".join(l + b"\n" for l in lines)
    parsed = parse_block(data, 1000)

    # Reference: each line alone through orjson + validate_event.
    expect_ok, expect_bad, off = [], [], 1000
    for l in lines:
        row, reason = _exact(l, off)
        (expect_ok if row else expect_bad).append((off, row or reason))
        off += len(l) + 1
    got_rows = parsed.events.to_pylist()
    assert [r["offset"] for r in got_rows] == [o for o, _ in expect_ok]
    for got, (_, want) in zip(got_rows, expect_ok):
        assert {k: got[k] for k in ("id", "v", "type", "trace_id", "seq", "ts")} == {k: want[k] for k in ("id", "v", "type", "trace_id", "seq", "ts")}
        assert orjson.loads(got["data"]) == orjson.loads(want["data"])
    assert [(b.offset, b.reason) for b in parsed.bad] == expect_bad
    assert parsed.lines == len(lines)

    # The bulk check alone: never accepts what validate_event refuses, and accepts the plain valid events.
    offs = np.cumsum([0] + [len(l) + 1 for l in lines[:-1]])
    con = duckdb.connect()
    block = pa.table({"line": pa.array([l.decode() + "\n" for l in lines]), "off": pa.array(offs, pa.int64())})
    con.register("block", block)
    fast = dict(con.sql(build_query("block")).select("off, ok").fetchall())
    refused = {o - 1000 for o, _ in expect_bad}
    assert not any(fast[o] for o in refused)
    valid_offsets = [int(o) for o, l in zip(offs, lines) if l in [orjson.dumps(e) for e in VALID]]
    assert len(valid_offsets) == len(PAYLOAD_SPECS) + 1 and all(fast[o] for o in valid_offsets)


def test_each_kind_of_garbage_gets_its_reason():
    e = _valid_events()[5]
    lines = [
        b"\xff\xfeinvalid utf-8",
        b"{not json",
        json.dumps({**e, "seq": -1}).encode(),
        json.dumps({**e, "type": "telepathy"}).encode(),
        json.dumps({**e, "v": 7}).encode(),
        b"x" * 5000,
        json.dumps({**e, "ts": "2026-13-45T25:61:61.000000Z"}).encode(),
        orjson.dumps(e),
    ]
    data = b"".join(l + b"\n" for l in lines)
    parsed = parse_block(data, 0, max_line_bytes=2048)
    reasons = [b.reason for b in parsed.bad]
    assert reasons[0] == "invalid UTF-8"
    assert reasons[1].startswith("invalid JSON")
    assert reasons[2] == "breaks the event contract: seq: -1 is below the minimum 0"
    assert reasons[3].startswith("unknown event type: type: 'telepathy' is not one of")
    assert reasons[4].startswith("unknown newer schema version: v: schema version 7 is newer")
    assert reasons[5].startswith("line of 5000 bytes exceeds the limit of 2048 bytes")
    assert reasons[6].startswith("breaks the event contract: ts: '2026-13-45T25:61:61.000000Z' is not a real date")
    assert len(parsed.bad[5].raw) == 2048
    assert parsed.bad[0].raw == lines[0] and parsed.bad[1].offset == len(lines[0]) + 1
    assert parsed.events.column("id").to_pylist() == [e["id"]]


def test_duplicate_keys_are_read_first_wins_by_the_bulk_path():
    # Documented divergence (ingest/fastcheck.py): JSON leaves duplicate keys undefined.
    # Small blocks take the exact path (last wins); big ones the bulk path (first wins).
    e = VALID[5]
    line = orjson.dumps(e)[:-1] + b',"id":"second"}'
    assert parse_block(line + b"\n", 0).events.column("id").to_pylist() == ["second"]
    parsed = parse_block((line + b"\n") * 500, 0)
    assert parsed.events.column("id").to_pylist() == [e["id"]] * 500 and not parsed.bad


def test_block_must_end_with_a_newline():
    with pytest.raises(ValueError, match="complete lines only"):
        parse_block(b'{"a":1}', 0)


def _nested(depth: int) -> object:
    value: object = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _nested_line(event: dict, depth: int) -> bytes:
    """`event` with data.extra nested `depth` levels, written as text (no JSON writer goes that deep)."""
    text = b'"leaf"'
    for i in range(depth):
        text = b"[" + text + b"]" if i % 2 else b'{"k":' + text + b"}"
    return orjson.dumps(dict(event, data={**event["data"], "extra": "@@"})).replace(b'"@@"', text)


@pytest.mark.parametrize("payload_depth", [300, 1100])
def test_deep_nesting_is_quarantined_by_both_paths_alike(payload_depth):
    # The bulk path (DuckDB) stored JSON nested deeper than 1024 levels that the line path
    # quarantined; the line path itself crashed on payloads 255-1023 deep (orjson cannot write them).
    e = VALID[5]
    line = _nested_line(e, payload_depth)
    fine = dict(e, data={**e["data"], "extra": _nested(100), "many": [[1]] * 500})  # many brackets, shallow
    ok = orjson.dumps(fine)
    for copies in (1, 400):  # one line: the exact path; 400 lines: the bulk path
        block = b"".join(l + b"\n" for l in [ok, line] * copies)
        parsed = parse_block(block, 0, max_line_bytes=1 << 20)
        assert [b.reason for b in parsed.bad] == ["JSON nested deeper than 128 levels"] * copies
        assert parsed.bad[0].offset == len(ok) + 1 and parsed.bad[0].raw == line
        assert parsed.events.num_rows == copies and parsed.events.column("offset").to_pylist() == [i * (len(ok) + len(line) + 2) for i in range(copies)]


def test_nesting_at_the_limit_is_stored_by_both_paths():
    e = VALID[5]
    at_limit = orjson.dumps(dict(e, data={**e["data"], "extra": _nested(126)}))  # envelope 1 + data 1 + 126
    assert _exact(at_limit, 0)[1] is None
    assert parse_block((at_limit + b"\n") * 300, 0).events.num_rows == 300
    over = orjson.dumps(dict(e, data={**e["data"], "extra": _nested(127)}))
    assert _exact(over, 0)[1] == "JSON nested deeper than 128 levels"
    assert [b.reason for b in parse_block((over + b"\n") * 300, 0).bad] == ["JSON nested deeper than 128 levels"] * 300
