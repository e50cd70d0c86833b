"""`kaelum-sql export`: the store's training data as files other trainers read (TRL, Axolotl, OpenAI).

The rows are the ones `kaelum-train` selects by default — `training_examples` with a minimum
reward (0.7) for SFT, `preference_pairs` for DPO, optionally one domain — and they are rendered
with the same `kaelum.prompts` functions `kaelum-train` uses, as chat messages, so that a trainer
applying the model's chat template sees the same prompt and the same assistant text:

- ``trl-sft``: ``{"prompt": [system, user], "completion": [assistant]}`` (TRL's conversational
  prompt-completion format: the loss is on the completion only, as with ``kaelum-train``);
- ``openai-chat``: ``{"messages": [system, user, assistant]}`` (OpenAI fine-tuning, Axolotl
  ``chat_template``);
- ``trl-dpo``: ``{"prompt": [system, user], "chosen": [assistant], "rejected": [assistant]}``. The
  partial path both branches share is written at the start of both assistant messages: DPO's loss
  depends only on the difference of the two log-ratios, in which that shared prefix cancels, so
  this is the objective ``kaelum-train --method dpo`` optimises with the prefix in the prompt.

Each line also carries ``trace_id`` and ``domain`` (trainers ignore extra columns) so an exported
example can be traced back to its events.
"""

from __future__ import annotations

import json
from typing import IO, Any, Iterator

import duckdb

from kaelum.prompts import format_completion, format_continuation, format_partial, worker_messages

EXPORT_FORMATS = ("trl-sft", "trl-dpo", "openai-chat")
DEFAULT_MIN_REWARD = 0.7  # kaelum-train's --min-reward default


class ExportError(ValueError):
    """Nothing to export, or a bad option; the message names the fix."""


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> Iterator[dict[str, Any]]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    while batch := cur.fetchmany(1024):
        for r in batch:
            yield dict(zip(cols, r))


def export_records(con: duckdb.DuckDBPyConnection, fmt: str, *, domain: str | None = None, min_reward: float | None = DEFAULT_MIN_REWARD) -> Iterator[dict[str, Any]]:
    """The records of `fmt` from the store behind `con`, in trace order."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    where, params = [], []
    if domain is not None:
        where.append("domain = ?")
        params.append(domain)
    if fmt == "trl-dpo":
        sql = "select * from preference_pairs" + (" where " + " and ".join(where) if where else "") + " order by trace_id, branch_node_id"
        for r in _rows(con, sql, params):
            prompt_steps = tuple(r.get("prompt_steps") or ())
            prefix = format_partial(prompt_steps)
            yield {
                "prompt": worker_messages(r["domain"], r["query"]),
                "chosen": [{"role": "assistant", "content": prefix + format_continuation(prompt_steps, r.get("chosen_steps") or (), r.get("chosen_answer") or "")}],
                "rejected": [{"role": "assistant", "content": prefix + format_continuation(prompt_steps, r.get("rejected_steps") or (), r.get("rejected_answer") or "")}],
                "trace_id": r["trace_id"],
                "domain": r["domain"],
            }
        return
    if min_reward is not None:
        where.append("reward >= ?")
        params.append(min_reward)
    sql = "select * from training_examples" + (" where " + " and ".join(where) if where else "") + " order by trace_id"
    for r in _rows(con, sql, params):
        messages = worker_messages(r["domain"], r["query"])
        answer = {"role": "assistant", "content": format_completion(tuple(r.get("steps") or ()), r.get("final_answer") or "")}
        if fmt == "trl-sft":
            yield {"prompt": messages, "completion": [answer], "trace_id": r["trace_id"], "domain": r["domain"]}
        else:
            yield {"messages": messages + [answer], "trace_id": r["trace_id"], "domain": r["domain"]}


def write_export(con: duckdb.DuckDBPyConnection, fmt: str, out: IO[str], *, domain: str | None = None, min_reward: float | None = DEFAULT_MIN_REWARD) -> int:
    """Write `fmt` as JSON lines to `out`; the number of records. ExportError when there are none."""
    n = 0
    for record in export_records(con, fmt, domain=domain, min_reward=min_reward):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        n += 1
    if n == 0:
        view = "preference_pairs" if fmt == "trl-dpo" else "training_examples"
        filters = ", ".join(f for f in (domain and f"--domain {domain}", fmt != "trl-dpo" and min_reward is not None and f"--min-reward {min_reward}") if f)
        raise ExportError(f"nothing to export: {view} has no rows" + (f" with {filters}" if filters else "") + " — ingest more traces or relax the filters")
    return n
