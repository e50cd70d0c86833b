"""The tailer: which files are in the log directory, who they are, and where to read next.

Each source is keyed by its content: the fingerprint of its first line, extended with device,
inode and a longer prefix when two files share that line (``source``: head fingerprints and
extended keys). A scan lists the directory, identifies each file whose size or mtime changed, and
reconciles:

- a new fingerprint is a new source (``file_added``), read from the position the store holds for
  it or from 0;
- a known fingerprint under a new path on the same inode was renamed (``renamed``: rotation by
  rename-and-create); under another inode it is a copy (``switched``: the copy of copy-truncate,
  used once the original no longer holds that content);
- the inode a source was read from shrank below its position or now holds other content: it
  was truncated (``truncated``); the new content is a new source read from its start;
- a source whose file is gone is drained through its open descriptor, then forgotten
  (``file_removed``).

What is not read: names that do not match ``include`` or match ``exclude``; anything that is not
a regular file; symbolic links whose target lies outside the log directory (a link to
``/etc/shadow`` is reported as ``file_skipped`` and never opened; links to files inside the
directory are followed; ``not_followed`` holds the others). A file that cannot be opened
(permissions, I/O error) is reported as ``file_skipped`` with the reason, left out, and tried
again on every scan: it is read once it becomes readable. ``skipped`` holds those of the latest scan. Names that are not valid UTF-8 are
read like any other; events and the store show them as ``source.shown_path`` does.

Positions here are in memory: ``position`` is how far the daemon has read, ``committed`` how far
the store durably holds. Only the daemon moves ``committed``, after a durable commit.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from dataclasses import dataclass, field

from .observe import Hub
from .source import (
    IDENTITY_BYTES,
    Lines,
    Oversize,
    extended_key,
    fingerprint_of,
    first_difference,
    head_of,
    key_length,
    key_matches,
    read_fingerprint,
    read_lines,
    shown_path,
)

DEFAULT_INCLUDE = ("*.jsonl", "*.jsonl.*", "*.log", "*.ndjson")
DEFAULT_EXCLUDE = ("*.gz", "*.zst", "*.bz2", "*.xz", "*.zip", ".*")


@dataclass
class Source:
    fingerprint: str
    path: str
    dev: int
    ino: int
    fd: int | None
    position: int
    committed: int
    size: int = 0
    mtime_ns: int = 0
    scanned_to: int = 0  # progress through an over-long line whose newline has not come yet
    caught_up_at: float = field(default_factory=time.time)
    last_change: float = field(default_factory=time.monotonic)
    gone: bool = False  # the file no longer exists under any name: drain, then forget
    # The first IDENTITY_BYTES of this content as last seen while it was this content: what a
    # file with the same first line is compared with (it may be a copy of it, or another file).
    prefix: bytes = b""

    @property
    def shown_path(self) -> str:
        """The path as valid UTF-8 text, for the store, status files and logs."""
        return shown_path(self.path)

    @property
    def pending_bytes(self) -> int:
        return max(0, self.size - self.position)


@dataclass
class _Seen:
    path: str  # the name in the log directory
    dev: int
    ino: int
    size: int
    mtime_ns: int
    fingerprint: str | None  # the source key (head fingerprint or extended key)
    target: str = ""  # what to open: the path, or where a link inside the log directory points
    head: bytes = b""  # the first IDENTITY_BYTES when it was identified


def _why(exc: OSError) -> str:
    return f"cannot be read: {exc.strerror or exc}"


class Tailer:
    def __init__(
        self,
        log_dir: str,
        hub: Hub,
        start_positions: dict[str, int] | None = None,
        include: tuple[str, ...] = DEFAULT_INCLUDE,
        exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
        block_bytes: int = 16 << 20,
        max_line_bytes: int = 1 << 20,
        idle_close_s: float = 60.0,
        max_open: int = 256,
    ) -> None:
        self.log_dir = log_dir
        self.hub = hub
        self.start_positions = dict(start_positions or {})
        self.include = include
        self.exclude = exclude
        self.block_bytes = max(block_bytes, max_line_bytes + 1)
        self.max_line_bytes = max_line_bytes
        self.idle_close_s = idle_close_s
        self.max_open = max_open
        self.sources: dict[str, Source] = {}
        self._seen: dict[str, _Seen] = {}  # by path, from the previous scan
        self.skipped: dict[str, str] = {}  # path -> why it could not be read, in the latest scan
        self.not_followed: dict[str, str] = {}  # path of a link out of the directory -> where it points

    # --- identify ---------------------------------------------------------------------------

    def _wanted(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in self.include) and not any(fnmatch.fnmatch(name, p) for p in self.exclude)

    def _list(self) -> list[_Seen]:
        found: list[tuple[str, str, os.stat_result]] = []
        skipped: dict[str, str] = {}
        not_followed: dict[str, str] = {}
        try:
            names = os.listdir(self.log_dir)
        except FileNotFoundError:
            names = []
        root = os.path.realpath(self.log_dir)
        for name in names:
            if not self._wanted(name):
                continue
            path = os.path.join(self.log_dir, name)
            target = path
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    target = os.path.realpath(path)
                    if os.path.commonpath([root, target]) != root:
                        not_followed[path] = f"a symbolic link to {shown_path(target)}, outside the log directory: not followed"
                        continue
                    st = os.stat(target)
            except FileNotFoundError:
                continue
            except OSError as exc:
                skipped[path] = _why(exc)
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((path, target, st))
        found.sort(key=lambda f: (f[2].st_mtime_ns, f[0]))  # oldest first: rotated files drain first
        out: list[_Seen] = []
        owners: dict[str, _Seen] = {}  # source key -> the first file of this listing with it
        extended: dict[str, list[str]] | None = None  # head fingerprint -> known extended keys, longest first
        for path, target, st in found:
            prev = self._seen.get(path)
            if prev and prev.fingerprint and prev.target == target and (prev.dev, prev.ino, prev.size, prev.mtime_ns) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
                seen = prev
            else:
                try:
                    fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
                except FileNotFoundError:
                    continue
                except OSError as exc:  # unreadable, or replaced by a link since the lstat
                    skipped[path] = _why(exc)
                    continue
                try:
                    # Identity and size of the inode actually opened: the name may have moved on
                    # to another file between stat() and open() (rotation).
                    st = os.fstat(fd)
                    head = os.pread(fd, IDENTITY_BYTES, 0)
                except OSError as exc:
                    skipped[path] = _why(exc)
                    continue
                finally:
                    os.close(fd)
                seen = _Seen(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, fingerprint_of(head), target, head)
                if seen.fingerprint is not None:
                    if extended is None:
                        extended = {}
                        for k in sorted({*self.sources, *self.start_positions}, key=key_length, reverse=True):
                            if "+" in k:
                                extended.setdefault(head_of(k), []).append(k)
                    seen.fingerprint = self._identify(seen, owners, extended.get(seen.fingerprint, []))
            if seen.fingerprint is not None:
                owners.setdefault(seen.fingerprint, seen)
            out.append(seen)
        for path, why in (skipped | not_followed).items():
            if (self.skipped.get(path) or self.not_followed.get(path)) != why:
                self.hub.emit("file_skipped", path=shown_path(path), reason=why)
        self.skipped, self.not_followed = skipped, not_followed
        return out

    def files_now(self) -> list[tuple[str, str, int, float]]:
        """(source key, path, size, mtime in seconds) of each readable file in the directory now."""
        return [(s.fingerprint, s.path, s.size, s.mtime_ns / 1e9) for s in self._list() if s.fingerprint is not None]

    def _identify(self, seen: _Seen, owners: dict[str, _Seen], known: list[str]) -> str:
        """The source key of a file with a head fingerprint: see ``source``.

        The longest known extended key its content matches; else the head fingerprint, unless
        another file on another inode already holds that key and the two contents differ: then
        a new extended key that covers the first byte where they differ.
        """
        head_fp = seen.fingerprint
        assert head_fp is not None
        key = head_fp
        for k in known:  # longest first
            if key_matches(k, seen.head):
                key = k
                break
        while True:
            # Who else holds this key: the live source, or an earlier file of this listing.
            src = self.sources.get(key)
            if src is not None and not src.gone:
                if (src.dev, src.ino) == (seen.dev, seen.ino):
                    return key
                other = src.prefix
            elif key in owners and (owners[key].dev, owners[key].ino) != (seen.dev, seen.ino):
                other = owners[key].head
            else:
                return key
            d = first_difference(seen.head, other)
            if d is None:
                return key  # the same content so far: a copy of it (or not told apart yet)
            # Both match `key`, so they agree on its first key_length(key) bytes: each round the
            # key covers more bytes, up to IDENTITY_BYTES.
            key = extended_key(head_fp, seen.head[: d + 1])

    def _open(self, seen: _Seen) -> int | None:
        """Open `seen` and check it still is that inode with that content."""
        try:
            fd = os.open(seen.target or seen.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            why = _why(exc)
            if self.skipped.get(seen.path) != why:
                self.skipped[seen.path] = why
                self.hub.emit("file_skipped", path=shown_path(seen.path), reason=why)
            return None
        st = os.fstat(fd)
        head = os.pread(fd, IDENTITY_BYTES, 0)
        if (st.st_dev, st.st_ino) != (seen.dev, seen.ino) or seen.fingerprint is None or fingerprint_of(head) != head_of(seen.fingerprint):
            os.close(fd)
            return None
        if "+" in seen.fingerprint and not key_matches(seen.fingerprint, head):
            os.close(fd)
            return None
        return fd

    def scan(self) -> None:
        """Reconcile the sources with the directory as it is now."""
        listing = self._list()
        self._seen = {s.path: s for s in listing}
        by_fp: dict[str, list[_Seen]] = {}
        by_inode: dict[tuple[int, int], _Seen] = {}
        for s in listing:
            by_inode[(s.dev, s.ino)] = s
            if s.fingerprint is not None:
                by_fp.setdefault(s.fingerprint, []).append(s)

        # Sources whose inode shrank or changed content: truncation.
        for src in list(self.sources.values()):
            if src.gone:
                continue
            now = by_inode.get((src.dev, src.ino))
            if now is None:
                continue
            if now.fingerprint != src.fingerprint or now.size < src.position:
                self.hub.emit(
                    "truncated", path=shown_path(now.path), fingerprint=src.fingerprint, position=src.position,
                    new_size=now.size, new_fingerprint=now.fingerprint,
                    lost_bytes=max(0, src.size - src.position) if now.fingerprint != src.fingerprint else 0,
                )
                if now.fingerprint == src.fingerprint:
                    # Same first line, shorter file: the content was rewritten; read it from the start.
                    src.position = src.committed = src.scanned_to = 0
                    src.size = now.size
                    continue
                self._close(src)
                src.size = src.position  # the unread rest of the old content is gone (lost_bytes)
                if src.fingerprint not in by_fp:
                    src.gone = True

        for fp, group in by_fp.items():
            src = self.sources.get(fp)
            if src is None:
                self._add(fp, group)
                continue
            same = [s for s in group if (s.dev, s.ino) == (src.dev, src.ino)]
            if same:
                s = same[0]
                if s.path != src.path:
                    self.hub.emit("renamed", fingerprint=fp, old_path=shown_path(src.path), path=shown_path(s.path))
                    src.path = s.path
                self._refresh(src, s)
            elif src.fd is None or src.gone or self._inode_lost(src):
                # The inode we read is gone or holds other content; the same content lives on
                # in another file (a copy): carry on there from the same position.
                s = max(group, key=lambda g: g.size)
                self._close(src)
                fd = self._open(s)
                if fd is None:
                    continue
                self.hub.emit("switched", fingerprint=fp, old_path=shown_path(src.path), path=shown_path(s.path), position=src.position)
                src.path, src.dev, src.ino, src.fd, src.gone = s.path, s.dev, s.ino, fd, False
                self._refresh(src, s)
            # else: a copy of a file we still read from its original inode; ignore the copy.

        for fp, src in list(self.sources.items()):
            if fp in by_fp or src.gone:
                continue
            if (src.dev, src.ino) in by_inode:
                continue  # handled above as a truncation
            if src.fd is not None:
                st = os.fstat(src.fd)
                if st.st_nlink > 0:
                    # Still linked somewhere: renamed while we listed the directory (the next scan
                    # finds it), or moved out of it. Either way it is still readable here.
                    src.size = st.st_size
                    continue
                src.size = st.st_size
            else:
                src.size = src.position  # closed while idle and caught up: nothing left to drain
            src.gone = True
            src.last_change = time.monotonic()

    def _inode_lost(self, src: Source) -> bool:
        if src.fd is None:
            return True
        st = os.fstat(src.fd)
        return st.st_nlink == 0

    def _add(self, fp: str, group: list[_Seen]) -> None:
        s = group[0]
        fd = self._open(s)
        if fd is None:
            return
        start = self.start_positions.get(fp, 0)
        if start > s.size:
            # The store read further into this content than the file now has: it was cut and
            # rewritten with the same first line while we were stopped.
            self.hub.emit("truncated", path=shown_path(s.path), fingerprint=fp, position=start, new_size=s.size, new_fingerprint=fp, lost_bytes=0)
            start = 0
        src = Source(fp, s.path, s.dev, s.ino, fd, position=start, committed=start, prefix=s.head)
        self.sources[fp] = src
        self._refresh(src, s)
        self.hub.emit("file_added", path=shown_path(s.path), fingerprint=fp, size=s.size, position=start)

    def _refresh(self, src: Source, s: _Seen) -> None:
        if (s.size, s.mtime_ns) != (src.size, src.mtime_ns):
            src.last_change = time.monotonic()
        if len(s.head) > len(src.prefix) and s.head.startswith(src.prefix):
            src.prefix = s.head  # grew (append-only): compare later files with more of it
        src.size, src.mtime_ns = s.size, s.mtime_ns
        if src.fd is None and src.position < src.size:
            src.fd = self._open(s)

    def _close(self, src: Source) -> None:
        if src.fd is not None:
            os.close(src.fd)
            src.fd = None

    # --- read -------------------------------------------------------------------------------

    def readable(self, include_gone: bool = False) -> list[Source]:
        """Sources with unread bytes (and, with include_gone, removed ones still to drain)."""
        return [s for s in self.sources.values() if s.fd is not None and (s.position < s.size or (include_gone and s.gone))]

    def tail_abandoned(self, src: Source, grace_s: float = 5.0) -> bool:
        """A removed file whose incomplete last line has not changed for `grace_s`: it never will."""
        return src.gone and src.position < src.size and time.monotonic() - src.last_change > grace_s

    def read(self, src: Source) -> Lines | Oversize | None:
        """The next complete lines (or over-long line) of `src`, advancing its read position."""
        if src.fd is None:
            return None
        if src.gone:
            size = os.fstat(src.fd).st_size
            if size != src.size:
                src.size, src.last_change = size, time.monotonic()
        got = read_lines(src.fd, src.position, src.size, self.block_bytes, self.max_line_bytes, src.scanned_to)
        if got is not None and read_fingerprint(src.fd) != head_of(src.fingerprint):
            # The file was truncated and rewritten since it was identified, maybe before this
            # read: what was read may be the new content. Drop it; the next scan sees the
            # truncation, and the new content is read as the new source it is (and the old
            # content from its copy, with copy-truncate).
            return None
        if isinstance(got, int):
            src.scanned_to = got
            return None
        if got is None:
            return None
        src.scanned_to = 0
        src.position = got.end
        return got

    def settle(self) -> None:
        """After reading: note caught-up sources, forget drained gone ones, close idle ones."""
        now = time.monotonic()
        for fp, src in list(self.sources.items()):
            if src.position >= src.size:
                src.caught_up_at = time.time()
            if src.gone and src.position >= src.size and src.committed >= src.position:
                self._close(src)
                del self.sources[fp]
                # Remember where it ended: if the same content shows up again (moved back, or
                # seen again after a race with a rename) it continues there, never from 0.
                self.start_positions[fp] = src.position
                self.hub.emit("file_removed", path=shown_path(src.path), fingerprint=fp, position=src.position)
            elif src.fd is not None and src.committed >= src.size and now - src.last_change > self.idle_close_s:
                self._close(src)  # reopened by path (and re-identified) when it changes
        # Many rotated files: keep at most max_open descriptors, closing caught-up ones first
        # (the least recently changed); sources with unread bytes keep theirs.
        open_srcs = [s for s in self.sources.values() if s.fd is not None]
        if len(open_srcs) > self.max_open:
            idle = sorted((s for s in open_srcs if not s.gone and s.committed >= s.size), key=lambda s: s.last_change)
            for src in idle[: len(open_srcs) - self.max_open]:
                self._close(src)

    def rewind(self, fps: list[str]) -> None:
        """A commit failed: read those sources again from what the store durably holds."""
        for fp in fps:
            src = self.sources.get(fp)
            if src is not None:
                src.position = src.committed
                src.scanned_to = 0

    def close(self) -> None:
        for src in self.sources.values():
            self._close(src)
