"""kaelum-eval's per-query output and timing, on a scripted worker (no model)."""

from __future__ import annotations

import csv
import time
from types import SimpleNamespace

from train.evaluate import PER_QUERY_COLUMNS, evaluate_model, format_answers, format_table, write_csv

QUERIES = [{"id": "add", "query": "What is 12 + 7?", "domain": "math"}, {"id": "mul", "query": "What is 6 * 4?", "domain": "math"}]


class ScriptedOrchestrator:
    """Answers from a table; loading its worker takes `load_s` (like a one-time GGUF conversion)."""

    def __init__(self, answers: dict[str, tuple[str, bool, float]], load_s: float):
        self.answers, self.load_s, self.loaded = answers, load_s, False

    def llm_for(self, domain: str):
        if not self.loaded:
            time.sleep(self.load_s)
            self.loaded = True
        return object()

    def run(self, query, domain=None, tests=None, tags=None, reference=None):
        self.llm_for(domain or "math")
        answer, verified, reward = self.answers[query]
        return SimpleNamespace(answer=answer, verified=verified, reward=reward, domain=domain, status="ok" if verified else "failed",
                               usage={"prompt_tokens": 10, "completion_tokens": 5})


def _score(model, answers, load_s=0.0):
    return evaluate_model(model, QUERIES, orchestrator_factory=lambda s: ScriptedOrchestrator(answers, load_s), progress=False)


def test_one_time_loading_is_timed_apart_from_answering():
    score = _score("base", {"What is 12 + 7?": ("19", True, 1.0), "What is 6 * 4?": ("24", True, 0.9)}, load_s=0.6)
    assert score.load_seconds >= 0.6 and score.seconds < 0.3
    assert "load seconds (once)" in format_table([score])


def test_each_query_answer_and_verdict_per_model_in_the_csv_and_the_table(tmp_path):
    base = _score("default", {"What is 12 + 7?": ("19", True, 1.0), "What is 6 * 4?": ("20", False, 0.1)})
    tuned = _score("./finetuned_math", {"What is 12 + 7?": ("19", True, 1.0), "What is 6 * 4?": ("24", True, 0.95)})
    write_csv([base, tuned], tmp_path / "eval.csv")
    rows = list(csv.DictReader(open(tmp_path / "eval.csv", encoding="utf-8")))
    assert tuple(rows[0]) == PER_QUERY_COLUMNS
    assert [(r["query_id"], r["model"], r["answer"], r["verified"], r["reward"]) for r in rows] == [
        ("add", "default", "19", "True", "1.0"),
        ("add", "./finetuned_math", "19", "True", "1.0"),
        ("mul", "default", "20", "False", "0.1"),
        ("mul", "./finetuned_math", "24", "True", "0.95"),
    ]
    table = format_answers([base, tuned]).splitlines()
    assert table[0].split() == ["query", "default", "finetuned_math"]
    assert table[2].startswith("What is 6 * 4?") and "✗ 20" in table[2] and "✓ 24" in table[2]
    # The means are rounded where they are shown.
    assert "0.550" in format_table([base, tuned]) and base.row()["mean_reward"] == 0.55
