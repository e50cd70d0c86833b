"""Upcasting on read, with a synthetic version 3 (on top of the real 1 -> 2) that renames node_expanded.thought to step_text.

The real upcaster (version 1 -> 2, verdict methods) is tested in tests/test_store_verified_by.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import store
from kaelum.events import TraceEvents
from store import Contract, StoreWriter, StoreError, Upcaster, events_from_dicts
from store.upcast import CURRENT, UPCAST_V1_V2, V1_FIELDS


def _v2_to_v3(type_: str, data: dict) -> dict:
    if type_ != "node_expanded":
        return data
    out = {k: v for k, v in data.items() if k != "thought"}
    out["step_text"] = data["thought"]
    return out


upcast_v2_v3 = Upcaster(
    name="upcast_v2_v3",
    from_version=2,
    python=_v2_to_v3,
    sql="CASE WHEN {type} = 'node_expanded' THEN json_merge_patch({data}, json_object('step_text', {data}->'$.thought', 'thought', NULL)) ELSE {data} END",
)
V3 = Contract(version=3, fields={**V1_FIELDS, "thought": ("VARCHAR", "step_text")}, upcasters=(UPCAST_V1_V2, upcast_v2_v3))


def _trace():
    t = TraceEvents()
    evs = [
        t.make("trace_started", query="q?", domain="math", router={"domain": "math", "confidence": 1.0, "method": "explicit"},
               worker_model="m", params={"simulations": 1, "max_depth": 2, "branching": 1, "exploration": 1.0, "temperature": 0.0, "seed": None}, tags=[]),
        t.make("node_expanded", node_id="n0", parent_id=None, depth=0, thought="q?", terminal=False, answer=None, llm=None),
        t.make("node_expanded", node_id="n1", parent_id="n0", depth=1, thought="It is 1.", terminal=True, answer="1", llm=None),
        t.make("trace_completed", status="ok", final_answer="1", best_path=["n0", "n1"], verified=True, reward=0.8, reward_components={},
               node_stats=[], usage={"llm_calls": 1, "prompt_tokens": 1, "completion_tokens": 1}, duration_ms=1.0, error=None),
    ]
    return t.trace_id, [e.to_dict() for e in evs]


def test_contract_needs_the_whole_chain():
    with pytest.raises(ValueError, match=r"needs upcasters from versions \[1, 2, 3\]"):
        Contract(version=4, upcasters=(UPCAST_V1_V2, upcast_v2_v3))
    assert CURRENT.version == 2 and CURRENT.upcasters == (UPCAST_V1_V2,)


def test_v2_rows_read_as_v3(tmp_path: Path):
    tid, evs = _trace()
    with StoreWriter(tmp_path, "old") as w:  # a version-2 writer stored them as written
        w.commit(events_from_dicts(evs))
    con = store.connect(tmp_path, contract=V3)
    data, v, thought = con.execute("SELECT data, v, thought FROM events WHERE type = 'node_expanded' AND node_id = 'n1'").fetchone()
    payload = json.loads(data)
    assert v == 2 and "thought" not in payload and payload["step_text"] == "It is 1." and thought == "It is 1."
    # The Python path of the same upcaster gives the same payload.
    assert V3.upcast("node_expanded", evs[2]["data"], 2) == payload
    # Version-1 rows go through the whole chain.
    assert V3.upcast("node_expanded", evs[2]["data"], 1) == payload
    assert con.execute("SELECT steps FROM trajectories").fetchone()[0] == ["It is 1."]
    # The stored row is untouched: version 2, field `thought`.
    v1 = store.connect(tmp_path)
    assert json.loads(v1.execute("SELECT data FROM events WHERE node_id = 'n1' AND type = 'node_expanded'").fetchone()[0])["thought"] == "It is 1."


def test_v3_writer_takes_v2_and_v3_rows_and_the_views_agree(tmp_path: Path):
    tid, evs = _trace()
    v3 = [dict(e, v=3, data=V3.upcast(e["type"], e["data"], 2)) for e in evs]
    for e in v3:
        e["id"] = e["id"][:-4] + "beef"  # another copy of the trace, as version 3 lines
        e["trace_id"] = "v3-" + tid
    with StoreWriter(tmp_path, "new", contract=V3) as w:
        w.commit(events_from_dicts(evs + v3))
    con = store.connect(tmp_path, contract=V3)
    rows = con.execute("SELECT trace_id, steps, complete FROM trajectories ORDER BY trace_id").fetchall()
    assert rows == [(tid, ["It is 1."], True), ("v3-" + tid, ["It is 1."], True)]


def test_newer_version_than_the_writer_knows_is_refused(tmp_path: Path):
    _tid, evs = _trace()
    with StoreWriter(tmp_path, "old") as w:
        with pytest.raises(StoreError, match=r"column 'v': versions 2..3 outside 1..2 \(quarantine lines of unknown versions"):
            w.commit(events_from_dicts([evs[0], dict(evs[1], v=3)]))
