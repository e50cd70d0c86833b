"""kaelum-ingest: stream the runtime's event logs into the trace store, exactly once."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from dataclasses import asdict

import click

from store import StoreError

from .daemon import AlreadyRunning, ConfigError, Daemon, IngestConfig
from .parse import DEFAULT_MAX_LINE_BYTES
from .status import collect_status


EXIT_SKIPPED = 3  # --once stored what it could read, but some files could not be read


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )


@click.group(invoke_without_command=True)
@click.option("--log-dir", type=click.Path(file_okay=False), help="Directory of *.jsonl event logs to follow.")
@click.option("--store", "store_path", type=click.Path(file_okay=False), default=lambda: os.environ.get("KAELUM_STORE", "./store"), show_default="$KAELUM_STORE or ./store", help="The trace store (created if missing).")
@click.option("--writer-id", default=None, help="Writer id in the store (default: <host>-<hash of the log dir>). One per daemon.")
@click.option("--once", is_flag=True, help="Catch up on everything in the directory, then exit (cron, tests).")
@click.option("--batch-events", type=int, default=100_000, show_default=True, help="Commit when a batch holds this many events ...")
@click.option("--flush-ms", type=int, default=200, show_default=True, help="... or when its oldest line has waited this long.")
@click.option("--rescan-ms", type=int, default=1000, show_default=True, help="Periodic rescan, for file systems that send no change events.")
@click.option("--max-line-bytes", type=int, default=DEFAULT_MAX_LINE_BYTES, show_default=True, help="Longer lines are quarantined.")
@click.option("--compact-every-s", type=float, default=300.0, show_default=True, help="While following, compact the store this often when enough segments are uncompacted; with --once, compact at the end when enough are (0 = off).")
@click.option("--compact-min-segments", type=int, default=8, show_default=True, help="Uncompacted segments that make a compaction worth it.")
@click.option("--no-watchdog", is_flag=True, help="Do not use file-system events; rescan only.")
@click.option("--progress/--no-progress", default=None, help="Progress bar while catching up (default: when stderr is a terminal).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.pass_context
def main(ctx: click.Context, log_dir, store_path, writer_id, once, batch_events, flush_ms, rescan_ms, max_line_bytes, compact_every_s, compact_min_segments, no_watchdog, progress, log_level) -> None:  # noqa: ANN001
    """Follow a log directory and stream every event into the store, exactly once.

    Catches up on what is already there (with a progress bar), then follows new lines, driven
    by file-system events with a periodic rescan. Bad lines go to the store's quarantine.
    SIGTERM or Ctrl-C flushes and exits 0; a second signal exits at once (nothing is lost:
    positions only advance after durable commits).

    Files that cannot be read are reported, skipped and tried again on every scan; with --once
    everything readable is stored, the skipped files are named on stderr and the exit status is 3.
    Symbolic links that point outside the log directory are not followed.

    Example:

        kaelum-ingest --log-dir ./logs --store ./store
    """
    if ctx.invoked_subcommand is not None:
        return
    _setup_logging(log_level)
    if not log_dir:
        raise click.UsageError("--log-dir is required: the directory your Orchestrator(log_dir=...) writes to, e.g. --log-dir ./logs")
    cfg = IngestConfig(
        log_dir=log_dir, store=store_path, writer_id=writer_id, batch_events=batch_events, flush_ms=flush_ms,
        rescan_ms=rescan_ms, max_line_bytes=max_line_bytes, once=once, use_watchdog=not no_watchdog,
        compact_every_s=compact_every_s, compact_min_segments=compact_min_segments,
        progress=sys.stderr.isatty() if progress is None else progress,
    )
    try:
        daemon = Daemon(cfg)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc

    signals_seen = []

    def _on_signal(signum, frame) -> None:  # noqa: ANN001
        signals_seen.append(signum)
        if len(signals_seen) > 1:
            # Second signal: leave now. Nothing is lost: uncommitted lines are re-read on restart.
            os._exit(128 + signum)
        daemon.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        summary = daemon.run()
        if signals_seen:
            # Stopping on a signal: everything read is flushed. Python resets its handlers to the
            # default at interpreter exit, so a second signal arriving then would kill the process
            # with -SIGTERM instead of the documented exit; ignore it, we are exiting anyway.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    except AlreadyRunning as exc:
        raise click.ClickException(str(exc)) from exc
    except StoreError as exc:
        raise click.ClickException(f"{exc} (check --store)") from exc
    if once:
        click.echo(json.dumps({k: v for k, v in asdict(summary).items() if k != "per_file"}))
        if summary.skipped:
            for path, why in sorted(summary.skipped.items()):
                click.echo(f"skipped {path}: {why}", err=True)
            click.echo(f"{len(summary.skipped)} file(s) skipped; everything readable is stored. Fix them and run again.", err=True)
            sys.exit(EXIT_SKIPPED)


@main.command()
@click.option("--store", "store_path", type=click.Path(file_okay=False), default=lambda: os.environ.get("KAELUM_STORE", "./store"), show_default="$KAELUM_STORE or ./store")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None, help="Measure lag against the files there now.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(store_path, log_dir, as_json) -> None:  # noqa: ANN001
    """Per source file: bytes and events ingested, lag, quarantined lines, last error.

    Example:

        kaelum-ingest status --store ./store --log-dir ./logs
    """
    try:
        snaps = collect_status(store_path, log_dir)
    except StoreError as exc:
        raise click.ClickException(f"{exc} — run `kaelum-ingest --once --log-dir ./logs --store {store_path}` first") from exc
    if as_json:
        click.echo(json.dumps([asdict(s) for s in snaps], indent=1, default=str))
        return
    if not snaps:
        click.echo(f"no ingester has written to {store_path} yet")
        return
    for snap in snaps:
        click.echo(f"writer {snap.writer}  log_dir={snap.log_dir or '?'}  events={snap.events_total}  quarantined={snap.quarantined_total}"
                   + (f"  last_error={snap.last_error}" if snap.last_error else ""))
        click.echo(f"  {'file':<50} {'bytes':>12} {'events':>10} {'quar':>6} {'lag_bytes':>10} {'lag_s':>8}  last_error")
        for s in sorted(snap.sources, key=lambda s: s.path):
            lag_b = "?" if s.lag_bytes is None else str(s.lag_bytes)
            lag_s = "?" if s.lag_seconds is None else f"{s.lag_seconds:.1f}"
            click.echo(f"  {os.path.basename(s.path):<50} {s.bytes:>12} {s.events:>10} {s.quarantined:>6} {lag_b:>10} {lag_s:>8}  {s.last_error or ''}")


if __name__ == "__main__":  # pragma: no cover
    main()
