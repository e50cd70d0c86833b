"""`kaelum ui`: a thin click layer over `ui.server.serve`.

The options' defaults are `ui.server.UIConfig`'s (a test keeps them equal: the server module needs
the ui extra, which `kaelum ui --help` must not); docs/ui.md's flag table is generated from them
(`python -m kaelum.cliopts docs/ui.md`).
"""

from __future__ import annotations

import click

from kaelum.cliopts import store_option


@click.command("ui")
@store_option(help="The trace store to read (only through store.connect) and to write feedback to: a folder or a URL such as s3://bucket/prefix.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; anything that is not loopback is refused without --token.")
@click.option("--port", default=8642, show_default=True, type=int, help="Port to listen on (0: any free port).")
@click.option("--token", default=None, envvar="KAELUM_UI_TOKEN",
              help="Every request must carry this token: Authorization: Bearer T or ?token=T. Env: KAELUM_UI_TOKEN.")
@click.option("--user", default=None, envvar="KAELUM_UI_USER", show_default="your login name",
              help="Written as `by` in feedback events. Env: KAELUM_UI_USER.")
@click.option("--model", default=None, help="Render /datasets examples with this model's chat template (needs the train extra).")
@click.option("--refresh", "refresh_s", default=10.0, show_default=True, type=float,
              help="URL stores: seconds after which the connection is reopened in the background, so new commits show (a local store shows them at once).")
@click.option("--poll", "poll_s", default=5.0, show_default=True, type=float, help="Seconds between the list's checks for new traces.")
def ui(store: str, host: str, port: int, token: str | None, user: str | None, model: str | None, refresh_s: float, poll_s: float) -> None:
    """Serve a local web app over the trace store: traces and their search trees, datasets, charts,
    quarantine, and feedback that corrects a trace's reward.

    Example: kaelum ui --store ./store   (then open http://127.0.0.1:8642)
    """
    try:
        from .server import UIConfig, UIConfigError, serve
    except ImportError as exc:
        raise click.ClickException(f"kaelum ui needs the ui extra ({exc}); pip install 'kaelum[ui]'") from None
    from store import StoreError

    kw = {"user": user} if user else {}
    config = UIConfig(store=store, host=host, port=port, token=token, model=model, refresh_s=refresh_s, poll_s=poll_s, **kw)
    try:
        config.validate()
    except UIConfigError as exc:
        raise click.ClickException(str(exc)) from None
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"kaelum ui: serving {store} on http://{shown}:{port}/" + ("?token=…" if token else "") + f" (feedback as {config.user!r}); Ctrl-C stops")
    try:
        serve(config)
    except StoreError as exc:
        raise click.ClickException(f"{exc} — point --store at a store (kaelum-ingest --once --log-dir ./logs --store {store} makes one)") from None
