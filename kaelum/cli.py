"""`kaelum`: ask one question, run a file of queries, manage the embedded model.

A thin layer over `kaelum.Orchestrator`: commands parse flags, build Settings, call the library,
and turn library errors into messages that say what to do.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import time
from typing import Any, Callable

import click
from pydantic import ValidationError

from .cliopts import log_dir_option, log_level, verbosity_option
from .config import Settings
from .quiet import quiet_third_party
from .events import DOMAINS

log = logging.getLogger("kaelum.cli")

# Sub-command groups that live in other modules, imported when used so that `kaelum --help`
# stays fast and a missing optional part does not break the other commands.
LAZY_COMMANDS = {"models": ("kaelum.models_cli", "models")}
LAZY_COMMANDS["ui"] = ("ui.cli", "ui")  # the local trace explorer (needs the ui extra)
LAZY_COMMANDS["improve"] = ("train.improve_cli", "improve")  # gated rounds of collect/ingest/train/evaluate/promote (needs the train extra)


def _lazy(name: str) -> click.Command | None:
    module, attr = LAZY_COMMANDS[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise  # the module exists but something it needs is missing: say so
        return None


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {n for n in LAZY_COMMANDS if _lazy(n) is not None})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            return _lazy(name)
        return super().get_command(ctx, name)


@click.group(cls=_Group)
@verbosity_option()
@click.version_option(package_name="kaelum")
def main(verbose: int) -> None:
    """Kaelum: LATS reasoning with verified answers, logged as traces to fine-tune the workers.

    Example: kaelum run --queries examples/math.jsonl --log-dir ./logs
    """
    logging.basicConfig(level=log_level(verbose), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_third_party()


def search_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags shared by `ask` and `run`: they override the matching Settings fields."""

    @click.option("--model", "model", default=None, help="Worker model for every domain (server model name, model dir, .gguf, HF id, or 'default').")
    @click.option("--base-url", default=None, help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (Settings OPENAI_BASE_URL).")
    @click.option("--simulations", type=int, default=None, help="LATS simulations per query (Settings LATS_SIMULATIONS).")
    @click.option("--branching", type=int, default=None, help="Children sampled per expansion (Settings LATS_BRANCHING).")
    @click.option("--max-llm-calls", type=int, default=None, help="LLM call budget per query (Settings LATS_MAX_LLM_CALLS).")
    @click.option("--seed", type=int, default=None, help="Seed for a reproducible search (Settings SEED).")
    @functools.wraps(fn)
    def wrapper(*args: Any, model: str | None, base_url: str | None, simulations: int | None, branching: int | None, max_llm_calls: int | None, seed: int | None, **kw: Any) -> Any:
        overrides = {
            "DEFAULT_WORKER_MODEL": model,
            "OPENAI_BASE_URL": base_url,
            "LATS_SIMULATIONS": simulations,
            "LATS_BRANCHING": branching,
            "LATS_MAX_LLM_CALLS": max_llm_calls,
            "SEED": seed,
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if model is not None:
            # --model means "this model for everything", even where a domain has its own setting.
            overrides.update({f: model for f in ("MATH_WORKER_MODEL", "CODE_WORKER_MODEL", "LOGIC_WORKER_MODEL", "FACTUAL_WORKER_MODEL", "CREATIVE_WORKER_MODEL", "ANALYSIS_WORKER_MODEL")})
        return fn(*args, settings_overrides=overrides, **kw)

    return wrapper


def _settings(overrides: dict[str, Any]) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'Settings'}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"invalid settings ({problems}); fix the flag or the KAELUM_* variable / .env entry") from exc


def _orchestrator(ctx: click.Context, settings: Settings, log_dir: str | None) -> Any:
    """The Orchestrator for a command. Tests hand in a factory through `ctx.obj`."""
    factory = (ctx.obj or {}).get("orchestrator_factory") if isinstance(ctx.obj, dict) else None
    if factory is not None:
        return factory(settings=settings, enable_logging=log_dir is not None, log_dir=log_dir)
    from .orchestrator import Orchestrator

    return Orchestrator(settings=settings, enable_logging=log_dir is not None, log_dir=log_dir)


def _reference_option(value: str | None) -> Any:
    """`--reference` as given (a GSM8K answer: its '#### ' line); a JSON list (the code domain's
    input/output cases) as the list, checked."""
    if value is None:
        return None
    if not value.strip().startswith("["):
        from .queries import gsm8k_final_answer

        return gsm8k_final_answer(value)[0]
    from .domains.code import reference_tests

    try:
        cases = json.loads(value)
        reference_tests(cases)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--reference") from None
    return cases


def _how(result: Any) -> str:
    """' (by reference)' / ' (by consistency: unchecked)': how the final verdict was reached."""
    from .domains.base import CHECKED_METHODS

    method = getattr(result, "verified_by", None)
    if method is None:
        return ""
    return f" (by {method}{'' if method in CHECKED_METHODS else ': unchecked'})"


def render_tree(result: Any) -> Any:
    """A rich Tree of the search: value and visits per node; the chosen path in bold."""
    from rich.markup import escape
    from rich.tree import Tree

    best = set(result.best_path)

    def label(node: Any) -> str:
        text = node.thought if len(node.thought) <= 100 else node.thought[:97] + "..."
        stats = f"[dim](v={node.value:.2f} n={node.visits})[/dim]"
        mark = ""
        if node.terminal:
            ok = node.verdict is not None and node.verdict.passed
            mark = f" [{'green' if ok else 'red'}]{'✓' if ok else '✗'} answer: {escape(str(node.answer))}[/]"
        if node.pruned:
            mark += " [dim]pruned[/dim]"
        line = f"{escape(node.id)} {escape(text)}{mark} {stats}"
        return f"[bold]{line}[/bold]" if node.id in best else line

    if result.tree is None:
        return Tree("(no search tree)")
    tree = Tree(label(result.tree))
    stack = [(result.tree, tree)]
    while stack:
        node, branch = stack.pop()
        for child in node.children:
            sub = branch.add(label(child))
            stack.append((child, sub))
    return tree


@main.command()
@click.argument("question")
@click.option("--domain", type=click.Choice(DOMAINS), default=None, help="Skip routing and use this domain.")
@log_dir_option("Where the trace goes (default: Settings LOG_DIR, ./logs).")
@click.option("--no-log", is_flag=True, help="Keep no trace (its id can then not be looked up later).")
@click.option("--test", "tests", multiple=True, help="A test snippet for code questions (repeatable).")
@click.option("--reference", default=None, help="The known right answer (e.g. 85, $1,250.00, yes; code: a JSON list of "
              '{"input", "output"} cases); the answer is checked against it.')
@click.option("--no-tree", is_flag=True, help="Do not print the search tree.")
@search_options
@click.pass_context
def ask(ctx: click.Context, question: str, domain: str | None, log_dir: str | None, no_log: bool, tests: tuple[str, ...],
        reference: str | None, no_tree: bool, settings_overrides: dict[str, Any]) -> None:
    """Answer one QUESTION with LATS; print the answer, whether it verified and how, the reward and the tree.

    The trace is logged to Settings LOG_DIR (./logs) unless --log-dir names another place or
    --no-log is given, so the trace id it prints can be looked up once ingested.

    Example: kaelum ask "Sade has 47 shells and finds 38 more. How many shells does Sade have now?" --reference 85
    """
    from rich.console import Console

    console = Console()
    settings = _settings(settings_overrides)
    if no_log and log_dir is not None:
        raise click.UsageError("--no-log and --log-dir contradict each other; give one")
    log_dir = None if no_log else (log_dir or str(settings.LOG_DIR))
    orch = _orchestrator(ctx, settings, log_dir)
    try:
        result = orch.run(question, domain=domain, tests=list(tests) or None, reference=_reference_option(reference))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        orch.close()
    console.print(f"[bold]domain[/bold]   {result.domain} ({result.route.method}, confidence {result.route.confidence:.2f})")
    console.print(f"[bold]model[/bold]    {result.worker_model}")
    if not no_tree:
        console.print(render_tree(result))
    console.print(f"[bold]answer[/bold]   {result.answer if result.answer is not None else '(none)'}", markup=True, highlight=False)
    console.print(f"[bold]verified[/bold] {'yes' if result.verified else 'no'}{_how(result)}")
    comps = ", ".join(f"{k}={v:.2f}" for k, v in result.reward_components.items())
    console.print(f"[bold]reward[/bold]   {result.reward:.3f}" + (f" ({comps})" if comps else ""))
    u = result.usage
    console.print(f"[dim]status {result.status}; {u['llm_calls']} LLM calls, {u['completion_tokens']} tokens; {result.duration_ms / 1000:.1f} s; trace {result.trace_id}[/dim]")
    if log_dir is not None:
        console.print(f"[dim]trace written to {log_dir}[/dim]")
    if result.status == "error":
        raise click.ClickException(f"the trace ended with an error: {result.error}")


@main.command()
@click.option("--queries", "queries_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help='JSONL, one {"query", "domain"?, "tests"?, "reference"?, "id"?, "tags"?} per line ("question" and '
                   '"answer" accepted too: GSM8K files are read as they are).')
@log_dir_option("Where traces go (default: Settings LOG_DIR, ./logs).")
@click.option("--domain", type=click.Choice(DOMAINS), default=None, help="Domain for queries that name none (default: route each).")
@search_options
@click.pass_context
def run(ctx: click.Context, queries_path: str, log_dir: str | None, domain: str | None, settings_overrides: dict[str, Any]) -> None:
    """Run every query of a JSONL file, logging each trace; print a summary table.

    Exits with status 1 when any trace ended with an error (the traces are still written).

    Example: kaelum run --queries examples/math.jsonl --log-dir ./logs
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .domains.base import CHECKED_METHODS
    from .queries import load_queries

    console = Console()
    settings = _settings(settings_overrides)
    try:
        queries = load_queries(queries_path)
    except ValueError as exc:
        raise click.ClickException(f"{exc}; fix the file and run again") from exc
    log_dir = log_dir or str(settings.LOG_DIR)
    orch = _orchestrator(ctx, settings, log_dir)
    rows = []
    t0 = time.monotonic()
    try:
        # Load the workers first: a first pull or conversion draws its own progress bars, which
        # Rich's live display below would garble (~40 lines of "[A").
        for d in dict.fromkeys([q.get("domain") or domain or "math" for q in queries]):
            orch.llm_for(d)
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("queries", total=len(queries))
            for i, q in enumerate(queries):
                qid = str(q.get("id", i + 1))
                progress.update(task, description=f"query {qid}")
                result = orch.run(q["query"], domain=q.get("domain") or domain, tests=q.get("tests"), tags=q.get("tags") or (),
                                  reference=q.get("reference"))
                rows.append((qid, result))
                progress.advance(task)
    finally:
        orch.close()

    table = Table(title=f"{len(rows)} queries, {time.monotonic() - t0:.0f} s, traces in {log_dir}")
    for col in ("id", "domain", "status", "verified", "by", "reward", "answer", "calls", "tokens", "s"):
        table.add_column(col, justify="right" if col in ("reward", "calls", "tokens", "s") else "left")
    for qid, r in rows:
        answer = "" if r.answer is None else (r.answer if len(r.answer) <= 40 else r.answer[:37] + "...")
        table.add_row(qid, r.domain, r.status, "yes" if r.verified else "no", r.verified_by or "-", f"{r.reward:.2f}", answer, str(r.usage["llm_calls"]), str(r.usage["completion_tokens"]), f"{r.duration_ms / 1000:.1f}")
    console.print(table)
    n_ver = sum(r.verified for _, r in rows)
    n_checked = sum(r.verified and r.verified_by in CHECKED_METHODS for _, r in rows)
    mean_reward = sum(r.reward for _, r in rows) / len(rows)
    console.print(f"verified {n_ver}/{len(rows)} (checked {n_checked}, by agreement or opinion only {n_ver - n_checked}), "
                  f"mean reward {mean_reward:.3f}")
    labelled = [r for q, (_, r) in zip(queries, rows) if q.get("reference") is not None]
    if labelled:
        right = sum(r.verified and r.verified_by == "reference" for r in labelled)
        console.print(f"correct against references: {right}/{len(labelled)} ({100 * right / len(labelled):.1f}%)")
    errors = [(qid, r.error) for qid, r in rows if r.status == "error"]
    if errors:
        raise click.ClickException(f"{len(errors)} of {len(rows)} traces ended with an error (first: query {errors[0][0]}: {errors[0][1]})")


if __name__ == "__main__":  # python -m kaelum.cli
    main()
