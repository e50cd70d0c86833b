"""`kaelum improve`: a thin click layer over `train.improve.improve`."""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from kaelum.cliopts import CONTEXT_SETTINGS, progress_option, store_from_env, store_option
from kaelum.events import DOMAINS

from .gate import DEFAULT_ALPHA, DEFAULT_MIN_GAIN


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
@click.option("--domain", type=click.Choice(DOMAINS), required=True)
@click.option("--queries", default=None, type=click.Path(dir_okay=False), help="Queries to collect traces from each round (JSONL). Without it: train on the store's untrained traces.")
@click.option("--held-out", "held_out", required=True, type=click.Path(dir_okay=False), help="Held-out queries (JSONL, with references where known); never trained on.")
@click.option("--rounds", default=1, show_default=True, type=int, help="Rounds in all; rerun with more to continue.")
@click.option("--workdir", required=True, type=click.Path(file_okay=False), help="Where rounds, records, improve.json and the champion link live.")
@click.option("--model", default="default", show_default=True, help="The first champion (default: the embedded model).")
@click.option("--method", type=click.Choice(["sft", "dpo", "grpo"]), default="sft", show_default=True)
@click.option("--min-gain", default=DEFAULT_MIN_GAIN, show_default=True, type=float, help="Points of held-out verified accuracy a candidate must gain.")
@click.option("--alpha", default=DEFAULT_ALPHA, show_default=True, type=float, help="The exact McNemar p-value must be below this.")
@store_option(help="The store the rounds ingest into and train from.", default=store_from_env, shown="$KAELUM_STORE or WORKDIR/store")
@click.option("--epochs", default=4.0, show_default=True, type=float)
@click.option("--lr", default=4e-4, show_default=True, type=float)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--min-reward", default=0.7, show_default=True, type=float)
@click.option("--max-seq-len", default=512, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int, help="Training seed; search seeds derive from it.")
@click.option("--collect-setting", "collect_settings", multiple=True, metavar="KEY=VALUE", help="A Settings field for collection, e.g. LATS_BRANCHING=8 (repeatable).")
@click.option("--eval-setting", "eval_settings", multiple=True, metavar="KEY=VALUE", help="A Settings field for both models' evaluation (repeatable).")
@click.option("--grpo-generations", default=None, type=int, help="--method grpo: completions sampled per query.")
@click.option("--grpo-max-steps", default=None, type=int, help="--method grpo: optimizer steps (default: --epochs over the queries).")
@progress_option()
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
    from .improve import COLLECT_SETTINGS, EVAL_SETTINGS, ImproveArgs, ImproveError, improve as run
    from .trainer import TrainError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = {}
    if kw["grpo_generations"] is not None:
        options["grpo_num_generations"] = kw["grpo_generations"]
    if kw["grpo_max_steps"] is not None:
        options["grpo_max_steps"] = kw["grpo_max_steps"]
    args = ImproveArgs(
        domain=kw["domain"],
        held_out=kw["held_out"],
        workdir=kw["workdir"],
        queries=kw["queries"],
        rounds=kw["rounds"],
        model=kw["model"],
        method=kw["method"],
        min_gain=kw["min_gain"],
        alpha=kw["alpha"],
        store=kw["store"],
        epochs=kw["epochs"],
        lr=kw["lr"],
        batch_size=kw["batch_size"],
        min_reward=kw["min_reward"],
        max_seq_len=kw["max_seq_len"],
        seed=kw["seed"],
        collect_settings=_settings(kw["collect_settings"], "--collect-setting", COLLECT_SETTINGS),
        eval_settings=_settings(kw["eval_settings"], "--eval-setting", EVAL_SETTINGS),
        train_options=options,
        progress=kw["progress"],
    )
    try:
        rounds = run(args, echo=click.echo)
    except (ImproveError, ConfigError, TrainError) as exc:
        raise click.ClickException(str(exc)) from None
    promoted = sum(1 for r in rounds if r["decision"] == "promoted")
    click.echo(f"{len(rounds)} rounds, {promoted} promoted; record {args.workdir}/improve.json, plot {args.workdir}/improve.png; "
               f"champion {args.workdir}/champion (serve it with KAELUM_{args.domain.upper()}_WORKER_MODEL={args.workdir}/champion)")
