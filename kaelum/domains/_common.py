"""Helpers shared by the domain modules: answer-line extraction, self-consistency, judge calls, rewards."""

from __future__ import annotations

import logging
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Callable, Iterable, Mapping, Sequence

from ..prompts import ANSWER_PREFIX
from .base import Judge, Reward, Verdict, VerifyContext

log = logging.getLogger(__name__)

# "Answer:" at the start of a line (optionally after "Step N:" or markdown bold), any case.
_ANSWER_LINE_RE = re.compile(r"(?im)^[ \t]*(?:step\s+\d+\s*[:.)-]\s*)?[*_]*answer[*_]*\s*[:：]")
_ANSWER_ANY_RE = re.compile(r"(?i)\banswer\s*[:：]")
_WS_RE = re.compile(r"\s+")

# Self-consistency needs this many answers (the one judged included) before it means anything.
MIN_INDEPENDENT_ANSWERS = 2
# Bounds on a trace reward by the strength of its verdict (docs/domains.md, "What a reward can mean"):
# an answer that no checked method accepted (wrong, or only agreed on, judged or run) scores at most
# UNCHECKED_REWARD_CAP; one a checked method accepted scores at least CHECKED_REWARD_FLOOR. So a
# wrong answer never out-scores a checked right one, and `reward > 0.5` already means "checked".
UNCHECKED_REWARD_CAP = 0.5
CHECKED_REWARD_FLOOR = 0.6


def answer_text(text: str | None) -> str | None:
    """The raw text after the first 'Answer:' line of a model output (or an answer block); None if absent."""
    if not text:
        return None
    m = _ANSWER_LINE_RE.search(text) or _ANSWER_ANY_RE.search(text)
    if m is None:
        return None
    rest = text[m.end():].strip()
    return rest or None


def norm_text(text: str) -> str:
    """Case- and whitespace-insensitive form, without surrounding quotes or a trailing period."""
    t = _WS_RE.sub(" ", text.strip().lower())
    t = t.strip(" \"'`*")
    return t.rstrip(".!").strip()


def agreement(answer: str, siblings: Sequence[str], same: Callable[[str, str], bool]) -> tuple[float | None, int]:
    """Self-consistency: (share of all answers, this one included, that agree with it; agreeing siblings).

    The share is None (not measured) without a sibling: one answer agreeing with itself measures
    nothing, so it must add nothing to a reward (it used to count as a perfect 1.0).
    """
    answers = [s for s in siblings if s is not None]
    agreeing = 0
    for s in answers:
        try:
            if same(answer, s):
                agreeing += 1
        except Exception:  # noqa: BLE001 - a sibling that cannot be compared does not agree
            continue
    if len(answers) < MIN_INDEPENDENT_ANSWERS - 1:
        return None, agreeing
    return (1 + agreeing) / (1 + len(answers)), agreeing


def consistency_passes(share: float | None, agreeing: int) -> bool:
    """Verified by agreement: at least one independent branch reached it and a strict majority did."""
    return share is not None and agreeing >= 1 and share > 0.5


def ask_judge(judge: Judge | None, prompt: str) -> tuple[float | None, str | None]:
    """(score in [0, 1], error): a judge that is absent gives (None, None); one that fails gives (None, reason)."""
    if judge is None:
        return None, None
    try:
        score = float(judge(prompt))
    except Exception as e:  # noqa: BLE001 - the verifier must not raise because the judge did
        log.warning("judge failed: %s", e)
        return None, f"judge failed: {e}"
    if score != score:  # NaN
        return None, "judge returned NaN"
    return clamp(score), None


def clamp(x: float) -> float:
    return 0.0 if x < 0 else 1.0 if x > 1 else float(x)


def compose(weights: Mapping[str, float], components: Mapping[str, float | None],
            scale: float = 1.0, extra: Mapping[str, float] | None = None) -> Reward:
    """Reward = scale × Σ wᵢcᵢ / Σ wᵢ over the components that are present (None = not measured).

    The returned components hold every measured component (clamped), plus `extra` (factors such as
    the code domain's test confidence) so that the trace records how the value was built.
    """
    present = {k: clamp(float(v)) for k, v in components.items() if v is not None and k in weights}
    total_w = sum(weights[k] for k in present)
    value = clamp(scale * sum(weights[k] * v for k, v in present.items()) / total_w) if total_w > 0 else 0.0
    out = dict(present)
    out.update({k: float(v) for k, v in (extra or {}).items()})
    return Reward(value=round(value, 6), components=out)


def bounded(reward: Reward, verdict: Verdict) -> Reward:
    """`reward` held to the band of its verdict's evidence (see UNCHECKED_REWARD_CAP, CHECKED_REWARD_FLOOR).

    The bound applied, if it changed the value, is recorded as component "cap" or "floor".
    """
    if verdict.passed and verdict.checked:
        if reward.value >= CHECKED_REWARD_FLOOR:
            return reward
        return Reward(value=CHECKED_REWARD_FLOOR, components={**reward.components, "floor": CHECKED_REWARD_FLOOR})
    if reward.value <= UNCHECKED_REWARD_CAP:
        return reward
    return Reward(value=UNCHECKED_REWARD_CAP, components={**reward.components, "cap": UNCHECKED_REWARD_CAP})


def failed(verifier: str, error: str, **details: object) -> Verdict:
    """The verdict of an answer that could not be checked (absent, malformed, internal failure)."""
    return Verdict(passed=False, score=0.0, verifier=verifier, details={"error": error, **details})


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text.lower())


STOPWORDS = frozenset(
    "a an the and or but if then else of to in on at by for with from as is are was were be been being it its this "
    "that these those what which who whom whose why how when where do does did done can could should would will "
    "shall may might must not no yes i you he she we they them their our your my me us about into over under than "
    "so such also each any all some more most other both either neither very just there here please explain "
    "describe discuss give list state answer question".split()
)


def content_words(text: str) -> list[str]:
    """Words that carry meaning (no stopwords, no 1-2 letter words)."""
    return [w for w in words(text) if w not in STOPWORDS and len(w) > 2]


def stem(word: str) -> str:
    """A crude stemmer: enough to match 'costs'/'cost', 'risks'/'risk', 'growing'/'growth' roughly."""
    for suffix in ("ations", "ation", "ities", "ity", "ments", "ment", "ings", "ing", "ness", "ies", "ied", "ed",
                   "es", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in items:
        seen.setdefault(i, None)
    return list(seen)


__all__ = ["DomainBase", "ANSWER_PREFIX", "answer_text", "norm_text", "agreement", "consistency_passes", "ask_judge", "clamp",
           "compose", "bounded", "failed", "words", "content_words", "stem", "first_line", "unique", "STOPWORDS"]


# Bounds of every verifier: (largest answer in characters, seconds for one verification). Checked
# by DomainBase.verify before and around the domain's own check; options `max_answer_chars` and
# `verify_timeout_s` override them. Code has no time backstop here: its sandbox enforces its own
# wall clock (`timeout_s`) from outside the code, and interrupting it would skip its cleanup.
VERIFY_BOUNDS: Mapping[str, tuple[int, float | None]] = {
    "math": (1_000, 10.0), "logic": (2_000, 10.0), "factual": (2_000, 60.0),
    "creative": (20_000, 120.0), "analysis": (20_000, 120.0), "code": (200_000, None),
}
DEFAULT_BOUNDS: tuple[int, float | None] = (20_000, 60.0)


def verify_bounds(domain: str, options: Mapping[str, object]) -> tuple[int, float | None]:
    """(max answer characters, time bound in seconds or None) for a domain, options applied."""
    max_chars, timeout_s = VERIFY_BOUNDS.get(domain, DEFAULT_BOUNDS)
    if "max_answer_chars" in options:
        max_chars = options["max_answer_chars"]  # type: ignore[assignment]
        if not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 1:
            raise ValueError(f"option max_answer_chars must be a positive integer, got {max_chars!r}")
    if "verify_timeout_s" in options:
        timeout_s = options["verify_timeout_s"]  # type: ignore[assignment]
        if timeout_s is not None and (not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool)
                                      or timeout_s <= 0):
            raise ValueError(f"option verify_timeout_s must be a positive number or null, got {timeout_s!r}")
    return max_chars, timeout_s


class VerifierTimeout(BaseException):
    """Raised into a verification that ran past its time bound. A BaseException, so that the
    `except Exception` a verifier uses for "cannot decide" does not swallow it."""


class Deadline:
    """Interrupt the current thread's Python code after `seconds` (None: never), with VerifierTimeout.

    A timer thread raises the exception asynchronously in the verifying thread (it surfaces at the
    next bytecode boundary, so a pure-Python loop stops; one long C call finishes first, which is
    why the parsers also bound their input). The exception is caught here, not left pending for
    the caller: `expired` says it fired.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._done = False
        self._timer: threading.Timer | None = None

    def __enter__(self) -> "Deadline":
        if self.seconds is not None:
            self._timer = threading.Timer(self.seconds, self._fire, (threading.get_ident(),))
            self._timer.daemon = True
            self._timer.start()
        return self

    def _fire(self, thread_id: int) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            import ctypes  # here, not at import: `import kaelum.domains` stays cheap

            set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
            set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]
            set_async_exc(thread_id, VerifierTimeout)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        with self._lock:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()
        if self.expired and exc_type is not VerifierTimeout:
            # Fired, but not delivered yet: let it surface here (a loop checks for it) and drop it.
            try:
                for _ in range(10_000_000):
                    pass
            except VerifierTimeout:
                pass
        return exc_type is VerifierTimeout


class DomainBase(ABC):
    """What every domain shares: options, a verify that never raises, a reward from the verdict's signals.

    A subclass implements `extract_answer` and `_verify`; `_verify` puts the measured reward
    components in `details["signals"]` and `reward` weighs them with the class's `WEIGHTS` (plus
    the search's value estimate of the path as component "value"), then holds the result to the
    band of the verdict's evidence (`bounded`).
    """

    name = "base"
    WEIGHTS: Mapping[str, float] = {}
    # True where a verification spends its time outside this interpreter (sandbox processes) and
    # asks no judge: the search may then check an expansion's terminals at the same time.
    VERIFY_CONCURRENTLY = False

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        self.options = dict(options or {})

    def opts(self, ctx: VerifyContext) -> dict[str, object]:
        return {**self.options, **dict(ctx.options or {})}

    def verify(self, answer: str | None, ctx: VerifyContext) -> Verdict:
        """`_verify` within the domain's bounds: an answer over the size bound fails before any parsing,
        and one whose check runs past the time bound fails with the reason (see `VERIFY_BOUNDS`)."""
        try:
            max_chars, timeout_s = verify_bounds(self.name, self.opts(ctx))
        except ValueError as e:
            return failed(f"{self.name}.error", str(e))
        if answer is not None and len(answer) > max_chars:
            return failed(f"{self.name}.bounds", f"the answer is {len(answer)} characters long, more than the "
                          f"{self.name} verifier's bound of {max_chars} (option max_answer_chars)")
        if any(s is not None and len(s) > max_chars for s in ctx.sibling_answers):
            # Other branches' answers are parsed for agreement too; one that big fails its own check.
            ctx = replace(ctx, sibling_answers=tuple(s for s in ctx.sibling_answers if s is None or len(s) <= max_chars))
        try:
            with Deadline(timeout_s) as deadline:
                verdict = self._verify(answer, ctx)
            if deadline.expired:
                raise VerifierTimeout()
            return verdict
        except VerifierTimeout:
            return failed(f"{self.name}.bounds", f"the {self.name} verifier ran past its time bound of {timeout_s} s "
                          f"(option verify_timeout_s)")
        except Exception as e:  # noqa: BLE001 - a verifier never raises (see domains.base)
            log.exception("%s verifier failed", self.name)
            return failed(f"{self.name}.error", f"internal error: {type(e).__name__}: {e}")

    @abstractmethod
    def extract_answer(self, text: str) -> str | None: ...

    @abstractmethod
    def _verify(self, answer: str | None, ctx: VerifyContext) -> Verdict: ...

    def reward(self, verdict: Verdict, value: float | None, ctx: VerifyContext) -> Reward:
        signals = dict(verdict.details.get("signals") or {}) if isinstance(verdict.details, Mapping) else {}
        if not signals:
            # An answer that could not be checked at all (absent, malformed, internal error).
            signals = {"verified": 0.0}
        return bounded(compose({**self.WEIGHTS, "verified": 0.85}, {**signals, "value": value}), verdict)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} domain {self.name!r}>"
