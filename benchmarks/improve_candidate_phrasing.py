"""A finished improve_bench round's candidate on the held-out phrasing, against the base.

improve_bench.py measures the held-out phrasing on the *final champion* only; when no round is
promoted that is the base itself. This asks the question for a round's candidate instead: did
training on the rounds' phrasings move the same held-out operand pairs asked in another phrasing?
It reads the base's cached evaluation (`eval-<phrasing>-base.json`, written by improve_bench) and
caches the candidate's beside it.

    python benchmarks/improve_candidate_phrasing.py --workdir /work/runs/improve-both-s0 --seed 0 --round 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from improve_bench import gate_row, score_of  # noqa: E402
from loop_bench import make_questions  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="improve_bench's --workdir")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--phrasing", default="verbal", choices=["arithmetic", "word", "verbal"])
    p.add_argument("--train-questions", type=int, default=130)
    p.add_argument("--test-questions", type=int, default=80)
    p.add_argument("--max-operand", type=int, default=30)
    args = p.parse_args()
    from train.improve import EVAL_SETTINGS

    work = os.path.join(args.workdir, f"seed-{args.seed}")
    _, phrased_q = make_questions(args.train_questions, args.test_questions, args.seed, args.max_operand, "+", args.phrasing)
    with open(os.path.join(work, f"eval-{args.phrasing}-base.json"), encoding="utf-8") as fh:
        base = json.load(fh)["score"]
    cand_dir = os.path.join(work, "W", "rounds", f"round-{args.round:03d}", "candidate")
    cand = score_of(cand_dir, phrased_q, {**dict(EVAL_SETTINGS), "SEED": args.seed},
                    cache=os.path.join(work, f"eval-{args.phrasing}-candidate{args.round}.json"))
    g = gate_row(base["verified"], cand["verified"], 0.0, 0.05)
    print(f"seed {args.seed}, round {args.round} candidate on the held-out {args.phrasing} phrasing: base "
          f"{100 * g['champion_accuracy']:.1f}% -> candidate {100 * g['candidate_accuracy']:.1f}% "
          f"({g['gain_points']:+.1f} points, exact McNemar p = {g['p_value']:.3g})")


if __name__ == "__main__":
    main()
