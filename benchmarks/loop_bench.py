"""The full loop on arithmetic and on word problems with the embedded SmolLM2-135M-Instruct:

    1. collect: the runtime (Orchestrator + LATS + math verifier) answers training questions and
       logs every trace; collection uses a wide, shallow, sampled search (one batched call gives
       `--collect-branching` candidate steps, the depth limit then asks for answers in one
       batched call) so that it yields many verified traces per CPU-second;
    2. kaelum-ingest's `ingest_once` puts the logs into a store;
    3. kaelum-train fine-tunes a LoRA adapter on the verified traces (`training_examples`);
    4. kaelum-eval's `evaluate` runs the base and the fine-tuned worker through the runtime on
       held-out questions whose operand pairs never appear in training (checked), with the same
       evaluation settings and seed for both (greedy by default: one simulation, one branch,
       temperature 0, so the comparison measures the model, not search luck).

Every question carries its reference answer (`--family arithmetic`: "What is 7 + 9?"; `word`: "Ivo
has 7 shells and finds 9 more. How many shells does Ivo have now?"; `both`, the default, half and
half), so collection trains only on answers checked against a reference and the evaluation reports
accuracy checked against the references, per family: a word problem is never "verified" by the
branches agreeing.

Goal: the fine-tuned worker beats the base worker by at least 10 points of verified accuracy.

    python benchmarks/loop_bench.py --family arithmetic --train-questions 130 --test-questions 80   # the recorded run (benchmarks/README.md)
    python benchmarks/loop_bench.py --family word --train-questions 8 --test-questions 6 --epochs 1   # a small smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

log = logging.getLogger("loop_bench")


def pair_key(a: int, op: str, b: int) -> tuple[int, str, int]:
    """What 'the same question' means for held-out: 3 + 9 and 9 + 3 are one operand pair."""
    return (min(a, b), op, max(a, b)) if op == "+" else (a, op, b)


_NAMES = ("Ivo", "Lena", "Omar", "Tess", "Ravi", "Nell", "Kofi", "Yara", "Bram", "Suki")
_THINGS = ("shells", "stamps", "pebbles", "buttons", "acorns", "beads", "cards", "coins")


def word_problem(a: int, op: str, b: int, rng: random.Random) -> str:
    """A one-step word problem stating a + b or a - b (the templates of examples/word_problems.jsonl are multi-step)."""
    name, things = rng.choice(_NAMES), rng.choice(_THINGS)
    if op == "+":
        return f"{name} has {a} {things} and finds {b} more. How many {things} does {name} have now?"
    return f"{name} has {a} {things} and gives away {b}. How many {things} does {name} have left?"


def verbal(a: int, op: str, b: int) -> str:
    """The operation in words, a phrasing neither `arithmetic` nor `word` uses (family `verbal`: held out
    by the improve benchmark when the rounds collect both of the others)."""
    return f"What do you get when you add {a} and {b}?" if op == "+" else f"What do you get when you take {b} away from {a}?"


def make_questions(n_train: int, n_test: int, seed: int, max_operand: int = 30, ops: str = "+",
                   family: str = "arithmetic") -> tuple[list[dict], list[dict]]:
    """Additions (and with `ops="+-"` non-negative subtractions) of operands in 2..`max_operand`,
    asked as arithmetic, as word problems, in words (`verbal`), or (`family="both"`) arithmetic and
    word problems alternately; each with its reference.

    Every distinct operand pair is enumerated, shuffled with `seed` and dealt to test first, then
    train, so the two sets share no pair (a + b and b + a count as one pair). Operands stay small
    because a 135M model is right on such sums only some of the time, and only verified traces
    become training data."""
    pairs: dict[tuple[int, str, int], tuple[int, str, int]] = {}
    for a in range(2, max_operand + 1):
        for b in range(2, max_operand + 1):
            for op in ops:
                if op == "-" and b > a:
                    continue
                pairs.setdefault(pair_key(a, op, b), (a, op, b))
    if n_train + n_test > len(pairs):
        raise SystemExit(f"--max-operand {max_operand} gives {len(pairs)} distinct operand pairs, fewer than "
                         f"{n_train} + {n_test} questions; raise --max-operand or ask for fewer questions")
    rng = random.Random(seed)
    keys = sorted(pairs)
    rng.shuffle(keys)
    out = []
    for i, k in enumerate(keys[: n_train + n_test]):
        a, op, b = pairs[k]
        if op == "+" and rng.random() < 0.5:
            a, b = b, a  # both orders appear, but a pair is never on both sides
        kind = family if family != "both" else ("arithmetic", "word")[i % 2]
        query = f"What is {a} {op} {b}?" if kind == "arithmetic" else word_problem(a, op, b, rng) if kind == "word" else verbal(a, op, b)
        out.append({"query": query, "domain": "math", "id": f"{kind[0]}{a}{op}{b}", "key": k, "family": kind,
                    "reference": str(a + b if op == "+" else a - b)})
    test, train = out[:n_test], out[n_test:]
    assert not {q["key"] for q in train} & {q["key"] for q in test}
    return train, test


_NUMBER = re.compile(r"(?<![\d.])-?\d+(?:\.\d+)?")


def faithful(query: str, steps: list[str], answer: str) -> bool:
    """The rationale only states numbers it may state: the question's operands and the answer.

    The verifier checks the final answer and every written equation; a small model is still often
    right for a wrong reason ("adding 3 to 11 gives 14. Answer: 11 - 3 = 8"). Training on such
    traces teaches the wrong reasoning, so the benchmark keeps a verified trace only when every
    step equation holds and no step states a number other than an operand or the answer."""
    from kaelum.domains.math_expr import step_equations

    checks = step_equations(steps)
    if any(not c["ok"] for c in checks):
        return False
    allowed = {float(x) for x in _NUMBER.findall(query)} | {float(x) for x in _NUMBER.findall(answer or "")}
    said = [float(x) for s in steps for x in _NUMBER.findall(s)]
    return bool(said) and all(x in allowed for x in said) and any(x in {float(a) for a in _NUMBER.findall(answer or "")} for x in said)


def faithful_trace_ids(store: str) -> tuple[list[str], int]:
    """Ids of the verified traces in `store` whose rationale passes `faithful`, and how many were verified."""
    from train.data import open_store

    con = open_store(store)
    try:
        rows = con.sql("select trace_id, query, steps, final_answer from training_examples").to_arrow_table().to_pylist()
    finally:
        con.close()
    return [r["trace_id"] for r in rows if faithful(r["query"], list(r["steps"] or []), str(r["final_answer"] or ""))], len(rows)


def collect_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Search settings for collection: many candidates per batched call, no LLM judge, no reflections.

    The 135M model's yes/no judgements and reflections cost a call each and carry little signal
    at this size; the verifier is what decides which traces are kept."""
    return {
        "LATS_SIMULATIONS": args.collect_simulations,
        "LATS_BRANCHING": args.collect_branching,
        "LATS_MAX_DEPTH": args.collect_max_depth,
        "LATS_MAX_LLM_CALLS": args.collect_max_llm_calls,
        "LATS_LLM_VALUE_WEIGHT": 0.0,
        "LATS_REFLECTION": False,
        "TEMPERATURE": args.collect_temperature,
        "MAX_TOKENS_PER_STEP": args.max_step_tokens,
        "MAX_ROLLOUT_TOKENS": max(args.max_rollout_tokens, args.max_step_tokens),
        "SEED": args.seed,
    }


def eval_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The same settings for base and fine-tuned. Greedy by default: one branch, one simulation."""
    return {
        "LATS_SIMULATIONS": args.eval_simulations,
        "LATS_BRANCHING": args.eval_branching,
        "LATS_MAX_DEPTH": args.eval_max_depth,
        "LATS_MAX_LLM_CALLS": args.eval_max_llm_calls,
        "LATS_LLM_VALUE_WEIGHT": 0.0,
        "LATS_REFLECTION": False,
        "TEMPERATURE": args.eval_temperature,
        "SEED": args.seed,
    }


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b vs c discordant pairs (binomial, p = 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def checked_by_family(questions: list[dict], answers: list[dict]) -> dict[str, dict[str, int]]:
    """Per family: questions, and answers verified against their reference (never by agreement)."""
    out: dict[str, dict[str, int]] = {}
    for q, a in zip(questions, answers, strict=True):
        row = out.setdefault(q["family"], {"questions": 0, "correct": 0})
        row["questions"] += 1
        row["correct"] += int(bool(a["verified"]) and a.get("verified_by") == "reference")
    return out


def family_accuracy(questions: list[dict], scores: list[Any]) -> list[str]:
    """One line per model and family: accuracy checked against the references."""
    lines = []
    for s in scores:
        parts = [f"{fam} {r['correct']}/{r['questions']} ({100 * r['correct'] / r['questions']:.1f}%)"
                 for fam, r in sorted(checked_by_family(questions, s.answers).items())]
        lines.append(f"  {s.model}: correct against references: " + ", ".join(parts))
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="base worker (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--train-questions", type=int, default=130)
    p.add_argument("--test-questions", type=int, default=80)
    p.add_argument("--max-operand", type=int, default=30)
    p.add_argument("--ops", default="+", choices=["+", "-", "+-"], help="operations asked (subtraction: non-negative results)")
    p.add_argument("--family", default="both", choices=["arithmetic", "word", "verbal", "both"],
                   help="how the questions are asked: 'What is 7 + 9?', a word problem, or half and half")
    g = p.add_argument_group("collection search (verified traces per CPU-second)")
    g.add_argument("--collect-branching", type=int, default=8, help="candidates per batched expansion call")
    g.add_argument("--collect-simulations", type=int, default=3)
    g.add_argument("--collect-max-depth", type=int, default=2, help="2: one step, then answers asked for in one batched call")
    g.add_argument("--collect-max-llm-calls", type=int, default=6)
    g.add_argument("--collect-temperature", type=float, default=0.7)
    g.add_argument("--max-step-tokens", type=int, default=40)
    g.add_argument("--max-rollout-tokens", type=int, default=64)
    g = p.add_argument_group("evaluation search (the same for base and fine-tuned)")
    g.add_argument("--eval-branching", type=int, default=1)
    g.add_argument("--eval-simulations", type=int, default=1)
    g.add_argument("--eval-max-llm-calls", type=int, default=4)
    g.add_argument("--eval-max-depth", type=int, default=6,
                   help="steps a greedy solution may take (the runtime's default before 2026-11-27, which the recorded runs used)")
    g.add_argument("--eval-temperature", type=float, default=0.0, help="0 = greedy")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=float, default=4)
    g.add_argument("--lr", type=float, default=4e-4)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--min-reward", type=float, default=0.0, help="reward floor on the verified traces")
    g.add_argument("--all-verified", action="store_true", help="train on every verified trace, not only those with a faithful rationale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="keep logs, store, model and results here (default: a temporary folder)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "kaelum", "transformers", "ingest", "store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from tqdm import tqdm

    from ingest import ingest_once
    from kaelum import Orchestrator
    from train.api import train
    from train.config import DataArgs, LoraArgs, TrainArgs
    from train.data import DataError
    from train.evaluate import evaluate, format_table, settings_for

    work = args.workdir or tempfile.mkdtemp(prefix="kaelum-loop-")
    logs, store, out = (os.path.join(work, d) for d in ("logs", "store", "finetuned_math"))
    train_q, test_q = make_questions(args.train_questions, args.test_questions, args.seed, args.max_operand, args.ops, args.family)
    collect, evals = collect_settings(args), eval_settings(args)
    timings: dict[str, float] = {}
    log.info("workdir %s; %d training, %d held-out questions", work, len(train_q), len(test_q))

    # 1. collect
    t0 = time.perf_counter()
    with Orchestrator(settings=settings_for(args.model, **collect), enable_logging=True, log_dir=logs) as orch:
        orch.llm_for("math")  # load outside the timed loop's first query
        timings["load_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        collected = [orch.run(q["query"], domain="math", tags=["loop-bench-train", q["family"]], reference=q["reference"])
                     for q in tqdm(train_q, desc="collect", unit="q")]
        timings["collect_s"] = time.perf_counter() - t1
    n_verified = sum(r.verified for r in collected)
    n_checked = sum(r.verified and r.verified_by == "reference" for r in collected)
    calls = sum(r.usage.get("llm_calls", 0) for r in collected) / len(collected)
    log.info("collected %d traces, %d verified (%.1f/min)", len(collected), n_verified, 60 * n_verified / timings["collect_s"])

    # 2-3. ingest, then train on the verified traces
    t0 = time.perf_counter()
    ingest_once(logs, store, progress=False)
    keep, n_rows = faithful_trace_ids(store)
    where = None if args.all_verified else (f"trace_id IN ({', '.join(repr(t) for t in keep)})" if keep else "false")
    timings["ingest_s"] = time.perf_counter() - t0
    log.info("%d verified traces in the store, %d with a faithful rationale%s", n_rows, len(keep),
             "" if args.all_verified else " (trained on)")
    t0 = time.perf_counter()
    targs = TrainArgs(model=args.model, output_dir=out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      seed=args.seed, progress=False,
                      lora=LoraArgs(r=16, alpha=32), data=DataArgs(store=store, domain="math", min_reward=args.min_reward,
                                                                   where=where, max_seq_len=512, eval_split=0.1))
    try:
        result = train(targs)
    except DataError as exc:
        raise SystemExit(f"the base model verified {n_verified} of {len(train_q)} training questions; nothing to train on: {exc}")
    timings["train_s"] = time.perf_counter() - t0
    with open(os.path.join(out, "kaelum_manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    trained = {r.query for r in collected if r.trace_id in set(manifest["data"].get("trace_ids", []))}
    assert not trained & {q["query"] for q in test_q}, "a held-out question was trained on"

    # 4. evaluate base and fine-tuned on the held-out questions, same settings and seed
    t0 = time.perf_counter()
    scores = evaluate([args.model, out], test_q, evals)
    timings["eval_s"] = time.perf_counter() - t0

    base, tuned = scores
    both = list(zip(base.answers, tuned.answers))
    b = sum(1 for x, y in both if x["verified"] and not y["verified"])
    c = sum(1 for x, y in both if y["verified"] and not x["verified"])
    delta = 100 * (tuned.accuracy - base.accuracy)
    n = len(test_q)
    print("\n=== loop benchmark: arithmetic (operands 2..%d), held-out questions ===" % args.max_operand)
    print(f"collection: {len(train_q)} questions, {n_verified} verified ({100 * n_verified / len(train_q):.1f}%, "
          f"{n_checked} checked against their reference), "
          f"{calls:.1f} LLM calls/q; search {collect}")
    print(f"training: {manifest['data']['trace_count']} verified traces "
          f"({'all verified' if args.all_verified else f'with a faithful rationale, of {n_rows} verified'}), {args.epochs} epochs, lr {args.lr}; "
          f"metrics {json.dumps({k: result.metrics.get(k) for k in ('train_loss', 'eval_loss')})}")
    print(f"evaluation: {n} held-out questions (no operand pair seen in training); search {evals}")
    print(format_table(scores))
    for s in scores:
        lo, hi = wilson(s.accuracy, n)
        print(f"  {s.model}: {s.verified}/{n} verified, 95% CI {100 * lo:.0f}-{100 * hi:.0f}%")
    for line in family_accuracy(test_q, scores):
        print(line)
    print(f"fine-tuned minus base, verified accuracy: {delta:+.1f} points (goal >= +10); "
          f"paired: fine-tuned alone right on {c}, base alone on {b}, exact McNemar p = {mcnemar_p(b, c):.3g}")
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f", total {sum(timings.values()):.0f}; workdir {work}")
    with open(os.path.join(work, "loop_results.json"), "w", encoding="utf-8") as fh:
        json.dump({"args": vars(args), "timings": timings, "collect_verified": n_verified, "trace_count": manifest["data"]["trace_count"],
                   "scores": [s.row() for s in scores], "answers": {s.model: s.answers for s in scores},
                   "by_family": {s.model: checked_by_family(test_q, s.answers) for s in scores}}, fh, indent=1)


if __name__ == "__main__":
    main()
