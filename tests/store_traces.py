"""The store tests' traces, hand-built with known answers (no tests here: imported by module name,
``from store_traces import _traces``, as tests/conftest.py describes).

Traces of ``_traces()`` (expectations in tests/test_store_views.py):
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

from kaelum.events import TraceEvents, validate_event
from store import BatchBuilder, QuarantineRecord, SourceRange, StoreWriter

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


def _ingest(writer: StoreWriter, path: Path, fingerprint: str) -> None:
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
