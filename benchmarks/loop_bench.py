"""The full loop on arithmetic with the embedded SmolLM2-135M-Instruct:

    1. the runtime (Orchestrator + LATS + math verifier) answers training questions, logging traces;
    2. kaelum-ingest --once puts the logs into a store;
    3. kaelum-train fine-tunes a LoRA adapter on the verified traces (training_examples);
    4. kaelum-eval runs base and fine-tuned worker on held-out questions that never appeared in
       training (disjoint operand pairs, checked), same search settings and seed.

Goal: the fine-tuned worker beats the base worker by at least 10 points of verified accuracy.

    python benchmarks/loop_bench.py --train-questions 300 --test-questions 100
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_questions(n_train: int, n_test: int, seed: int, max_operand: int = 50) -> tuple[list[dict], list[dict]]:
    """Additions and non-negative subtractions of operands up to `max_operand`; train and test share no (a, op, b).

    A 135M model gets few multi-digit sums right, and only verified traces become training data,
    so the operands stay small enough for the base model to be right some of the time."""
    rng = random.Random(seed)
    seen: set[tuple[int, str, int]] = set()
    out: list[dict] = []
    if n_train + n_test > 2 * (max_operand - 1) ** 2 // 2:
        raise SystemExit(f"--max-operand {max_operand} allows too few distinct questions for {n_train + n_test}")
    while len(out) < n_train + n_test:
        a, b, op = rng.randint(2, max_operand), rng.randint(2, max_operand), rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        out.append({"query": f"What is {a} {op} {b}?", "domain": "math", "id": f"{a}{op}{b}"})
    return out[:n_train], out[n_train:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="base worker (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--train-questions", type=int, default=300)
    p.add_argument("--test-questions", type=int, default=100)
    p.add_argument("--simulations", type=int, default=2, help="LATS_SIMULATIONS for collection and evaluation")
    p.add_argument("--branching", type=int, default=3, help="LATS_BRANCHING")
    p.add_argument("--max-llm-calls", type=int, default=12, help="LATS_MAX_LLM_CALLS per query")
    p.add_argument("--max-operand", type=int, default=50)
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--min-reward", type=float, default=0.0, help="verified traces are all kept by default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="keep logs, store and model here (default: a temporary folder)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from ingest import ingest_once
    from kaelum import Orchestrator
    from train.config import DataArgs, LoraArgs, TrainArgs
    from train.api import train
    from train.evaluate import evaluate, format_table, settings_for

    work = args.workdir or tempfile.mkdtemp(prefix="kaelum-loop-")
    logs, store, out = (os.path.join(work, d) for d in ("logs", "store", "finetuned_math"))
    train_q, test_q = make_questions(args.train_questions, args.test_questions, args.seed, args.max_operand)
    assert not {q["query"] for q in train_q} & {q["query"] for q in test_q}
    overrides = {"LATS_SIMULATIONS": args.simulations, "LATS_BRANCHING": args.branching, "LATS_MAX_LLM_CALLS": args.max_llm_calls, "SEED": args.seed}
    timings = {}

    # 1. collect
    t0 = time.perf_counter()
    from tqdm import tqdm

    with Orchestrator(settings=settings_for(args.model, **overrides), enable_logging=True, log_dir=logs) as orch:
        collected = [orch.run(q["query"], domain="math", tags=["loop-bench-train"]) for q in tqdm(train_q, desc="collect")]
    timings["collect_s"] = time.perf_counter() - t0
    base_train_acc = sum(r.verified for r in collected) / len(collected)

    # 2-3. ingest and train on the verified traces
    t0 = time.perf_counter()
    ingest_once(logs, store, progress=False)
    targs = TrainArgs(model=args.model, output_dir=out, epochs=args.epochs, lr=args.lr, batch_size=8, seed=args.seed,
                      lora=LoraArgs(r=16, alpha=32), data=DataArgs(store=store, domain="math", min_reward=args.min_reward,
                                                                   max_seq_len=512, eval_split=0.1))
    from train.data import DataError

    try:
        result = train(targs)
    except DataError as exc:
        raise SystemExit(f"base model verified {100 * base_train_acc:.1f}% of {len(train_q)} training questions; nothing to train on: {exc}")
    timings["train_s"] = time.perf_counter() - t0
    manifest = json.load(open(os.path.join(out, "kaelum_manifest.json")))
    trained_queries = {q for q in (r.query for r in collected)}
    assert not trained_queries & {q["query"] for q in test_q}

    # 4. evaluate on held-out questions
    t0 = time.perf_counter()
    scores = evaluate([args.model, out], test_q, overrides)
    timings["eval_s"] = time.perf_counter() - t0

    delta = 100 * (scores[1].accuracy - scores[0].accuracy)
    print("\n=== loop benchmark: arithmetic, held-out questions ===")
    print(f"training questions {len(train_q)} (base verified {100 * base_train_acc:.1f}%), trained on {manifest['data']['trace_count']} "
          f"verified traces, held-out questions {len(test_q)}; search: {overrides}")
    print(format_table(scores))
    print(f"fine-tuned minus base, verified accuracy: {delta:+.1f} points (goal >= +10)")
    print(f"train metrics: {json.dumps({k: result.metrics.get(k) for k in ('train_loss', 'eval_loss', 'tokens_per_s')})}")
    print("timings: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f"; workdir {work}")


if __name__ == "__main__":
    main()
