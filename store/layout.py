"""Where a store lives and how it is recognised: a local folder or an object-store URL.

    <store>/                       a folder, or s3://bucket/prefix (gs://, az://, abfss:// likewise)
      events/                      Delta table: one row per event, partitioned by `date` (UTC date of `ts`)
      quarantine/                  Delta table: refused lines, partitioned by `date` (commit date)
      trace_summary/               Delta table: per-trace summary derived by compaction (may be absent)
      kaelum-store.json            local folders only: {"format": "kaelum-store", "layout_version": 2}

A location is a store when ``events/`` is a Delta table. Everything else a store needs — commits,
snapshots, compaction, time travel — is Delta's (docs/store.md). Layout version 1 (our own segment
format) is recognised only to say how to migrate it (``kaelum-sql migrate``, store/legacy.py).

Object-store credentials and endpoints come from the standard variables of each cloud
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ...), which
delta-rs reads itself, plus ``KAELUM_STORE_OPTIONS`` (a JSON object of delta-rs storage options)
for anything else; see ``storage_options``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

MARKER = "kaelum-store.json"
LAYOUT_VERSION = 2
EVENTS_TABLE = "events"
QUARANTINE_TABLE = "quarantine"
URL_SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss")
STORE_OPTIONS_ENV = "KAELUM_STORE_OPTIONS"

_WRITER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_URL_RE = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.I)


class StoreError(Exception):
    """A store operation that cannot proceed; the message says what is wrong and how to fix it."""


def is_url(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and bool(_URL_RE.match(location))


def storage_options(uri: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """delta-rs storage options for `uri`: ``$KAELUM_STORE_OPTIONS`` (JSON) updated with `extra`.

    Credentials and endpoints are left to delta-rs, which reads the standard environment variables
    itself. Two choices are ours:
    - S3: concurrent writers use conditional put (``conditional_put=etag``, see docs/store.md) unless
      the user configured a lock provider (``AWS_S3_LOCKING_PROVIDER``); a plain-HTTP endpoint (a
      local S3 server) is allowed when ``AWS_ENDPOINT_URL`` says http://.
    - bounded retries and timeouts, so an unreachable store fails in seconds with a clear message
      instead of retrying for minutes.
    """
    opts: dict[str, str] = {}
    env = os.environ.get(STORE_OPTIONS_ENV)
    if env:
        try:
            loaded = json.loads(env)
        except ValueError as exc:
            raise StoreError(f"${STORE_OPTIONS_ENV} is not a JSON object of storage options: {exc}") from exc
        if not isinstance(loaded, dict):
            raise StoreError(f"${STORE_OPTIONS_ENV} must be a JSON object, e.g. {{\"aws_region\": \"eu-west-1\"}}")
        opts.update({str(k): str(v) for k, v in loaded.items()})
    opts.update(dict(extra or {}))
    scheme = uri.split("://", 1)[0].lower() if is_url(uri) else "file"
    if scheme in ("s3", "s3a"):
        if "AWS_S3_LOCKING_PROVIDER" not in os.environ and not any(k.lower() == "aws_s3_locking_provider" for k in opts):
            opts.setdefault("conditional_put", "etag")
        endpoint = opts.get("aws_endpoint_url") or opts.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL", "")
        if endpoint.startswith("http://"):
            opts.setdefault("allow_http", "true")
    if scheme != "file":
        opts.setdefault("timeout", "20s")
        opts.setdefault("connect_timeout", "5s")
        opts.setdefault("max_retries", "2")
        opts.setdefault("retry_timeout", "10s")
    return opts


def credential_hint(uri: str) -> str:
    scheme = uri.split("://", 1)[0].lower() if is_url(uri) else "file"
    if scheme in ("s3", "s3a"):
        return "AWS_ENDPOINT_URL (for S3-compatible servers), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION"
    if scheme == "gs":
        return "GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT)"
    return "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_TOKEN)"


@dataclass(frozen=True)
class StoreInfo:
    """A recognised store: its location, and how to reach its two tables."""

    uri: str  # an absolute local path or a URL without trailing slash
    layout_version: int = LAYOUT_VERSION
    options: dict[str, str] = field(default_factory=dict)

    @property
    def local(self) -> Path | None:
        return None if is_url(self.uri) else Path(self.uri)

    @property
    def path(self) -> Path:
        """The folder of a local store (StoreError for a URL: use ``uri``)."""
        if self.local is None:
            raise StoreError(f"{self.uri} is an object-store URL, not a local folder")
        return self.local

    def table_uri(self, name: str) -> str:
        return f"{self.uri}/{name}"

    @property
    def events_uri(self) -> str:
        return self.table_uri(EVENTS_TABLE)

    @property
    def quarantine_uri(self) -> str:
        return self.table_uri(QUARANTINE_TABLE)

    @property
    def summary_uri(self) -> str:
        return self.table_uri("trace_summary")

    @property
    def conflicts_uri(self) -> str:
        """The losing copies of conflicting event ids, stored by compaction (store/conflicts.py)."""
        return self.table_uri("id_conflicts")

    def __str__(self) -> str:
        return self.uri


def check_writer_id(writer_id: str) -> str:
    if not isinstance(writer_id, str) or not _WRITER_ID_RE.match(writer_id):
        raise StoreError(
            f"invalid writer id {writer_id!r}: use 1-128 characters from A-Z a-z 0-9 _ . - (starting with a letter or digit), e.g. the host name"
        )
    return writer_id


def normalise(location: str | os.PathLike[str]) -> str:
    if is_url(location):
        loc = str(location).rstrip("/")
        scheme = loc.split("://", 1)[0].lower()
        if scheme not in URL_SCHEMES:
            raise StoreError(f"unsupported store URL {location!r}: use a local folder or one of {', '.join(s + '://' for s in URL_SCHEMES)}")
        if not loc.split("://", 1)[1]:
            raise StoreError(f"store URL {location!r} names no bucket")
        return loc
    return str(Path(os.fspath(location)).expanduser().absolute())


def _no_store(where: str, why: str) -> StoreError:
    return StoreError(f"no store at {where} ({why}) — run `kaelum-ingest --once --log-dir ./logs --store {where}` first")


def migrate_hint(where: str) -> str:
    return f"run `kaelum-sql migrate --store {where}` once to convert it (every event and quarantined line is kept)"


def open_store(location: str | os.PathLike[str] | StoreInfo, create: bool = False, options: Mapping[str, str] | None = None) -> StoreInfo:
    """Recognise (or, with ``create=True``, create) the store at `location`: a folder or a URL.

    Creating is idempotent and safe from several processes at once (creating a Delta table that
    another process just created is not an error). An unreachable or unauthorised URL fails here,
    before any work, naming the URL and the variables to set.
    """
    from .tables import create_tables, tables_exist

    if isinstance(location, StoreInfo):
        return location
    uri = normalise(location)
    opts = storage_options(uri, options)
    info = StoreInfo(uri, LAYOUT_VERSION, opts)
    root = info.local
    if root is not None:
        marker = root / MARKER
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} is a file, not a store folder — pass the folder the store lives in")
        version = _marker_version(marker) if marker.exists() else None
        if version is not None and version < LAYOUT_VERSION:
            raise StoreError(f"{root} is a store in the old layout (layout_version {version}); {migrate_hint(str(root))}")
        if version is not None and version > LAYOUT_VERSION:
            raise StoreError(f"{root} has store layout version {version}; this kaelum reads up to {LAYOUT_VERSION} — upgrade kaelum")
        if not root.exists():
            if not create:
                raise _no_store(str(root), "the path does not exist")
            root.mkdir(parents=True, exist_ok=True)
        if not tables_exist(info):
            if not create:
                why = f"the folder has no {MARKER}" if version is None else f"{EVENTS_TABLE}/ is not a Delta table"
                raise _no_store(str(root), why)
            foreign = sorted(p.name for p in root.iterdir() if p.name not in _LAYOUT_ENTRIES)
            if foreign:
                # e.g. `--store ./store` run inside a checkout of Kaelum itself, whose ./store is the
                # `store` Python package: laying a store out there would mix tables into source code.
                shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise StoreError(f"{root} is not empty and not a Kaelum store (it holds {shown}); "
                                 "pass a new or empty folder, or an existing store")
            # Store files are not for every user of the machine: the folder is closed to "others".
            os.chmod(root, 0o750)
            create_tables(info)
            if not marker.exists():
                write_marker(root)
        return info
    if not tables_exist(info):
        if not create:
            raise _no_store(uri, f"{EVENTS_TABLE}/ there is not a Delta table")
        create_tables(info)
    return info


_LAYOUT_ENTRIES = frozenset({EVENTS_TABLE, QUARANTINE_TABLE, "trace_summary", MARKER, f".{MARKER}.partial"})


def _marker_version(marker: Path) -> int:
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{marker} is unreadable ({exc}); the folder is not a Kaelum store or it was damaged") from exc
    if not isinstance(meta, dict) or meta.get("format") != "kaelum-store" or not isinstance(meta.get("layout_version"), int):
        raise StoreError(f"{marker} does not describe a Kaelum store")
    return meta["layout_version"]


def write_marker(root: Path, version: int = LAYOUT_VERSION) -> None:
    """The marker of a local store, written atomically (temp name, fsync, rename)."""
    body = json.dumps({"format": "kaelum-store", "layout_version": version}, indent=2).encode() + b"\n"
    tmp = root / f".{MARKER}.partial"
    with open(tmp, "wb") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / MARKER)
