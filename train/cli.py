"""`kaelum-train`: a thin click layer over `train.api.train`."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from kaelum.events import DOMAINS

from .config import ConfigError, DataArgs, LoraArgs, TrainArgs


def _fmt_stats(s: dict[str, Any]) -> str:
    if not s.get("count"):
        return "none"
    return f"min {s['min']}  mean {s['mean']}  p50 {s['p50']}  p95 {s['p95']}  max {s['max']}"


def _print_dry_run(d: Any) -> None:
    click.echo("Selection:")
    for name, n in d.stages:
        click.echo(f"  {n:>7}  {name}")
    click.echo("Examples per domain:")
    for dom, n in d.per_domain.items():
        click.echo(f"  {dom:<10} {n}")
    click.echo("Dataset steps: " + " → ".join(f"{name} {n}" for name, n in d.pipeline))
    click.echo(f"Prompt tokens:     {_fmt_stats(d.prompt_tokens)}")
    click.echo(f"Completion tokens: {_fmt_stats(d.completion_tokens)}")
    click.echo(f"Total tokens:      {_fmt_stats(d.total_tokens)}")
    click.echo(f"Truncated to --max-seq-len: {d.truncated}")
    for i, s in enumerate(d.samples, 1):
        click.echo(f"--- example {i} (rendered) ---")
        click.echo(s)
    click.echo("Dry run: nothing was trained.")


def _print_summary(r: Any) -> None:
    m = r.metrics
    click.echo("")
    click.echo(f"Trained {r.train_examples} examples ({r.eval_examples} held out for eval_loss), {r.global_step} optimizer steps"
               + (f", resumed from {r.resumed_from}" if r.resumed_from else ""))
    for key in ("first_logged_loss", "last_logged_loss", "train_loss", "eval_loss", "tokens_per_s", "train_runtime_s"):
        if m.get(key) is not None:
            v = m[key]
            click.echo(f"  {key:<18} {v:.4f}" if isinstance(v, float) else f"  {key:<18} {v}")
    click.echo(f"Model written to {r.output_dir} — serve it with Settings(MATH_WORKER_MODEL={r.output_dir!r}) (or the worker of its domain)")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--model", default="", help="Base model: hub id or local directory (a Kaelum adapter directory continues from it).")
@click.option("--domain", type=click.Choice(DOMAINS), default=None, help="Train on one domain only (default: all).")
@click.option("--log-dir", default=None, type=click.Path(file_okay=False), help="Ingest these logs into --store first (same as kaelum-ingest --once).")
@click.option("--output-dir", default="./finetuned_models", show_default=True, help="Where the adapter, checkpoints and manifest go.")
@click.option("--epochs", default=3.0, show_default=True, type=float)
@click.option("--batch-size", default=4, show_default=True, type=int, help="Batch size per device.")
@click.option("--lr", default=2e-5, show_default=True, type=float, help="Learning rate.")
@click.option("--min-reward", default=0.7, show_default=True, type=float, help="Minimum (effective) reward of a training example.")
@click.option("--store", default="./store", show_default=True, help="The trace store to read training_examples from.")
@click.option("--as-of", default=None, help="Train on the store as it was: an events table version, events=N,quarantine=M "
              "(what kaelum_manifest.json records), or an RFC 3339 timestamp.")
@click.option("--where", default=None, help="SQL predicate over training_examples (preference_pairs with --method dpo), e.g. \"reward > 0.9\".")
@click.option("--include-unchecked", is_flag=True, help="Also train on traces verified only by agreement, a judge or a clean run "
              "(verified_by consistency/judge/runs); by default only checked answers (reference, computed, tests, formal, constraints).")
@click.option("--grad-accum", default=1, show_default=True, type=int, help="Gradient accumulation steps.")
@click.option("--max-seq-len", default=1024, show_default=True, type=int)
@click.option("--eval-split", default=0.1, show_default=True, type=float, help="Fraction of examples held out for eval_loss.")
@click.option("--lora", "adapter", flag_value="lora", default=True, help="LoRA adapter on all linear layers (default).")
@click.option("--qlora", "adapter", flag_value="qlora", help="LoRA on a 4-bit base model (needs a CUDA GPU).")
@click.option("--full", "adapter", flag_value="full", help="Train every weight.")
@click.option("--lora-r", default=16, show_default=True, type=int, help="LoRA rank.")
@click.option("--lora-alpha", default=32, show_default=True, type=int, help="LoRA alpha.")
@click.option("--lora-dropout", default=0.05, show_default=True, type=float)
@click.option("--lora-targets", default="all-linear", show_default=True, help="Comma-separated module names, or all-linear.")
@click.option("--method", type=click.Choice(["sft", "dpo", "grpo"]), default="sft", show_default=True,
              help="dpo reads preference_pairs; grpo samples completions for the queries of the store's traces and rewards them with the domain verifier.")
@click.option("--dpo-beta", default=0.1, show_default=True, type=float)
@click.option("--grpo-generations", default=4, show_default=True, type=int, help="--method grpo: completions per query (the group).")
@click.option("--grpo-max-completion-length", default=128, show_default=True, type=int, help="--method grpo: tokens per completion.")
@click.option("--grpo-temperature", default=1.0, show_default=True, type=float, help="--method grpo: sampling temperature.")
@click.option("--grpo-beta", default=0.0, show_default=True, type=float, help="--method grpo: KL penalty towards the starting model.")
@click.option("--grpo-max-steps", default=None, type=int, help="--method grpo: optimizer steps (default: --epochs over the queries).")
@click.option("--packing", is_flag=True, help="Pack examples into --max-seq-len rows (no attention across examples).")
@click.option("--gradient-checkpointing", is_flag=True, help="Trade compute for memory.")
@click.option("--save-steps", default=None, type=int, help="Checkpoint (and evaluate) every N steps (default: every epoch).")
@click.option("--save-total-limit", default=2, show_default=True, type=int)
@click.option("--logging-steps", default=10, show_default=True, type=int)
@click.option("--warmup-ratio", default=0.0, show_default=True, type=float)
@click.option("--weight-decay", default=0.0, show_default=True, type=float)
@click.option("--lr-scheduler", default="linear", show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --output-dir.")
@click.option("--merge", is_flag=True, help="Write a merged full model instead of the adapter.")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--bf16/--no-bf16", default=None, help="bfloat16 training (default: where the GPU supports it).")
@click.option("--progress/--no-progress", default=True, help="Progress bars.")
@click.option("--dry-run", is_flag=True, help="Print counts per domain, token-length statistics and two rendered examples; train nothing.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(**kw: Any) -> None:
    """Fine-tune a worker model on the verified, high-reward traces in the store.

    Examples are rendered with the worker's own prompt and the model's chat template; the loss
    covers the assistant's completion only. The output directory holds the adapter, tokenizer,
    trainer_state.json (with eval_loss), checkpoints and kaelum_manifest.json.

    Example:

    \b
        kaelum-train --model HuggingFaceTB/SmolLM2-135M-Instruct --domain math --log-dir ./logs --output-dir ./finetuned_math --min-reward 0.8 --where "reward > 0.9"
    """
    logging.basicConfig(level=logging.DEBUG if kw.pop("verbose") else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from kaelum.quiet import quiet_third_party

    quiet_third_party()
    args = TrainArgs(
        model=kw["model"],
        output_dir=kw["output_dir"],
        data=DataArgs(
            store=kw["store"],
            log_dir=kw["log_dir"],
            domain=kw["domain"],
            min_reward=kw["min_reward"],
            where=kw["where"],
            include_unchecked=kw["include_unchecked"],
            max_seq_len=kw["max_seq_len"],
            eval_split=kw["eval_split"],
            packing=kw["packing"],
            as_of=kw["as_of"],
        ),
        lora=LoraArgs(r=kw["lora_r"], alpha=kw["lora_alpha"], dropout=kw["lora_dropout"], targets=kw["lora_targets"]),
        adapter=kw["adapter"],
        method=kw["method"],
        epochs=kw["epochs"],
        batch_size=kw["batch_size"],
        grad_accum=kw["grad_accum"],
        lr=kw["lr"],
        weight_decay=kw["weight_decay"],
        warmup_ratio=kw["warmup_ratio"],
        lr_scheduler=kw["lr_scheduler"],
        dpo_beta=kw["dpo_beta"],
        grpo_num_generations=kw["grpo_generations"],
        grpo_max_completion_length=kw["grpo_max_completion_length"],
        grpo_temperature=kw["grpo_temperature"],
        grpo_beta=kw["grpo_beta"],
        grpo_max_steps=kw["grpo_max_steps"],
        gradient_checkpointing=kw["gradient_checkpointing"],
        save_steps=kw["save_steps"],
        save_total_limit=kw["save_total_limit"],
        logging_steps=kw["logging_steps"],
        resume=kw["resume"],
        seed=kw["seed"],
        merge=kw["merge"],
        dry_run=kw["dry_run"],
        bf16=kw["bf16"],
        progress=kw["progress"],
    )
    try:
        args.validate()  # every problem at once, --where included, before anything loads
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    from .api import train
    from .data import DataError
    from .trainer import DryRun, TrainError

    try:
        result = train(args)
    except (DataError, TrainError) as exc:
        raise click.ClickException(str(exc)) from None
    if isinstance(result, DryRun):
        _print_dry_run(result)
    else:
        _print_summary(result)


if __name__ == "__main__":  # python -m train.cli
    main()
