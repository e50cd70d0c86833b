"""The method of each verdict in the store: version-1 traces upcast (verification.method from the
verifier name, the trace's verified_by from its final node's verification), version-2 traces as
stated; training_examples keeps only checked methods, training_examples_all and the trainer's
--include-unchecked / --where "verified_by = ..." include the rest knowingly.

Old traces are written as real version-1 JSONL lines and ingested by the real ingester.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import store
from ingest import ingest_once
from kaelum.domains.base import method_of_verifier
from kaelum.events import TraceEvents
from store.upcast import CURRENT

PARAMS = {"simulations": 2, "max_depth": 3, "branching": 2, "exploration": 1.0, "temperature": 0.7, "seed": 1}


def _trace(query: str, verifications: list[tuple[str, bool, dict]], reward: float, verified_by: str | None = "unset",
           domain: str = "math") -> tuple[str, list[dict]]:
    """A complete trace root -> n1 -> n2 (terminal); each verification checks n2 in turn (the last is the final verdict)."""
    t = TraceEvents()
    evs = [
        t.make("trace_started", query=query, domain=domain, router={"domain": domain, "confidence": 1.0, "method": "explicit"},
               worker_model="tiny", params=PARAMS, tags=[]),
        t.make("node_expanded", node_id="n0", parent_id=None, depth=0, thought=query, terminal=False, answer=None, llm=None),
        t.make("node_expanded", node_id="n1", parent_id="n0", depth=1, thought="Count them.", terminal=False, answer=None, llm=None),
        t.make("node_expanded", node_id="n2", parent_id="n1", depth=2, thought="So it is 12.", terminal=True, answer="12", llm=None),
    ]
    for verifier, passed, details in verifications:
        evs.append(t.make("verification", node_id="n2", answer="12", passed=passed, score=1.0 if passed else 0.0,
                          verifier=verifier, details=details))
    done = {"status": "ok", "final_answer": "12", "best_path": ["n0", "n1", "n2"], "verified": verifications[-1][1],
            "reward": reward, "reward_components": {}, "node_stats": [],
            "usage": {"llm_calls": 2, "prompt_tokens": 2, "completion_tokens": 2}, "duration_ms": 1.0, "error": None}
    if verified_by != "unset":
        done["verified_by"] = verified_by
    evs.append(t.make("trace_completed", **done))
    return t.trace_id, [e.to_dict() for e in evs]


def _as_v1(events: list[dict]) -> list[dict]:
    """The lines a version-1 runtime wrote: v 1, no method fields."""
    out = []
    for e in events:
        data = {k: v for k, v in e["data"].items() if not (e["type"] == "verification" and k == "method")
                and not (e["type"] == "trace_completed" and k == "verified_by")}
        out.append({**e, "v": 1, "data": data})
    return out


def _write_log(path: Path, events: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for e in events:
            fh.write(json.dumps(e, separators=(",", ":")) + "\n")


@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory):
    root = tmp_path_factory.mktemp("verified_by")
    old = {
        # The bug of issue 15: agreement "verified" a wrong answer with reward 0.95.
        "agreed": _trace("Sade has 47 shells and finds 38 more. How many?", [("math.consistency", True, {})], 0.95),
        "computed": _trace("What is 3 * 4?", [("math.sympy", True, {})], 0.9),
        # Re-verified: the latest verification of the final node is the final verdict.
        "reverified": _trace("What is 6 + 6?", [("math.consistency", True, {}), ("math.sympy", True, {})], 0.9),
        "judged": _trace("Write something lovely.", [("creative.constraints", True, {"signals": {"constraints": None, "judge": 1.0}})],
                         0.8, domain="creative"),
        "crashed": _trace("What is 2 + 2?", [("math.error", False, {"error": "internal error"})], 0.0),
        # The final re-verification failed internally: no method, even though an earlier verdict had one.
        "crashed_last": _trace("What is 5 + 5?", [("math.consistency", True, {}), ("math.error", False, {"error": "boom"})], 0.0),
    }
    new = {
        "reference": _trace("Mara has 46 coins and gives away 34. How many are left?", [("math.reference", True, {})], 0.9,
                            verified_by="reference"),
        # Stated by the runtime: the trace's own field wins over the fallback.
        "stated": _trace("Tom has 3 apples and buys 9 more. How many?", [("math.consistency", True, {})], 0.45,
                         verified_by="consistency"),
    }
    _write_log(root / "logs" / "kaelum-old-1.jsonl", [e for _, evs in old.values() for e in _as_v1(evs)])
    new_events = [e for _, evs in new.values() for e in evs]
    for e in new_events:  # the runtime writes the method on every verification
        if e["type"] == "verification":
            e["data"]["method"] = method_of_verifier(e["data"]["verifier"])
    _write_log(root / "logs" / "kaelum-new-1.jsonl", new_events)
    summary = ingest_once(root / "logs", root / "store", progress=False)
    ids = {name: tid for name, (tid, _) in {**old, **new}.items()}
    return root / "store", ids, summary, old


def test_old_and_new_lines_are_ingested_not_quarantined(old_and_new):
    path, ids, _summary, _old = old_and_new
    con = store.connect(path)
    assert con.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
    assert sorted(r[0] for r in con.execute("SELECT DISTINCT v FROM events").fetchall()) == [1, 2]


def test_verification_methods_of_old_events_are_upcast_in_sql_and_python_alike(old_and_new):
    path, ids, _summary, old = old_and_new
    con = store.connect(path)
    rows = con.execute("SELECT trace_id, seq, data, v FROM events WHERE type = 'verification' AND v = 1 ORDER BY trace_id, seq").fetchall()
    by_trace = {tid: evs for tid, evs in old.values()}
    methods = {}
    for tid, seq, data, v in rows:
        original = next(e for e in by_trace[tid] if e["seq"] == seq)
        v1_data = _as_v1([original])[0]["data"]
        assert json.loads(data) == CURRENT.upcast("verification", v1_data, 1)
        methods.setdefault(tid, []).append(json.loads(data).get("method"))
    assert methods[ids["agreed"]] == ["consistency"]
    assert methods[ids["reverified"]] == ["consistency", "computed"]
    assert methods[ids["judged"]] == ["judge"]
    assert methods[ids["crashed"]] == [None]
    assert methods[ids["crashed_last"]] == ["consistency", None]
    nodes = dict(con.execute("SELECT trace_id, verification_method FROM nodes WHERE node_id = 'n2'").fetchall())
    assert nodes[ids["reverified"]] == "computed" and nodes[ids["reference"]] == "reference" and nodes[ids["crashed_last"]] is None


def test_traces_and_trajectories_expose_verified_by(old_and_new):
    path, ids, _summary, _old = old_and_new
    con = store.connect(path)
    got = dict(con.execute("SELECT trace_id, verified_by FROM traces").fetchall())
    assert got == {ids["agreed"]: "consistency", ids["computed"]: "computed", ids["reverified"]: "computed",
                   ids["judged"]: "judge", ids["crashed"]: None, ids["crashed_last"]: None, ids["reference"]: "reference",
                   ids["stated"]: "consistency"}
    assert dict(con.execute("SELECT trace_id, verified_by FROM trajectories").fetchall()) == got
    assert dict(con.execute("SELECT trace_id, verified_by FROM verified_trajectories").fetchall()) == {
        k: v for k, v in got.items() if k not in (ids["crashed"], ids["crashed_last"])}


def test_consistency_only_traces_are_out_of_the_default_training_examples(old_and_new):
    path, ids, _summary, _old = old_and_new
    con = store.connect(path)
    default = {r[0]: r[1] for r in con.execute("SELECT trace_id, verified_by FROM training_examples").fetchall()}
    assert default == {ids["computed"]: "computed", ids["reverified"]: "computed", ids["reference"]: "reference"}
    # The wrong answer agreement "verified" with reward 0.95 passes `reward > 0.9`, but only where it is asked for.
    assert con.execute("SELECT count(*) FROM training_examples WHERE reward > 0.9").fetchone()[0] == 0
    everything = dict(con.execute("SELECT trace_id, verified_by FROM training_examples_all").fetchall())
    assert set(everything) == set(default) | {ids["agreed"], ids["judged"], ids["stated"]}
    assert con.execute("SELECT count(*) FROM training_examples_at(0.9)").fetchone()[0] == 3


def test_trainer_selection_default_flag_and_where(old_and_new):
    from train.api import collect_traces
    from train.data import select_examples

    path, ids, _summary, _old = old_and_new
    default = select_examples(str(path), min_reward=None)
    assert {e.trace_id for e in default.examples} == {ids["computed"], ids["reverified"], ids["reference"]}
    assert default.stages[0][0].startswith("training_examples (")
    everything = select_examples(str(path), min_reward=None, include_unchecked=True)
    assert {e.verified_by for e in everything.examples} == {"computed", "reference", "consistency", "judge"}
    assert everything.stages[0][0].startswith("training_examples_all")
    agreed = select_examples(str(path), min_reward=None, where="verified_by = 'consistency'")
    assert {e.trace_id for e in agreed.examples} == {ids["agreed"], ids["stated"]}
    assert {t.trace_id for t in collect_traces(store=str(path), include_unchecked=True)} == {e.trace_id for e in everything.examples}
    # kaelum-eval's held-out queries from the store follow the same rule.
    from train.evaluate import queries_from_store

    assert {q["id"] for q in queries_from_store(str(path), "verified_by = 'consistency'")} == {ids["agreed"], ids["stated"]}
    assert {q["id"] for q in queries_from_store(str(path), "true")} == {ids["computed"], ids["reverified"], ids["reference"]}


def test_preference_pairs_use_only_checked_outcomes(tmp_path):
    """A branch that 'passed' by agreement is no chosen answer, and one that 'failed' by it no rejected one."""
    from store import StoreWriter, events_from_dicts

    def tree(passing: str, failing: str) -> list[dict]:
        t = TraceEvents()
        evs = [t.make("trace_started", query="How many?", domain="math", router={"domain": "math", "confidence": 1.0, "method": "explicit"},
                      worker_model="tiny", params=PARAMS, tags=[]),
               t.make("node_expanded", node_id="n0", parent_id=None, depth=0, thought="How many?", terminal=False, answer=None, llm=None)]
        for nid, answer, verifier, passed in (("n1", "12", passing, True), ("n2", "13", failing, False)):
            evs.append(t.make("node_expanded", node_id=nid, parent_id="n0", depth=1, thought=f"It is {answer}.", terminal=True, answer=answer, llm=None))
            evs.append(t.make("verification", node_id=nid, answer=answer, passed=passed, score=float(passed), verifier=verifier,
                              method=method_of_verifier(verifier), details={}))
        evs.append(t.make("trace_completed", status="ok", final_answer="12", best_path=["n0", "n1"], verified=True, verified_by=method_of_verifier(passing),
                          reward=0.9, reward_components={}, node_stats=[], usage={"llm_calls": 1, "prompt_tokens": 1, "completion_tokens": 1},
                          duration_ms=1.0, error=None))
        return [e.to_dict() for e in evs]

    checked, agreed, outvoted = tree("math.reference", "math.reference"), tree("math.consistency", "math.reference"), tree("math.reference", "math.consistency")
    with StoreWriter(tmp_path, "w") as w:
        w.commit(events_from_dicts(checked + agreed + outvoted))
    con = store.connect(tmp_path)
    pairs = con.execute("SELECT trace_id, chosen_answer, rejected_answer FROM preference_pairs").fetchall()
    assert pairs == [(checked[0]["trace_id"], "12", "13")]


def test_compaction_keeps_verified_by(old_and_new):
    """Last in this module: compacts the shared store; the views read the same methods after it."""
    from store.compact import compact

    path, ids, _summary, _old = old_and_new
    con = store.connect(path)
    before = sorted(con.execute("SELECT trace_id, verified_by FROM traces").fetchall(), key=str)
    examples = sorted(con.execute("SELECT trace_id FROM training_examples").fetchall())
    compact(path)
    con = store.connect(path)
    assert sorted(con.execute("SELECT trace_id, verified_by FROM traces").fetchall(), key=str) == before
    assert sorted(con.execute("SELECT trace_id FROM training_examples").fetchall()) == examples
