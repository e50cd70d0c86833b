"""kaelum-sql: query the trace store with SQL, list its views, compact it, export a views file."""

from __future__ import annotations

import csv
import functools
import io
import json
import sys
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import click
import duckdb

from .export import EXPORT_FORMATS
from .layout import StoreError
from .views import MACROS, PUBLIC_VIEWS, connect, default_store_path, describe_views, write_views_file

FORMATS = ("table", "csv", "json", "parquet")
MAX_CELL = 80  # table cells longer than this are cut with an ellipsis; csv/json/parquet are never cut


def _views_line() -> str:
    return "views: " + ", ".join(PUBLIC_VIEWS) + "; table macros: " + ", ".join(f"{m}(min_reward)" for m in MACROS)


def store_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store",
        "store_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Store folder (default: $KAELUM_STORE or ./store).",
    )(f)


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--output", "-o", type=click.Path(path_type=Path), default=None, help="Write to this file instead of stdout (required for parquet).")(f)
    f = click.option("--format", "-f", "fmt", type=click.Choice(FORMATS), default=None, help="Output format (default: table).")(f)
    return f


def _open(store_path: Path | None) -> duckdb.DuckDBPyConnection:
    try:
        return connect(store_path if store_path is not None else default_store_path())
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


class _SqlGroup(click.Group):
    """A group whose first positional argument is SQL unless it names a subcommand."""

    def resolve_command(self, ctx: click.Context, args: list[str]):  # type: ignore[override]
        if args and self.get_command(ctx, args[0]) is None:
            return "query", self.get_command(ctx, "query"), args
        return super().resolve_command(ctx, args)


@click.group(cls=_SqlGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@store_option
@output_options
@click.pass_context
def main(ctx: click.Context, store_path: Path | None, fmt: str | None, output: Path | None) -> None:
    """Run SQL against the Kaelum trace store and print the result.

    The SQL is the argument, or stdin when there is none. Views: events, traces, nodes,
    trajectories, verified_trajectories, complete_trajectories, high_reward_trajectories,
    training_examples, preference_pairs, quarantine; table macros
    high_reward_trajectories_at(min_reward) and training_examples_at(min_reward).
    Subcommands: views, compact, attach-file.

    Example: kaelum-sql --store ./store "select domain, count(*) from training_examples group by domain"
    """
    ctx.obj = {"store": store_path, "fmt": fmt, "output": output}
    if ctx.invoked_subcommand is None:
        stdin = sys.stdin
        if stdin.isatty():
            click.echo(ctx.get_help())
            ctx.exit(0)
        _run_query(ctx, stdin.read())


@main.command("query", hidden=True)
@click.argument("sql", nargs=-1, required=True)
@click.pass_context
def query_cmd(ctx: click.Context, sql: tuple[str, ...]) -> None:
    """Run SQL (the default command)."""
    _run_query(ctx, " ".join(sql))


def _run_query(ctx: click.Context, sql: str) -> None:
    obj = ctx.obj or {}
    sql = sql.strip().rstrip(";").strip()
    if not sql:
        raise click.ClickException("no SQL given — pass it as an argument or on stdin, e.g. kaelum-sql \"select count(*) from traces\"")
    fmt, output = obj.get("fmt") or "table", obj.get("output")
    if fmt == "parquet" and output is None:
        raise click.ClickException("--format parquet writes a file — add --output FILE.parquet")
    con = _open(obj.get("store"))
    try:
        if fmt == "parquet":
            con.execute(f"COPY ({sql}) TO '{str(output).replace(chr(39), chr(39) * 2)}' (FORMAT parquet, COMPRESSION zstd)")
            n = con.execute(f"SELECT count(*) FROM read_parquet('{str(output).replace(chr(39), chr(39) * 2)}')").fetchone()[0]
            click.echo(f"wrote {n} rows to {output}", err=True)
            return
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description] if cur.description else []
        rows = cur.fetchall() if columns else []
    except duckdb.ParserException as exc:
        raise click.ClickException(f"SQL does not parse: {exc}\n{_views_line()}") from exc
    except (duckdb.CatalogException, duckdb.BinderException) as exc:
        raise click.ClickException(f"SQL refers to something that does not exist: {exc}\n{_views_line()}") from exc
    except duckdb.Error as exc:
        raise click.ClickException(f"query failed: {exc}") from exc
    finally:
        con.close()
    text = {"table": _as_table, "csv": _as_csv, "json": _as_json_lines}[fmt](columns, rows)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {len(rows)} rows to {output}", err=True)
    else:
        click.echo(text, nl=False)


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    v = _plain(value)
    if isinstance(v, float):
        v = float(f"{v:.12g}")  # the table is for reading: 0.5688430000000001 shows as 0.568843 (csv/json stay exact)
    s = json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else str(v)
    s = s.replace("\n", "\\n")
    return s if len(s) <= MAX_CELL else s[: MAX_CELL - 1] + "…"


def _as_table(columns: list[str], rows: list[tuple]) -> str:
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+\n"
    out = io.StringIO()
    out.write(line)
    out.write("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |\n")
    out.write(line)
    for r in cells:
        out.write("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |\n")
    out.write(line)
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")
    return out.getvalue()


def _as_csv(columns: list[str], rows: list[tuple]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if v is None else (json.dumps(_plain(v), ensure_ascii=False) if isinstance(v, (list, dict)) else _plain(v)) for v in r])
    return out.getvalue()


def _as_json_lines(columns: list[str], rows: list[tuple]) -> str:
    return "".join(json.dumps(dict(zip(columns, (_plain(v) for v in r))), ensure_ascii=False) + "\n" for r in rows)


@main.command("views")
@store_option
@click.pass_context
def views_cmd(ctx: click.Context, store_path: Path | None) -> None:
    """List the views (and table macros) of the store with their columns.

    Example: kaelum-sql views --store ./store
    """
    con = _open(store_path or (ctx.obj or {}).get("store"))
    try:
        for v in describe_views(con):
            click.echo(f"{v.name}  ({v.kind})")
            for name, typ in v.columns:
                click.echo(f"    {name:<22} {typ}")
    finally:
        con.close()


@main.command("compact")
@store_option
@click.option("--grace", type=float, default=10.0, show_default=True, help="Seconds to keep merged inputs for queries that already listed them.")
@click.option("--small-rows", type=int, default=1_000_000, show_default=True, help="Segments with fewer rows are merged.")
@click.pass_context
def compact_cmd(ctx: click.Context, store_path: Path | None, grace: float, small_rows: int) -> None:
    """Merge small segments into larger ones; query results do not change.

    Safe while an ingester writes and while readers query.

    Example: kaelum-sql compact --store ./store
    """
    from .compact import compact

    path = store_path or (ctx.obj or {}).get("store") or default_store_path()
    try:
        res = compact(path, small_rows=small_rows, grace_s=grace)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"segments: {res.segments_before} -> {res.segments_after} "
        f"({res.merged_inputs} merged into {len(res.outputs)}, {res.rows} rows, {res.seconds:.1f} s)"
    )


@main.command("attach-file")
@store_option
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None, help="Where to write it (default: <store>/views.duckdb).")
@click.pass_context
def attach_file_cmd(ctx: click.Context, store_path: Path | None, output: Path | None) -> None:
    """Write a small DuckDB file with only the view definitions, for any DuckDB client.

    The views point at the store's Parquet segments by absolute path, so the file holds no data
    and never goes stale; rerun this if the store folder moves.

    Example: kaelum-sql attach-file --store ./store && duckdb -readonly ./store/views.duckdb -c "from traces limit 5"
    """
    path = store_path or (ctx.obj or {}).get("store") or default_store_path()
    try:
        target = write_views_file(path, output)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {target}\nopen it from any DuckDB client: duckdb -readonly {target} -c \"select * from traces limit 5\"")


@main.command("export")
@store_option
@click.option("--format", "export_fmt", type=click.Choice(EXPORT_FORMATS), required=True, help="trl-sft: prompt/completion messages; trl-dpo: prompt/chosen/rejected; openai-chat: messages.")
@click.option("--domain", default=None, help="Only this domain (as kaelum-train --domain).")
@click.option("--min-reward", type=float, default=0.7, show_default=True, help="SFT formats: the minimum reward (as kaelum-train --min-reward).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None, help="JSONL file to write (default: stdout).")
@click.pass_context
def export_cmd(ctx: click.Context, store_path: Path | None, export_fmt: str, domain: str | None, min_reward: float, output: Path | None) -> None:
    """Export training data for TRL, Axolotl or OpenAI fine-tuning, rendered as kaelum-train renders it.

    Example: kaelum-sql export --store ./traces --format trl-sft --domain math -o sft.jsonl
    """
    from .export import ExportError, write_export

    con = _open(store_path or (ctx.obj or {}).get("store"))
    try:
        if output is None:
            n = write_export(con, export_fmt, sys.stdout, domain=domain, min_reward=min_reward)
        else:
            with open(output, "w", encoding="utf-8") as fh:
                n = write_export(con, export_fmt, fh, domain=domain, min_reward=min_reward)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        con.close()
    click.echo(f"exported {n} {export_fmt} records" + (f" to {output}" if output else ""), err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
