"""The programmatic API of the seed guide, plus `train(args)` that the CLI calls.

    from train import collect_traces, filter_high_quality, prepare_dataset, finetune_worker

    traces = collect_traces("./logs")                      # ingests ./logs into ./store, reads training_examples
    high_quality = filter_high_quality(traces, min_reward=0.8)
    math_traces = [t for t in high_quality if t.domain == "math" and t.reward > 0.9]
    finetune_worker(model_name="HuggingFaceTB/SmolLM2-135M-Instruct", domain="math",
                    output_dir="./specialized_math_model", min_reward=0.9, epochs=5)
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence, cast

from .config import ConfigError, DataArgs, LoraArgs, TrainArgs
from .data import DataError, Selection, Trace, check_counts, select_examples
from .trainer import DryRun, TrainResult, build_rows, dry_run, load_tokenizer, run_training
from .where import check_where

log = logging.getLogger("kaelum.train")

DEFAULT_STORE = "./store"


def ingest_logs(log_dir: str, store: str, progress: bool = True) -> Any:
    """Ingest `log_dir` into `store` with the same code as `kaelum-ingest --once`."""
    import os

    from ingest import ingest_once

    if not os.path.isdir(log_dir):
        raise DataError(
            f"--log-dir {log_dir} does not exist; point it at the folder the orchestrator logs to "
            "(Orchestrator(enable_logging=True, log_dir=...)), or leave it out to train on what --store holds"
        )
    log.info("ingesting %s into %s", log_dir, store)
    return ingest_once(log_dir, store, progress=progress)


def collect_traces(log_dir: str | None = None, store: str = DEFAULT_STORE, domain: str | None = None,
                   include_unchecked: bool = False) -> list[Trace]:
    """Complete traces verified by a checked method from the store (after ingesting `log_dir` into it, if given);
    `include_unchecked` adds those only agreed on, judged or run (`Trace.verified_by` says which).

    Each trace exposes `.trace_id`, `.domain`, `.query`, `.steps`, `.final_answer`, `.reward`, `.verified`.
    """
    if log_dir is not None:
        ingest_logs(log_dir, store)
    sel = select_examples(store, domain=domain, min_reward=None, where=None, include_unchecked=include_unchecked)
    return list(sel.examples)


def filter_high_quality(traces: Iterable[Trace], min_reward: float = 0.7) -> list[Trace]:
    """Verified traces whose reward is at least `min_reward` (the guide's default 0.7)."""
    if not 0.0 <= min_reward <= 1.0:
        raise ValueError(f"min_reward must be in [0, 1], got {min_reward}")
    return [t for t in traces if t.verified and t.reward >= min_reward]


def prepare_dataset(traces: Sequence[Trace], model_name: str, max_seq_len: int = 1024, packing: bool = False) -> list[dict]:
    """Tokenized rows (`input_ids`, `labels` with -100 on the prompt[, `position_ids` when packed])
    rendered with `model_name`'s chat template, exactly as `finetune_worker` trains on them."""
    args = TrainArgs(model=model_name, data=DataArgs(max_seq_len=max_seq_len, packing=packing)).validate()
    rows, _ = build_rows(list(traces), load_tokenizer(model_name), args, packing=packing)
    return [{k: v for k, v in r.items() if k in ("trace_id", "input_ids", "labels", "position_ids")} for r in rows]


def finetune_worker(
    model_name: str,
    domain: str | None = None,
    output_dir: str = "./finetuned_models",
    min_reward: float = 0.7,
    epochs: float = 3,
    batch_size: int = 4,
    lr: float = 2e-5,
    log_dir: str | None = None,
    store: str = DEFAULT_STORE,
    where: str | None = None,
    traces: Sequence[Trace] | None = None,
    **options: Any,
) -> TrainResult:
    """Fine-tune a worker for `domain` on the store's high-quality traces and write `output_dir`.

    `traces` trains on exactly those traces (e.g. a custom filter of `collect_traces`) instead of
    selecting from the store. Further `TrainArgs` fields (grad_accum, adapter, method, packing,
    resume, seed, ...) and `LoraArgs` fields as `lora_r`, `lora_alpha` pass through `options`.
    """
    if options.get("dry_run"):
        # Refused before anything is ingested or loaded: this function's result is a trained model.
        raise ConfigError([
            "dry_run: finetune_worker always trains; for a dry run call train.train(TrainArgs(..., dry_run=True)) "
            "or run `kaelum-train --dry-run`"
        ])
    lora = LoraArgs(**{k[5:]: options.pop(k) for k in list(options) if k.startswith("lora_")})
    data = DataArgs(
        store=store,
        log_dir=log_dir,
        domain=domain,
        min_reward=min_reward,
        where=where,
        **{k: options.pop(k) for k in list(options) if k in ("max_seq_len", "eval_split", "packing", "include_unchecked")},
    )
    args = TrainArgs(model=model_name, output_dir=output_dir, data=data, lora=lora, epochs=epochs, batch_size=batch_size, lr=lr, **options)
    if traces is not None:
        args.validate()
        chosen = [t for t in traces if (domain is None or t.domain == domain)]
        sel = Selection(examples=chosen, stages=[("traces passed in", len(traces)), (f"domain {domain}", len(chosen))])
        check_counts(sel)
        return run_training(args, sel)
    return cast(TrainResult, train(args))  # a TrainResult: dry_run was refused above


def train(args: TrainArgs) -> TrainResult | DryRun:
    """Validate, check --where, ingest --log-dir, select from the store, then train (or dry-run)."""
    args.validate()
    if args.data.where:
        check_where(args.data.where)  # refused before the store or a model is touched
    if args.data.log_dir:
        ingest_logs(args.data.log_dir, args.data.store, progress=args.progress)
    sel = select_examples(
        args.data.store,
        method=args.method,
        domain=args.data.domain,
        min_reward=args.data.min_reward,
        where=args.data.where,
        include_unchecked=args.data.include_unchecked,
        as_of=args.data.as_of,
    )
    if args.dry_run:
        return dry_run(args, sel)
    return run_training(args, sel)


__all__ = [
    "DataError",
    "collect_traces",
    "filter_high_quality",
    "finetune_worker",
    "ingest_logs",
    "prepare_dataset",
    "train",
]
