"""End to end: TraceLogger → JSONL → StoreWriter → store.connect views, checked row by row.

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
from kaelum.events import TraceEvents
from kaelum.tracelog import TraceLogger
from store import QuarantineRecord, StoreWriter
from store.views import PUBLIC_VIEWS
from store_traces import _ingest, _traces


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
    with StoreWriter(root / "store", writer_id="e2e") as w:
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


def test_empty_store_has_every_view_with_columns(tmp_path: Path, built):
    StoreWriter(tmp_path / "s", "w").close()
    con = store.connect(tmp_path / "s")
    full = built[0]  # the e2e store, where every view has rows
    for v in PUBLIC_VIEWS:
        assert con.execute(f"SELECT count(*) FROM {v}").fetchone()[0] == 0, v
        columns = [(name, kind) for name, kind, *_ in con.execute(f"DESCRIBE {v}").fetchall()]
        assert len(columns) >= 5, v
        # An empty store's views have the same columns, of the same types, as a full store's.
        assert columns == [(name, kind) for name, kind, *_ in full.execute(f"DESCRIBE {v}").fetchall()], v
    assert con.execute("SELECT count(*) FROM training_examples_at(0.5)").fetchone()[0] == 0


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
    with StoreWriter(tmp_path / "s", writer_id="a") as w:
        w.commit(store.events_from_dicts([first], source="fp-a", source_path="/a.jsonl", offsets=[0]))
    with StoreWriter(tmp_path / "s", writer_id="b") as w:
        w.commit(store.events_from_dicts([other], source="fp-b", source_path="/b.jsonl", offsets=[40]))
    con = store.connect(tmp_path / "s")
    (q,) = _rows(con, "SELECT * FROM quarantine")
    assert (q["source"], q["source_path"], q["offset"], q["writer"]) == ("fp-b", "/b.jsonl", 40, "b")
    assert q["reason"] == (f"event id {first['id']} conflicts with the copy kept in events: a reflection of trace "
                           f"{first['trace_id']} (writer a, /a.jsonl offset 0); this copy is a reflection of trace {other['trace_id']}")
    assert json.loads(q["raw_text"])["data"]["text"] == "same id, another trace" and q["raw"] == q["raw_text"].encode()
    # Never compacted (no stored conflicts set): the events view still holds the first copy only.
    assert con.execute("SELECT count(*), count(DISTINCT id), min(writer) FROM events").fetchone() == (1, 1, "a")
