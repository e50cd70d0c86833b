"""End to end: TraceLogger → JSONL → SegmentWriter → store.connect views, checked row by row.

Traces (hand-computed expectations below):
  T1 complete, verified, reward 0.9          — re-sent in full in a second log file
  T2 incomplete: best path names a node that was never expanded
  T3 complete but unverified, reward 0.75
  T4 complete, verified, low reward 0.3
  T5 complete, verified, reward 0.4 corrected by feedback to 0.95 (an older feedback said 0.1)
  T6 branching: root → n1 (terminal, failed) and n2 → n3 (terminal, passed, best) / n4 (terminal, failed)
  T7 failed search (status failed, no answer)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import store
from kaelum.events import TraceEvents, validate_event
from kaelum.tracelog import TraceLogger
from store import BatchBuilder, QuarantineRecord, SegmentWriter, SourceRange
from store.views import PUBLIC_VIEWS

PARAMS = {"simulations": 4, "max_depth": 4, "branching": 2, "exploration": 1.0, "temperature": 0.7, "seed": 7}
LLM = {"model": "tiny", "prompt_tokens": 10, "completion_tokens": 5, "latency_ms": 1.5}


def _start(t: TraceEvents, query: str, domain: str = "math"):
    return t.make("trace_started", query=query, domain=domain, router={"domain": domain, "confidence": 0.9, "method": "keywords"},
                  worker_model="tiny-worker", params=PARAMS, tags=["e2e"])


def _node(t, nid, parent, depth, thought, terminal=False, answer=None):
    return t.make("node_expanded", node_id=nid, parent_id=parent, depth=depth, thought=thought, terminal=terminal,
                  answer=answer, llm=None if parent is None else LLM)


def _value(t, nid, value):
    return t.make("node_evaluated", node_id=nid, value=value, signals={"llm": value})


def _verify(t, nid, answer, passed):
    return t.make("verification", node_id=nid, answer=answer, passed=passed, score=1.0 if passed else 0.0, verifier="math.sympy", details={})


def _done(t, best_path, answer, verified, reward, status="ok"):
    return t.make("trace_completed", status=status, final_answer=answer, best_path=best_path, verified=verified, reward=reward,
                  reward_components={"verifier": reward}, node_stats=[], usage={"llm_calls": 3, "prompt_tokens": 30, "completion_tokens": 15},
                  duration_ms=12.0, error=None if status == "ok" else "no answer")


def _simple(query: str, verified: bool, reward: float, answer: str = "5"):
    t = TraceEvents()
    evs = [_start(t, query), _node(t, "n0", None, 0, query), _value(t, "n0", 0.5), _node(t, "n1", "n0", 1, "Add the numbers."),
           _value(t, "n1", 0.7), _node(t, "n2", "n1", 2, "So the result is " + answer + ".", True, answer), _value(t, "n2", 0.9),
           _verify(t, "n2", answer, verified), _done(t, ["n0", "n1", "n2"], answer, verified, reward)]
    return t.trace_id, evs


def _traces():
    out = {}
    out["T1"] = _simple("What is 2+3?", True, 0.9)
    t = TraceEvents()
    out["T2"] = (t.trace_id, [_start(t, "What is 1+1?"), _node(t, "n0", None, 0, "What is 1+1?"), _node(t, "n1", "n0", 1, "One plus one."),
                              _done(t, ["n0", "n1", "n9"], "2", True, 0.8)])
    out["T3"] = _simple("What is 3+3?", False, 0.75, "7")
    out["T4"] = _simple("What is 4+4?", True, 0.3, "8")
    tid5, ev5 = _simple("What is 5+5?", True, 0.4, "10")
    t5 = TraceEvents(tid5)
    t5._seq = len(ev5)
    ev5 += [t5.make("feedback", reward=0.1, label="wrong", by="alice"), t5.make("feedback", reward=0.95, label="correct", by="bob", rating=5)]
    out["T5"] = (tid5, ev5)
    t = TraceEvents()
    out["T6"] = (t.trace_id, [
        _start(t, "What is 2*3?"), _node(t, "n0", None, 0, "What is 2*3?"),
        _node(t, "n1", "n0", 1, "Add 2 and 2.", True, "4"), _value(t, "n1", 0.2), _verify(t, "n1", "4", False),
        _node(t, "n2", "n0", 1, "Multiply 2 by 3."), _value(t, "n2", 0.6),
        _node(t, "n3", "n2", 2, "Two times three is six.", True, "6"), _value(t, "n3", 0.9), _verify(t, "n3", "6", True),
        _node(t, "n4", "n2", 2, "Two times three is seven.", True, "7"), _value(t, "n4", 0.1), _verify(t, "n4", "7", False),
        _done(t, ["n0", "n2", "n3"], "6", True, 0.85)])
    t = TraceEvents()
    out["T7"] = (t.trace_id, [_start(t, "Prove P=NP"), _node(t, "n0", None, 0, "Prove P=NP"), _done(t, [], None, False, 0.0, status="failed")])
    return out


def _ingest(writer: SegmentWriter, path: Path, fingerprint: str) -> None:
    """What the ingester does: split lines, validate, build one batch, commit with the positions."""
    raw = path.read_bytes()
    b = BatchBuilder(source=fingerprint, source_path=str(path))
    bad, off = [], 0
    for line in raw.splitlines(keepends=True):
        try:
            obj = json.loads(line)
            validate_event(obj)
            b.add(obj, off)
        except Exception as exc:  # noqa: BLE001 - every refusal is quarantined with its reason
            bad.append(QuarantineRecord(str(path), fingerprint, off, line.rstrip(b"\n"), str(exc)))
        off += len(line)
    writer.commit(b.table(), quarantine=bad, sources=[SourceRange(fingerprint, str(path), 0, off, len(b), len(bad))])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    traces = _traces()
    logs1, logs2 = root / "logs1", root / "logs2"
    with TraceLogger(logs1, fsync="never") as lg:
        for _tid, evs in traces.values():
            lg.log_many(evs)
        lg.write_line(b'{"v": 1, "broken json\n')
    with TraceLogger(logs2, fsync="never") as lg:
        lg.log_many(traces["T1"][1])  # re-sent: same events, same ids
    with SegmentWriter(root / "store", writer_id="e2e") as w:
        _ingest(w, next(logs1.glob("*.jsonl")), "fp-1")
        _ingest(w, next(logs2.glob("*.jsonl")), "fp-2")
        # the garbage line quarantined twice (a replay after a crash) shows once
        line_off = next(logs1.glob("*.jsonl")).read_bytes().rfind(b'{"v": 1, "broken')
        w.commit(quarantine=[QuarantineRecord("x", "fp-1", line_off, b'{"v": 1, "broken json', "replayed")])
    con = store.connect(root / "store")
    ids = {k: v[0] for k, v in traces.items()}
    yield con, ids, traces, root
    con.close()


def _rows(con, sql):
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def test_events_deduplicated_on_id(built):
    con, ids, traces, _ = built
    total = sum(len(evs) for _t, evs in traces.values())
    assert con.execute("SELECT count(*) FROM _events_all WHERE date <> DATE '1970-01-01'").fetchone()[0] == total + len(traces["T1"][1])
    assert con.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone() == (total, total)


def test_traces(built):
    con, ids, _, _ = built
    rows = {r["trace_id"]: r for r in _rows(con, "SELECT * FROM traces")}
    assert set(rows) == set(ids.values())
    by = {k: rows[v] for k, v in ids.items()}
    assert {k: r["reward"] for k, r in by.items()} == {"T1": 0.9, "T2": 0.8, "T3": 0.75, "T4": 0.3, "T5": 0.95, "T6": 0.85, "T7": 0.0}
    assert by["T5"]["completed_reward"] == 0.4 and by["T5"]["feedback_label"] == "correct" and by["T5"]["feedback_count"] == 2
    assert by["T1"]["feedback_count"] == 0 and by["T1"]["feedback_reward"] is None
    assert by["T7"]["status"] == "failed" and by["T7"]["error"] == "no answer"
    assert by["T1"]["domain"] == "math" and by["T1"]["query"] == "What is 2+3?" and by["T1"]["router_method"] == "keywords"


def test_trajectories_and_filters(built):
    con, ids, _, _ = built
    name = {v: k for k, v in ids.items()}
    traj = {name[r["trace_id"]]: r for r in _rows(con, "SELECT * FROM trajectories")}
    assert set(traj) == {"T1", "T2", "T3", "T4", "T5", "T6", "T7"}
    assert {k for k, r in traj.items() if r["complete"]} == {"T1", "T3", "T4", "T5", "T6"}
    assert traj["T1"]["steps"] == ["Add the numbers.", "So the result is 5."]
    assert traj["T6"]["steps"] == ["Multiply 2 by 3.", "Two times three is six."] and traj["T6"]["step_node_ids"] == ["n2", "n3"]
    assert traj["T7"]["steps"] == []

    def names(sql):
        return sorted(name[r[0]] for r in con.execute(sql).fetchall())

    assert names("SELECT trace_id FROM verified_trajectories") == ["T1", "T2", "T4", "T5", "T6"]
    assert names("SELECT trace_id FROM complete_trajectories") == ["T1", "T3", "T4", "T5", "T6"]
    assert names("SELECT trace_id FROM high_reward_trajectories") == ["T1", "T2", "T3", "T5", "T6"]
    assert names("SELECT trace_id FROM high_reward_trajectories_at(0.9)") == ["T1", "T5"]
    assert names("SELECT trace_id FROM training_examples") == ["T1", "T4", "T5", "T6"]
    assert names("SELECT trace_id FROM training_examples_at(0.7)") == ["T1", "T5", "T6"]


def test_training_examples_columns_and_values(built):
    con, ids, _, _ = built
    ex = _rows(con, f"SELECT * FROM training_examples WHERE trace_id = '{ids['T5']}'")[0]
    assert ex["domain"] == "math" and ex["query"] == "What is 5+5?" and ex["final_answer"] == "10"
    assert ex["steps"] == ["Add the numbers.", "So the result is 10."] and ex["reward"] == 0.95 and ex["verified"] is True
    assert ex["worker_model"] == "tiny-worker" and ex["tags"] == ["e2e"] and ex["started_at"] <= ex["completed_at"]
    # The columns docs/architecture.md promises the trainer.
    cols = {r[0]: r[1] for r in con.execute("DESCRIBE training_examples").fetchall()}
    for c, typ in {"trace_id": "VARCHAR", "domain": "VARCHAR", "query": "VARCHAR", "steps": "VARCHAR[]", "final_answer": "VARCHAR",
                   "reward": "DOUBLE", "verified": "BOOLEAN", "worker_model": "VARCHAR", "started_at": "TIMESTAMP WITH TIME ZONE",
                   "completed_at": "TIMESTAMP WITH TIME ZONE", "tags": "VARCHAR[]"}.items():
        assert cols[c] == typ, c


def test_preference_pairs(built):
    con, ids, _, _ = built
    pairs = _rows(con, "SELECT * FROM preference_pairs ORDER BY branch_node_id")
    assert [(p["trace_id"], p["branch_node_id"]) for p in pairs] == [(ids["T6"], "n0"), (ids["T6"], "n2")]
    at_root, at_n2 = pairs
    assert at_root["prompt_steps"] == [] and at_root["chosen_steps"] == ["Multiply 2 by 3.", "Two times three is six."]
    assert at_root["rejected_steps"] == ["Add 2 and 2."] and (at_root["chosen_answer"], at_root["rejected_answer"]) == ("6", "4")
    assert (at_root["chosen_value"], at_root["rejected_value"]) == (0.9, 0.2)
    assert at_n2["prompt_steps"] == ["Multiply 2 by 3."] and at_n2["chosen_steps"] == ["Two times three is six."]
    assert at_n2["rejected_steps"] == ["Two times three is seven."] and at_n2["rejected_answer"] == "7"
    assert at_n2["domain"] == "math" and at_n2["query"] == "What is 2*3?"


def test_nodes(built):
    con, ids, _, _ = built
    rows = {r["node_id"]: r for r in _rows(con, f"SELECT * FROM nodes WHERE trace_id = '{ids['T6']}'")}
    assert set(rows) == {"n0", "n1", "n2", "n3", "n4"}
    assert (rows["n3"]["value"], rows["n3"]["passed"], rows["n3"]["answer"], rows["n3"]["depth"]) == (0.9, True, "6", 2)
    assert rows["n0"]["parent_id"] is None and rows["n0"]["llm_model"] is None and rows["n2"]["passed"] is None
    assert rows["n4"]["llm_model"] == "tiny" and rows["n4"]["prompt_tokens"] == 10


def test_quarantine(built):
    con, _, _, root = built
    q = _rows(con, "SELECT * FROM quarantine")
    assert len(q) == 1 and q[0]["raw_text"] == '{"v": 1, "broken json' and q[0]["source"] == "fp-1"
    # the first quarantining wins over the replay of the same (source, offset)
    assert q[0]["reason"].startswith("Invalid control character") and q[0]["writer"] == "e2e"


def test_empty_store_has_every_view_with_columns(tmp_path: Path):
    SegmentWriter(tmp_path / "s", "w").close()
    con = store.connect(tmp_path / "s")
    full = store.connect  # same definitions, so the column lists must equal the e2e store's
    for v in PUBLIC_VIEWS:
        assert con.execute(f"SELECT count(*) FROM {v}").fetchone()[0] == 0, v
        assert len(con.execute(f"DESCRIBE {v}").fetchall()) >= 5, v
    assert con.execute("SELECT count(*) FROM training_examples_at(0.5)").fetchone()[0] == 0
    assert full is store.connect


def test_connect_errors(tmp_path: Path):
    with pytest.raises(store.StoreError, match=r"no store at .* \(the path does not exist\)"):
        store.connect(tmp_path / "missing")
    with pytest.raises(store.StoreError, match="the folder has no kaelum-store.json"):
        store.connect(tmp_path)


def test_a_conflicting_event_id_is_listed_in_quarantine_with_its_reason(tmp_path: Path):
    t = TraceEvents()
    first = t.make("reflection", node_id="n1", text="the real one").to_dict()
    other = TraceEvents().make("reflection", node_id="n1", text="same id, another trace").to_dict()
    other["id"] = first["id"]
    with SegmentWriter(tmp_path / "s", writer_id="a") as w:
        w.commit(store.events_from_dicts([first], source="fp-a", source_path="/a.jsonl", offsets=[0]))
    with SegmentWriter(tmp_path / "s", writer_id="b") as w:
        w.commit(store.events_from_dicts([other], source="fp-b", source_path="/b.jsonl", offsets=[40]))
    con = store.connect(tmp_path / "s")
    (q,) = _rows(con, "SELECT * FROM quarantine")
    assert (q["source"], q["source_path"], q["offset"], q["writer"]) == ("fp-b", "/b.jsonl", 40, "b")
    assert q["reason"] == (f"event id {first['id']} conflicts with an earlier copy: that one is a reflection of trace "
                           f"{first['trace_id']}, this one a reflection of trace {other['trace_id']}")
    assert json.loads(q["raw_text"])["data"]["text"] == "same id, another trace" and q["raw"] == q["raw_text"].encode()
