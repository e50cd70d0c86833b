"""`kaelum-eval`: compare worker models on held-out queries through the runtime."""

from __future__ import annotations

import logging
from typing import Any

import click

from kaelum.cliopts import CONTEXT_SETTINGS, log_dir_option, progress_option, store_option
from kaelum.quiet import quiet_third_party

from .data import DataError
from .evaluate import EvalError, evaluate, format_answers, format_table, load_eval_queries, queries_from_store, trained_trace_ids, write_csv, write_plot
from .where import WhereError, check_where


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--model", "models", multiple=True, required=True, help="A model spec or directory; repeat to compare (first = baseline).")
@click.option("--queries", default=None, type=click.Path(dir_okay=False), help="Held-out queries, JSONL: {\"query\", \"domain\"?, \"tests\"?, \"reference\"?} (\"question\"/\"answer\" too: GSM8K as it is).")
@click.option("--where", default=None, help="Instead of --queries: a predicate over the store's training_examples for held-out traces.")
@store_option(help="The store --where reads.")
@click.option("--limit", default=None, type=int, help="Evaluate on the first N queries only.")
@click.option("--simulations", default=None, type=int, help="LATS_SIMULATIONS for every model (default: Settings).")
@click.option("--temperature", default=None, type=float, help="TEMPERATURE for every model (default: Settings).")
@click.option("--seed", default=None, type=int, help="SEED for every model, for reproducible searches.")
@log_dir_option("Also log the evaluation traces (tagged 'eval') here.")
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False), help="Write each query's answer, verdict and reward per model as CSV.")
@click.option("--show", is_flag=True, help="Also print each query's answer per model, ✓ verified / ✗ not.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write a bar chart PNG.")
@progress_option()
def main(models: tuple[str, ...], queries: str | None, where: str | None, store: str, limit: int | None, simulations: int | None,
         temperature: float | None, seed: int | None, log_dir: str | None, csv_path: str | None, show: bool, plot: str | None, progress: bool) -> None:
    """Run each model through the runtime on held-out queries; print verified and checked accuracy
    (checked: by a reference, a computed value, tests, ... not by agreement), mean reward and tokens
    per query side by side (--show: each query's answers; --csv: each query's answer, verdict and
    reward per model). Loading a model once is timed apart from answering.

    Example:

    \b
        kaelum-eval --model default --model ./finetuned_math --queries examples/held_out.jsonl --show --csv eval.csv --plot eval.png
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party()
    if (queries is None) == (where is None):
        raise click.ClickException("give exactly one of --queries FILE or --where PREDICATE")
    if limit is not None and limit < 1:
        raise click.ClickException(f"--limit must be at least 1, got {limit}")
    try:
        if queries is not None:
            qs = load_eval_queries(queries)
        else:
            check_where(where or "")
            exclude = [t for m in models for t in trained_trace_ids(m)]
            qs = queries_from_store(store, where or "", exclude)
        if limit:
            qs = qs[:limit]
        overrides: dict[str, Any] = {}
        if simulations is not None:
            overrides["LATS_SIMULATIONS"] = simulations
        if temperature is not None:
            overrides["TEMPERATURE"] = temperature
        if seed is not None:
            overrides["SEED"] = seed
        scores = evaluate(list(models), qs, overrides, log_dir=log_dir, progress=progress)
        if show:
            click.echo(format_answers(scores) + "\n")
        click.echo(format_table(scores))
        if csv_path:
            write_csv(scores, csv_path)
            click.echo(f"wrote {csv_path}")
        if plot:
            write_plot(scores, plot)
            click.echo(f"wrote {plot}")
    except (EvalError, WhereError, DataError) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":  # python -m train.eval_cli
    main()
