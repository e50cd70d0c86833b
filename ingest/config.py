"""`IngestConfig`: the daemon's settings. The fields a user sets carry their `kaelum-ingest` flag,
help and default as field metadata; the CLI's options are derived from them (`kaelum.cliopts`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import click

from kaelum.cliopts import flag, log_dir_flag, progress_flag, store_flag
from store import StoreError
from store.layout import check_writer_id

from .parse import DEFAULT_MAX_LINE_BYTES
from .tailer import DEFAULT_EXCLUDE, DEFAULT_INCLUDE


class ConfigError(ValueError):
    """Invalid IngestConfig; the message lists every problem, each naming its flag."""


@dataclass
class IngestConfig:
    log_dir: str = field(metadata=log_dir_flag("Directory of *.jsonl event logs to follow."))
    store: str = field(metadata=store_flag("The trace store (created if missing): a folder or a URL such as s3://bucket/prefix."))
    writer_id: str | None = field(default=None, metadata=flag(
        "--writer-id", show_default="<host>-<hash of the log dir>", help="Writer id in the store. One per daemon."))
    once: bool = field(default=False, metadata=flag("--once", help="Catch up on everything in the directory, then exit (cron, tests)."))
    batch_events: int = field(default=100_000, metadata=flag("--batch-events", help="Commit when a batch holds this many events ..."))
    flush_ms: int = field(default=200, metadata=flag("--flush-ms", help="... or when its oldest line has waited this long."))
    rescan_ms: int = field(default=1000, metadata=flag("--rescan-ms", help="Periodic rescan, for file systems that send no change events."))
    max_line_bytes: int = field(default=DEFAULT_MAX_LINE_BYTES, metadata=flag("--max-line-bytes", help="Longer lines are quarantined."))
    # Read and parse this much per call: each bulk query has a fixed cost (~30 ms of CPU), so 32 MiB
    # (~80k events) measured ~4% less CPU per event than 16 MiB; memory stays ~4x the block.
    block_bytes: int = 32 << 20
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    # Automatic compaction (Delta OPTIMIZE + VACUUM): while following, every compact_every_s
    # seconds; with --once, once at the end. Either only when at least compact_min_segments small
    # files (the many small commits of following) are in the tables: the large files of a bulk
    # catch-up are left as they are, so --once never spends longer compacting than ingesting.
    # compact_every_s = 0 turns both off.
    compact_every_s: float = field(default=300.0, metadata=flag(
        "--compact-every-s", help="While following, compact the store this often when enough segments are uncompacted; "
        "with --once, compact at the end when enough are (0 = off)."))
    compact_min_segments: int = field(default=8, metadata=flag(
        "--compact-min-segments", help="Uncompacted segments that make a compaction worth it."))
    use_watchdog: bool = field(default=True, metadata=flag(
        "--no-watchdog", is_flag=True, help="Do not use file-system events; rescan only.",
        to_field=lambda no_watchdog: not no_watchdog, from_field=lambda use: not use))
    # The CLI's default is whether stderr is a terminal (its option default None stands for that).
    progress: bool = field(default=True, metadata=progress_flag(
        "Progress bar while catching up (default: when stderr is a terminal).", default=None))

    def validate(self) -> "IngestConfig":
        problems = []
        if not os.path.isdir(self.log_dir):
            problems.append(f"--log-dir {self.log_dir!r} is not a directory")
        if self.batch_events < 1:
            problems.append(f"--batch-events must be at least 1, got {self.batch_events}")
        if self.flush_ms < 1:
            problems.append(f"--flush-ms must be at least 1, got {self.flush_ms}")
        if self.rescan_ms < 10:
            problems.append(f"--rescan-ms must be at least 10, got {self.rescan_ms}")
        if self.max_line_bytes < 1024:
            problems.append(f"--max-line-bytes must be at least 1024, got {self.max_line_bytes}")
        if self.compact_every_s < 0:
            problems.append(f"--compact-every-s must be 0 (off) or a positive number of seconds, got {self.compact_every_s}")
        if self.compact_min_segments < 1:
            problems.append(f"--compact-min-segments must be at least 1, got {self.compact_min_segments}")
        if self.writer_id is not None:
            try:
                check_writer_id(self.writer_id)  # the store's rule, so the daemon cannot accept an id the writer refuses
            except StoreError as exc:
                problems.append(f"--writer-id: {exc}")
        if problems:
            raise ConfigError("; ".join(problems))
        return self
