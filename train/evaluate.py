"""Evaluate worker models side by side on held-out queries, through the real runtime.

Each model answers every query through `kaelum.Orchestrator` (route → LATS → verify → reward)
with the model as the worker of every domain, so the numbers are what the runtime would deliver
in production: verified accuracy, mean reward and LLM tokens per query, and each query's answer
and verdict per model (`per_query_rows`, the CSV; `format_answers`, `--show`). "Verified" counts
every verdict; "checked" only those reached by a method that checks the answer (a reference, a
computed value, tests, a formal model, constraints), not by agreement or a judge's opinion; with
references in the queries file, "checked" on those queries is accuracy against the references.
A model is loaded (pulled, converted, merged: once) before its clock starts: `seconds` is
answering time only, `load_seconds` the one-time rest.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

log = logging.getLogger("kaelum.train.eval")


def checked_outcomes(answers: Sequence[dict[str, Any]]) -> list[bool]:
    """Per answer, whether a method that checks it verified it (`CHECKED_METHODS`): the only outcomes a
    gate may count, since agreement among one model's samples, or a judge's opinion, verifies wrong
    answers too (docs/domains.md). An answer recorded without its method counts as unchecked."""
    from kaelum.domains.base import CHECKED_METHODS

    return [bool(a.get("verified")) and a.get("verified_by") in CHECKED_METHODS for a in answers]


class EvalError(ValueError):
    """Bad evaluation input (no queries, unknown model directory, ...). The message names the fix."""


@dataclass
class ModelScore:
    model: str
    queries: int = 0
    verified: int = 0
    checked: int = 0  # verified by a method in kaelum.domains.base.CHECKED_METHODS
    reward_sum: float = 0.0
    tokens: int = 0
    errors: int = 0
    seconds: float = 0.0  # answering the queries, the model already loaded
    load_seconds: float = 0.0  # loading it once (pull, GGUF conversion, adapter merge), not in `seconds`
    answers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.verified / self.queries if self.queries else 0.0

    @property
    def checked_accuracy(self) -> float:
        return self.checked / self.queries if self.queries else 0.0

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.queries if self.queries else 0.0

    @property
    def tokens_per_query(self) -> float:
        return self.tokens / self.queries if self.queries else 0.0

    def row(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "queries": self.queries,
            "verified": self.verified,
            "verified_accuracy": round(self.accuracy, 4),
            "checked": self.checked,
            "checked_accuracy": round(self.checked_accuracy, 4),
            "mean_reward": round(self.mean_reward, 4),
            "tokens_per_query": round(self.tokens_per_query, 1),
            "errors": self.errors,
            "seconds": round(self.seconds, 1),
            "load_seconds": round(self.load_seconds, 1),
        }


def load_eval_queries(path: str) -> list[dict[str, Any]]:
    from kaelum.queries import load_queries

    try:
        return load_queries(path)
    except (OSError, ValueError) as exc:
        raise EvalError(f"--queries {path}: {exc}") from None


def queries_from_store(store_path: str, where: str, exclude_trace_ids: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Held-out queries: training_examples rows matching `where` (training_examples_all when `where`
    names verified_by), minus traces any model trained on."""
    import duckdb

    from .data import examples_source, open_store, select_rows

    con = open_store(store_path)
    try:
        table = con.sql(f"select * from {examples_source(where)}").to_arrow_table()
    except duckdb.Error as exc:
        raise EvalError(f"the store at {store_path} has no training_examples view: {exc}") from None
    finally:
        con.close()
    rows, _ = select_rows(table, view="training_examples", domain=None, min_reward=None, where=where)
    excluded = set(exclude_trace_ids)
    seen: set[tuple[str, str]] = set()
    out = []
    for r in rows:
        key = (r["domain"], r["query"])
        if r["trace_id"] in excluded or key in seen:
            continue
        seen.add(key)
        out.append({"query": r["query"], "domain": r["domain"], "id": r["trace_id"]})
    if not out:
        raise EvalError(f"--where {where!r} selects no held-out traces (traces a model trained on are excluded)")
    return out


def trained_trace_ids(model: str) -> list[str]:
    """Trace ids a Kaelum model directory was trained on (empty for other models)."""
    path = os.path.join(model, "kaelum_manifest.json")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return list(json.load(fh).get("data", {}).get("trace_ids", []))


def settings_for(model: str, base: Any = None, **overrides: Any) -> Any:
    """Settings that serve `model` as the worker of every domain."""
    from kaelum.config import DOMAIN_MODEL_FIELDS, Settings

    fields = {f: model for f in DOMAIN_MODEL_FIELDS.values()}
    fields["DEFAULT_WORKER_MODEL"] = model
    if base is not None:
        return base.model_copy(update={**fields, **overrides})
    return Settings(**fields, **overrides)


def evaluate_model(
    model: str,
    queries: Sequence[dict[str, Any]],
    settings_overrides: dict[str, Any] | None = None,
    orchestrator_factory: Callable[[Any], Any] | None = None,
    log_dir: str | None = None,
    progress: bool = True,
) -> ModelScore:
    from kaelum import Orchestrator

    settings = settings_for(model, **(settings_overrides or {}))
    make = orchestrator_factory or (
        lambda s: Orchestrator(settings=s, enable_logging=log_dir is not None, log_dir=log_dir)
    )
    score = ModelScore(model=model)
    orch = make(settings)
    # Load the worker before the clock starts: a one-time conversion is not answering time.
    load = getattr(orch, "llm_for", None)
    if load is not None:
        t_load = time.perf_counter()
        # Every domain has this model (settings_for): one load serves them all.
        load(next((q["domain"] for q in queries if q.get("domain")), "math"))
        score.load_seconds = time.perf_counter() - t_load
    t0 = time.perf_counter()
    try:
        iterator: Any = queries
        if progress:
            from tqdm import tqdm

            iterator = tqdm(queries, desc=f"eval {os.path.basename(model.rstrip('/')) or model}", unit="query")
        for q in iterator:
            res = orch.run(q["query"], domain=q.get("domain"), tests=q.get("tests"), tags=["eval"], reference=q.get("reference"))
            score.queries += 1
            score.verified += int(bool(res.verified))
            score.reward_sum += float(res.reward)
            score.tokens += int(res.usage.get("prompt_tokens", 0)) + int(res.usage.get("completion_tokens", 0))
            score.errors += int(res.status == "error")
            score.answers.append({
                "query_id": q.get("id", ""), "domain": getattr(res, "domain", q.get("domain")) or "", "query": q["query"],
                "answer": res.answer, "verified": bool(res.verified), "verified_by": getattr(res, "verified_by", None),
                "reward": round(float(res.reward), 4), "status": res.status, "reference": q.get("reference"),
            })
            score.checked += int(checked_outcomes(score.answers[-1:])[0])  # the gate's rule, written once
    finally:
        score.seconds = time.perf_counter() - t0
        close = getattr(orch, "close", None)
        if close:
            close()
    return score


def evaluate(
    models: Sequence[str],
    queries: Sequence[dict[str, Any]],
    settings_overrides: dict[str, Any] | None = None,
    log_dir: str | None = None,
    progress: bool = True,
) -> list[ModelScore]:
    if not models:
        raise EvalError("name at least one --model")
    if not queries:
        raise EvalError("no queries to evaluate on")
    return [evaluate_model(m, queries, settings_overrides, log_dir=log_dir, progress=progress) for m in models]


def format_table(scores: Sequence[ModelScore]) -> str:
    """Metrics as rows, models as columns: the side-by-side comparison."""
    names = [s.model for s in scores]
    metrics = [
        ("queries", lambda s: str(s.queries)),
        ("verified accuracy", lambda s: f"{100 * s.accuracy:.1f}%"),
        ("checked accuracy", lambda s: f"{100 * s.checked_accuracy:.1f}%"),
        ("mean reward", lambda s: f"{s.mean_reward:.3f}"),
        ("tokens / query", lambda s: f"{s.tokens_per_query:.1f}"),
        ("errors", lambda s: str(s.errors)),
        ("seconds", lambda s: f"{s.seconds:.1f}"),
        ("load seconds (once)", lambda s: f"{s.load_seconds:.1f}"),
    ]
    w0 = max(len(m[0]) for m in metrics)
    widths = [max(len(n), 10) for n in names]
    lines = ["".ljust(w0) + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths))]
    for label, fn in metrics:
        lines.append(label.ljust(w0) + "  " + "  ".join(fn(s).rjust(w) for s, w in zip(scores, widths)))
    if len(scores) >= 2:
        d = 100 * (scores[-1].accuracy - scores[0].accuracy)
        lines.append(f"verified accuracy, last vs first model: {d:+.1f} points")
    return "\n".join(lines)


PER_QUERY_COLUMNS = ("query_id", "domain", "query", "model", "answer", "verified", "verified_by", "reward", "status")


def per_query_rows(scores: Sequence[ModelScore]) -> list[dict[str, Any]]:
    """One row per query and model, queries in order, models in the order given: what changed."""
    rows = []
    for i in range(max((len(s.answers) for s in scores), default=0)):
        for s in scores:
            if i < len(s.answers):
                a = s.answers[i]
                rows.append({"query_id": a.get("query_id", ""), "domain": a.get("domain", ""), "query": a["query"], "model": s.model,
                             "answer": a["answer"], "verified": a["verified"], "verified_by": a.get("verified_by"),
                             "reward": a["reward"], "status": a.get("status", "")})
    return rows


def write_csv(scores: Sequence[ModelScore], path: str) -> None:
    """Each query's answer and verdict per model (`PER_QUERY_COLUMNS`); the totals are the printed table."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(PER_QUERY_COLUMNS))
        w.writeheader()
        w.writerows(per_query_rows(scores))


def format_answers(scores: Sequence[ModelScore], width: int = 28) -> str:
    """Per query, each model's answer with ✓ (verified) or ✗, side by side (`kaelum-eval --show`)."""

    def cut(text: str, n: int) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= n else text[: n - 1] + "…"

    names = [os.path.basename(s.model.rstrip("/")) or s.model for s in scores]
    n = max((len(s.answers) for s in scores), default=0)
    queries = [next((s.answers[i]["query"] for s in scores if i < len(s.answers)), "") for i in range(n)]
    qw = min(40, max([5] + [len(q) for q in queries]))
    cells = []
    for i in range(n):
        row = []
        for s in scores:
            a = s.answers[i] if i < len(s.answers) else None
            row.append("" if a is None else f"{'✓' if a['verified'] else '✗'} {cut(a['answer'] or '(none)', width - 2)}")
        cells.append(row)
    widths = [max([len(nm)] + [len(r[j]) for r in cells]) for j, nm in enumerate(names)]
    lines = ["query".ljust(qw) + "  " + "  ".join(nm.ljust(w) for nm, w in zip(names, widths))]
    for q, row in zip(queries, cells):
        lines.append(cut(q, qw).ljust(qw) + "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return "\n".join(line.rstrip() for line in lines)


def write_plot(scores: Sequence[ModelScore], path: str) -> None:
    """Bar chart: verified accuracy and mean reward per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EvalError("--plot needs matplotlib: pip install 'kaelum[train]'") from None
    names = [os.path.basename(s.model.rstrip("/")) or s.model for s in scores]
    x = range(len(scores))
    fig, ax = plt.subplots(figsize=(max(4, 1.8 * len(scores) + 2), 3.5))
    w = 0.38
    b1 = ax.bar([i - w / 2 for i in x], [s.accuracy for s in scores], w, label="verified accuracy")
    b2 = ax.bar([i + w / 2 for i in x], [s.mean_reward for s in scores], w, label="mean reward")
    ax.bar_label(b1, fmt="%.2f")
    ax.bar_label(b2, fmt="%.2f")
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1.1)
    ax.set_title(f"Held-out evaluation ({scores[0].queries} queries)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
