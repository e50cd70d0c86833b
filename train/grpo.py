"""`--method grpo`: online RL with the domain verifier as the reward, through TRL's GRPOTrainer.

The prompts are the queries of the store's complete traces (`trajectories`: failed ones included,
since those are where a policy has most to learn), rendered exactly as the runtime prompts the
worker (`kaelum.prompts.worker_messages` + the model's chat template). For each query the trainer
samples a group of completions; each completion is parsed as the runtime parses a worker's output
(steps, then the domain's answer extraction) and scored by the domain: `Domain.verify` with the
other completions of the group as sibling answers, then `Domain.reward` — the same reward, with
the same components (verifier score, stated-step checks, ...), that LATS gives a terminal node.
GRPO then raises the likelihood of completions that beat their group's mean.

LoRA (or --full) on the model the other methods start from; the output directory is the same as
theirs (adapter or --merge'd model, tokenizer, trainer_state.json, kaelum_manifest.json).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Callable, Sequence

from kaelum.prompts import ANSWER_PREFIX, strip_step_label, worker_messages

from .config import TrainArgs
from .data import Selection

log = logging.getLogger("kaelum.train.grpo")


def prompt_rows(examples: Sequence[Any]) -> list[dict[str, Any]]:
    """One prompt per distinct (domain, query), in the selection's order."""
    seen: set[tuple[str, str]] = set()
    rows = []
    for e in examples:
        key = (e.domain, " ".join(e.query.split()))
        if key in seen:
            continue
        seen.add(key)
        rows.append({"prompt": worker_messages(e.domain, e.query), "query": e.query, "domain": e.domain,
                     "reference": getattr(e, "reference", None) or ""})
    return rows


def completion_text(completion: Any) -> str:
    """TRL hands conversational completions as [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))


def parse_completion(text: str) -> list[str]:
    """The step thoughts of a completion: its lines before the answer line, labels stripped."""
    steps = []
    for line in text.splitlines():
        if line.strip().lower().startswith(ANSWER_PREFIX.lower()):
            break
        if line.strip():
            steps.append(strip_step_label(line))
    return steps


def verifier_reward(domain_options: Callable[[str], dict[str, Any]] | None = None) -> Callable[..., list[float]]:
    """The reward function GRPOTrainer calls: the domain's verifier and reward, per completion."""
    from kaelum.domains import get_domain
    from kaelum.domains.base import VerifyContext

    domains: dict[str, Any] = {}

    def domain_verifier_reward(prompts: list[Any], completions: list[Any], query: list[str], domain: list[str],
                               reference: list[str] | None = None, log_metric: Callable[[str, float], None] | None = None,
                               **_: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        answers = []
        for text, dom_name in zip(texts, domain):
            if dom_name not in domains:
                domains[dom_name] = get_domain(dom_name, domain_options(dom_name) if domain_options else None)
            answers.append(domains[dom_name].extract_answer(text))
        rewards, passed = [], 0
        for i, (text, q, dom_name) in enumerate(zip(texts, query, domain)):
            dom = domains[dom_name]
            # The group: the other completions of the same query in this batch.
            siblings = [a for j, a in enumerate(answers) if j != i and query[j] == q and a is not None]
            ref = (reference[i] if reference else "") or None
            ctx = VerifyContext(query=q, steps=parse_completion(text), sibling_answers=siblings, reference=ref,
                                options=domain_options(dom_name) if domain_options else {})
            if answers[i] is None:
                rewards.append(0.0)
                continue
            verdict = dom.verify(answers[i], ctx)
            value = float(dom.reward(verdict, None, ctx).value)
            rewards.append(min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0)
            passed += int(bool(verdict.passed))
        if log_metric is not None and texts:
            log_metric("verified", passed / len(texts))
        return rewards

    return domain_verifier_reward


def grpo_config(args: TrainArgs, n_prompts: int) -> Any:
    import torch
    from trl import GRPOConfig

    from .trainer import shared_training_arguments

    g = args.grpo_num_generations
    # --batch-size counts completions per step; a step holds whole groups.
    per_step = max(g, math.ceil(args.batch_size / g) * g)
    return GRPOConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=per_step,
        num_generations=g,
        max_completion_length=args.grpo_max_completion_length,
        temperature=args.grpo_temperature,
        beta=args.grpo_beta,
        max_steps=args.grpo_max_steps or -1,
        logging_steps=args.logging_steps,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported() if args.bf16 is None else args.bf16,
        **shared_training_arguments(args),
    )


def run_grpo(args: TrainArgs, selection: Selection, tokenizer: Any | None = None, callbacks: Sequence[Any] = ()) -> Any:
    """Train with GRPO on `selection`'s queries and write the output directory. `args` must be validated.

    `callbacks`: transformers TrainerCallbacks (the benchmark stops GRPO at SFT's wall-clock with one)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import GRPOTrainer

    from kaelum.config import Settings

    from . import manifest as mf
    from .trainer import TrainError, TrainResult, latest_checkpoint, load_model, load_tokenizer

    out = args.output_dir
    ckpt = latest_checkpoint(out)
    if args.resume and ckpt is None:
        raise TrainError(f"--resume: no checkpoint-* directory in {out}; start without --resume")
    if not args.resume and ckpt is not None:
        raise TrainError(f"{out} already holds a run ({os.path.basename(ckpt)}); pass --resume to continue it or choose another --output-dir")
    rows = prompt_rows(selection.examples)
    if not rows:
        raise TrainError("--method grpo: no queries to train on")
    set_seed(args.seed)
    tok = tokenizer if tokenizer is not None else load_tokenizer(args.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = load_model(args)
    settings = Settings()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=verifier_reward(settings.domain_options),
        args=grpo_config(args, len(rows)),
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        callbacks=list(callbacks) or None,
    )
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=ckpt if args.resume else None)
    elapsed = time.perf_counter() - t0
    history = trainer.state.log_history
    rewards = [h["reward"] for h in history if "reward" in h]
    verified = [h["rewards/domain_verifier_reward/mean"] for h in history if "rewards/domain_verifier_reward/mean" in h]
    metrics: dict[str, Any] = {"train_loss": result.training_loss, "train_runtime_s": round(elapsed, 3), "prompts": len(rows)}
    if rewards:
        metrics["first_logged_reward"], metrics["last_logged_reward"] = rewards[0], rewards[-1]
        metrics["mean_logged_reward"] = sum(rewards) / len(rewards)
    if verified:
        metrics["last_reward_mean"] = verified[-1]
    trainer.save_state()
    mf.save_outputs(trainer.model, tok, args, selection, list(selection.examples), [], metrics, None,
                    resumed_from=ckpt if args.resume else None)
    return TrainResult(output_dir=out, metrics=metrics, train_examples=len(selection.examples), eval_examples=0,
                       global_step=trainer.state.global_step, resumed_from=ckpt if args.resume else None,
                       stages=list(selection.stages))
