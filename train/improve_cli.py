"""`kaelum improve`: a thin click layer over `train.improve.improve`; most options are `ImproveArgs`'s fields."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import click

from kaelum.cliopts import CONTEXT_SETTINGS, dataclass_options, pop_dataclass

from .improve import ImproveArgs


def _settings(pairs: tuple[str, ...], flag: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """KEY=VALUE pairs over `defaults`; a value is JSON when it parses as JSON (3, 0.7, false), else a string."""
    from kaelum.config import Settings

    out = dict(defaults)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().upper()
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=flag)
        if key not in Settings.model_fields:
            raise click.BadParameter(f"{key} is not a Settings field (see docs/runtime.md)", param_hint=flag)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@click.command(context_settings=CONTEXT_SETTINGS)
@dataclass_options(ImproveArgs)
@click.option("--collect-setting", "collect_settings", multiple=True, metavar="KEY=VALUE", help="A Settings field for collection, e.g. LATS_BRANCHING=8 (repeatable).")
@click.option("--eval-setting", "eval_settings", multiple=True, metavar="KEY=VALUE", help="A Settings field for both models' evaluation (repeatable).")
@click.option("--grpo-generations", default=None, type=int, help="--method grpo: completions sampled per query.")
@click.option("--grpo-max-steps", default=None, type=int, help="--method grpo: optimizer steps (default: --epochs over the queries).")
def improve(**kw: Any) -> None:
    """Gated rounds that keep a worker getting better: collect with the champion, ingest, train a
    candidate, evaluate both on held-out queries (same search settings and seeds, exact McNemar
    test), and promote the candidate only if it gains at least --min-gain points with p < --alpha.
    Kill it at any point and rerun the same command: it continues where it stopped.

    Example:

    \b
        kaelum improve --domain math --queries train.jsonl --held-out held.jsonl --rounds 3 --workdir ./improve
        KAELUM_MATH_WORKER_MODEL=./improve/champion kaelum run --queries more.jsonl
    """
    from .config import ConfigError
    from .improve import COLLECT_SETTINGS, EVAL_SETTINGS, ImproveError, improve as run
    from .trainer import TrainError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = {}
    if kw["grpo_generations"] is not None:
        options["grpo_num_generations"] = kw["grpo_generations"]
    if kw["grpo_max_steps"] is not None:
        options["grpo_max_steps"] = kw["grpo_max_steps"]
    collect = _settings(kw.pop("collect_settings"), "--collect-setting", COLLECT_SETTINGS)
    evaluate = _settings(kw.pop("eval_settings"), "--eval-setting", EVAL_SETTINGS)
    args = dataclasses.replace(pop_dataclass(ImproveArgs, kw), collect_settings=collect, eval_settings=evaluate, train_options=options)
    try:
        rounds = run(args, echo=click.echo)
    except (ImproveError, ConfigError, TrainError) as exc:
        raise click.ClickException(str(exc)) from None
    promoted = sum(1 for r in rounds if r["decision"] == "promoted")
    click.echo(f"{len(rounds)} rounds, {promoted} promoted; record {args.workdir}/improve.json, plot {args.workdir}/improve.png; "
               f"champion {args.workdir}/champion (serve it with KAELUM_{args.domain.upper()}_WORKER_MODEL={args.workdir}/champion)")
