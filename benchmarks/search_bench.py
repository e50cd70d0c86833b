"""Search strategies at an equal budget of LLM calls, on held-out arithmetic, with the embedded model.

    python benchmarks/search_bench.py                       # 8 questions, 8 LLM calls each
    python benchmarks/search_bench.py --questions 20 --budget 12 --json out.json
    python benchmarks/search_bench.py --questions 20 --budget 16 --strategies "best-of-N batched verifier,LATS wide"

Strategies, each given the same questions and the same cap of LLM calls per question (one call
may sample several sequences, as a LATS expansion does):

- greedy: one solution at temperature 0 (plus one call asking for the answer if it wrote none);
- best-of-N, majority vote: N = budget // 2 sampled solutions (each with its answer call if needed),
  the most frequent answer wins — no verifier involved in choosing;
- best-of-N, verifier picks: the same samples, but any answer that passes the math verifier is
  chosen — what a search with the verifier in the loop could at best select from independent samples;
- LATS deep: `kaelum.lats.LATS` with `max_llm_calls = budget`, branching 3, depth 6, the LLM value
  judge at weight 0.5 and reflections (the runtime's defaults before 2026-11-27, and the shape of
  the LATS paper's search);
- LATS deep, no LLM value judge: the same with `llm_value_weight = 0` (values from
  self-consistency only), which leaves more of the budget for expansions and rollouts;
- best-of-N batched, verifier picks: each call samples --wide full solutions at once (the local
  engine decodes them as one batch; a server gets `n`), calls repeated while the budget lasts;
  any verified answer is chosen, else the majority;
- LATS wide: branching --wide, max depth 2, no LLM value judge, no reflections — the runtime's
  defaults since 2026-11-27 (and the loop benchmark's collection settings): one batched call
  proposes --wide first steps, then each selected step gets its answers in one batched call;
- LATS wide + reflection: the same with reflections on (at most one per simulation).

The last two sample --wide sequences per call, so at the same number of calls they spend several
times the tokens of the others: compare them with each other, and read the tokens column.

Reported per strategy: verified accuracy (the chosen answer passes the sympy math verifier, which
computes the value from the question), LLM calls, completion tokens and seconds per question.
The questions are generated from a fixed seed and never appear in examples/ or in prompts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from kaelum.config import Settings
from kaelum.domains import get_domain
from kaelum.domains.base import VerifyContext
from kaelum.lats import LATS, parse_continuation
from kaelum.llm import load_llm
from kaelum.llm.base import LLM, SamplingParams, UsageCounter
from kaelum.prompts import ANSWER_PREFIX, worker_messages

log = logging.getLogger("search_bench")


def held_out_questions(n: int, seed: int = 20261127) -> list[str]:
    """Arithmetic questions from templates with a fixed seed (one- and two-operation)."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        kind = rng.choice(["add", "sub", "mul", "mul_add", "word"])
        # Small operands: the 135M model is right on some of these, so the strategies can differ.
        a, b, c = rng.randint(2, 20), rng.randint(2, 15), rng.randint(2, 9)
        if kind == "add":
            q = f"What is {a} + {b}?"
        elif kind == "sub":
            a, b = max(a, b), min(a, b)
            q = f"What is {a} - {b}?"
        elif kind == "mul":
            q = f"What is {c} * {rng.randint(2, 12)}?"
        elif kind == "mul_add":
            q = f"What is {c} * {rng.randint(2, 9)} + {rng.randint(1, 20)}?"
        else:
            q = f"Compute {a} + {b} - {c}."
        if q not in out:
            out.append(q)
    return out


@dataclass
class Outcome:
    answer: str | None
    verified: bool
    usage: UsageCounter
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class Strategies:
    def __init__(self, llm: LLM, settings: Settings, budget: int, seed: int, wide: int = 8) -> None:
        self.llm = llm
        self.domain = get_domain("math")
        self.settings = settings
        self.budget = budget
        self.seed = seed
        self.wide = wide

    def verify(self, query: str, answer: str | None) -> bool:
        return bool(self.domain.verify(answer, VerifyContext(query=query)).passed)

    def _solve_once(self, query: str, usage: UsageCounter, temperature: float, seed: int) -> str | None:
        """One full solution; if it has no 'Answer:' line, one more call asks for the answer."""
        msgs = worker_messages("math", query)
        sp = SamplingParams(max_tokens=self.settings.MAX_ROLLOUT_TOKENS, temperature=temperature, top_p=self.settings.TOP_P, seed=seed)
        comp = self.llm.generate(msgs, n=1, params=sp)
        usage.add(comp)
        steps, block = parse_continuation(comp[0].text)
        if block is None:
            prefix = "".join(f"Step {i + 1}: {s}\n" for i, s in enumerate(steps)) + ANSWER_PREFIX
            forced = self.llm.generate(msgs, n=1, params=replace(sp, max_tokens=32), prefix=prefix)
            usage.add(forced)
            first = next((ln.strip() for ln in forced[0].text.split("\n") if ln.strip()), "")
            block = f"{ANSWER_PREFIX} {first}"
        return self.domain.extract_answer(block)

    def greedy(self, query: str) -> Outcome:
        usage, t0 = UsageCounter(), time.monotonic()
        answer = self._solve_once(query, usage, 0.0, self.seed)
        return Outcome(answer, self.verify(query, answer), usage, time.monotonic() - t0)

    def best_of_n(self, query: str) -> tuple[Outcome, Outcome]:
        usage, t0 = UsageCounter(), time.monotonic()
        answers: list[str | None] = []
        n = max(self.budget // 2, 1)
        for i in range(n):
            if usage.llm_calls >= self.budget:
                break
            answers.append(self._solve_once(query, usage, self.settings.TEMPERATURE, self.seed * 1000 + i))
        seconds = time.monotonic() - t0
        votes = Counter(a for a in answers if a is not None)
        majority = votes.most_common(1)[0][0] if votes else None
        passing = [a for a in answers if a is not None and self.verify(query, a)]
        vote = Outcome(majority, self.verify(query, majority), usage, seconds, {"samples": len(answers)})
        picked = Outcome(passing[0] if passing else majority, bool(passing), usage, seconds, {"samples": len(answers)})
        return vote, picked

    def best_of_n_batched(self, query: str) -> Outcome:
        """Calls of `wide` full solutions each; a solution without an answer line gets one more call."""
        usage, t0 = UsageCounter(), time.monotonic()
        msgs = worker_messages("math", query)
        answers: list[str | None] = []
        j = 0
        while usage.llm_calls < self.budget:
            sp = SamplingParams(max_tokens=self.settings.MAX_ROLLOUT_TOKENS, temperature=self.settings.TEMPERATURE,
                                top_p=self.settings.TOP_P, seed=self.seed * 1000 + j)
            j += 1
            comps = self.llm.generate(msgs, n=self.wide, params=sp)
            usage.add(comps)
            for comp in comps:
                steps, block = parse_continuation(comp.text)
                if block is None:
                    if usage.llm_calls >= self.budget:
                        continue
                    prefix = "".join(f"Step {i + 1}: {s}\n" for i, s in enumerate(steps)) + ANSWER_PREFIX
                    forced = self.llm.generate(msgs, n=1, params=replace(sp, max_tokens=32), prefix=prefix)
                    usage.add(forced)
                    first = next((ln.strip() for ln in forced[0].text.split("\n") if ln.strip()), "")
                    block = f"{ANSWER_PREFIX} {first}"
                answers.append(self.domain.extract_answer(block))
            if any(a is not None and self.verify(query, a) for a in answers):
                break  # the verifier already has what it would pick
        votes = Counter(a for a in answers if a is not None)
        majority = votes.most_common(1)[0][0] if votes else None
        passing = [a for a in answers if a is not None and self.verify(query, a)]
        return Outcome(passing[0] if passing else majority, bool(passing), usage, time.monotonic() - t0,
                       {"samples": len(answers)})

    def lats_wide(self, query: str, **overrides: Any) -> Outcome:
        settings = dict(branching=self.wide, max_depth=2, llm_value_weight=0.0, reflections=False)
        return self.lats(query, **{**settings, **overrides})

    def lats_deep(self, query: str, **overrides: Any) -> Outcome:
        settings = dict(branching=3, max_depth=6, llm_value_weight=0.5, judge_samples=3, reflections=True)
        return self.lats(query, **{**settings, **overrides})

    def lats(self, query: str, **overrides: Any) -> Outcome:
        t0 = time.monotonic()
        params = replace(self.settings.lats_params(), max_llm_calls=self.budget, simulations=10_000, seed=self.seed, **overrides)
        result = LATS(self.llm, self.domain, query, params).run()
        verified = result.verdict is not None and bool(result.verdict.passed)
        return Outcome(result.final_answer, verified, result.usage, time.monotonic() - t0, {"stop": result.stop_reason, "simulations": result.simulations})


STRATEGIES = {
    "greedy": Strategies.greedy,
    "best-of-N vote": None,  # both best-of-N rows come from one run, scored two ways
    "best-of-N verifier": None,
    "LATS deep": Strategies.lats_deep,
    "LATS deep no judge": lambda self, q: self.lats_deep(q, llm_value_weight=0.0),
    "best-of-N batched verifier": Strategies.best_of_n_batched,
    "LATS wide": Strategies.lats_wide,
    "LATS wide + reflection": lambda self, q: self.lats_wide(q, reflections=True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--budget", type=int, default=8, help="LLM calls per question for every strategy")
    ap.add_argument("--model", default="default", help="worker model spec (default: embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="write per-question results here")
    ap.add_argument("--wide", type=int, default=8, help="sequences per call for the two batched strategies")
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help="comma-separated subset of: " + ", ".join(STRATEGIES))
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        ap.error(f"unknown strategies {unknown}; choose from: {', '.join(STRATEGIES)}")
    logging.basicConfig(level=logging.WARNING)

    settings = Settings()
    llm = load_llm(args.model)
    strategies = Strategies(llm, settings, args.budget, args.seed, wide=args.wide)
    questions = held_out_questions(args.questions)
    rows: dict[str, list[Outcome]] = {k: [] for k in names}
    per_question = []
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for i, q in enumerate(questions, 1):
            got: dict[str, Outcome] = {}
            for k in names:
                if k in got:
                    continue
                if k in ("best-of-N vote", "best-of-N verifier"):
                    got["best-of-N vote"], got["best-of-N verifier"] = strategies.best_of_n(q)
                else:
                    got[k] = STRATEGIES[k](strategies, q)
            for k in names:
                rows[k].append(got[k])
            per_question.append({"question": q, **{k: {"answer": got[k].answer, "verified": got[k].verified,
                                                         "calls": got[k].usage.llm_calls,
                                                         "tokens": got[k].usage.completion_tokens} for k in names}})
            marks = "  ".join(f"{k}={got[k].answer}{'✓' if got[k].verified else '✗'}" for k in names)
            print(f"[{i}/{len(questions)}] {q}  {marks}", flush=True)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: report the questions that finished
        print(f"interrupted after {len(per_question)} of {len(questions)} questions", flush=True)
    n = len(per_question)
    if n == 0:
        return 1
    print(f"\nmodel {llm.model_name}, {n} held-out arithmetic questions, budget {args.budget} LLM calls/question, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, total {time.monotonic() - t0:.0f} s\n")
    print("| strategy | verified accuracy | LLM calls / q | completion tokens / q | prompt tokens / q | s / q |")
    print("|---|---|---|---|---|---|")
    for k in names:
        os_ = rows[k][:n]
        acc = sum(o.verified for o in os_) / n
        calls = sum(o.usage.llm_calls for o in os_) / n
        toks = sum(o.usage.completion_tokens for o in os_) / n
        ptoks = sum(o.usage.prompt_tokens for o in os_) / n
        secs = sum(o.seconds for o in os_) / n
        # The two best-of-N rows are one run scored two ways: same calls, tokens and seconds.
        print(f"| {k} | {acc:.0%} ({sum(o.verified for o in os_)}/{n}) | {calls:.1f} | {toks:.0f} | {ptoks:.0f} | {secs:.1f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(per_question, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
