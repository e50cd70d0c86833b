"""`kaelum ask` / `kaelum run` through CliRunner on real files; the worker is the scripted LLM
handed in through the orchestrator factory seam (the real model runs in test_cli_kaelum_e2e.py)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from kaelum import Orchestrator
from kaelum.cli import main
from test_lats_support import ArithmeticDomain, ScriptedLLM


def factory(llm: ScriptedLLM, seen: list | None = None):
    def make(settings, enable_logging, log_dir):
        if seen is not None:
            seen.append(settings)
        return Orchestrator(settings, enable_logging=enable_logging, log_dir=log_dir, llm=llm, domain_factory=lambda name, options: ArithmeticDomain("5"))

    return make


def test_ask_prints_answer_verification_reward_and_tree(tmp_path, read_events, check_trace_shape):
    llm = ScriptedLLM(rollout=lambda c: "Step 2: 2+3=5\nAnswer: 5")
    seen: list = []
    res = CliRunner().invoke(main, ["ask", "What is 2 + 3?", "--domain", "math", "--log-dir", str(tmp_path / "logs"), "--simulations", "2", "--seed", "3"], obj={"orchestrator_factory": factory(llm, seen)})
    assert res.exit_code == 0, res.output
    out = res.output
    assert "answer   5" in out and "verified yes" in out
    # The default search has no LLM judge, so the reward is the verifier's alone.
    assert "reward   1.000 (verifier=1.00)" in out, out
    assert "n0 What is 2 + 3?" in out and "step 0" in out and "✓ answer: 5" in out
    assert seen[0].LATS_SIMULATIONS == 2 and seen[0].SEED == 3
    events = read_events(tmp_path / "logs")
    check_trace_shape(events, "What is 2 + 3?")


def test_ask_logs_to_the_default_log_dir_so_its_trace_id_can_be_looked_up(tmp_path, monkeypatch, read_events):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAELUM_LOG_DIR", raising=False)
    res = CliRunner().invoke(main, ["ask", "What is 2 + 3?", "--no-tree"], obj={"orchestrator_factory": factory(ScriptedLLM(rollout=lambda c: "Answer: 5"))})
    assert res.exit_code == 0, res.output
    assert "domain   math (keywords" in res.output and "n0 " not in res.output
    trace_id = res.output.split("trace ")[1].split()[0]
    assert {e["trace_id"] for e in read_events(tmp_path / "logs")} == {trace_id}
    assert "trace written to logs" in res.output


def test_ask_with_no_log_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["ask", "What is 2 + 3?", "--no-tree", "--no-log"], obj={"orchestrator_factory": factory(ScriptedLLM(rollout=lambda c: "Answer: 5"))})
    assert res.exit_code == 0, res.output
    assert list(tmp_path.iterdir()) == []
    res = CliRunner().invoke(main, ["ask", "x", "--no-log", "--log-dir", "l"], obj={"orchestrator_factory": factory(ScriptedLLM())})
    assert res.exit_code == 2 and "--no-log and --log-dir contradict each other" in res.output


def test_run_writes_every_trace_and_prints_a_summary(tmp_path, read_events, check_trace_shape):
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(json.dumps(q) for q in [{"query": "What is 2 + 3?", "id": "q1"}, {"query": "What is 1 + 4?", "id": "q2", "tags": ["t"]}, {"query": "What is 3 + 3?", "id": "q3"}]) + "\n")
    answers = iter(["Answer: 5", "Answer: 5", "Answer: 4"] + ["Answer: 4"] * 20)
    llm = ScriptedLLM(rollout=lambda c: next(answers))
    res = CliRunner().invoke(main, ["run", "--queries", str(queries), "--log-dir", str(tmp_path / "logs"), "--simulations", "1"], obj={"orchestrator_factory": factory(llm)})
    assert res.exit_code == 0, res.output
    assert "verified 2/3" in res.output and "q3" in res.output
    events = read_events(tmp_path / "logs")
    trace_ids = list(dict.fromkeys(e["trace_id"] for e in events))
    assert len(trace_ids) == 3
    for tid, query in zip(trace_ids, ["What is 2 + 3?", "What is 1 + 4?", "What is 3 + 3?"]):
        check_trace_shape([e for e in events if e["trace_id"] == tid], query)
    assert [e["data"]["tags"] for e in events if e["type"] == "trace_started"] == [[], ["t"], []]


def test_run_exits_1_when_a_trace_errors_but_still_writes_it(tmp_path, read_events):
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "What is 2 + 3?"}\n')
    res = CliRunner().invoke(main, ["run", "--queries", str(queries), "--log-dir", str(tmp_path / "logs")], obj={"orchestrator_factory": factory(ScriptedLLM(fail_on="expand"))})
    assert res.exit_code == 1
    assert "1 of 1 traces ended with an error (first: query 1: RuntimeError: scripted failure on expand)" in res.output
    assert read_events(tmp_path / "logs")[-1]["data"]["status"] == "error"


def test_bad_queries_file_and_bad_settings_give_messages_that_name_the_fix(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": 3}\n')
    res = CliRunner().invoke(main, ["run", "--queries", str(bad)], obj={"orchestrator_factory": factory(ScriptedLLM())})
    assert res.exit_code == 1
    assert "line 1: 'query' must be a non-empty string; fix the file and run again" in res.output
    res = CliRunner().invoke(main, ["ask", "What is 2 + 3?", "--simulations", "0"], obj={"orchestrator_factory": factory(ScriptedLLM())})
    assert res.exit_code == 1
    assert "invalid settings (LATS_SIMULATIONS: Input should be greater than or equal to 1)" in res.output


def test_help_lists_commands_with_examples():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0 and "ask" in res.output and "run" in res.output
    # The backends' `kaelum models` group is part of the same CLI.
    assert "models" in res.output
    sub = CliRunner().invoke(main, ["models", "--help"])
    assert sub.exit_code == 0 and "list" in sub.output and "pull" in sub.output
    for cmd in ("ask", "run"):
        sub = CliRunner().invoke(main, [cmd, "--help"])
        assert "Example: kaelum" in sub.output
