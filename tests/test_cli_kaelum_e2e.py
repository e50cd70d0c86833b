"""End to end with the real parts: the embedded SmolLM2-135M-Instruct through the local backend,
the real math domain, `kaelum run` writing traces that validate against the event schema.

Slow (the model generates on the CPU), but kept to ~1-2 minutes: two queries, a small budget.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kaelum.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

QUERIES = [{"id": "add", "query": "What is 12 + 7?", "domain": "math"}, {"id": "mul", "query": "What is 6 * 4?"}]


def test_kaelum_run_with_the_embedded_model_writes_complete_valid_traces(tmp_path, read_events, check_trace_shape):
    queries = tmp_path / "math.jsonl"
    queries.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    log_dir = tmp_path / "logs"
    args = ["run", "--queries", str(queries), "--log-dir", str(log_dir), "--simulations", "2", "--max-llm-calls", "8", "--seed", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "2 queries" in res.output and "verified" in res.output

    events = read_events(log_dir)
    traces = list(dict.fromkeys(e["trace_id"] for e in events))
    assert len(traces) == 2
    for trace_id, q in zip(traces, QUERIES):
        trace = [e for e in events if e["trace_id"] == trace_id]
        check_trace_shape(trace, q["query"])
        started, done = trace[0]["data"], trace[-1]["data"]
        assert started["domain"] == "math" and started["worker_model"] == "SmolLM2-135M-Instruct"
        assert started["router"]["method"] == ("explicit" if "domain" in q else "keywords")
        assert done["status"] == "ok" and done["final_answer"] is not None
        assert 1 <= done["usage"]["llm_calls"] <= 8
        # The search branched: the root has more than one distinct child.
        root_children = [e["data"]["thought"] for e in trace if e["type"] == "node_expanded" and e["data"]["parent_id"] == "n0"]
        assert len(root_children) >= 2 and len(set(root_children)) == len(root_children)
        verifications = [e["data"] for e in trace if e["type"] == "verification"]
        assert verifications and all(v["verifier"].startswith("math.") for v in verifications)
        assert done["verified"] == verifications[-1]["passed"] or any(v["passed"] for v in verifications)
