"""The Orchestrator with the real domain modules (kaelum.domains.get_domain) and a scripted worker:
the math verifier's signals and reward components reach the trace; the code domain runs the tests
given with the query in the sandbox."""

from __future__ import annotations

import json

import pytest

from kaelum import Orchestrator, Settings
from test_lats_support import ScriptedLLM


def test_math_with_the_real_verifier(tmp_path, read_events, check_trace_shape):
    llm = ScriptedLLM(expand=lambda c: ["Step 1: 6 * 4 = 24", "Step 1: 6 * 4 = 20", "Step 1: multiply"], rollout=lambda c: "Answer: 24", judge=lambda c: "yes")
    settings = Settings(LATS_SIMULATIONS=2, SEED=0)
    with Orchestrator(settings, enable_logging=True, log_dir=tmp_path / "logs", llm=llm) as orch:
        result = orch.run("What is 6 * 4?", domain="math")
    events = read_events(tmp_path / "logs")
    check_trace_shape(events, "What is 6 * 4?")
    assert (result.answer, result.verified, result.status) == ("24", True, "ok")
    ver = next(e["data"] for e in events if e["type"] == "verification")
    assert ver["verifier"].startswith("math.") and ver["passed"]
    assert set(events[-1]["data"]["reward_components"]) == set(result.reward_components) and result.reward_components
    assert 0.0 <= result.reward <= 1.0


def test_math_wrong_answer_is_not_verified(tmp_path):
    llm = ScriptedLLM(expand=lambda c: ["Step 1: 6 * 4 = 20"] * c.n, rollout=lambda c: "Answer: 20", reflect=lambda c: "Multiply again.")
    # Reflections are off by default (a 135M worker cannot use them) and never written in the
    # last simulation, where no later prompt would see them.
    with Orchestrator(Settings(LATS_SIMULATIONS=2, LATS_REFLECTION=True), llm=llm) as orch:
        result = orch.run("What is 6 * 4?", domain="math")
    assert (result.answer, result.verified) == ("20", False)
    assert result.reflections and result.reflections[0].startswith("The answer 20 failed verification.")


@pytest.mark.timeout(120)
def test_code_runs_the_given_tests_in_the_sandbox(tmp_path, read_events, check_trace_shape):
    solution = "Step 1: return the reverse\nAnswer:\n```python\ndef rev(s):\n    return s[::-1]\n```"
    llm = ScriptedLLM(expand=lambda c: [solution] * c.n, judge=lambda c: "yes")
    settings = Settings(LATS_SIMULATIONS=1, SANDBOX_TIMEOUT_S=20)
    with Orchestrator(settings, enable_logging=True, log_dir=tmp_path / "logs", llm=llm) as orch:
        result = orch.run("Write a Python function rev(s) that reverses a string.", tests=["assert rev('abc') == 'cba'", "assert rev('') == ''"])
    events = read_events(tmp_path / "logs")
    check_trace_shape(events, "Write a Python function rev(s) that reverses a string.")
    assert result.domain == "code" and result.verified, json.dumps(events[-1]["data"])
    ver = next(e["data"] for e in events if e["type"] == "verification")
    assert ver["verifier"].startswith("code.") and ver["score"] == 1.0


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_a_model_that_cannot_be_loaded_closes_the_trace_with_error(tmp_path, read_events):
    settings = Settings(MATH_WORKER_MODEL=str(tmp_path / "no-such-model"))
    with Orchestrator(settings, enable_logging=True, log_dir=tmp_path / "logs") as orch:
        result = orch.run("What is 6 * 4?", domain="math")
    events = read_events(tmp_path / "logs")
    assert [e["type"] for e in events] == ["trace_started", "trace_completed"]
    assert events[0]["data"]["worker_model"] == str(tmp_path / "no-such-model")
    assert result.status == "error" and result.error.startswith("LLMError: ") and "no-such-model" in result.error


@pytest.mark.timeout(120)
def test_a_server_that_is_down_closes_the_trace_with_error(tmp_path, read_events, check_trace_shape):
    settings = Settings(DEFAULT_WORKER_MODEL="some-model", OPENAI_BASE_URL=f"http://127.0.0.1:{_closed_port()}/v1", LLM_MAX_RETRIES=0, LLM_TIMEOUT_S=5)
    with Orchestrator(settings, enable_logging=True, log_dir=tmp_path / "logs") as orch:
        result = orch.run("What is 6 * 4?", domain="math")
    events = read_events(tmp_path / "logs")
    check_trace_shape(events, "What is 6 * 4?")
    assert events[-1]["data"]["status"] == "error" and result.error.startswith("LLMError: ")
    assert events[1]["type"] == "node_expanded"  # the root was written before the first call failed
