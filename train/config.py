"""Typed configuration of a training run, validated once with every problem listed.

Each field names the `kaelum-train` flag it comes from, so a validation message can tell the
user exactly which flag to change. The defaults of the seed guide's `finetune_setup.py`
(epochs 3, batch size 4, learning rate 2e-5, minimum reward 0.7) are kept.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

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

    r: int = 16  # --lora-r
    alpha: int = 32  # --lora-alpha
    dropout: float = 0.05  # --lora-dropout
    targets: str = "all-linear"  # --lora-targets (comma-separated module names, or all-linear)

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

    store: str = "./store"  # --store
    log_dir: str | None = None  # --log-dir: ingested into --store first
    domain: str | None = None  # --domain (None: all domains)
    min_reward: float = 0.7  # --min-reward
    where: str | None = None  # --where: SQL predicate over training_examples (preference_pairs with --method dpo)
    include_unchecked: bool = False  # --include-unchecked: also traces verified only by consistency, judge or runs
    max_seq_len: int = 1024  # --max-seq-len
    eval_split: float = 0.1  # --eval-split: fraction of examples held out for eval_loss
    packing: bool = False  # --packing
    as_of: str | None = None  # --as-of: read the store as it was (a version, events=N,quarantine=M, or an RFC 3339 time)

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

    model: str = ""  # --model: base model (hub id or local path)
    output_dir: str = "./finetuned_models"  # --output-dir
    data: DataArgs = field(default_factory=DataArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    adapter: Adapter = "lora"  # --lora / --qlora / --full
    method: Method = "sft"  # --method
    epochs: float = 3  # --epochs
    batch_size: int = 4  # --batch-size (per device)
    grad_accum: int = 1  # --grad-accum
    lr: float = 2e-5  # --lr
    weight_decay: float = 0.0  # --weight-decay
    warmup_ratio: float = 0.0  # --warmup-ratio
    lr_scheduler: str = "linear"  # --lr-scheduler
    dpo_beta: float = 0.1  # --dpo-beta
    grpo_num_generations: int = 4  # --grpo-generations: completions sampled per query (the group)
    grpo_max_completion_length: int = 128  # --grpo-max-completion-length (tokens)
    grpo_temperature: float = 1.0  # --grpo-temperature: sampling temperature of the completions
    grpo_beta: float = 0.0  # --grpo-beta: KL penalty towards the starting model (0: none, TRL's default)
    grpo_max_steps: int | None = None  # --grpo-max-steps (None: --epochs over the queries)
    gradient_checkpointing: bool = False  # --gradient-checkpointing
    save_steps: int | None = None  # --save-steps (None: a checkpoint at the end of every epoch)
    save_total_limit: int = 2  # --save-total-limit
    logging_steps: int = 10  # --logging-steps
    resume: bool = False  # --resume
    seed: int = 42  # --seed
    merge: bool = False  # --merge: write a merged full model instead of the adapter
    dry_run: bool = False  # --dry-run
    bf16: bool | None = None  # --bf16/--no-bf16 (None: bf16 where the GPU supports it)
    progress: bool = True  # --progress/--no-progress

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
