"""kaelum-ingest: stream the runtime's event logs into the trace store, exactly once.

The daemon's options are `IngestConfig`'s fields (ingest/config.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from dataclasses import asdict
from typing import Any

import click

from kaelum.cliopts import CONTEXT_SETTINGS, dataclass_options, log_dir_option, pop_dataclass, store_option
from store import StoreError

from .config import ConfigError, IngestConfig
from .daemon import AlreadyRunning, Daemon
from .status import collect_status


EXIT_SKIPPED = 3  # --once stored what it could read, but some files could not be read


def _keep_freed_memory() -> None:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel.

    Every block of a catch-up allocates tens of MiB (the read, Arrow and DuckDB buffers) and frees
    them again. By default glibc returns such memory to the kernel at once, and every next block
    takes a page fault per 4 KiB to get it back: at 1M events about 900k faults, a third of
    the CPU time of ``--once``. With a fixed mmap threshold and a trim threshold of 256 MiB, the
    faults fell to about 450k and system time by 1-2 s, measured beside the default in one run
    (benchmarks/README.md). It does not change what is stored. The only cost is up to 256 MiB of
    freed memory kept by an idle daemon. It does nothing where the C library is not glibc.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    for param, value in ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 256 << 20), (M_TOP_PAD, 64 << 20)):
        mallopt(param, value)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )


@click.group(invoke_without_command=True, context_settings=CONTEXT_SETTINGS)
@dataclass_options(IngestConfig)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True,
              help="Structured logs (logfmt) on stderr.")
@click.pass_context
def main(ctx: click.Context, log_level: str, **kw: Any) -> None:
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
    _keep_freed_memory()
    _setup_logging(log_level)
    if not kw["log_dir"]:
        raise click.UsageError("--log-dir is required: the directory your Orchestrator(log_dir=...) writes to, e.g. --log-dir ./logs")
    cfg = pop_dataclass(IngestConfig, kw, progress=sys.stderr.isatty() if kw["progress"] is None else kw["progress"])
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
    if daemon.compactor is not None and daemon.compactor.running:
        # A compaction abandoned at stop is still inside delta-rs or DuckDB native code: finalising the
        # interpreter under it aborts the process ("terminate called ... exception not rethrown", exit
        # -6). Everything read is committed and logged and the compaction commits nothing, so leave
        # without finalisation.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if cfg.once:
        click.echo(json.dumps({k: v for k, v in asdict(summary).items() if k != "per_file"}))
        if summary.skipped:
            for path, why in sorted(summary.skipped.items()):
                click.echo(f"skipped {path}: {why}", err=True)
            click.echo(f"{len(summary.skipped)} file(s) skipped; everything readable is stored. Fix them and run again.", err=True)
            sys.exit(EXIT_SKIPPED)


@main.command()
@store_option(dest="store_path")
@log_dir_option("Measure lag against the files there now.")
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
