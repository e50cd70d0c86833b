"""Training throughput: kaelum-train's trainer vs a plain TRL SFTTrainer, same data, model and settings.

Both train LoRA (r=16, alpha=32, all linear layers) on the same arithmetic traces rendered with
the worker prompt and the model's chat template (TRL gets them as conversational
prompt-completion pairs, so it also masks the prompt), batch size 4, one epoch, fp32 on CPU (bf16
on a GPU), same seed, a checkpoint at the end. Throughput = real (non-pad) tokens trained on /
wall-clock seconds of `trainer.train()`. Runs alternate (TRL, kaelum, TRL, kaelum, ...) so that
background load hits both alike; the best run of each is reported.

    python benchmarks/train_bench.py --model default --examples 64 --repeats 2
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kaelum.prompts import worker_messages  # noqa: E402
from train.config import DataArgs, TrainArgs  # noqa: E402
from train.data import Selection, Trace  # noqa: E402
from train.trainer import load_tokenizer, local_model_path, run_training  # noqa: E402


def make_traces(n: int) -> list[Trace]:
    out = []
    for i in range(n):
        a, b = 17 + 7 * i, 5 + 3 * (i % 11)
        steps = (f"Add the tens: {a // 10 * 10} + {b // 10 * 10} = {a // 10 * 10 + b // 10 * 10}.", f"Add the rest: {a % 10} + {b % 10} = {a % 10 + b % 10}.", f"Total: {a + b}.")
        out.append(Trace(trace_id=f"bench-{i:04d}", domain="math", query=f"What is {a} + {b}?", steps=steps, final_answer=str(a + b), reward=1.0))
    return out


def run_kaelum(model: str, traces: list[Trace], args: argparse.Namespace, out: str) -> tuple[float, int]:
    targs = TrainArgs(model=model, output_dir=out, epochs=1, batch_size=args.batch_size, lr=2e-4, seed=0, progress=False,
                      logging_steps=1000, data=DataArgs(max_seq_len=args.max_seq_len, eval_split=0.0)).validate()
    res = run_training(targs, Selection(examples=traces, stages=[("bench", len(traces))]))
    return res.metrics["train_runtime_s"], res.metrics["tokens_trained"]


def run_trl(model: str, traces: list[Trace], args: argparse.Namespace, out: str) -> tuple[float, int]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_list(
        [{"prompt": worker_messages(t.domain, t.query), "completion": [{"role": "assistant", "content": t.completion()}]} for t in traces]
    )
    path = local_model_path(model)
    tok = load_tokenizer(model)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    cfg = SFTConfig(output_dir=out, num_train_epochs=1, per_device_train_batch_size=args.batch_size, learning_rate=2e-4, seed=0,
                    max_length=args.max_seq_len, packing=False, report_to="none", logging_steps=1000, save_strategy="epoch",
                    eval_strategy="no", disable_tqdm=True, bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available())
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=m, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora)
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="model spec (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    traces = make_traces(args.examples)
    results: dict[str, list[tuple[float, int]]] = {"TRL SFTTrainer": [], "kaelum-train": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            results["TRL SFTTrainer"].append(run_trl(args.model, traces, args, os.path.join(tmp, f"trl{r}")))
            results["kaelum-train"].append(run_kaelum(args.model, traces, args, os.path.join(tmp, f"kaelum{r}")))
    print(f"\nmodel={args.model} examples={args.examples} batch={args.batch_size} max_seq_len={args.max_seq_len} "
          f"device={'cuda' if torch.cuda.is_available() else 'cpu'} threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"{'trainer':<16}{'tokens':>9}{'best s':>9}{'tokens/s':>11}   all runs (tokens/s)")
    best = {}
    for name, runs in results.items():
        rates = [tok / s for s, tok in runs]
        i = max(range(len(runs)), key=lambda k: rates[k])
        best[name] = rates[i]
        print(f"{name:<16}{runs[i][1]:>9}{runs[i][0]:>9.2f}{rates[i]:>11.1f}   " + ", ".join(f"{x:.1f}" for x in rates))
    print(f"speed-up kaelum-train / TRL SFTTrainer: {best['kaelum-train'] / best['TRL SFTTrainer']:.2f}x (goal >= 1.0x)")


if __name__ == "__main__":
    main()
