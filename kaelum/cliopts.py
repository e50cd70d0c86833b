"""Command-line options written once: derived from dataclass fields, or shared by every command.

A library dataclass (`train.config.TrainArgs`, `ingest.config.IngestConfig`) declares, on each
field a user may set, the flag and its help as field metadata (`flag(...)`); `dataclass_options`
turns those fields into click options whose defaults are the fields' defaults, and
`pop_dataclass` turns the parsed values back into the dataclass. The flag, its help and its
default therefore live in one place, next to the validation that names the flag.

The options several commands take (`--store`, `--log-dir`, `--progress/--no-progress`,
`-v/--verbose`) are defined here once, for the five commands and `kaelum ui` / `kaelum improve`.
`flag_table` renders a command's options as the Markdown table the docs carry; `python -m
kaelum.cliopts docs/training.md docs/ingest.md docs/ui.md` regenerates every table between
`<!-- flags:COMMAND:begin -->` and `<!-- flags:COMMAND:end -->`, and a test keeps them equal.

Only click and the standard library: the `kaelum` runtime stays light, and the packages above it
(store, ingest, train, ui) import this module, never the other way round.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal

import click

CLI = "kaelum.cli"  # the field-metadata key holding a field's option specs
STORE_ENV = "KAELUM_STORE"
DEFAULT_STORE = "./store"
STORE_DEFAULT_SHOWN = f"${STORE_ENV} or {DEFAULT_STORE}"
STORE_HELP = "The trace store: a folder or a URL such as s3://bucket/prefix."
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def store_from_env() -> str | None:
    """$KAELUM_STORE, or None when it is unset or empty."""
    return os.environ.get(STORE_ENV) or None


def default_store_path() -> str:
    """The store a command uses without --store: $KAELUM_STORE, else ./store. The one place it is decided."""
    return store_from_env() or DEFAULT_STORE


# --- option specs ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One click option: its declarations ("--bf16/--no-bf16", "-v"), help, and click keywords.

    `to_field` converts the parsed value to the field's value (for `--no-watchdog`, a flag whose
    meaning is the negation of the field `use_watchdog`), `from_field` the field's default to the
    option's default.
    """

    decls: tuple[str, ...]
    help: str = ""
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    to_field: Callable[[Any], Any] | None = None
    from_field: Callable[[Any], Any] | None = None

    @property
    def name(self) -> str:
        """The long flag as the user types it, e.g. --bf16/--no-bf16 or --lora."""
        longs = [d for d in self.decls if d.startswith("--")]
        return longs[0] if longs else self.decls[0]


def flag(*decls: str, help: str = "", to_field: Callable[[Any], Any] | None = None,
         from_field: Callable[[Any], Any] | None = None, **click_kwargs: Any) -> dict[str, Any]:
    """Field metadata: this field is set by the option `decls` (click keywords as for click.option)."""
    return {CLI: (OptionSpec(tuple(decls), help, dict(click_kwargs), to_field, from_field),)}


def flags(*specs: dict[str, Any]) -> dict[str, Any]:
    """Field metadata for a field set by several options (--lora / --qlora / --full: one `flag_value` each)."""
    return {CLI: tuple(s for m in specs for s in m[CLI])}


# --- the shared options, each defined once: as field metadata (`*_flag`) or a decorator (`*_option`)


def store_flag(help: str = STORE_HELP, default: Callable[[], str | None] | None = default_store_path,
               shown: str = STORE_DEFAULT_SHOWN) -> dict[str, Any]:
    """--store: $KAELUM_STORE, else ./store, unless `default` says otherwise.

    `default=None`: None without --store, for a subcommand that first looks at its group's --store
    (kaelum-sql). `default=store_from_env, shown="$KAELUM_STORE or WORKDIR/store"`: a command with a
    fallback of its own after the variable (kaelum improve).
    """
    return flag("--store", help=help, default=default, show_default=shown, type=click.Path(file_okay=False))


def log_dir_flag(help: str) -> dict[str, Any]:
    return flag("--log-dir", help=help, default=None, type=click.Path(file_okay=False))


def progress_flag(help: str = "Progress bars.", **click_kwargs: Any) -> dict[str, Any]:
    return flag("--progress/--no-progress", help=help, **click_kwargs)


def verbosity_flag(help: str = "More logging (-v info, -vv debug).") -> dict[str, Any]:
    """-v/--verbose, counted; `log_level` turns the count into a level over the command's quiet level."""
    return flag("-v", "--verbose", help=help, count=True)


def as_option(metadata: dict[str, Any], dest: str | None = None) -> Decorator:
    """The click decorator of a one-option `*_flag(...)`, for a command without a dataclass field for it."""
    (spec,) = metadata[CLI]
    return click.option(*spec.decls, *((dest,) if dest else ()), help=spec.help, **spec.kwargs)


def store_option(help: str = STORE_HELP, dest: str = "store", **kw: Any) -> Decorator:
    return as_option(store_flag(help, **kw), dest)


def log_dir_option(help: str) -> Decorator:
    return as_option(log_dir_flag(help))


def progress_option(default: bool | None = True, help: str = "Progress bars.") -> Decorator:
    return as_option(progress_flag(help, default=default))


def verbosity_option(help: str = "More logging (-v info, -vv debug).") -> Decorator:
    return as_option(verbosity_flag(help))


def log_level(verbose: int, base: int = logging.WARNING) -> int:
    """The logging level for `verbose` -v flags over the command's quiet level `base`."""
    return max(logging.DEBUG, base - 10 * verbose)


# --- dataclass <-> click -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Bound:
    spec: OptionSpec
    path: tuple[str, ...]  # field names from the top dataclass down to this field
    dest: str  # the click parameter name


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _bound(cls: type, path: tuple[str, ...] = ()) -> list[tuple[_Bound, dataclasses.Field, Any]]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp) and CLI not in f.metadata:
            out += _bound(tp, path + (f.name,))
            continue
        for spec in f.metadata.get(CLI, ()):
            # One parameter per field; several options (flag_value) share it. The dest is the
            # field's path, so nested fields with the same name (data.store) cannot collide.
            out.append((_Bound(spec, path + (f.name,), "__".join(path + (f.name,))), f, tp))
    return out


def _click_kwargs(b: _Bound, f: dataclasses.Field, tp: Any) -> dict[str, Any]:
    kw = dict(b.spec.kwargs)
    kw.setdefault("help", b.spec.help)
    default = _field_default(f)
    if b.spec.from_field is not None:
        default = b.spec.from_field(default)
    if "flag_value" in kw:
        # --lora / --qlora / --full share one parameter: the option whose value is the field's
        # default is marked the default; the others must carry none, or click would take theirs.
        if kw["flag_value"] == default:
            kw.setdefault("default", True)
        return kw
    kw.setdefault("default", default)  # a shared option's own default (--store: $KAELUM_STORE) wins
    is_switch = "/" in b.spec.name
    base = _unwrap_optional(tp)
    if base is bool and not is_switch:
        kw.setdefault("is_flag", True)
    elif not is_switch and "type" not in kw:
        if typing.get_origin(base) is Literal:
            kw["type"] = click.Choice([str(a) for a in typing.get_args(base)])
        elif base in (int, float):
            kw["type"] = base
    if not is_switch and kw.get("default") not in (None, "") and not kw.get("is_flag") and "show_default" not in kw:
        kw["show_default"] = True
    return kw


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def dataclass_options(cls: type) -> Decorator:
    """click options for every field of `cls` (and of its nested dataclasses) that carries `flag(...)`.

    The options appear in --help in field order.
    """
    bound = _bound(cls)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for b, f, tp in reversed(bound):
            fn = click.option(*b.spec.decls, b.dest, **_click_kwargs(b, f, tp))(fn)
        return fn

    return decorate


def pop_dataclass(cls: type, kw: dict[str, Any], **overrides: Any) -> Any:
    """Build `cls` from the parsed options in `kw`, removing them from `kw`.

    `overrides` replace parsed values by dest (the field path joined with "__"), for a value the
    command resolves itself (kaelum-ingest's --progress default: whether stderr is a terminal).
    """
    values: dict[tuple[str, ...], Any] = {}
    for b, _f, _tp in _bound(cls):
        if b.dest not in kw and b.dest not in overrides:
            continue
        value = overrides[b.dest] if b.dest in overrides else kw[b.dest]
        values[b.path] = b.spec.to_field(value) if b.spec.to_field is not None else value
    for b, _f, _tp in _bound(cls):
        kw.pop(b.dest, None)
    return _construct(cls, (), values)


def _construct(cls: type, path: tuple[str, ...], values: dict[tuple[str, ...], Any]) -> Any:
    hints = typing.get_type_hints(cls)
    args = {}
    for f in dataclasses.fields(cls):
        p = path + (f.name,)
        if p in values:
            args[f.name] = values[p]
        elif _is_dataclass_type(hints[f.name]) and CLI not in f.metadata:
            args[f.name] = _construct(hints[f.name], p, values)
    return cls(**args)


# --- docs --------------------------------------------------------------------------------------


def _shown_default(param: click.Option, ctx: click.Context) -> str:
    if param.is_flag and not param.secondary_opts:
        if isinstance(param.flag_value, str):  # --lora / --qlora / --full: one value of a shared parameter
            return "default" if param.default is True else ""
        return "off"
    if param.required:
        return "required"
    if param.count:
        return ""
    if isinstance(param.show_default, str):
        return param.show_default
    default = param.get_default(ctx, call=False)
    if callable(default):
        return ""
    if param.secondary_opts:
        return "" if default is None else ("on" if default else "off")
    if default is None or default == ():
        return ""
    return str(default)


def _flag_cell(param: click.Option) -> str:
    opts = "/".join(param.opts + param.secondary_opts) if param.secondary_opts else ", ".join(param.opts)
    if isinstance(param.type, click.Choice) and not param.is_flag:
        opts += " " + "\\|".join(str(c) for c in param.type.choices)
    return f"`{opts}`"


def flag_table(command: click.Command) -> str:
    """The Markdown table of `command`'s options (flag, default, meaning), as --help states them."""
    ctx = click.Context(command, **command.context_settings)
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or param.hidden or "--help" in param.opts:
            continue
        default = _shown_default(param, ctx)
        helptext = (param.help or "").replace("|", "\\|")
        rows.append(f"| {_flag_cell(param)} | {'`' + default + '`' if default else ''} | {helptext} |")
    return "\n".join(rows)


_MARKER = re.compile(r"<!-- flags:(?P<cmd>[\w -]+?):begin -->\n.*?<!-- flags:(?P=cmd):end -->", re.S)


def resolve_command(name: str) -> click.Command:
    """A command by how the user types it: "kaelum-train", "kaelum-ingest status", "kaelum ui"."""
    from importlib.metadata import entry_points

    script, *sub = name.split()
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == script]
    cmd = ep.load()
    ctx = click.Context(cmd)
    for part in sub:
        cmd = cmd.get_command(ctx, part)  # type: ignore[attr-defined]
        ctx = click.Context(cmd, parent=ctx)
    return cmd


def render_flag_tables(text: str, resolve: Callable[[str], click.Command] = resolve_command) -> str:
    """`text` with every flags:COMMAND block replaced by COMMAND's current table."""

    def table(m: re.Match[str]) -> str:
        cmd = m.group("cmd")
        return f"<!-- flags:{cmd}:begin -->\n{flag_table(resolve(cmd))}\n<!-- flags:{cmd}:end -->"

    return _MARKER.sub(table, text)


def flag_table_blocks(text: str) -> list[str]:
    """The commands whose tables `text` carries."""
    return [m.group("cmd") for m in _MARKER.finditer(text)]


if __name__ == "__main__":  # python -m kaelum.cliopts docs/training.md docs/ingest.md docs/ui.md
    import sys

    for doc in sys.argv[1:]:
        p = Path(doc)
        p.write_text(render_flag_tables(p.read_text(encoding="utf-8")), encoding="utf-8")
