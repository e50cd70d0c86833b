"""What `kaelum improve` shows: a table per round and a PNG of held-out accuracy by round."""

from __future__ import annotations

import os
from typing import Any, Sequence


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(ci: Sequence[float]) -> str:
    return f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%"


def format_round(rec: dict[str, Any]) -> str:
    """One round as a small table: both models' held-out accuracy with CIs, the test and the decision."""
    n = rec["held_out"]
    rows = [
        ("champion", rec["champion"], rec["champion_accuracy"], rec["champion_ci"]),
        ("candidate", rec["candidate"], rec["candidate_accuracy"], rec["candidate_ci"]),
    ]
    w = max(len(r[1]) for r in rows)
    lines = [
        f"round {rec['round']}: {rec['decision'].upper()} ({rec['reason']})",
        f"  {'':<10} {'model':<{w}}  {'verified':>9}  {'accuracy':>8}  95% CI",
    ]
    for role, model, acc, ci in rows:
        lines.append(f"  {role:<10} {model:<{w}}  {round(acc * n):>4}/{n:<4}  {_pct(acc):>8}  {_ci(ci)}")
    secs = rec.get("seconds") or {}
    for sl in rec.get("slices") or []:
        lines.append(
            f"  slice {sl['slice']!r}: champion {sl['champion_verified']}/{sl['queries']}, candidate "
            f"{sl['candidate_verified']}/{sl['queries']} ({sl['gain_points']:+.1f} points, p = {sl['p_value']:.3g})"
        )
    lines.append(
        f"  gain {rec['gain_points']:+.1f} points (--min-gain {rec['min_gain']:g}); only the candidate right on "
        f"{rec['only_candidate']}, only the champion on {rec['only_champion']}; exact McNemar p = {rec['p_value']:.3g} "
        f"(--alpha {rec['alpha']:g})"
    )
    lines.append(
        f"  trained on {rec['examples']} examples ({rec['method']}); seconds "
        + ", ".join(f"{k} {v:.0f}" for k, v in secs.items())
    )
    return "\n".join(lines)


def write_plot(rounds: Sequence[dict[str, Any]], path: str) -> None:
    """Held-out verified accuracy by round: champion and candidate with 95% CIs; promoted rounds filled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(rounds) + 2.5), 3.6))
    for key, label, dx, color in (("champion", "champion", -0.08, "tab:gray"), ("candidate", "candidate", 0.08, "tab:blue")):
        acc = [100 * r[f"{key}_accuracy"] for r in rounds]
        # max(0, ...): at 0% or 100% the interval's end equals the estimate up to rounding.
        lo = [max(0.0, a - 100 * r[f"{key}_ci"][0]) for a, r in zip(acc, rounds)]
        hi = [max(0.0, 100 * r[f"{key}_ci"][1] - a) for a, r in zip(acc, rounds)]
        ax.errorbar([x + dx for x in xs], acc, yerr=[lo, hi], fmt="o", capsize=4, color=color, label=f"{label} (95% CI)")
    for r in rounds:
        mark = "promoted" if r["decision"] == "promoted" else "rejected"
        ax.annotate(mark, (r["round"], 100 * max(r["candidate_ci"][1], r["champion_ci"][1]) + 2), ha="center", fontsize=8,
                    color="tab:green" if mark == "promoted" else "tab:red")
    ax.set_xticks(xs)
    ax.set_xlabel("round")
    ax.set_ylabel("held-out verified accuracy (%)")
    ax.set_ylim(0, 110)
    ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
    ax.set_title(f"kaelum improve: {rounds[0]['held_out']} held-out queries")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
