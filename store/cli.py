"""kaelum-sql: query the trace store with SQL (now or as of a version/time), list its views and
versions, compact it, migrate an old store."""

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

from kaelum.cliopts import default_store_path, store_option as shared_store_option

from .export import EXPORT_FORMATS
from .layout import StoreError
from .snapshot import AsOf, parse_as_of
from .views import MACROS, PUBLIC_VIEWS, connect, describe_views

FORMATS = ("table", "csv", "json", "parquet")
MAX_CELL = 80  # table cells longer than this are cut with an ellipsis; csv/json/parquet are never cut


def _views_line() -> str:
    return "views: " + ", ".join(PUBLIC_VIEWS) + "; table macros: " + ", ".join(f"{m}(min_reward)" for m in MACROS)


# A subcommand's --store defaults to None: the group's --store, then $KAELUM_STORE or ./store.
store_option = shared_store_option(dest="store_path", default=None)


def as_of_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--as-of",
        "as_of",
        default=None,
        help="Read the store as it was: an events table version (12, see `kaelum-sql history`), "
        "events=12,quarantine=3, or an RFC 3339 timestamp (2026-03-01T12:00:00Z).",
    )(f)


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--output", "-o", type=click.Path(path_type=Path), default=None, help="Write to this file instead of stdout (required for parquet).")(f)
    f = click.option("--format", "-f", "fmt", type=click.Choice(FORMATS), default=None, help="Output format (default: table).")(f)
    return f


def _store_path(ctx: click.Context, store_path: str | None) -> str:
    """A subcommand's store: its own --store, else the group's, else $KAELUM_STORE or ./store."""
    return store_path or (ctx.obj or {}).get("store") or default_store_path()


def _as_of(text: str | None) -> AsOf:
    if text is None:
        return None
    try:
        return parse_as_of(text)
    except StoreError as exc:
        raise click.BadParameter(str(exc), param_hint="--as-of") from exc


def _open(store_path: str | None, as_of: str | None = None) -> duckdb.DuckDBPyConnection:
    parsed = _as_of(as_of)
    try:
        return connect(store_path if store_path is not None else default_store_path(), as_of=parsed)
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
@as_of_option
@output_options
@click.pass_context
def main(ctx: click.Context, store_path: str | None, as_of: str | None, fmt: str | None, output: Path | None) -> None:
    """Run SQL against the Kaelum trace store and print the result.

    The SQL is the argument, or stdin when there is none. Views: events, traces, nodes,
    trajectories, verified_trajectories, complete_trajectories, high_reward_trajectories,
    training_examples, preference_pairs, quarantine; table macros
    high_reward_trajectories_at(min_reward) and training_examples_at(min_reward).
    Subcommands: views, history, compact, migrate.

    Example: kaelum-sql --store ./store "select domain, count(*) from training_examples group by domain"
    """
    ctx.obj = {"store": store_path, "as_of": as_of, "fmt": fmt, "output": output}
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
    con = _open(obj.get("store"), obj.get("as_of"))
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
def views_cmd(ctx: click.Context, store_path: str | None) -> None:
    """List the views (and table macros) of the store with their columns.

    Example: kaelum-sql views --store ./store
    """
    con = _open(_store_path(ctx, store_path))
    try:
        for v in describe_views(con):
            click.echo(f"{v.name}  ({v.kind})")
            for name, typ in v.columns:
                click.echo(f"    {name:<22} {typ}")
    finally:
        con.close()


@main.command("history")
@store_option
@click.option("--limit", type=int, default=20, show_default=True, help="Newest commits to list.")
@click.pass_context
def history_cmd(ctx: click.Context, store_path: str | None, limit: int) -> None:
    """The events table's newest versions: what --as-of can name.

    Example: kaelum-sql history --store ./store --limit 5
    """
    from datetime import datetime, timezone

    from .layout import open_store
    from .tables import open_table

    path = _store_path(ctx, store_path)
    try:
        info = open_store(path)
        commits = open_table(info, info.events_uri).history(limit=limit)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{'version':>8}  {'committed at (UTC)':<27} {'operation':<10} {'rows':>8}  writer (seq)")
    for c in commits:
        at = datetime.fromtimestamp(c["timestamp"] / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
        rows = (c.get("operationMetrics") or {}).get("num_added_rows", "")
        who = f"{c['kaelum.writer']} ({c.get('kaelum.seq')})" if c.get("kaelum.writer") else ""
        click.echo(f"{c.get('version', ''):>8}  {at:<27} {c.get('operation', ''):<10} {rows:>8}  {who}")


@main.command("compact")
@store_option
@click.option("--retention-s", type=float, default=None, help="VACUUM keeps the files of versions younger than this (default: 3600). "
              "Longer than the longest query; also how far back --as-of can reach.")
@click.option("--no-vacuum", is_flag=True, help="Only OPTIMIZE; delete nothing.")
@click.pass_context
def compact_cmd(ctx: click.Context, store_path: str | None, retention_s: float | None, no_vacuum: bool) -> None:
    """Merge small files (Delta OPTIMIZE) and delete unneeded old ones (VACUUM); query results do not change.

    Safe while ingesters write and while readers query.

    Example: kaelum-sql compact --store ./store
    """
    from .compact import DEFAULT_RETENTION_S, compact

    path = _store_path(ctx, store_path)
    try:
        res = compact(path, retention_s=DEFAULT_RETENTION_S if retention_s is None else retention_s, vacuum=not no_vacuum)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"files: {res.files_before} -> {res.files_after} ({res.files_removed} merged into {res.files_added}, "
               f"{res.files_deleted} old files deleted, {res.seconds:.1f} s)")


@main.command("migrate")
@store_option
@click.option("--keep-old", is_flag=True, help="Keep the old files under <store>/_v1 after converting.")
@click.pass_context
def migrate_cmd(ctx: click.Context, store_path: str | None, keep_old: bool) -> None:
    """Convert a store of the old layout (layout_version 1) to Delta tables, in place.

    Every event and quarantined line is kept, and every ingester resumes where it stood. Safe to
    rerun after an interruption. Stop the ingesters writing to the store first.

    Example: kaelum-sql migrate --store ./store
    """
    from .legacy import migrate

    path = _store_path(ctx, store_path)
    try:
        res = migrate(path, keep_old=keep_old)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"migrated {path}: {res.events} event rows, {res.quarantined} quarantined lines, "
               f"positions of {len(res.writers)} writer(s) ({', '.join(f'{w} at {s}' for w, s in sorted(res.writers.items()))})")


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

    con = _open(_store_path(ctx, store_path))
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
