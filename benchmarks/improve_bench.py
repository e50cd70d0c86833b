"""`kaelum improve` with the embedded SmolLM2-135M-Instruct on additions: rounds, the gate, GRPO.

The questions are asked as arithmetic ("What is 7 + 9?"), as one-step word problems ("Ivo has 7
shells and finds 9 more. ..."), or alternately (`--family both`, the default), each with its
reference answer; accuracy is reported per family, counting only answers checked against the
reference (a word problem is never "verified" by the branches agreeing).

Per seed (each a full replicate: other questions, search and training randomness):

    1. rounds: `train.improve.improve` runs `--rounds` gated rounds on additions (collect with the
       champion → ingest → SFT candidate from the champion → held-out evaluation of both → gate),
       reporting held-out verified accuracy per round with 95% CIs. Goal: every promoted round
       improves, and the final champion is at least base + 25 points.
    2. templates held out from every round, base against the final champion:
       - another phrasing of the same task: with `--family arithmetic` the held-out additions asked
         as word problems, with `--family word` or `verbal` asked as arithmetic, with `both` (rounds
         on arithmetic and word problems) asked in words ("What do you get when you add 7 and 9?")
         — the same held-out operand pairs, so only the phrasing differs;
       - another operation: subtractions ("What is a - b?", "... gives away b. How many ... left?"),
         which no round collected or trained on.
    3. the gate: a sabotaged candidate, trained from the base on round 1's examples with every
       answer replaced by a wrong one, goes through the same gate against the base; it must be rejected.
    4. GRPO against SFT at equal wall-clock on the same questions: GRPO from the base on round 1's
       collected questions, stopped when it has trained as long as round 1's SFT candidate did,
       then evaluated like every candidate.
    5. with `--grpo-after-sft`: GRPO from the final champion instead (the same questions and
       budget), against the champion: RL after SFT, where the model already writes the answer line
       that the verifier reads.

Held-out additions never share an operand pair with the training questions (3 + 9 and 9 + 3 are
one pair; `loop_bench.make_questions`), so no held-out query is in training by text either.

    python benchmarks/improve_bench.py --seeds 0 1 --rounds 3 --train-questions 130 --test-questions 80   # the full run
    python benchmarks/improve_bench.py --seeds 0 --rounds 1 --train-questions 12 --test-questions 12 --skip-grpo  # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from loop_bench import checked_by_family, make_questions  # noqa: E402  (the one-round benchmark's questions and per-family count)

log = logging.getLogger("improve_bench")


def write_jsonl(path: str, rows: list[dict[str, Any]]) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"query": r["query"], "domain": "math", "reference": r["reference"]}) + "\n")
    return path


def subtraction_questions(n: int, seed: int, max_operand: int, family: str) -> list[dict[str, Any]]:
    """Non-negative subtractions: the template held out from every round (in the rounds' family)."""
    _, test = make_questions(0, n, seed + 10_000, max_operand, ops="-", family=family)
    return test


def family_line(fams: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{f} {r['correct']}/{r['questions']} ({pct(r['correct'] / r['questions'])})" for f, r in sorted(fams.items()))


def score_of(model: str, queries: list[dict[str, Any]], settings: dict[str, Any], cache: str | None = None) -> dict[str, Any]:
    """A model's held-out answers; `verified` is per query whether a checking method verified it (what the gate counts).

    With `cache` (a JSON file), a finished evaluation of the same model, queries and settings is read
    back instead of run again, so that a rerun of the benchmark resumes where it stopped."""
    from train.evaluate import checked_outcomes, evaluate_model

    key = {"model": os.path.realpath(model), "queries": [q["query"] for q in queries], "settings": settings}
    if cache is not None and os.path.isfile(cache):
        with open(cache, encoding="utf-8") as fh:
            saved = json.load(fh)
        if saved.get("key") == json.loads(json.dumps(key, default=str)):
            return saved["score"]
    s = evaluate_model(model, queries, settings, progress=True)
    # In its JSON form, the one a resumed run reads back.
    out = json.loads(json.dumps({"model": model, "row": s.row(), "verified": checked_outcomes(s.answers), "answers": s.answers}, default=str))
    if cache is not None:
        tmp = cache + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"key": key, "score": out}, fh, default=str)
        os.replace(tmp, cache)
    return out


def gate_row(champion: list[bool], candidate: list[bool], min_gain: float, alpha: float) -> dict[str, Any]:
    from train.gate import decide

    g = decide(champion, candidate, min_gain, alpha)
    return {"decision": g.decision, "reason": g.reason, "champion_accuracy": g.champion_accuracy, "candidate_accuracy": g.candidate_accuracy,
            "champion_ci": list(g.champion_ci), "candidate_ci": list(g.candidate_ci), "p_value": g.p_value, "gain_points": g.gain_points}


def sabotaged(examples: list[Any], seed: int) -> list[Any]:
    """The same traces with every final answer replaced by a wrong number (and the steps, which state it, dropped)."""
    rng = random.Random(seed)
    out = []
    for e in examples:
        try:
            right = int(float(e.final_answer))
        except ValueError:
            right = 0
        out.append(dataclasses.replace(e, final_answer=str(right + rng.choice([-3, -2, -1, 1, 2, 3])), steps=()))
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def ci(c: list[float]) -> str:
    return f"{100 * c[0]:.0f}-{100 * c[1]:.0f}%"


def run_seed(args: argparse.Namespace, seed: int, work: str) -> dict[str, Any]:
    from train.config import DataArgs, LoraArgs, TrainArgs
    from train.data import Selection, select_examples
    from train.evaluate import checked_outcomes
    from train.improve import COLLECT_SETTINGS, EVAL_SETTINGS, ImproveArgs, improve

    os.makedirs(work, exist_ok=True)
    train_q, held_q = make_questions(args.train_questions, args.test_questions, seed, args.max_operand, "+", args.family)
    sub_q = subtraction_questions(args.test_questions, seed, args.max_operand, args.family)
    queries = write_jsonl(os.path.join(work, "train.jsonl"), train_q)
    held = write_jsonl(os.path.join(work, "held.jsonl"), held_q)
    collect = {**COLLECT_SETTINGS, "MAX_TOKENS_PER_STEP": args.max_step_tokens, "MAX_ROLLOUT_TOKENS": max(args.max_rollout_tokens, args.max_step_tokens)}
    evals = dict(EVAL_SETTINGS)
    iargs = ImproveArgs(domain="math", queries=queries, held_out=held, rounds=args.rounds, workdir=os.path.join(work, "W"), model=args.model,
                        min_gain=args.min_gain, alpha=args.alpha, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                        min_reward=args.min_reward, seed=seed, collect_settings=collect, eval_settings=evals, progress=True)
    t0 = time.perf_counter()
    rounds = improve(iargs)
    out: dict[str, Any] = {"seed": seed, "rounds": rounds, "rounds_s": time.perf_counter() - t0}
    # per round and family, held-out accuracy checked against the references (what the gate's `verified` is, split by family)
    out["rounds_by_family"] = []
    for r in rounds:
        rdir = os.path.join(iargs.workdir, "rounds", f"round-{r['round']:03d}")
        out["rounds_by_family"].append({m: checked_by_family(held_q, json.load(open(os.path.join(rdir, f"eval-{m}.json")))["answers"])
                                        for m in ("champion", "candidate")})
    base = json.load(open(os.path.join(iargs.workdir, "run.json")))["base_dir"]
    champion = os.path.realpath(os.path.join(iargs.workdir, "champion"))
    eval_settings = {**evals, "SEED": seed}

    # 2. held-out templates: the same additions in the phrasing no round used, then subtraction
    if not args.skip_template:
        other = {"arithmetic": "word", "word": "arithmetic", "both": "verbal", "verbal": "arithmetic"}.get(args.family)
        if other is not None:
            t0 = time.perf_counter()
            # The same seed deals the same held-out operand pairs whatever the family: only the phrasing differs.
            _, phrased_q = make_questions(args.train_questions, args.test_questions, seed, args.max_operand, "+", other)
            assert [q["key"] for q in phrased_q] == [q["key"] for q in held_q]
            ph_base = score_of(base, phrased_q, eval_settings, cache=os.path.join(work, f"eval-{other}-base.json"))
            ph_champ = (score_of(champion, phrased_q, eval_settings, cache=os.path.join(work, f"eval-{other}-champion.json"))
                        if champion != os.path.realpath(base) else ph_base)
            out["phrasing"] = {"family": other, "base": ph_base["row"], "champion": ph_champ["row"],
                               "gate": gate_row(ph_base["verified"], ph_champ["verified"], 0.0, args.alpha), "seconds": time.perf_counter() - t0}
    if not args.skip_template and not args.skip_subtraction:
        t0 = time.perf_counter()
        sub_base = score_of(base, sub_q, eval_settings, cache=os.path.join(work, "eval-subtraction-base.json"))
        sub_champ = (score_of(champion, sub_q, eval_settings, cache=os.path.join(work, "eval-subtraction-champion.json"))
                     if champion != os.path.realpath(base) else sub_base)
        out["subtraction"] = {"base": sub_base["row"], "champion": sub_champ["row"],
                              "by_family": {"base": checked_by_family(sub_q, sub_base["answers"]), "champion": checked_by_family(sub_q, sub_champ["answers"])},
                              "gate": gate_row(sub_base["verified"], sub_champ["verified"], 0.0, args.alpha), "seconds": time.perf_counter() - t0}

    # 3. the gate against a sabotaged candidate (from the base, on round 1's examples with wrong answers)
    r1 = os.path.join(iargs.workdir, "rounds", "round-001")
    pinned = json.load(open(os.path.join(r1, "selection.json")))
    sel = select_examples(iargs.store_path, method="sft", domain="math", min_reward=iargs.min_reward)
    chosen = [e for e in sel.examples if e.trace_id in set(pinned["trace_ids"])]
    bad_dir = os.path.join(work, "sabotaged")
    t0 = time.perf_counter()
    if not os.path.isfile(os.path.join(bad_dir, "kaelum_manifest.json")):
        from train.trainer import run_training

        targs = TrainArgs(model=base, output_dir=bad_dir, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=seed, merge=True,
                          progress=False, lora=LoraArgs(r=16, alpha=32), data=DataArgs(store=iargs.store_path, domain="math", max_seq_len=512)).validate()
        run_training(targs, Selection(examples=sabotaged(chosen, seed), stages=[("round 1's examples, answers replaced by wrong ones", len(chosen))]))
    base_eval = json.load(open(os.path.join(r1, "eval-champion.json")))
    base_verified = checked_outcomes(base_eval["answers"])
    bad = score_of(bad_dir, held_q, eval_settings, cache=os.path.join(work, "eval-sabotaged.json"))
    out["sabotage"] = {"examples": len(chosen), "row": bad["row"], "gate": gate_row(base_verified, bad["verified"], args.min_gain, args.alpha),
                       "seconds": time.perf_counter() - t0}

    # 4. GRPO at SFT's wall-clock, on round 1's questions
    if not args.skip_grpo:
        out["grpo"] = run_grpo_vs_sft(args, seed, work, iargs, base, base_verified, held_q, eval_settings)
    # 5. GRPO after SFT: from the final champion, the same budget, against the champion
    if args.grpo_after_sft and champion != os.path.realpath(base):
        champ_eval = score_of(champion, held_q, eval_settings, cache=os.path.join(work, "eval-champion.json"))
        g = run_grpo_vs_sft(args, seed, work, iargs, champion, champ_eval["verified"], held_q, eval_settings, name="grpo-after-sft")
        out["grpo_after_sft"] = {**g, "champion": champ_eval["row"]}
    return out


def run_grpo_vs_sft(args, seed, work, iargs, base, base_verified, held_q, eval_settings, name: str = "grpo") -> dict[str, Any]:
    """GRPO from `base` on round 1's collected questions for as long as round 1's SFT trained, then
    its held-out evaluation, against `base_verified` (the starting model's outcomes) and round 1's SFT candidate."""
    from transformers import TrainerCallback

    from train.config import DataArgs, LoraArgs, TrainArgs
    from train.data import Selection, select_examples
    from train.evaluate import checked_outcomes
    from train.grpo import run_grpo

    r1 = os.path.join(iargs.workdir, "rounds", "round-001")
    sft_train = json.load(open(os.path.join(r1, "train.json")))
    budget = float(sft_train["metrics"]["train_runtime_s"])
    sel = select_examples(iargs.store_path, method="grpo", domain="math", min_reward=None)
    round1 = [e for e in sel.examples if "improve-round-1" in e.tags]

    class WallClock(TrainerCallback):
        """Stop once GRPO has trained as long as SFT did."""

        def on_train_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if time.perf_counter() - self.t0 >= budget:
                control.should_training_stop = True
                control.should_save = True

    out_dir = os.path.join(work, name)
    if not os.path.isfile(os.path.join(out_dir, "kaelum_manifest.json")):
        targs = TrainArgs(model=base, output_dir=out_dir, method="grpo", epochs=100, lr=args.grpo_lr, batch_size=args.grpo_batch, seed=seed,
                          merge=True, progress=True, logging_steps=1, grpo_num_generations=args.grpo_generations,
                          grpo_max_completion_length=args.grpo_max_completion, grpo_temperature=0.8,
                          lora=LoraArgs(r=16, alpha=32), data=DataArgs(store=iargs.store_path, domain="math")).validate()
        run_grpo(targs, Selection(examples=round1, stages=[("round 1's collected questions", len(round1))]), callbacks=[WallClock()])
    manifest = json.load(open(os.path.join(out_dir, "kaelum_manifest.json")))
    grpo = score_of(out_dir, held_q, eval_settings, cache=os.path.join(work, f"eval-{name}.json"))
    sft = json.load(open(os.path.join(r1, "eval-candidate.json")))
    return {"budget_s": budget, "grpo_train_s": manifest["metrics"]["train_runtime_s"], "prompts": manifest["metrics"].get("prompts"),
            "mean_logged_reward": manifest["metrics"].get("mean_logged_reward"),
            "grpo": grpo["row"], "sft": sft["row"], "grpo_vs_base": gate_row(base_verified, grpo["verified"], 0.0, args.alpha),
            "grpo_vs_sft": gate_row(checked_outcomes(sft["answers"]), grpo["verified"], 0.0, args.alpha)}


def report(results: list[dict[str, Any]]) -> None:
    for res in results:
        rounds = res["rounds"]
        print(f"\n=== seed {res['seed']}: {len(rounds)} rounds, {res['rounds_s']:.0f} s ===")
        print("round  decision   champion acc (95% CI)     candidate acc (95% CI)    p        examples")
        for r in rounds:
            print(f"{r['round']:>5}  {r['decision']:<9}  {pct(r['champion_accuracy']):>6} ({ci(r['champion_ci'])})"
                  f"      {pct(r['candidate_accuracy']):>6} ({ci(r['candidate_ci'])})      {r['p_value']:<7.3g}  {r['examples']}")
        for r, fam in zip(rounds, res.get("rounds_by_family", [])):
            print(f"{r['round']:>5}  checked against references: champion {family_line(fam['champion'])}; candidate {family_line(fam['candidate'])}")
        base_acc = rounds[0]["champion_accuracy"]
        final = rounds[-1]["candidate_accuracy"] if rounds[-1]["decision"] == "promoted" else rounds[-1]["champion_accuracy"]
        promoted = [r for r in rounds if r["decision"] == "promoted"]
        improving = all(r["candidate_accuracy"] > r["champion_accuracy"] for r in promoted)
        print(f"final champion {pct(final)} vs base {pct(base_acc)}: {100 * (final - base_acc):+.1f} points (goal >= +25); "
              f"every promoted round improved: {improving}")
        if "phrasing" in res:
            s = res["phrasing"]
            print(f"held-out phrasing (the held-out additions as {s['family']}): base {pct(s['base']['verified_accuracy'])}, "
                  f"champion {pct(s['champion']['verified_accuracy'])}, p = {s['gate']['p_value']:.3g}")
        if "subtraction" in res:
            s = res["subtraction"]
            print(f"held-out template (subtraction): base {pct(s['base']['verified_accuracy'])}, champion {pct(s['champion']['verified_accuracy'])}, "
                  f"p = {s['gate']['p_value']:.3g}; by family: base {family_line(s['by_family']['base'])}, champion {family_line(s['by_family']['champion'])}")
        b = res["sabotage"]
        print(f"sabotaged candidate ({b['examples']} examples, wrong answers): {pct(b['gate']['candidate_accuracy'])} vs base "
              f"{pct(b['gate']['champion_accuracy'])} -> {b['gate']['decision']} ({b['gate']['reason']}); goal: rejected")
        if "grpo" in res:
            g = res["grpo"]
            print(f"GRPO vs SFT at {g['budget_s']:.0f} s of training ({g['prompts']} questions): GRPO {pct(g['grpo']['verified_accuracy'])} "
                  f"(vs base p = {g['grpo_vs_base']['p_value']:.3g}), SFT {pct(g['sft']['verified_accuracy'])} (GRPO vs SFT p = {g['grpo_vs_sft']['p_value']:.3g}); "
                  f"mean reward of GRPO's samples {g.get('mean_logged_reward')}")
        if "grpo_after_sft" in res:
            g = res["grpo_after_sft"]
            print(f"GRPO after SFT (from the champion, {g['budget_s']:.0f} s): {pct(g['grpo']['verified_accuracy'])} against the champion's "
                  f"{pct(g['champion']['verified_accuracy'])} (p = {g['grpo_vs_base']['p_value']:.3g}); mean reward of its samples {g.get('mean_logged_reward')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-questions", type=int, default=130)
    p.add_argument("--test-questions", type=int, default=80)
    p.add_argument("--max-operand", type=int, default=30)
    p.add_argument("--family", default="both", choices=["arithmetic", "word", "verbal", "both"],
                   help="questions asked as arithmetic, as one-step word problems, or alternately (loop_bench.make_questions)")
    p.add_argument("--max-step-tokens", type=int, default=40)
    p.add_argument("--max-rollout-tokens", type=int, default=64)
    p.add_argument("--epochs", type=float, default=4)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--min-reward", type=float, default=0.9, help="verified traces whose stated step equations hold (reward 1.0)")
    p.add_argument("--min-gain", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--skip-template", action="store_true", help="skip both held-out templates (the other phrasing and subtraction)")
    p.add_argument("--skip-subtraction", action="store_true", help="skip the held-out subtraction template only")
    p.add_argument("--skip-grpo", action="store_true")
    p.add_argument("--grpo-after-sft", action="store_true",
                   help="also GRPO from the final champion (same budget and questions), evaluated against the champion")
    p.add_argument("--grpo-lr", type=float, default=1e-5)
    p.add_argument("--grpo-batch", type=int, default=8, help="completions per step")
    p.add_argument("--grpo-generations", type=int, default=4)
    p.add_argument("--grpo-max-completion", type=int, default=64)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "kaelum", "transformers", "ingest", "store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    work = args.workdir or tempfile.mkdtemp(prefix="kaelum-improve-")
    t0 = time.perf_counter()
    results = [run_seed(args, seed, os.path.join(work, f"seed-{seed}")) for seed in args.seeds]
    report(results)
    with open(os.path.join(work, "improve_bench.json"), "w", encoding="utf-8") as fh:
        json.dump({"args": vars(args), "results": results, "seconds": time.perf_counter() - t0}, fh, indent=1, default=str)
    print(f"total {time.perf_counter() - t0:.0f} s; workdir {work}; load {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
