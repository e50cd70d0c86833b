"""The store on disk: where things live, how a folder is recognised as a store, durable file writes.

    <store>/
      kaelum-store.json                       marker: format name and layout version
      events/date=YYYY-MM-DD/<segment>.parquet  event segments, hive-partitioned by the UTC date of `ts`
      quarantine/date=YYYY-MM-DD/<segment>.parquet  lines that were refused, partitioned by commit date
      _commits/<writer_id>/<seq>.json         commit records: the durable read positions of each writer
      _locks/                                 advisory locks of writers and compaction (readers never lock)

Segment names: ``w-<writer_id>-<seq:012d>-<rand>.parquet`` for a writer's commit,
``c-<stamp>-<rand>.parquet`` for compaction output, ``s-schema.parquet`` for the zero-row segment
that gives every view its columns in an empty store. Files being written are named
``.<name>.partial`` so that no reader glob (``*.parquet``) ever matches them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

MARKER = "kaelum-store.json"
LAYOUT_VERSION = 1
EVENTS_DIR = "events"
QUARANTINE_DIR = "quarantine"
COMMITS_DIR = "_commits"
LOCKS_DIR = "_locks"
SCHEMA_PARTITION = "date=1970-01-01"
SCHEMA_SEGMENT = "s-schema.parquet"

_WRITER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class StoreError(Exception):
    """A store operation that cannot proceed; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class StoreInfo:
    path: Path
    layout_version: int

    @property
    def events_dir(self) -> Path:
        return self.path / EVENTS_DIR

    @property
    def quarantine_dir(self) -> Path:
        return self.path / QUARANTINE_DIR

    @property
    def commits_dir(self) -> Path:
        return self.path / COMMITS_DIR

    @property
    def locks_dir(self) -> Path:
        return self.path / LOCKS_DIR

    def events_glob(self) -> str:
        return str(self.events_dir / "*" / "*.parquet")

    def quarantine_glob(self) -> str:
        return str(self.quarantine_dir / "*" / "*.parquet")


def check_writer_id(writer_id: str) -> str:
    if not isinstance(writer_id, str) or not _WRITER_ID_RE.match(writer_id):
        raise StoreError(
            f"invalid writer id {writer_id!r}: use 1-128 characters from A-Z a-z 0-9 _ . - (starting with a letter or digit), e.g. the host name"
        )
    return writer_id


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (POSIX needs the directory itself synced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` atomically: temp name, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _no_store(path: Path, why: str) -> StoreError:
    return StoreError(f"no store at {path} ({why}) — run `kaelum-ingest --once --log-dir ./logs --store {path}` first")


def open_store(path: str | os.PathLike[str], create: bool = False) -> StoreInfo:
    """Recognise (or, with ``create=True``, lay out) the store at `path`.

    A folder is a store when it holds ``kaelum-store.json``. Creating is idempotent and safe to run
    from several processes at once: every step is an atomic mkdir/rename of identical content.
    """
    root = Path(os.fspath(path)).expanduser()
    marker = root / MARKER
    if not root.exists():
        if not create:
            raise _no_store(root, "the path does not exist")
        root.mkdir(parents=True, exist_ok=True)
    if not root.is_dir():
        raise StoreError(f"{root} is a file, not a store folder — pass the folder the store lives in")
    if not marker.exists():
        if not create:
            raise _no_store(root, f"the folder has no {MARKER}")
        foreign = sorted(p.name for p in root.iterdir() if p.name not in _LAYOUT_ENTRIES)
        if foreign:
            # e.g. `--store ./store` run inside a checkout of Kaelum itself, whose ./store is the
            # `store` Python package: laying a store out there would mix segments into source code.
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise StoreError(f"{root} is not empty and not a Kaelum store (it holds {shown}); "
                             "pass a new or empty folder, or an existing store")
        _lay_out(root)
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{marker} is unreadable ({exc}); the folder is not a Kaelum store or it was damaged") from exc
    if not isinstance(meta, dict) or meta.get("format") != "kaelum-store":
        raise StoreError(f"{marker} does not describe a Kaelum store (format {meta.get('format') if isinstance(meta, dict) else meta!r})")
    version = meta.get("layout_version")
    if not isinstance(version, int) or version > LAYOUT_VERSION:
        raise StoreError(f"{root} has store layout version {version!r}; this kaelum reads up to {LAYOUT_VERSION} — upgrade kaelum")
    info = StoreInfo(root, version)
    if not (info.events_dir / SCHEMA_PARTITION / SCHEMA_SEGMENT).exists():
        if not create:
            raise StoreError(f"{root} is missing {EVENTS_DIR}/{SCHEMA_PARTITION}/{SCHEMA_SEGMENT}; reopen it with a writer to repair the layout")
        _write_schema_segments(info)
    return info


# What a store folder may hold before its marker exists (another process laying it out right now).
_LAYOUT_ENTRIES = frozenset({EVENTS_DIR, QUARANTINE_DIR, COMMITS_DIR, LOCKS_DIR, f".{MARKER}.partial"})


def _lay_out(root: Path) -> None:
    for sub in (EVENTS_DIR, QUARANTINE_DIR, COMMITS_DIR, LOCKS_DIR):
        (root / sub).mkdir(exist_ok=True)
    info = StoreInfo(root, LAYOUT_VERSION)
    _write_schema_segments(info)
    # The marker goes last: a folder with a marker always has the complete layout.
    body = json.dumps({"format": "kaelum-store", "layout_version": LAYOUT_VERSION}, indent=2).encode() + b"\n"
    write_durable(root / MARKER, body)
    fsync_dir(root)


def _write_schema_segments(info: StoreInfo) -> None:
    from .schema import QUARANTINE_SCHEMA, SEGMENT_SCHEMA, write_segment

    for base, schema in ((info.events_dir, SEGMENT_SCHEMA), (info.quarantine_dir, QUARANTINE_SCHEMA)):
        part = base / SCHEMA_PARTITION
        part.mkdir(parents=True, exist_ok=True)
        target = part / SCHEMA_SEGMENT
        if not target.exists():
            write_segment(schema.empty_table(), target, metadata={"kaelum.kind": "schema"})
