"""`kaelum ui`: a thin click layer over `ui.server.serve`."""

from __future__ import annotations

import click

from kaelum.cliopts import store_option


@click.command("ui")
@store_option(help="The trace store to explore (a path, or a URL the store understands).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; anything but loopback needs --token.")
@click.option("--port", default=8642, show_default=True, type=int, help="Port to listen on (0: any free port).")
@click.option("--token", default=None, envvar="KAELUM_UI_TOKEN", help="Require this token on every request (Authorization: Bearer T or ?token=T). Env: KAELUM_UI_TOKEN.")
@click.option("--user", default=None, envvar="KAELUM_UI_USER", help="Name written as `by` in feedback events (default: your login name). Env: KAELUM_UI_USER.")
@click.option("--model", default=None, help="Render /datasets examples with this model's chat template (needs the train extra).")
@click.option("--refresh", "refresh_s", default=10.0, show_default=True, type=float, help="Reopen the store connection after this many seconds.")
@click.option("--poll", "poll_s", default=5.0, show_default=True, type=float, help="Seconds between the pages' checks for new traces.")
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
