"""Typed configuration of a training run, validated once with every problem listed.

Each field a user sets carries its `kaelum-train` flag, help and default as field metadata
(`kaelum.cliopts.flag`): the CLI's options are derived from these dataclasses, and a validation
message names exactly the flag to change. The defaults of the seed guide's `finetune_setup.py`
(epochs 3, batch size 4, learning rate 2e-5, minimum reward 0.7) are kept.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import click

from kaelum.cliopts import DEFAULT_STORE, flag, flags, log_dir_flag, progress_flag, store_flag
from kaelum.events import DOMAINS

Method = Literal["sft", "dpo", "grpo"]
Adapter = Literal["lora", "qlora", "full"]


class ConfigError(ValueError):
    """One or more invalid settings. `problems` lists each one, naming its flag."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid training configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class LoraArgs:
    """Adapter settings. `targets="all-linear"` puts LoRA on every linear layer except the LM head."""

    r: int = field(default=16, metadata=flag("--lora-r", help="LoRA rank."))
    alpha: int = field(default=32, metadata=flag("--lora-alpha", help="LoRA alpha."))
    dropout: float = field(default=0.05, metadata=flag("--lora-dropout", help="LoRA dropout."))
    targets: str = field(default="all-linear", metadata=flag("--lora-targets", help="Comma-separated module names, or all-linear."))

    def problems(self) -> list[str]:
        out = []
        if self.r < 1:
            out.append(f"--lora-r must be at least 1, got {self.r}")
        if self.alpha < 1:
            out.append(f"--lora-alpha must be at least 1, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"--lora-dropout must be in [0, 1), got {self.dropout}")
        if not self.targets.strip():
            out.append("--lora-targets must name modules or be 'all-linear'")
        return out

    def target_modules(self) -> str | list[str]:
        if self.targets.strip() == "all-linear":
            return "all-linear"
        return [t.strip() for t in self.targets.split(",") if t.strip()]


@dataclass
class DataArgs:
    """Which traces become training examples and how they are tokenized."""

    store: str = field(default=DEFAULT_STORE, metadata=store_flag("The trace store to read training_examples from."))
    log_dir: str | None = field(default=None, metadata=log_dir_flag("Ingest these logs into --store first (same as kaelum-ingest --once)."))
    domain: str | None = field(default=None, metadata=flag("--domain", type=click.Choice(DOMAINS), help="Train on one domain only (default: all)."))
    min_reward: float = field(default=0.7, metadata=flag("--min-reward", help="Minimum (effective) reward of a training example."))
    where: str | None = field(default=None, metadata=flag(
        "--where", help="SQL predicate over training_examples (preference_pairs with --method dpo), e.g. \"reward > 0.9\"."))
    include_unchecked: bool = field(default=False, metadata=flag(
        "--include-unchecked", help="Also train on traces verified only by agreement, a judge or a clean run "
        "(verified_by consistency/judge/runs); by default only checked answers (reference, computed, tests, formal, constraints)."))
    max_seq_len: int = field(default=1024, metadata=flag("--max-seq-len", help="Truncate examples to this many tokens."))
    eval_split: float = field(default=0.1, metadata=flag("--eval-split", help="Fraction of examples held out for eval_loss."))
    packing: bool = field(default=False, metadata=flag("--packing", help="Pack examples into --max-seq-len rows (no attention across examples)."))
    as_of: str | None = field(default=None, metadata=flag(
        "--as-of", help="Train on the store as it was: an events table version, events=N,quarantine=M "
        "(what kaelum_manifest.json records), or an RFC 3339 timestamp."))

    def problems(self) -> list[str]:
        out = []
        if self.domain is not None and self.domain not in DOMAINS:
            out.append(f"--domain must be one of {', '.join(DOMAINS)}, got {self.domain!r}")
        if not 0.0 <= self.min_reward <= 1.0:
            out.append(f"--min-reward must be in [0, 1], got {self.min_reward}")
        if self.max_seq_len < 8:
            out.append(f"--max-seq-len must be at least 8, got {self.max_seq_len}")
        if not 0.0 <= self.eval_split < 1.0:
            out.append(f"--eval-split must be in [0, 1), got {self.eval_split}")
        if self.where is not None:
            from .where import WhereError, check_where

            try:
                check_where(self.where)
            except WhereError as exc:
                out.append(str(exc))
        return out


@dataclass
class TrainArgs:
    """Everything a run needs. `validate()` raises one ConfigError listing every problem."""

    model: str = field(default="", metadata=flag("--model", help="Base model: hub id or local directory (a Kaelum adapter directory continues from it)."))
    output_dir: str = field(default="./finetuned_models", metadata=flag("--output-dir", help="Where the adapter, checkpoints and manifest go."))
    epochs: float = field(default=3, metadata=flag("--epochs", help="Passes over the examples (fractions allowed)."))
    batch_size: int = field(default=4, metadata=flag("--batch-size", help="Batch size per device."))
    lr: float = field(default=2e-5, metadata=flag("--lr", help="Learning rate."))
    data: DataArgs = field(default_factory=DataArgs)
    grad_accum: int = field(default=1, metadata=flag("--grad-accum", help="Gradient accumulation steps."))
    adapter: Adapter = field(default="lora", metadata=flags(
        flag("--lora", flag_value="lora", help="LoRA adapter on all linear layers (default)."),
        flag("--qlora", flag_value="qlora", help="LoRA on a 4-bit base model (needs a CUDA GPU; says so on CPU)."),
        flag("--full", flag_value="full", help="Train every weight."),
    ))
    lora: LoraArgs = field(default_factory=LoraArgs)
    method: Method = field(default="sft", metadata=flag(
        "--method", help="sft trains on training_examples; dpo reads preference_pairs; grpo samples completions for the "
        "queries of the store's traces and rewards them with the domain verifier."))
    dpo_beta: float = field(default=0.1, metadata=flag("--dpo-beta", help="--method dpo: the DPO temperature beta."))
    grpo_num_generations: int = field(default=4, metadata=flag("--grpo-generations", help="--method grpo: completions per query (the group)."))
    grpo_max_completion_length: int = field(default=128, metadata=flag("--grpo-max-completion-length", help="--method grpo: tokens per completion."))
    grpo_temperature: float = field(default=1.0, metadata=flag("--grpo-temperature", help="--method grpo: sampling temperature."))
    grpo_beta: float = field(default=0.0, metadata=flag("--grpo-beta", help="--method grpo: KL penalty towards the starting model (0: none, TRL's default)."))
    grpo_max_steps: int | None = field(default=None, metadata=flag("--grpo-max-steps", type=int, help="--method grpo: optimizer steps (default: --epochs over the queries)."))
    gradient_checkpointing: bool = field(default=False, metadata=flag("--gradient-checkpointing", help="Trade compute for memory."))
    save_steps: int | None = field(default=None, metadata=flag("--save-steps", type=int, help="Checkpoint (and evaluate) every N steps (default: every epoch)."))
    save_total_limit: int = field(default=2, metadata=flag("--save-total-limit", help="Checkpoints kept in --output-dir."))
    logging_steps: int = field(default=10, metadata=flag("--logging-steps", help="Log the loss every N optimizer steps."))
    warmup_ratio: float = field(default=0.0, metadata=flag("--warmup-ratio", help="Fraction of the optimizer steps spent warming the learning rate up."))
    weight_decay: float = field(default=0.0, metadata=flag("--weight-decay", help="AdamW weight decay."))
    lr_scheduler: str = field(default="linear", metadata=flag("--lr-scheduler", help="transformers scheduler name (linear, cosine, constant, ...)."))
    resume: bool = field(default=False, metadata=flag("--resume", help="Continue from the last checkpoint in --output-dir (optimizer, scheduler, RNG, step)."))
    merge: bool = field(default=False, metadata=flag("--merge", help="Write a merged full model instead of the adapter."))
    seed: int = field(default=42, metadata=flag("--seed", help="Seed of the data split, shuffling and initialisation."))
    bf16: bool | None = field(default=None, metadata=flag("--bf16/--no-bf16", help="bfloat16 training (default: where the GPU supports it)."))
    progress: bool = field(default=True, metadata=progress_flag())
    dry_run: bool = field(default=False, metadata=flag(
        "--dry-run", help="Print counts per domain, token-length statistics and two rendered examples; train nothing."))

    def problems(self) -> list[str]:
        out: list[str] = []
        if not self.model.strip():
            out.append("--model is required: a hub id or a local model directory")
        if not self.output_dir.strip():
            out.append("--output-dir must not be empty")
        if self.adapter not in ("lora", "qlora", "full"):
            out.append(f"choose one of --lora, --qlora or --full, got {self.adapter!r}")
        if self.method not in ("sft", "dpo", "grpo"):
            out.append(f"--method must be sft, dpo or grpo, got {self.method!r}")
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            out.append(f"--epochs must be positive, got {self.epochs}")
        if self.batch_size < 1:
            out.append(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.grad_accum < 1:
            out.append(f"--grad-accum must be at least 1, got {self.grad_accum}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            out.append(f"--lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            out.append(f"--weight-decay must be non-negative, got {self.weight_decay}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            out.append(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.dpo_beta <= 0:
            out.append(f"--dpo-beta must be positive, got {self.dpo_beta}")
        if self.save_steps is not None and self.save_steps < 1:
            out.append(f"--save-steps must be at least 1, got {self.save_steps}")
        if self.save_total_limit < 1:
            out.append(f"--save-total-limit must be at least 1, got {self.save_total_limit}")
        if self.logging_steps < 1:
            out.append(f"--logging-steps must be at least 1, got {self.logging_steps}")
        if self.merge and self.adapter == "full":
            out.append("--merge only applies to --lora/--qlora; --full already writes a full model")
        if self.method in ("dpo", "grpo") and self.data.packing:
            out.append("--packing applies to --method sft only")
        if self.method == "grpo":
            if self.grpo_num_generations < 2:
                out.append(f"--grpo-generations must be at least 2 (GRPO compares completions within a group), got {self.grpo_num_generations}")
            if self.grpo_max_completion_length < 1:
                out.append(f"--grpo-max-completion-length must be at least 1, got {self.grpo_max_completion_length}")
            if not self.grpo_temperature > 0:
                out.append(f"--grpo-temperature must be positive, got {self.grpo_temperature}")
            if self.grpo_beta < 0:
                out.append(f"--grpo-beta must be non-negative, got {self.grpo_beta}")
            if self.grpo_max_steps is not None and self.grpo_max_steps < 1:
                out.append(f"--grpo-max-steps must be at least 1, got {self.grpo_max_steps}")
            if self.adapter == "qlora":
                out.append("--method grpo runs with --lora or --full")
        out += self.data.problems()
        if self.adapter != "full":
            out += self.lora.problems()
        return out

    def validate(self) -> "TrainArgs":
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
