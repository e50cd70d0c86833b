"""Plain data across the sandbox boundary: a tagged JSON codec and size-capped line framing.

Copied into both sandboxes (the solution's and the grader's) and imported by the host, so it is
stdlib only. Values cross between the solution and the grader only through `dumps`/`loads`: what
arrives is rebuilt from JSON as exact built-in types (int, float, str, bytes, bool, None, list,
tuple, dict, set, frozenset, complex), so no object of the solution's making ever runs code
(`__eq__`, `__repr__`, `__hash__`) on the grader's side. Anything else stays in the solution's
process and crosses as a reference (`{"$ref": n}`) that the grader can only call or ask attributes
of, through the same channel.

JSON itself cannot say tuple, set, bytes, non-string keys, big integers (Python refuses to print
or parse more than 4300 decimal digits) or nan/inf, so those are tagged objects; a plain dict is
always tagged too, which keeps every JSON object a tag and the decoding unambiguous.
"""

from __future__ import annotations

import base64
import json
import math
import os
import select
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs every sandbox start ~5 ms
if TYPE_CHECKING:
    from typing import Any, Callable

_SMALL_INT = 2**53  # JSON numbers above this lose precision in other readers; sent as hex instead
MAX_DEPTH = 200


class NotPlainData(TypeError):
    """A value that has no plain-data form (a function, an instance, a generator, ...)."""


def encode(value: Any, ref: Callable[[Any], Any] | None = None, _depth: int = 0) -> Any:
    """The JSON-ready form of `value`; objects that are not plain data go through `ref` (or raise)."""
    if _depth > MAX_DEPTH:
        raise NotPlainData("value nested too deeply")
    if value is None or value is True or value is False:
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        v = int(value)
        return v if -_SMALL_INT < v < _SMALL_INT else {"$int": format(v, "x")}
    if isinstance(value, float):
        v = float(value)
        return v if math.isfinite(v) else {"$float": repr(v)}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, complex):
        return {"$complex": [encode(value.real), encode(value.imag)]}
    d = _depth + 1
    try:
        if isinstance(value, list):
            return [encode(v, ref, d) for v in list.__iter__(value)]
        if isinstance(value, tuple):
            return {"$tuple": [encode(v, ref, d) for v in tuple.__iter__(value)]}
        if isinstance(value, dict):
            return {"$dict": [[encode(k, ref, d), encode(v, ref, d)] for k, v in dict.items(value)]}
        if isinstance(value, frozenset):
            return {"$frozenset": [encode(v, ref, d) for v in frozenset.__iter__(value)]}
        if isinstance(value, set):
            return {"$set": [encode(v, ref, d) for v in set.__iter__(value)]}
    except RecursionError:
        raise NotPlainData("value nested too deeply (or contains itself)") from None
    if ref is not None:
        return ref(value)
    raise NotPlainData(f"{type(value).__name__} is not plain data")


def decode(obj: Any, ref: Callable[[int, str], Any] | None = None) -> Any:
    """Rebuild a value from `encode`'s form as exact built-in types; refs go through `ref`."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [decode(v, ref) for v in obj]
    if not isinstance(obj, dict) or len(obj) not in (1, 2):
        raise ValueError("malformed value")
    if "$ref" in obj:
        if ref is None or not isinstance(obj["$ref"], int):
            raise ValueError("unexpected reference")
        return ref(obj["$ref"], str(obj.get("type", "object"))[:100])
    if len(obj) != 1:
        raise ValueError("malformed value")
    (tag, body), = obj.items()
    if tag == "$int" and isinstance(body, str):
        return int(body, 16)
    if tag == "$float" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "$bytes" and isinstance(body, str):
        return base64.b64decode(body.encode("ascii"), validate=True)
    if not isinstance(body, list):
        raise ValueError(f"malformed value for {tag!r}")
    items = [decode(v, ref) for v in body]
    if tag == "$tuple":
        return tuple(items)
    if tag == "$set":
        return set(items)
    if tag == "$frozenset":
        return frozenset(items)
    if tag == "$complex" and len(items) == 2:
        return complex(items[0], items[1])
    if tag == "$dict" and all(isinstance(p, list) and len(p) == 2 for p in items):
        return {k: v for k, v in items}
    raise ValueError(f"unknown or malformed tag {tag!r}")


def dumps(message: dict) -> bytes:
    """One message as one line of canonical JSON (ASCII, so a newline never occurs inside it)."""
    return json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(",", ":"), sort_keys=True).encode() + b"\n"


class ChannelClosed(EOFError):
    """The other side closed its end (or died)."""


class ChannelError(ValueError):
    """The other side sent more than the cap, or something that is not a message."""


class LineReader:
    """Reads newline-framed messages from a pipe without ever blocking past a deadline or a size cap.

    The descriptor is switched to non-blocking; `read` waits with select, so a peer that stops
    writing costs at most the caller's timeout, and one that writes without end at most `cap` bytes.
    """

    def __init__(self, fd: int, cap: int) -> None:
        self.fd, self.cap = fd, cap
        self.buf = b""
        self.closed = False
        os.set_blocking(fd, False)

    def read(self, timeout_s: float | None) -> dict:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line, self.buf = self.buf[:nl], self.buf[nl + 1:]
                try:
                    msg = json.loads(line)
                except (ValueError, RecursionError) as e:
                    raise ChannelError(f"malformed message: {str(e)[:200]}") from None
                if not isinstance(msg, dict):
                    raise ChannelError("malformed message: not an object")
                return msg
            if len(self.buf) > self.cap:
                raise ChannelError(f"message larger than {self.cap} bytes")
            if self.closed:
                raise ChannelClosed("the other side closed the channel")
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if wait == 0.0 and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("no message before the deadline")
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                raise TimeoutError("no message before the deadline")
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                self.closed = True
            self.buf += chunk


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
