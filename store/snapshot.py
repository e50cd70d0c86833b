"""What a reader sees: one consistent set of segment files per query, resolved from the store's records.

A reader never trusts a directory listing alone. It resolves a *snapshot*, in this order:

1. the newest compaction manifest ``_snapshots/<gen>.json``: the compacted event segments, the
   derived per-trace table built from exactly those segments, and per writer the last commit
   seq folded into them (``covered``);
2. the newest commit record name of every writer (``_commits/<writer>/<seq>.json``): a writer
   segment is visible only when its seq is at most that writer's committed seq, so the segments
   of a commit in flight — written one by one, one per date — and the leftovers of a crashed
   commit stay hidden until (unless) the commit record makes them all visible at once;
3. the segment files themselves: writer segments newer than ``covered`` and committed.

Steps 1 → 3 run in this order, so whatever a step finds is complete when the next step looks:
a manifest names only files renamed in before it, a commit record is renamed in after all its
segments, and compaction deletes what a manifest replaced only after a grace period.

``store.connect`` registers ``kaelum_files(kind, txid)`` on its connection: the views pass their
transaction id, so every scan of one query (one transaction) uses the same snapshot, and every
new query resolves a new one — a long-lived connection sees each commit as soon as it is durable.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .layout import SCHEMA_PARTITION, SCHEMA_SEGMENT, StoreInfo, write_durable

log = logging.getLogger("store.snapshot")

SNAPSHOTS_DIR = "_snapshots"
DERIVED_DIR = "derived"
KEEP_MANIFESTS = 4  # only the newest is read; a few older ones help forensics


@dataclass(frozen=True)
class Manifest:
    """One compaction generation: what replaced which writer commits."""

    gen: int
    compacted: tuple[str, ...]  # event segments, relative to the store root
    derived: tuple[str, ...]  # per-trace summary built from exactly `compacted`
    covered: dict[str, int] = field(default_factory=dict)  # writer -> last seq folded into `compacted`

    def to_json(self) -> bytes:
        body = {"format": 1, "gen": self.gen, "compacted": list(self.compacted), "derived": list(self.derived), "covered": self.covered}
        return json.dumps(body, indent=1).encode() + b"\n"


@dataclass(frozen=True)
class Snapshot:
    manifest: Manifest | None
    committed: dict[str, int]  # writer -> newest committed seq
    compacted: tuple[Path, ...]  # event segments read as they are (no id occurs twice among them)
    fresh: tuple[Path, ...]  # committed writer event segments not folded into `compacted`
    derived: tuple[Path, ...]
    quarantine: tuple[Path, ...]
    legacy: bool  # compacted segments of a store without manifests (layout before generations)


def _manifest_name(gen: int) -> str:
    return f"{gen:012d}.json"


def read_manifest(info: StoreInfo) -> Manifest | None:
    """The newest readable compaction manifest, or None when the store was never compacted that way."""
    d = info.path / SNAPSHOTS_DIR
    if not d.is_dir():
        return None
    for p in sorted(d.glob("*.json"), reverse=True):
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
            return Manifest(int(m["gen"]), tuple(m["compacted"]), tuple(m["derived"]), {str(k): int(v) for k, v in m["covered"].items()})
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("skipping unreadable compaction manifest %s", p)
    return None


def write_manifest(info: StoreInfo, manifest: Manifest) -> None:
    """Durably publish a generation: its rename is the moment readers switch to it."""
    d = info.path / SNAPSHOTS_DIR
    d.mkdir(exist_ok=True)
    write_durable(d / _manifest_name(manifest.gen), manifest.to_json())
    for old in sorted(d.glob("*.json"))[:-KEEP_MANIFESTS]:
        old.unlink(missing_ok=True)


def committed_by_name(info: StoreInfo) -> dict[str, int]:
    """Newest committed seq per writer, from the record names alone (a record exists once renamed in)."""
    out: dict[str, int] = {}
    if not info.commits_dir.is_dir():
        return out
    with os.scandir(info.commits_dir) as writers:
        for w in writers:
            if not w.is_dir():
                continue
            best = 0
            with os.scandir(w.path) as recs:
                for r in recs:
                    name = r.name
                    if name.endswith(".json") and name[:-5].isdigit():
                        best = max(best, int(name[:-5]))
            if best:
                out[w.name] = best
    return out


def _writer_seq(name: str) -> tuple[str, int] | None:
    from .writer import parse_segment_name

    return parse_segment_name(name)


def _segments(base: Path) -> list[tuple[Path, str]]:
    """(path, name) of every data segment under base/<partition>/ (schema segments excluded)."""
    out = []
    if not base.is_dir():
        return out
    with os.scandir(base) as parts:
        for part in parts:
            if not part.is_dir() or part.name == SCHEMA_PARTITION:
                continue
            with os.scandir(part.path) as files:
                for f in files:
                    if f.name.endswith(".parquet") and not f.name.startswith("."):
                        out.append((Path(f.path), f.name))
    return out


def resolve(info: StoreInfo) -> Snapshot:
    manifest = read_manifest(info)  # 1. before the commit records, before the listing
    committed = committed_by_name(info)  # 2.
    covered = manifest.covered if manifest else {}
    fresh, legacy_c = [], []
    for path, name in _segments(info.events_dir):  # 3.
        if name.startswith("w-"):
            ws = _writer_seq(name)
            if ws and covered.get(ws[0], 0) < ws[1] <= committed.get(ws[0], 0):
                fresh.append(path)
        elif name.startswith("c-") and manifest is None:
            legacy_c.append(path)
    quarantine = []
    for path, name in _segments(info.quarantine_dir):
        if name.startswith("w-"):
            ws = _writer_seq(name)
            if not (ws and ws[1] <= committed.get(ws[0], 0)):
                continue
        quarantine.append(path)  # compacted quarantine overlaps its inputs harmlessly: the view de-duplicates
    if manifest is not None:
        compacted = tuple(info.path / r for r in manifest.compacted)
        derived = tuple(info.path / r for r in manifest.derived)
    else:
        compacted, derived = tuple(sorted(legacy_c)), ()
    return Snapshot(manifest, committed, compacted, tuple(sorted(fresh)), derived, tuple(sorted(quarantine)), manifest is None and bool(legacy_c))


class SnapshotFiles:
    """The ``kaelum_files(kind, txid)`` function of one reader connection.

    Kinds: ``compacted``, ``fresh``, ``derived``, ``quarantine``, and ``compacted_if_fresh`` (the
    compacted segments when there is any fresh segment, else none: the per-trace summary then
    covers every trace, and the live recomputation reads nothing). Each list ends with a zero-row
    schema segment so that a scan has its columns even when the list is otherwise empty.
    """

    def __init__(self, info: StoreInfo, derived_schema: Path | None = None, fixed: Snapshot | None = None) -> None:
        self.info = info
        self.derived_schema = derived_schema
        self.fixed = fixed  # compaction reads one given set of files instead of the store's current snapshot
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, Snapshot] = OrderedDict()
        self.resolved = 0  # how many snapshots were resolved (tests look at it)

    def snapshot(self, txid: int) -> Snapshot:
        if self.fixed is not None:
            return self.fixed
        with self._lock:
            snap = self._cache.get(txid)
            if snap is None:
                snap = resolve(self.info)
                self.resolved += 1
                self._cache[txid] = snap
                while len(self._cache) > 8:
                    self._cache.popitem(last=False)
            return snap

    def __call__(self, kind: str, txid: Any) -> list[str]:
        snap = self.snapshot(int(txid))
        ev_schema = str(self.info.events_dir / SCHEMA_PARTITION / SCHEMA_SEGMENT)
        if kind == "compacted":
            return [*map(str, snap.compacted), ev_schema]
        if kind == "compacted_if_fresh":
            return [*map(str, snap.compacted), ev_schema] if snap.fresh else [ev_schema]
        if kind == "fresh":
            return [*map(str, snap.fresh), ev_schema]
        if kind == "derived":
            if self.derived_schema is None:
                raise ValueError("kaelum_files('derived') needs the derived schema segment")
            return [*map(str, snap.derived), str(self.derived_schema)]
        if kind == "quarantine":
            return [*map(str, snap.quarantine), str(self.info.quarantine_dir / SCHEMA_PARTITION / SCHEMA_SEGMENT)]
        raise ValueError(f"unknown segment kind {kind!r}")
