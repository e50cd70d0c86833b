"""The promotion gate: is the candidate better than the champion on the same held-out queries?

Both models answer the same queries with the same search settings and seeds, so their outcomes
are paired. The exact McNemar test looks only at the discordant queries: `b` that only the
champion verified and `c` that only the candidate verified. Under "no difference" each discordant
query is a fair coin, so the two-sided p-value is `2 * P(Binomial(b + c, 1/2) <= min(b, c))`
(capped at 1). Accuracies come with 95% Wilson score intervals.

The decision: promote only when the candidate's verified accuracy is higher by at least
`min_gain` points *and* p < `alpha`. Defaults: `min_gain` 2.0 points, `alpha` 0.05 (a gain must be
both worth deploying and unlikely to be search noise); anything else keeps the champion.

Slices: held-out queries may name a `slice` (a phrasing, a task family, a customer). A candidate
that wins overall can still have traded one slice for another, as a worker fine-tuned on one
phrasing gets worse on the others. With slices, a candidate that passes overall is still rejected
when it is significantly worse on any one slice: fewer verified there and the slice's own exact
McNemar p < `alpha`. Queries without a slice count overall only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

DEFAULT_MIN_GAIN = 2.0  # points of verified accuracy
DEFAULT_ALPHA = 0.05


class GateError(ValueError):
    """Outcomes that cannot be compared (different lengths, nothing evaluated, a bad threshold)."""


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for `b` and `c` discordant pairs (binomial with p = 1/2)."""
    if b < 0 or c < 0:
        raise GateError(f"discordant counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of `successes / n` (the whole [0, 1] when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    # At 0 and n successes the interval ends exactly at the estimate (rounding would leave 1e-17).
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


@dataclass(frozen=True)
class SliceResult:
    """One slice of the held-out queries: the same paired counts as the gate's, on that slice alone."""

    name: str
    queries: int
    champion_verified: int
    candidate_verified: int
    only_champion: int
    only_candidate: int
    p_value: float

    @property
    def gain_points(self) -> float:
        return 100.0 * (self.candidate_verified - self.champion_verified) / self.queries

    def as_dict(self) -> dict[str, object]:
        return {"slice": self.name, "queries": self.queries, "champion_verified": self.champion_verified,
                "candidate_verified": self.candidate_verified, "only_champion": self.only_champion,
                "only_candidate": self.only_candidate, "gain_points": round(self.gain_points, 3), "p_value": self.p_value}


@dataclass(frozen=True)
class GateResult:
    decision: str  # "promoted" | "rejected"
    reason: str
    queries: int
    champion_verified: int
    candidate_verified: int
    only_champion: int  # b: champion verified, candidate not
    only_candidate: int  # c: candidate verified, champion not
    p_value: float
    min_gain: float
    alpha: float
    slices: tuple[SliceResult, ...] = ()

    @property
    def champion_accuracy(self) -> float:
        return self.champion_verified / self.queries

    @property
    def candidate_accuracy(self) -> float:
        return self.candidate_verified / self.queries

    @property
    def gain_points(self) -> float:
        return 100.0 * (self.candidate_accuracy - self.champion_accuracy)

    @property
    def champion_ci(self) -> tuple[float, float]:
        return wilson_interval(self.champion_verified, self.queries)

    @property
    def candidate_ci(self) -> tuple[float, float]:
        return wilson_interval(self.candidate_verified, self.queries)

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"


def check_thresholds(min_gain: float, alpha: float) -> list[str]:
    problems = []
    if not (math.isfinite(min_gain) and 0.0 <= min_gain <= 100.0):
        problems.append(f"--min-gain must be between 0 and 100 points, got {min_gain}")
    if not (math.isfinite(alpha) and 0.0 < alpha <= 1.0):
        problems.append(f"--alpha must be in (0, 1], got {alpha}")
    return problems


def decide(
    champion: Sequence[bool],
    candidate: Sequence[bool],
    min_gain: float = DEFAULT_MIN_GAIN,
    alpha: float = DEFAULT_ALPHA,
    slices: Sequence[str | None] | None = None,
) -> GateResult:
    """Gate on per-query verified outcomes, `champion[i]` and `candidate[i]` for the same query i.

    `slices[i]`, when given, names query i's slice (None: no slice); see the module doc."""
    problems = check_thresholds(min_gain, alpha)
    if problems:
        raise GateError("; ".join(problems))
    if len(champion) != len(candidate):
        raise GateError(f"paired outcomes differ in length: champion {len(champion)}, candidate {len(candidate)}")
    if not champion:
        raise GateError("no held-out outcomes to compare")
    n = len(champion)
    champion_verified, candidate_verified, b, c = _paired_counts(champion, candidate, range(n))
    if slices is not None and len(slices) != n:
        raise GateError(f"slices name {len(slices)} queries, but {n} were evaluated")
    per_slice = _slice_results(champion, candidate, slices) if slices is not None else ()
    p = mcnemar_exact(b, c)
    gain = 100.0 * (c - b) / n  # candidate minus champion accuracy, in points
    if gain <= 0:
        decision, reason = "rejected", f"the candidate is not better ({gain:+.1f} points)"
    elif gain < min_gain:
        decision, reason = "rejected", f"gain {gain:+.1f} points is below --min-gain {min_gain:g}"
    elif not p < alpha:
        decision, reason = "rejected", f"p = {p:.3g} is not below --alpha {alpha:g} ({c} vs {b} discordant queries)"
    else:
        worse = [r for r in per_slice if r.only_champion > r.only_candidate and r.p_value < alpha]
        if worse:
            w = min(worse, key=lambda r: r.p_value)
            decision, reason = "rejected", (
                f"{gain:+.1f} points overall, but significantly worse on slice {w.name!r}: "
                f"{w.gain_points:+.1f} points, p = {w.p_value:.3g} < {alpha:g} ({w.only_candidate} vs {w.only_champion} discordant queries)")
        else:
            decision, reason = "promoted", f"{gain:+.1f} points, p = {p:.3g} < {alpha:g}"
    return GateResult(
        decision=decision,
        reason=reason,
        queries=n,
        champion_verified=champion_verified,
        candidate_verified=candidate_verified,
        only_champion=b,
        only_candidate=c,
        p_value=p,
        min_gain=min_gain,
        alpha=alpha,
        slices=per_slice,
    )


def _paired_counts(champion: Sequence[bool], candidate: Sequence[bool], idx: Sequence[int]) -> tuple[int, int, int, int]:
    """Over the queries `idx`: champion verified, candidate verified, b (only the champion), c (only the candidate)."""
    b = sum(1 for i in idx if champion[i] and not candidate[i])
    c = sum(1 for i in idx if candidate[i] and not champion[i])
    return sum(1 for i in idx if champion[i]), sum(1 for i in idx if candidate[i]), b, c


def _slice_results(champion: Sequence[bool], candidate: Sequence[bool], slices: Sequence[str | None]) -> tuple[SliceResult, ...]:
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(slices):
        if name is None:
            continue
        if not isinstance(name, str) or not name.strip():
            raise GateError(f"held-out query {i + 1}: 'slice' must be a non-empty string, got {name!r}")
        groups.setdefault(name, []).append(i)
    out = []
    for name in sorted(groups):
        idx = groups[name]
        champion_verified, candidate_verified, b, c = _paired_counts(champion, candidate, idx)
        out.append(SliceResult(name=name, queries=len(idx), champion_verified=champion_verified, candidate_verified=candidate_verified,
                               only_champion=b, only_candidate=c, p_value=mcnemar_exact(b, c)))
    return tuple(out)
