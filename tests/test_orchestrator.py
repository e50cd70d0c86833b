"""Orchestrator: the full event sequence of the contract, the trace shape the views rely on, and
error paths that still close the trace. The worker is the scripted LLM (search mechanics are
tested in test_lats.py); events go through the real TraceLogger into real files."""

from __future__ import annotations

import pytest

from kaelum import Orchestrator, Settings
from kaelum.orchestrator import load_queries
from kaelum.prompts import format_completion, worker_messages
from test_lats_support import ArithmeticDomain, ScriptedLLM

QUERY = "What is 2 + 3?"


def settings(**kw) -> Settings:
    base = dict(LATS_SIMULATIONS=3, LATS_BRANCHING=3, LATS_MAX_DEPTH=4, SEED=1, LATS_LLM_VALUE_WEIGHT=0.5, LATS_REFLECTION=True)
    base.update(kw)
    return Settings(**base)


def orchestrator(tmp_path, llm, domain=None, **kw) -> Orchestrator:
    dom = domain or ArithmeticDomain("5")
    return Orchestrator(settings(**kw), enable_logging=True, log_dir=tmp_path / "logs", llm=llm, domain_factory=lambda name, options: dom)


def test_a_trace_writes_the_full_event_sequence(tmp_path, read_events, check_trace_shape):
    llm = ScriptedLLM(rollout=lambda c: "Step 2: 2+3=5\nAnswer: 5")
    with orchestrator(tmp_path, llm) as orch:
        result = orch.run(QUERY, domain="math", tags=["unit"])
    events = read_events(tmp_path / "logs")
    check_trace_shape(events, QUERY)
    assert [e["type"] for e in events] == [
        "trace_started",
        "node_expanded",  # root
        "node_expanded", "node_expanded", "node_expanded",  # three sampled siblings
        "node_evaluated", "node_evaluated", "node_evaluated",
        "node_expanded",  # rollout step with the answer
        "verification", "node_evaluated",
        "trace_completed",
    ]
    started = events[0]["data"]
    assert started["router"] == {"domain": "math", "confidence": 1.0, "method": "explicit"}
    assert started["worker_model"] == "scripted-llm" and started["tags"] == ["unit"]
    assert started["params"]["branching"] == 3 and started["params"]["seed"] == 1
    done = events[-1]["data"]
    assert (done["status"], done["final_answer"], done["verified"], done["error"]) == ("ok", "5", True, None)
    assert done["reward"] == pytest.approx(result.reward) and result.reward >= 0.8
    assert set(done["reward_components"]) == {"verifier", "path_value"}
    assert done["usage"] == {"llm_calls": len(llm.calls), "prompt_tokens": 11 * len(llm.calls), "completion_tokens": result.usage["completion_tokens"]}
    # The result mirrors the trace.
    assert (result.trace_id, result.answer, result.verified, result.best_path) == (events[0]["trace_id"], "5", True, done["best_path"])
    assert result.events[-1].to_dict() == events[-1]


def test_trace_holds_sibling_nodes_with_different_thoughts_and_renders_training_text(tmp_path, read_events):
    llm = ScriptedLLM(rollout=lambda c: "Step 2: 2+3=5\nAnswer: 5")
    with orchestrator(tmp_path, llm) as orch:
        orch.run(QUERY, domain="math")
    events = read_events(tmp_path / "logs")
    nodes = {e["data"]["node_id"]: e["data"] for e in events if e["type"] == "node_expanded"}
    siblings = [d["thought"] for d in nodes.values() if d["parent_id"] == "n0"]
    assert len(siblings) == 3 and len(set(siblings)) == 3
    done = events[-1]["data"]
    steps = [nodes[i]["thought"] for i in done["best_path"][1:]]
    # What the trainer will render from this trace, following docs/architecture.md.
    assert format_completion(steps, done["final_answer"]) == "Step 1: step 0\nStep 2: 2+3=5\nAnswer: 5"
    assert worker_messages("math", QUERY)[1]["content"] == QUERY


def test_routing_without_an_explicit_domain_is_logged(tmp_path, read_events):
    llm = ScriptedLLM(rollout=lambda c: "Answer: 5")
    with orchestrator(tmp_path, llm) as orch:
        result = orch.run("Calculate 2 + 3.")
    router = read_events(tmp_path / "logs")[0]["data"]["router"]
    assert router["domain"] == "math" == result.domain and router["method"] == "keywords" and 0 < router["confidence"] <= 1


def test_failed_verification_and_reflection_events(tmp_path, read_events, check_trace_shape):
    llm = ScriptedLLM(rollout=lambda c: "Answer: 4", reflect=lambda c: "Add the numbers.")
    with orchestrator(tmp_path, llm, LATS_SIMULATIONS=2) as orch:
        result = orch.run(QUERY, domain="math")
    events = read_events(tmp_path / "logs")
    check_trace_shape(events, QUERY)
    reflections = [e["data"] for e in events if e["type"] == "reflection"]
    assert reflections and reflections[0]["text"] == "The answer 4 failed verification. Add the numbers."
    done = events[-1]["data"]
    assert (done["status"], done["final_answer"], done["verified"]) == ("ok", "4", False)
    assert result.reflections == [r["text"] for r in reflections]


@pytest.mark.parametrize("fail_on", ["expand", "rollout", "judge", "reflect"])
def test_an_llm_failure_anywhere_closes_the_trace_with_error(tmp_path, fail_on, read_events, check_trace_shape):
    llm = ScriptedLLM(rollout=lambda c: "Answer: 4", fail_on=fail_on)
    with orchestrator(tmp_path, llm) as orch:
        result = orch.run(QUERY, domain="math")
    events = read_events(tmp_path / "logs")
    check_trace_shape(events, QUERY)
    done = events[-1]["data"]
    assert done["status"] == "error" == result.status
    assert done["error"] == f"RuntimeError: scripted failure on {fail_on}"
    assert done["final_answer"] is None and done["verified"] is False and done["reward"] == 0
    # Nothing produced before the failure is lost.
    assert events[1]["type"] == "node_expanded" and done["usage"]["llm_calls"] == len(llm.calls) - 1


def test_a_verifier_that_raises_closes_the_trace_with_error(tmp_path, read_events, check_trace_shape):
    llm = ScriptedLLM(rollout=lambda c: "Answer: 5")
    with orchestrator(tmp_path, llm, domain=ArithmeticDomain("5", raise_in_verify=True)) as orch:
        result = orch.run(QUERY, domain="math")
    events = read_events(tmp_path / "logs")
    check_trace_shape(events, QUERY)
    assert events[-1]["data"]["error"] == "ZeroDivisionError: verifier blew up" and result.status == "error"
    assert any(e["type"] == "node_expanded" and e["data"]["terminal"] for e in events)


def test_a_domain_that_cannot_be_built_closes_the_trace_with_error(tmp_path, read_events):
    def broken(name, options):
        raise LookupError(f"no domain module for {name}")

    orch = Orchestrator(settings(), enable_logging=True, log_dir=tmp_path / "logs", llm=ScriptedLLM(), domain_factory=broken)
    result = orch.run(QUERY, domain="logic")
    orch.close()
    events = read_events(tmp_path / "logs")
    assert [e["type"] for e in events] == ["trace_started", "trace_completed"]
    assert events[-1]["data"]["error"] == "LookupError: no domain module for logic" and result.tree is None


def test_bad_input_raises_before_any_event(tmp_path, read_events):
    orch = orchestrator(tmp_path, ScriptedLLM())
    with pytest.raises(ValueError, match="non-empty"):
        orch.run("   ")
    with pytest.raises(ValueError, match="unknown domain 'poetry'"):
        orch.run(QUERY, domain="poetry")
    orch.close()
    assert not list((tmp_path / "logs").glob("*.jsonl")) or read_events(tmp_path / "logs") == []


def test_many_traces_share_one_file_each_complete(tmp_path, read_events, check_trace_shape):
    llm = ScriptedLLM(rollout=lambda c: "Answer: 5")
    with orchestrator(tmp_path, llm) as orch:
        ids = [orch.run(QUERY, domain="math").trace_id for _ in range(3)]
    events = read_events(tmp_path / "logs")
    for tid in ids:
        check_trace_shape([e for e in events if e["trace_id"] == tid], QUERY)


def test_without_logging_nothing_is_written_but_events_are_returned(tmp_path, monkeypatch, check_trace_shape):
    monkeypatch.chdir(tmp_path)
    orch = Orchestrator(settings(), llm=ScriptedLLM(rollout=lambda c: "Answer: 5"), domain_factory=lambda n, o: ArithmeticDomain("5"))
    result = orch.run(QUERY, domain="math")
    assert not (tmp_path / "logs").exists()
    check_trace_shape([e.to_dict() for e in result.events], QUERY)


def test_long_answer_domains_get_room_for_the_answer_in_an_expansion():
    orch = Orchestrator(settings(MAX_TOKENS_PER_STEP=32, MAX_ANSWER_TOKENS=300), llm=ScriptedLLM())
    assert orch.params_for("math").max_step_tokens == 32
    assert orch.params_for("code").max_step_tokens == 300


def test_load_queries_reports_every_bad_line(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text('{"query": "What is 2+3?", "id": "a"}\n\n{"query": "Sort a list", "domain": "code", "tests": ["assert f([2,1]) == [1,2]"]}\n')
    assert [q.get("id") for q in load_queries(good)] == ["a", None]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": ""}\nnot json\n[1]\n{"query": "x", "domain": "poetry", "tests": "assert 1"}\n')
    with pytest.raises(ValueError) as err:
        load_queries(bad)
    msg = str(err.value)
    for fragment in ("line 1: 'query' must be a non-empty string", "line 2: not JSON", "line 3: expected an object", "line 4: unknown domain 'poetry'", "line 4: 'tests' must be a list of strings"):
        assert fragment in msg
