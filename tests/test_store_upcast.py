"""Upcasting on read, with a synthetic version 2 that renames node_expanded.thought to step_text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import store
from kaelum.events import TraceEvents
from store import Contract, StoreWriter, StoreError, Upcaster, events_from_dicts
from store.upcast import CURRENT, V1_FIELDS


def _v1_to_v2(type_: str, data: dict) -> dict:
    if type_ != "node_expanded":
        return data
    out = {k: v for k, v in data.items() if k != "thought"}
    out["step_text"] = data["thought"]
    return out


upcast_v1_v2 = Upcaster(
    name="upcast_v1_v2",
    from_version=1,
    python=_v1_to_v2,
    sql="CASE WHEN {type} = 'node_expanded' THEN json_merge_patch({data}, json_object('step_text', {data}->'$.thought', 'thought', NULL)) ELSE {data} END",
)
V2 = Contract(version=2, fields={**V1_FIELDS, "thought": ("VARCHAR", "step_text")}, upcasters=(upcast_v1_v2,))


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
    with pytest.raises(ValueError, match=r"needs upcasters from versions \[1, 2\]"):
        Contract(version=3, upcasters=(upcast_v1_v2,))
    assert CURRENT.version == 1 and CURRENT.upcasters == ()


def test_v1_rows_read_as_v2(tmp_path: Path):
    tid, evs = _trace()
    with StoreWriter(tmp_path, "old") as w:  # a version-1 writer stored them as written
        w.commit(events_from_dicts(evs))
    con = store.connect(tmp_path, contract=V2)
    data, v, thought = con.execute("SELECT data, v, thought FROM events WHERE type = 'node_expanded' AND node_id = 'n1'").fetchone()
    payload = json.loads(data)
    assert v == 1 and "thought" not in payload and payload["step_text"] == "It is 1." and thought == "It is 1."
    # The Python path of the same upcaster gives the same payload.
    assert V2.upcast("node_expanded", evs[2]["data"], 1) == payload
    assert con.execute("SELECT steps FROM training_examples").fetchone()[0] == ["It is 1."]
    # The stored row is untouched: version 1, field `thought`.
    v1 = store.connect(tmp_path)
    assert json.loads(v1.execute("SELECT data FROM events WHERE node_id = 'n1' AND type = 'node_expanded'").fetchone()[0])["thought"] == "It is 1."


def test_v2_writer_takes_v1_and_v2_rows_and_the_views_agree(tmp_path: Path):
    tid, evs = _trace()
    v2 = [dict(e, v=2, data=V2.upcast(e["type"], e["data"], 1)) for e in evs]
    for e in v2:
        e["id"] = e["id"][:-4] + "beef"  # another copy of the trace, as version 2 lines
        e["trace_id"] = "v2-" + tid
    with StoreWriter(tmp_path, "new", contract=V2) as w:
        w.commit(events_from_dicts(evs + v2))
    con = store.connect(tmp_path, contract=V2)
    rows = con.execute("SELECT trace_id, steps, complete FROM trajectories ORDER BY trace_id").fetchall()
    assert rows == [(tid, ["It is 1."], True), ("v2-" + tid, ["It is 1."], True)]


def test_newer_version_than_the_writer_knows_is_refused(tmp_path: Path):
    _tid, evs = _trace()
    with StoreWriter(tmp_path, "old") as w:
        with pytest.raises(StoreError, match=r"column 'v': versions 1..2 outside 1..1 \(quarantine lines of unknown versions"):
            w.commit(events_from_dicts([evs[0], dict(evs[1], v=2)]))
