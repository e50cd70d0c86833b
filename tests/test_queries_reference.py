"""References in every input: the one queries reader (aliases, GSM8K), `kaelum run --queries`,
`kaelum ask --reference` and `kaelum-eval`'s loader, on real files with the real math domain; the
worker is the scripted LLM (the real model runs in test_cli_kaelum_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kaelum import Orchestrator
from kaelum.cli import main
from kaelum.queries import gsm8k_final_answer, load_queries
from test_lats_support import ScriptedLLM

GSM8K_LINES = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"},
]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_gsm8k_file_is_read_as_it_is(tmp_path):
    qs = load_queries(_write(tmp_path / "gsm8k.jsonl", GSM8K_LINES))
    assert [q["reference"] for q in qs] == ["72", "10"]
    assert qs[0]["query"].startswith("Natalia sold clips") and "question" not in qs[0] and "answer" not in qs[0]
    assert qs[0]["reference_solution"].endswith("72 clips altogether in April and May.")
    assert gsm8k_final_answer(" 5 ") == ("5", None)
    assert gsm8k_final_answer("a\n#### 1,250\n") == ("1,250", "a")


def test_reference_and_its_alias_and_every_bad_line(tmp_path):
    good = _write(tmp_path / "q.jsonl", [
        {"query": "Tom has 52 marbles and gives away 19. How many are left?", "reference": "33"},
        {"query": "Mara has 46 coins and gives away 22. How many coins does Mara have left?", "answer": 24},
        {"query": "Write add(a, b).", "domain": "code", "reference": [{"input": "add(1, 2)", "output": "3"}]},
        {"query": "No label here", "reference": None},
    ])
    qs = load_queries(good)
    assert [q.get("reference") for q in qs] == ["33", "24", [{"input": "add(1, 2)", "output": "3"}], None]
    bad = _write(tmp_path / "bad.jsonl", [
        {"query": "a", "reference": "1", "answer": "2"},
        {"question": "b", "reference": True},
        {"query": "c", "domain": "math", "reference": [{"input": "f(1)", "output": "2"}]},
        {"query": "d", "domain": "code", "reference": [{"input": "f(1"}]},
        {"query": "e", "answer": "reasoning only\n#### "},
        {"question": ""},
    ])
    with pytest.raises(ValueError) as err:
        load_queries(bad)
    msg = str(err.value)
    for fragment in ("line 1: both 'reference' and its alias 'answer' are given, and they differ",
                     "line 2: 'reference' must be a string or a number, got true",
                     "line 3: a list 'reference' (input/output cases) is only for the code domain, not math",
                     "line 4: invalid code reference: case 0: needs string fields",
                     "line 5: 'reference' is empty after its '####' line",
                     "line 6: 'query' must be a non-empty string"):
        assert fragment in msg, fragment


def _factory(llm):
    def make(settings, enable_logging, log_dir):
        return Orchestrator(settings, enable_logging=enable_logging, log_dir=log_dir, llm=llm)
    return make


def _events(log_dir: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(log_dir.glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_run_checks_word_problems_against_their_references(tmp_path):
    # Every branch answers 24 to both: right for Mara (24), wrong for Tom (33), however much it agrees.
    queries = _write(tmp_path / "q.jsonl", [
        {"query": "Mara has 46 coins and gives away 22. How many coins does Mara have left?", "domain": "math", "answer": "24", "id": "mara"},
        {"query": "Tom has 52 marbles and gives away 19. How many marbles are left?", "domain": "math", "reference": "33", "id": "tom"},
        {"query": "Tom has 52 marbles and gives away 28. How many marbles are left?", "domain": "math", "id": "unlabelled"},
    ])
    llm = ScriptedLLM(expand=lambda c: ["Step 1: count what is left"] * c.n, rollout=lambda c: "Answer: 24")
    res = CliRunner().invoke(main, ["run", "--queries", str(queries), "--log-dir", str(tmp_path / "logs"), "--simulations", "2", "--branching", "2"],
                             obj={"orchestrator_factory": _factory(llm)})
    assert res.exit_code == 0, res.output
    assert "correct against references: 1/2 (50.0%)" in res.output
    assert "reference" in res.output  # the "by" column
    completed = [e["data"] for e in _events(tmp_path / "logs") if e["type"] == "trace_completed"]
    assert [(c["verified"], c["verified_by"]) for c in completed[:2]] == [(True, "reference"), (False, "reference")]
    # The unlabelled one could at best be agreed on: never "checked", and its reward stays under the cap.
    assert completed[2]["verified_by"] in ("consistency", "judge") and completed[2]["reward"] <= 0.5
    verifications = [e["data"] for e in _events(tmp_path / "logs") if e["type"] == "verification"]
    assert {v["method"] for v in verifications} >= {"reference"}


def test_ask_with_a_reference(tmp_path):
    llm = ScriptedLLM(expand=lambda c: ["Step 1: 47 + 38 = 85"] * c.n, rollout=lambda c: "Answer: $85.00")
    q = "Sade has 47 shells and finds 38 more. How many shells does Sade have now?"
    res = CliRunner().invoke(main, ["ask", q, "--domain", "math", "--reference", "85 shells", "--no-tree", "--no-log", "--simulations", "1"],
                             obj={"orchestrator_factory": _factory(llm)})
    assert res.exit_code == 0, res.output
    assert "verified yes (by reference)" in res.output
    res = CliRunner().invoke(main, ["ask", q, "--domain", "math", "--reference", "47 + 38 is wrong\n#### 12", "--no-tree", "--no-log", "--simulations", "1"],
                             obj={"orchestrator_factory": _factory(llm)})
    assert "verified no (by reference)" in res.output
    res = CliRunner().invoke(main, ["ask", "Write add(a, b).", "--no-log", "--reference", '[{"input": "add(1,"}]'],
                             obj={"orchestrator_factory": _factory(llm)})
    assert res.exit_code == 2 and "Invalid value for --reference" in res.output and "needs string fields" in res.output


def test_eval_reads_references_and_reports_checked_accuracy(tmp_path):
    from train.evaluate import evaluate_model, format_table, load_eval_queries

    qs = load_eval_queries(str(_write(tmp_path / "gsm8k.jsonl", GSM8K_LINES)))
    assert [q["reference"] for q in qs] == ["72", "10"]
    llm = ScriptedLLM(expand=lambda c: ["Step 1: add them up"] * c.n, rollout=lambda c: "Answer: 72")
    from kaelum import Settings

    score = evaluate_model("scripted", [dict(q, domain="math") for q in qs], {"LATS_SIMULATIONS": 1}, progress=False,
                           orchestrator_factory=lambda s: Orchestrator(Settings(LATS_SIMULATIONS=1), llm=llm))
    assert (score.queries, score.verified, score.checked) == (2, 1, 1)
    assert [a["verified_by"] for a in score.answers] == ["reference", "reference"]
    assert "checked accuracy" in format_table([score]) and score.row()["checked_accuracy"] == 0.5
    with pytest.raises(ValueError, match="line 1: 'query' must be a non-empty string"):
        load_eval_queries(str(_write(tmp_path / "bad.jsonl", [{"answer": "#### 3"}])))


@pytest.mark.timeout(180)
def test_run_checks_code_against_reference_cases(tmp_path):
    solution = "Step 1: return the reverse\nAnswer:\n```python\ndef rev(s):\n    return s[::-1]\n```"
    queries = _write(tmp_path / "q.jsonl", [
        {"query": "Write a Python function rev(s) that reverses a string.", "domain": "code", "id": "rev",
         "reference": [{"input": "rev('abc')", "output": "'cba'"}, {"input": "rev('')", "output": "''"}]},
        {"query": "Write a Python function rev(s) that reverses a string.", "domain": "code", "id": "rev-wrong-label",
         "reference": [{"input": "rev('abc')", "output": "'abc'"}]},
    ])
    llm = ScriptedLLM(expand=lambda c: [solution] * c.n)
    res = CliRunner().invoke(main, ["run", "--queries", str(queries), "--log-dir", str(tmp_path / "logs"), "--simulations", "1"],
                             obj={"orchestrator_factory": _factory(llm)})
    assert res.exit_code == 0, res.output
    completed = [e["data"] for e in _events(tmp_path / "logs") if e["type"] == "trace_completed"]
    assert [(c["verified"], c["verified_by"]) for c in completed] == [(True, "reference"), (False, "reference")]
    assert "correct against references: 1/2" in res.output
