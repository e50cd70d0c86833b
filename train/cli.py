"""`kaelum-train`: a thin click layer over `train.api.train`; its options are `TrainArgs`'s fields."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from kaelum.cliopts import CONTEXT_SETTINGS, dataclass_options, log_level, pop_dataclass, verbosity_option

from .config import ConfigError, TrainArgs


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


@click.command(context_settings=CONTEXT_SETTINGS)
@dataclass_options(TrainArgs)
@verbosity_option(help="More logging (-v debug).")
def main(verbose: int, **kw: Any) -> None:
    """Fine-tune a worker model on the verified, high-reward traces in the store.

    Examples are rendered with the worker's own prompt and the model's chat template; the loss
    covers the assistant's completion only. The output directory holds the adapter, tokenizer,
    trainer_state.json (with eval_loss), checkpoints and kaelum_manifest.json.

    Example:

    \b
        kaelum-train --model HuggingFaceTB/SmolLM2-135M-Instruct --domain math --log-dir ./logs --output-dir ./finetuned_math --min-reward 0.8 --where "reward > 0.9"
    """
    logging.basicConfig(level=log_level(verbose, base=logging.INFO), format="%(levelname)s %(name)s: %(message)s")
    from kaelum.quiet import quiet_third_party

    quiet_third_party()
    args = pop_dataclass(TrainArgs, kw)
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
