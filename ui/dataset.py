"""The `/datasets` page's selection: what `kaelum-train` would train on, by the trainer's own code.

The filters (`--domain`, `--min-reward`, `--where`) are counted by `train.data.count_selection`
(the trainer's selection, counted in SQL: only the examples shown are read whole) after
`train.where.check_where`, the examples are `train.data.Trace` / `PreferencePair`, and their text
is the trainer's: with a tokenizer (`kaelum ui --model`), `train.dataset.render_sft` /
`render_dpo` with the model's chat template, exactly the strings the trainer tokenizes; without
one, the worker messages and the completion those steps render. Nothing here re-implements a
filter. `train` is imported on first use, and the parts that need torch (the tokenizer path) only
when a model is configured, so `kaelum ui` starts without the train extra and says what is
missing when the page is used.
"""

from __future__ import annotations

import logging
import shlex
import threading
from dataclasses import dataclass
from typing import Any, Mapping

from .reader import BadRequest, jsonable, one_snapshot, time_limit

READ_LIMIT_S = 120.0  # DPO's counts compute every tree's pairs; past this the page gives up and says so


class DatasetUnavailable(RuntimeError):
    """The training code (or torch, for rendering with a tokenizer) is not installed."""


@dataclass
class DatasetQuery:
    method: str = "sft"
    domain: str | None = None
    min_reward: float | None = 0.7
    where: str | None = None
    examples: int = 3

    @classmethod
    def parse(cls, p: Mapping[str, str]) -> "DatasetQuery":
        from kaelum.events import DOMAINS

        method = (p.get("method") or "sft").strip()
        if method not in ("sft", "dpo"):
            raise BadRequest(f"method must be sft or dpo, got {method!r}")
        domain = (p.get("domain") or "").strip() or None
        if domain is not None and domain not in DOMAINS:
            raise BadRequest(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
        raw = (p.get("min_reward") if "min_reward" in p else "0.7") or ""
        min_reward = None
        if raw.strip():
            try:
                min_reward = float(raw)
            except ValueError:
                raise BadRequest(f"min_reward must be a number in [0, 1], got {raw!r}") from None
            if not 0.0 <= min_reward <= 1.0:
                raise BadRequest(f"min_reward must be in [0, 1], got {min_reward}")
        where = (p.get("where") or "").strip() or None
        try:
            examples = int(p.get("examples") or 3)
        except ValueError:
            raise BadRequest(f"examples must be an integer, got {p.get('examples')!r}") from None
        if not 0 <= examples <= 20:
            raise BadRequest(f"examples must be between 0 and 20, got {examples}")
        return cls(method, domain, min_reward, where, examples)

    def command(self, store: str, model: str | None) -> str:
        """The `kaelum-train` command that selects the same examples (a dry run: nothing is trained)."""
        parts = ["kaelum-train", "--model", model or "MODEL", "--store", store]
        if self.method != "sft":
            parts += ["--method", self.method]
        if self.domain:
            parts += ["--domain", self.domain]
        if self.min_reward is not None and self.method == "sft":
            parts += ["--min-reward", f"{self.min_reward:g}"]
        if self.where:
            parts += ["--where", self.where]
        parts.append("--dry-run")
        return " ".join(shlex.quote(x) for x in parts)


class Renderer:
    """The trainer's render step with the tokenizer of `model`, loaded once on first use."""

    def __init__(self, model: str | None) -> None:
        self.model = model
        self._tok: Any = None
        self._lock = threading.Lock()

    def render(self, method: str, examples: list[Any]) -> list[dict[str, str]] | None:
        if not self.model or not examples:
            return None
        try:
            from train.dataset import as_rows, render_dpo, render_sft
            from train.trainer import load_tokenizer
        except ImportError as exc:
            raise DatasetUnavailable(
                f"rendering with --model {self.model} needs the train extra ({exc}); pip install 'kaelum[train]', "
                "or start `kaelum ui` without --model to see the messages and completions"
            ) from None
        with self._lock:
            if self._tok is None:
                self._tok = load_tokenizer(self.model)
        step = render_dpo(self._tok) if method == "dpo" else render_sft(self._tok)
        keys = ("prompt_text", "chosen_text", "rejected_text") if method == "dpo" else ("prompt_text", "completion_text")
        return [{k: r[k] for k in keys} for r in step(as_rows(examples))]


class WhereRunner:
    """The page's `--where` child (``train.where.WhereWorker``), started on first use and kept, so that
    a count with a predicate does not start Python again (that was most of the page's 0.8 s at 1M
    traces). ``close()`` stops it."""

    def __init__(self) -> None:
        self._worker: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._worker is None:
                from train.where import WhereWorker

                self._worker = WhereWorker()
            return self._worker

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.close()
                self._worker = None


class _Notes(logging.Handler):
    """Collects the warnings `check_counts` logs (e.g. fewer examples than the guide recommends)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _example_text(method: str, ex: Any) -> dict[str, Any]:
    base = {"trace_id": ex.trace_id, "domain": ex.domain, "messages": ex.messages()}
    if method == "dpo":
        return {**base, "branch_node_id": ex.branch_node_id, "prefix": ex.prefix(), "chosen": ex.chosen(), "rejected": ex.rejected(),
                "chosen_value": ex.chosen_value, "rejected_value": ex.rejected_value}
    return {**base, "reward": ex.reward, "completion": ex.completion()}


def select(cur: Any, q: DatasetQuery, store: str, renderer: Renderer, wheres: WhereRunner | None = None) -> dict[str, Any]:
    """Counts after each filter, the examples per domain, the first `q.examples` rendered, the command.

    A `--where` predicate runs in `wheres`' child when given, else in a child of its own."""
    try:
        from train.data import DataError, check_stage_counts, count_selection
        from train.where import WhereError, check_where
    except ImportError as exc:
        raise DatasetUnavailable(f"the dataset page needs kaelum's train package and its data dependencies ({exc}); pip install 'kaelum[train]'") from None
    if q.where:
        try:
            check_where(q.where)
        except WhereError as exc:
            raise BadRequest(str(exc)) from None
    # The trainer's selection, counted in SQL; only the examples shown are read whole.
    with time_limit(cur, READ_LIMIT_S, "counting the selection"), one_snapshot(cur):
        try:
            sel = count_selection(cur, method=q.method, domain=q.domain, min_reward=q.min_reward, where=q.where, limit=q.examples,
                                  where_worker=wheres.get() if wheres is not None and q.where else None)
        except (DataError, WhereError) as exc:
            raise BadRequest(str(exc)) from None
    problem = None
    notes = _Notes()
    data_log = logging.getLogger("kaelum.train.data")
    data_log.addHandler(notes)
    try:
        check_stage_counts(sel.stages, sel.per_domain, sel.view)  # the trainer's own verdict: an error when empty, warnings when few
    except DataError as exc:
        problem = str(exc)
    finally:
        data_log.removeHandler(notes)
    shown = sel.examples
    rendered = renderer.render(q.method, shown)
    examples = [_example_text(q.method, ex) for ex in shown]
    if rendered is not None:
        for ex, r in zip(examples, rendered):
            ex["rendered"] = r
    return jsonable(
        {
            "view": sel.view,
            "method": q.method,
            "stages": [{"filter": name, "count": n} for name, n in sel.stages],
            "per_domain": sel.per_domain,
            "selected": sel.selected,
            "problem": problem,
            "warnings": notes.messages,
            "examples": examples,
            "rendered_with": renderer.model if rendered is not None else None,
            "command": q.command(store, renderer.model),
        }
    )
