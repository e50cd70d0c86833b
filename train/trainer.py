"""One trainer with switches: LoRA / QLoRA / full, SFT / DPO, packing, resume, merge.

Built on transformers' `Trainer`, which gives checkpoints that resume exactly (optimizer,
scheduler, RNG, step), gradient accumulation, gradient checkpointing, progress bars and
`trainer_state.json` with `eval_loss` entries. Kaelum adds the data (from the store's views, see
`train.data` and `train.dataset`), the DPO loss on the same loop, and a self-describing output
directory (see `train.manifest`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from kaelum.quiet import quiet_third_party

from .config import TrainArgs

quiet_third_party()  # before transformers/peft/bitsandbytes load (they load lazily, below)
from .data import Selection
from .dataset import IGNORE, DPOCollator, Pipeline, SFTCollator, Specials, as_rows, dpo_pipeline, length_stats, sft_pipeline

log = logging.getLogger("kaelum.train")


class TrainError(RuntimeError):
    """Training cannot start or continue; the message names the flag or the fix."""


@dataclass
class TrainResult:
    output_dir: str
    metrics: dict[str, Any]
    train_examples: int
    eval_examples: int
    global_step: int
    resumed_from: str | None = None
    stages: list[tuple[str, int]] = field(default_factory=list)


# --- models -----------------------------------------------------------------------------------


def is_kaelum_adapter(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json")) and os.path.isfile(
        os.path.join(path, "kaelum_manifest.json")
    )


def _dtype(args: TrainArgs) -> torch.dtype:
    if args.bf16 is True and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        raise TrainError("--bf16 needs a GPU with bfloat16 support; leave it out on this machine")
    use_bf16 = args.bf16 if args.bf16 is not None else torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if use_bf16 else torch.float32


def local_model_path(spec: str) -> str:
    """A directory for `spec`: itself if it is one, else what the runtime's resolver makes of it
    ('default' → the embedded SmolLM2, a cached hub id, a .gguf converted once), else `spec` as a hub id."""
    if os.path.isdir(spec):
        return spec
    try:
        from kaelum.llm.loader import resolve_model_dir

        return str(resolve_model_dir(spec))
    except Exception as exc:  # not resolvable offline: let transformers try it as a hub id
        log.debug("runtime resolver could not resolve %r (%s); trying it as a hub id", spec, exc)
        return spec


def load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    model = local_model_path(model)
    src = model
    if is_kaelum_adapter(model) and not os.path.isfile(os.path.join(model, "tokenizer_config.json")):
        src = local_model_path(_manifest_base(model))
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except Exception as exc:
        raise TrainError(f"cannot load the tokenizer of --model {model}: {exc}") from exc
    if getattr(tok, "chat_template", None) is None:
        raise TrainError(
            f"--model {model} has no chat template; training must render examples the way the runtime prompts the model — use an instruct/chat model"
        )
    return tok


def _manifest_base(path: str) -> str:
    import json

    with open(os.path.join(path, "kaelum_manifest.json"), encoding="utf-8") as fh:
        return json.load(fh)["base_model"]


def load_model(args: TrainArgs) -> Any:
    """The model to train: the base (a Kaelum adapter as base is merged first), wrapped per --lora/--qlora/--full."""
    from transformers import AutoModelForCausalLM

    path = local_model_path(args.model)
    kwargs: dict[str, Any] = {"dtype": _dtype(args)}
    if args.adapter == "qlora":
        if not torch.cuda.is_available():
            raise TrainError("--qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); on this machine use --lora")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        if is_kaelum_adapter(path):
            # Iterating (fine-tune → deploy → collect → fine-tune again): start from the served model.
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(local_model_path(_manifest_base(path)), dtype=kwargs["dtype"])
            model = PeftModel.from_pretrained(base, path).merge_and_unload()
            if args.adapter == "qlora":
                raise TrainError("--qlora cannot start from a Kaelum adapter directory; merge it first (--merge) or use --lora")
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except TrainError:
        raise
    except Exception as exc:
        raise TrainError(f"cannot load --model {args.model}: {exc}") from exc
    model.config.use_cache = False  # the KV cache is useless in training and breaks checkpointing
    if args.adapter == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if args.adapter == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    elif args.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed frozen embeddings would otherwise cut the graph
    cfg = LoraConfig(
        r=args.lora.r,
        lora_alpha=args.lora.alpha,
        lora_dropout=args.lora.dropout,
        target_modules=args.lora.target_modules(),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


# --- data -------------------------------------------------------------------------------------


def split(examples: list[Any], eval_split: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Deterministic held-out split by example (whole traces, so eval never shares a trace with training)."""
    if eval_split <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(examples) - 1, max(1, round(len(examples) * eval_split)))
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def build_rows(examples: list[Any], tokenizer: Any, args: TrainArgs, packing: bool) -> tuple[list[dict], Pipeline]:
    pipe = dpo_pipeline(tokenizer, args.data.max_seq_len) if args.method == "dpo" else sft_pipeline(
        tokenizer, args.data.max_seq_len, packing=packing
    )
    rows = pipe.run(as_rows(examples))
    truncated = sum(1 for r in rows if r.get("truncated"))
    if truncated:
        log.warning("%d examples were longer than --max-seq-len %d and were truncated", truncated, args.data.max_seq_len)
    return rows, pipe


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]) -> None:
        # Only what the collator needs, so the Trainer never sees example objects or texts.
        keep = ("input_ids", "labels", "position_ids", "prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logp", "ref_rejected_logp")
        self.rows = [{k: r[k] for k in keep if k in r} for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


# --- DPO --------------------------------------------------------------------------------------


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log-probabilities of the labelled tokens of each row (labels shifted by one)."""
    logits = logits[:, :-1, :].float()
    labels = labels[:, 1:]
    mask = labels != IGNORE
    safe = labels.masked_fill(~mask, 0)
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows are [chosen..., rejected...]. Returns (mean loss, preference accuracy)."""
    n = policy.shape[0] // 2
    margin = (policy[:n] - reference[:n]) - (policy[n:] - reference[n:])
    return -F.logsigmoid(beta * margin).mean(), (margin > 0).float().mean()


@torch.no_grad()
def reference_logps(model: Any, rows: list[dict], pad_id: int, batch_size: int) -> None:
    """Score chosen and rejected under the model before training (LoRA starts as the identity)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = DPOCollator(pad_id)
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        batch = collate(chunk)
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        lp = sequence_logps(out.logits, batch["labels"].to(device)).cpu()
        for j, r in enumerate(chunk):
            r["ref_chosen_logp"] = float(lp[j])
            r["ref_rejected_logp"] = float(lp[len(chunk) + j])
    model.train(was_training)


def _lm_parts(model: Any) -> tuple[Any, Any] | None:
    """(decoder body, LM head) of a plain causal LM (LoRA layers live inside them), or None when the
    model post-processes its logits (soft-capping, scaling) and must go through its own forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        return None
    get_dec, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    dec = get_dec() if get_dec else None
    head = get_head() if get_head else None
    if dec is None or head is None or dec is base:
        return None
    return dec, head


def completion_only_loss(model: Any, inputs: dict, num_items: Any = None) -> torch.Tensor | None:
    """Causal-LM loss computed through the LM head only at labelled (completion) positions.

    The prompt is most of every example, and the vocabulary projection with its softmax is the
    largest single cost of a small model's step; computing logits only where a label exists gives
    the same loss and gradients as the full forward for a fraction of that cost. Returns None when
    the model has to be run through its own forward (see `_lm_parts`).
    """
    parts = _lm_parts(model)
    if parts is None:
        return None
    dec, head = parts
    labels = inputs["labels"]
    kw = {k: inputs[k] for k in ("attention_mask", "position_ids") if k in inputs}
    hidden = dec(input_ids=inputs["input_ids"], use_cache=False, **kw).last_hidden_state
    target = labels[:, 1:]
    mask = target != IGNORE
    logits = head(hidden[:, :-1][mask]).float()
    total = F.cross_entropy(logits, target[mask], reduction="sum")
    denom = num_items if num_items is not None else mask.sum().clamp(min=1)
    if torch.is_tensor(denom):
        denom = denom.to(total.device)
    return total / denom


def _make_trainer_class() -> type:
    from transformers import Trainer

    class KaelumTrainer(Trainer):
        """transformers' Trainer plus the DPO loss and a count of real (non-pad) tokens trained on."""

        def __init__(self, *a: Any, method: str = "sft", beta: float = 0.1, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.method = method
            self.beta = beta
            self.tokens_trained = 0

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            real = inputs.pop("num_real_tokens", None)
            if model.training and real is not None:
                self.tokens_trained += int(real)
            if self.method != "dpo":
                if not return_outputs:
                    # num_items_in_batch (labelled tokens across the accumulated batches) makes the
                    # loss of gradient accumulation equal to the loss of one big batch.
                    n = num_items_in_batch if self.model_accepts_loss_kwargs else None
                    loss = completion_only_loss(model, inputs, n)
                    if loss is not None:
                        return loss
                return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            ref = inputs.pop("ref_logps")
            labels = inputs.pop("labels")
            out = model(**inputs)
            loss, acc = dpo_loss(sequence_logps(out.logits, labels), ref.to(out.logits.device), self.beta)
            return (loss, {"logits": out.logits, "preference_accuracy": acc}) if return_outputs else loss

    return KaelumTrainer


# --- the run ----------------------------------------------------------------------------------


def latest_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None



def shared_training_arguments(args: TrainArgs) -> dict[str, Any]:
    """The transformers TrainingArguments that SFT/DPO and GRPO (train/grpo.py) set alike from `args`."""
    import torch

    return dict(
        num_train_epochs=args.epochs, gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr,
        weight_decay=args.weight_decay, lr_scheduler_type=args.lr_scheduler, logging_first_step=True,
        save_strategy="steps" if args.save_steps else "epoch", save_steps=args.save_steps or 500,
        save_total_limit=args.save_total_limit, seed=args.seed, data_seed=args.seed, report_to="none",
        disable_tqdm=not args.progress, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )

def warmup_steps(steps_per_epoch: int, epochs: float, warmup_ratio: float) -> int:
    """--warmup-ratio as a whole number of optimizer steps, counted as the Trainer counts them.

    An integer `TrainingArguments.warmup_steps` means steps in transformers 4.46+ and 5 alike; a
    float below 1 is a ratio only in 5 (4.x would take it as a fraction of one step), and 4.x's
    separate `warmup_ratio` is gone in 5.
    """
    return math.ceil(math.ceil(steps_per_epoch * epochs) * warmup_ratio)


def run_training(args: TrainArgs, selection: Selection, tokenizer: Any | None = None) -> TrainResult:
    """Train on `selection` and write the output directory. `args` must be validated."""
    from transformers import TrainingArguments, set_seed

    from . import manifest as mf

    if args.method == "grpo":  # online RL through TRL's GRPOTrainer (train.grpo)
        from .grpo import run_grpo

        return run_grpo(args, selection, tokenizer)
    out = args.output_dir
    ckpt = latest_checkpoint(out)
    if args.resume and ckpt is None:
        raise TrainError(f"--resume: no checkpoint-* directory in {out}; start without --resume")
    if not args.resume and ckpt is not None:
        raise TrainError(
            f"{out} already holds a run ({os.path.basename(ckpt)}); pass --resume to continue it or choose another --output-dir"
        )
    set_seed(args.seed)
    tok = tokenizer if tokenizer is not None else load_tokenizer(args.model)
    sp = Specials.of(tok)
    train_ex, eval_ex = split(selection.examples, args.data.eval_split, args.seed)
    train_rows, pipe = build_rows(train_ex, tok, args, packing=args.data.packing)
    # Eval rows are never packed: eval_loss stays comparable between packed and unpacked runs.
    eval_rows, _ = build_rows(eval_ex, tok, args, packing=False)
    if not train_rows:
        raise TrainError(
            f"every training example was dropped by the dataset steps ({pipe.counts}); raise --max-seq-len (now {args.data.max_seq_len})"
        )
    model = load_model(args)
    if args.method == "dpo":
        reference_logps(model, train_rows + eval_rows, sp.pad_id, args.batch_size)
    collator = DPOCollator(sp.pad_id) if args.method == "dpo" else SFTCollator(sp.pad_id)

    steps_per_epoch = max(1, math.ceil(len(train_rows) / args.batch_size / args.grad_accum))
    has_eval = bool(eval_rows)
    strategy = "steps" if args.save_steps else "epoch"
    targs = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        warmup_steps=warmup_steps(steps_per_epoch, args.epochs, args.warmup_ratio),
        logging_steps=min(args.logging_steps, steps_per_epoch),
        eval_strategy=strategy if has_eval else "no",
        eval_steps=args.save_steps,
        bf16=_dtype(args) == torch.bfloat16,
        activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
        remove_unused_columns=False,
        **shared_training_arguments(args),
    )
    trainer = _make_trainer_class()(
        model=model,
        args=targs,
        data_collator=collator,
        train_dataset=_ListDataset(train_rows),
        eval_dataset=_ListDataset(eval_rows) if has_eval else None,
        processing_class=tok,
        method=args.method,
        beta=args.dpo_beta,
    )
    if ckpt:
        log.info("resuming from %s", ckpt)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=ckpt if args.resume else None)
    elapsed = time.perf_counter() - t0
    metrics: dict[str, Any] = {"train_loss": result.training_loss, "train_runtime_s": round(elapsed, 3)}
    metrics["tokens_trained"] = trainer.tokens_trained
    metrics["tokens_per_s"] = round(trainer.tokens_trained / elapsed, 1) if elapsed > 0 else None
    if has_eval:
        last = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        # The epoch/step schedule usually evaluated at the last step already; evaluate only if not.
        metrics["eval_loss"] = last[-1]["eval_loss"] if last else trainer.evaluate()["eval_loss"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if losses:
        metrics["first_logged_loss"], metrics["last_logged_loss"] = losses[0], losses[-1]
    trainer.save_state()  # output_dir/trainer_state.json, with the eval_loss entries of log_history
    mf.save_outputs(trainer.model, tok, args, selection, train_ex, eval_ex, metrics, pipe, resumed_from=ckpt if args.resume else None)
    return TrainResult(
        output_dir=out,
        metrics=metrics,
        train_examples=len(train_ex),
        eval_examples=len(eval_ex),
        global_step=trainer.state.global_step,
        resumed_from=ckpt if args.resume else None,
        stages=list(selection.stages),
    )


# --- dry run ----------------------------------------------------------------------------------


@dataclass
class DryRun:
    per_domain: dict[str, int]
    stages: list[tuple[str, int]]
    pipeline: list[tuple[str, int]]
    prompt_tokens: dict[str, float]
    completion_tokens: dict[str, float]
    total_tokens: dict[str, float]
    truncated: int
    samples: list[str]


def dry_run(args: TrainArgs, selection: Selection, tokenizer: Any | None = None) -> DryRun:
    """Counts, token-length statistics and two rendered examples; loads no model and trains nothing."""
    tok = tokenizer if tokenizer is not None else load_tokenizer(args.model)
    rows, pipe = build_rows(selection.examples, tok, args, packing=False)
    if args.method == "dpo":
        completion = [len(r["chosen_ids"]) for r in rows] + [len(r["rejected_ids"]) for r in rows]
        total = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows]
        samples = [
            r["prompt_text"] + "\n[chosen]\n" + r["chosen_text"] + "\n[rejected]\n" + r["rejected_text"] for r in rows[:2]
        ]
    else:
        completion = [sum(1 for t in r["labels"] if t != IGNORE) for r in rows]
        total = [len(r["input_ids"]) for r in rows]
        samples = [tok.decode(r["input_ids"], skip_special_tokens=False) for r in rows[:2]]
    return DryRun(
        per_domain=selection.per_domain(),
        stages=list(selection.stages),
        pipeline=list(pipe.counts),
        prompt_tokens=length_stats([len(r["prompt_ids"]) for r in rows]),
        completion_tokens=length_stats(completion),
        total_tokens=length_stats(total),
        truncated=sum(1 for r in rows if r.get("truncated")),
        samples=samples,
    )
