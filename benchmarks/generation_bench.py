"""Generation throughput of the local backend vs plain transformers `generate`, side by side.

Same model (the embedded SmolLM2-135M-Instruct), same prompts (math questions rendered with the
worker prompt and the assistant prefix "Step 1:", as LATS sends them), same sampling settings
(temperature 0.7, top_p 0.95 within the top 50 tokens, up to --max-tokens new tokens, no stop strings so that every row
decodes comparable lengths). Rows:

  baseline    transformers generate, one sequence at a time (what a naive loop does)
  tf-batched  Kaelum's local backend, transformers engine, the n samples in one batched call
  ct2-single  Kaelum's local backend, CTranslate2 int8, one sample per call
  ct2-batched Kaelum's local backend, CTranslate2 int8, the n samples in one call (default): split
              across single-threaded replicas that decode their shares in parallel
  ct2-1rep    the same call on one replica using every thread (the engine before replicas)

Tokens/s counts generated tokens (without the end token) over wall time of the generation calls.
The baseline is slow, so by default it generates only --baseline-samples of the n samples per
prompt; its rate is per token, so it compares directly. Rows run interleaved, prompt by prompt.

    python benchmarks/generation_bench.py --prompts 4 --n 8 --max-tokens 64
"""

from __future__ import annotations

import argparse
import os
import time

QUESTIONS = [
    "What is 17 + 25?",
    "A shop sells pens at 3 dollars each. How much do 14 pens cost?",
    "What is 144 divided by 12?",
    "Tom has 52 marbles and gives away 19. How many are left?",
    "What is 9 times 8 minus 6?",
    "Compute 15% of 240.",
    "What is 7 squared plus 3?",
    "A train travels 60 km per hour for 3 hours. How far does it go?",
]


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else float("nan")


class Baseline:
    """Plain transformers generate, one sequence per call."""

    def __init__(self, model_dir, seed):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        torch.manual_seed(seed)

    def run(self, ids, samples, max_tokens):
        import torch

        tokens, seconds = 0, 0.0
        for _ in range(samples):
            started = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(
                    torch.tensor([ids]), do_sample=True, temperature=0.7, top_p=0.95, top_k=50,
                    max_new_tokens=max_tokens, pad_token_id=self.tok.eos_token_id,
                )
            seconds += time.perf_counter() - started
            new = out[0, len(ids):].tolist()
            tokens += next((i for i, t in enumerate(new) if t == self.tok.eos_token_id), len(new))
        return samples, tokens, seconds


def run_backend(llm, messages, prefix, samples, per_call, max_tokens, seed):
    from kaelum.llm import SamplingParams

    tokens, seconds, calls = 0, 0.0, 0
    for j in range(samples // per_call):
        params = SamplingParams(max_tokens=max_tokens, temperature=0.7, top_p=0.95, seed=seed + j)
        started = time.perf_counter()
        out = llm.generate(messages, n=per_call, params=params, prefix=prefix)
        seconds += time.perf_counter() - started
        calls += 1
        tokens += sum(c.completion_tokens for c in out)
    return calls, tokens, seconds


ROWS = ("baseline", "tf-batched", "ct2-single", "ct2-batched", "ct2-1rep")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4, help="number of questions (max %d)" % len(QUESTIONS))
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (the LATS branching)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--baseline-samples", type=int, default=2, help="samples per prompt the slow baseline generates")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ", ".join(ROWS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or "baseline" not in rows:
        ap.error(f"--rows must include baseline and only name {', '.join(ROWS)}; got {args.rows!r}")

    from kaelum.llm.local import LocalLLM
    from kaelum.llm.models import EMBEDDED_NAME, ensure_embedded
    from kaelum.prompts import worker_messages

    model_dir = ensure_embedded()
    messages_list = [worker_messages("math", q) for q in QUESTIONS[: args.prompts]]
    prefix = "Step 1:"
    ct2 = LocalLLM.load(model_dir, engine="ctranslate2", model_name=EMBEDDED_NAME)
    ct2_one = None
    if "ct2-1rep" in rows:
        os.environ["KAELUM_ENGINE_REPLICAS"] = "1"
        ct2_one = LocalLLM.load(model_dir, engine="ctranslate2", model_name=EMBEDDED_NAME)
        del os.environ["KAELUM_ENGINE_REPLICAS"]
    tf = LocalLLM.load(model_dir, engine="transformers", model_name=EMBEDDED_NAME) if "tf-batched" in rows else None
    baseline = Baseline(model_dir, args.seed)

    # Warm-up: first calls pay one-off costs (allocations, OpenMP thread start) in every engine.
    for llm in (ct2, ct2_one, tf):
        if llm is not None:
            llm.generate(messages_list[0], n=2, prefix=prefix)
    baseline.run(ct2.prompt_ids(messages_list[0], prefix), 1, 4)

    totals = {r: [0, 0, 0.0] for r in rows}
    # Rows are interleaved prompt by prompt, so that all of them see the same machine load (this
    # machine is shared; a row run alone at a quiet moment would look better than it is).
    for i, messages in enumerate(messages_list):
        ids = ct2.prompt_ids(messages, prefix)
        seed = args.seed + 1000 * i
        for row in rows:
            if row == "baseline":
                got = baseline.run(ids, args.baseline_samples, args.max_tokens)
            elif row == "tf-batched":
                got = run_backend(tf, messages, prefix, args.n, args.n, args.max_tokens, seed)
            elif row == "ct2-single":
                got = run_backend(ct2, messages, prefix, args.n, 1, args.max_tokens, seed)
            elif row == "ct2-1rep":
                got = run_backend(ct2_one, messages, prefix, args.n, args.n, args.max_tokens, seed)
            else:
                got = run_backend(ct2, messages, prefix, args.n, args.n, args.max_tokens, seed)
            totals[row] = [a + b for a, b in zip(totals[row], got)]

    import torch

    from kaelum.llm.engines import default_threads

    base_rate = _rate(totals["baseline"][1], totals["baseline"][2])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nmodel {EMBEDDED_NAME}, {args.prompts} prompts, n={args.n} (baseline {args.baseline_samples} per prompt), "
        f"max {args.max_tokens} new tokens, {os.cpu_count()} CPUs, ct2 {ct2.engine.replicas} replica(s) of "
        f"{max(1, default_threads() // ct2.engine.replicas)} thread(s) (1rep: 1 of {default_threads()}) / torch "
        f"{torch.get_num_threads()}, load average at the end {load:.1f}"
    )
    print(f"{'row':<12} {'calls':>6} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'vs baseline':>12}")
    for name in rows:
        calls, tokens, seconds = totals[name]
        rate = _rate(tokens, seconds)
        print(f"{name:<12} {calls:>6} {tokens:>7} {seconds:>8.1f} {rate:>9.1f} {rate / base_rate:>11.1f}x")


if __name__ == "__main__":
    main()
