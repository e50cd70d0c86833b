"""Dataset building as an ordered list of named steps; the collators only pad.

SFT:  render (chat template) → tokenize (one BOS, EOS learned) → labels (-100 on the prompt)
      → truncate → drop empty → pack (optional, no cross-example attention)
DPO:  render (prompt + partial path, chosen, rejected) → tokenize → truncate → drop empty

Rendering uses the worker's own messages (`kaelum.prompts.worker_messages`) and the model's own
chat template with the generation prompt, exactly as the runtime renders a request, and the
completion is `format_completion(steps, answer)` followed by the EOS token, so the model learns to
stop. The steps after rendering work on plain token ids and are unit-tested with literal ids.

Packing concatenates examples into rows of at most `max_seq_len` tokens and restarts
`position_ids` at 0 for every example. The collator then passes no attention mask, and
transformers builds a block-diagonal causal mask from the position ids (masking_utils'
packed-sequence detection), so no token attends to another example.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

log = logging.getLogger("kaelum.train.dataset")

IGNORE = -100
Row = dict[str, Any]
Step = Callable[[list[Row]], list[Row]]


# --- special tokens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Specials:
    """The ids the token steps need. `add_bos`: the tokenizer puts a BOS before a plain text."""

    bos_id: int | None
    eos_id: int
    pad_id: int
    add_bos: bool

    @classmethod
    def of(cls, tokenizer: Any) -> "Specials":
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token; training needs one so that the model learns to stop")
        bos = tokenizer.bos_token_id
        plain = tokenizer("x", add_special_tokens=True)["input_ids"]
        add_bos = bos is not None and len(plain) > 0 and plain[0] == bos
        # Padding is masked by the attention mask and by -100 labels built from lengths, never
        # by comparing ids with the pad id, so a tokenizer whose pad token is EOS still learns EOS.
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        return cls(bos_id=bos, eos_id=eos, pad_id=pad, add_bos=add_bos)


def with_one_bos(ids: list[int], sp: Specials) -> list[int]:
    """Exactly one BOS at the start where the model expects one: add it if missing, drop doubles.

    A chat template that writes the BOS itself (Llama 3) and a tokenizer that adds one would
    otherwise give two; a template without it on a tokenizer that expects one would give none.
    """
    if sp.bos_id is None:
        return list(ids)
    out = list(ids)
    while len(out) >= 2 and out[0] == sp.bos_id and out[1] == sp.bos_id:
        out.pop(0)
    if sp.add_bos and (not out or out[0] != sp.bos_id):
        out.insert(0, sp.bos_id)
    return out


def with_eos(ids: list[int], sp: Specials) -> list[int]:
    """The completion ends with exactly one EOS, which is learned (it carries a label)."""
    out = list(ids)
    while out and out[-1] == sp.eos_id:
        out.pop()
    return out + [sp.eos_id]


# --- SFT steps --------------------------------------------------------------------------------


def render_sft(tokenizer: Any) -> Step:
    def step(rows: list[Row]) -> list[Row]:
        out = []
        for r in rows:
            ex = r["example"]
            prompt = tokenizer.apply_chat_template(ex.messages(), tokenize=False, add_generation_prompt=True)
            out.append({**r, "prompt_text": prompt, "completion_text": ex.completion()})
        return out

    return step


def tokenize_sft(tokenizer: Any, sp: Specials) -> Step:
    def step(rows: list[Row]) -> list[Row]:
        out = []
        for r in rows:
            p = tokenizer(r["prompt_text"], add_special_tokens=False)["input_ids"]
            c = tokenizer(r["completion_text"], add_special_tokens=False)["input_ids"]
            out.append({**r, "prompt_ids": with_one_bos(p, sp), "completion_ids": with_eos(c, sp)})
        return out

    return step


def build_labels(rows: list[Row]) -> list[Row]:
    """input_ids = prompt + completion; labels copy the completion and are -100 on the prompt."""
    out = []
    for r in rows:
        p, c = list(r["prompt_ids"]), list(r["completion_ids"])
        out.append({**r, "input_ids": p + c, "labels": [IGNORE] * len(p) + c})
    return out


def truncate(max_len: int) -> Step:
    """Cut each row to `max_len` tokens from the right (the prompt is kept; the completion loses its tail)."""

    def step(rows: list[Row]) -> list[Row]:
        out = []
        for r in rows:
            n = len(r["input_ids"])
            if n > max_len:
                r = {**r, "input_ids": r["input_ids"][:max_len], "labels": r["labels"][:max_len], "truncated": True}
            out.append(r)
        return out

    return step


def drop_empty(rows: list[Row]) -> list[Row]:
    """Rows with no learned token (the prompt filled the whole length) teach nothing."""
    return [r for r in rows if any(t != IGNORE for t in r["labels"])]


def pack(max_len: int) -> Step:
    """Concatenate rows (in order) into rows of at most `max_len` tokens; position ids restart per example."""

    def step(rows: list[Row]) -> list[Row]:
        packed: list[Row] = []
        cur: Row | None = None
        for r in rows:
            n = len(r["input_ids"])
            if cur is None or len(cur["input_ids"]) + n > max_len:
                cur = {"input_ids": [], "labels": [], "position_ids": [], "trace_ids": []}
                packed.append(cur)
            cur["input_ids"] += r["input_ids"]
            cur["labels"] += r["labels"]
            cur["position_ids"] += list(range(n))
            cur["trace_ids"].append(r.get("trace_id"))
        return packed

    return step


# --- DPO steps --------------------------------------------------------------------------------


def render_dpo(tokenizer: Any) -> Step:
    def step(rows: list[Row]) -> list[Row]:
        out = []
        for r in rows:
            ex = r["example"]
            prompt = tokenizer.apply_chat_template(ex.messages(), tokenize=False, add_generation_prompt=True)
            out.append({**r, "prompt_text": prompt + ex.prefix(), "chosen_text": ex.chosen(), "rejected_text": ex.rejected()})
        return out

    return step


def tokenize_dpo(tokenizer: Any, sp: Specials) -> Step:
    def step(rows: list[Row]) -> list[Row]:
        out = []
        for r in rows:
            enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
            out.append(
                {
                    **r,
                    "prompt_ids": with_one_bos(enc(r["prompt_text"]), sp),
                    "chosen_ids": with_eos(enc(r["chosen_text"]), sp),
                    "rejected_ids": with_eos(enc(r["rejected_text"]), sp),
                }
            )
        return out

    return step


def truncate_dpo(max_len: int) -> Step:
    def step(rows: list[Row]) -> list[Row]:
        out = []
        for r in rows:
            room = max(0, max_len - len(r["prompt_ids"]))
            c, j = r["chosen_ids"][:room], r["rejected_ids"][:room]
            trunc = len(c) < len(r["chosen_ids"]) or len(j) < len(r["rejected_ids"])
            out.append({**r, "prompt_ids": r["prompt_ids"][:max_len], "chosen_ids": c, "rejected_ids": j, "truncated": trunc})
        return out

    return step


def drop_empty_dpo(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r["chosen_ids"] and r["rejected_ids"] and r["chosen_ids"] != r["rejected_ids"]]


# --- the pipeline -----------------------------------------------------------------------------


@dataclass
class Pipeline:
    """Named steps applied in order; `counts` records the rows after each step."""

    steps: list[tuple[str, Step]]
    counts: list[tuple[str, int]] = field(default_factory=list)

    def run(self, rows: list[Row]) -> list[Row]:
        self.counts = [("input", len(rows))]
        for name, fn in self.steps:
            rows = fn(rows)
            self.counts.append((name, len(rows)))
        return rows

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.steps]


def sft_pipeline(tokenizer: Any, max_len: int, packing: bool = False) -> Pipeline:
    sp = Specials.of(tokenizer)
    steps: list[tuple[str, Step]] = [
        ("render", render_sft(tokenizer)),
        ("tokenize", tokenize_sft(tokenizer, sp)),
        ("labels", build_labels),
        ("truncate", truncate(max_len)),
        ("drop_empty", drop_empty),
    ]
    if packing:
        steps.append(("pack", pack(max_len)))
    return Pipeline(steps)


def dpo_pipeline(tokenizer: Any, max_len: int) -> Pipeline:
    sp = Specials.of(tokenizer)
    return Pipeline(
        [
            ("render", render_dpo(tokenizer)),
            ("tokenize", tokenize_dpo(tokenizer, sp)),
            ("truncate", truncate_dpo(max_len)),
            ("drop_empty", drop_empty_dpo),
        ]
    )


def as_rows(examples: Iterable[Any]) -> list[Row]:
    return [{"example": e, "trace_id": e.trace_id} for e in examples]


# --- collators: padding only ------------------------------------------------------------------


def _pad(seqs: Sequence[Sequence[int]], value: int, width: int) -> torch.Tensor:
    return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


@dataclass
class SFTCollator:
    """Right-pads a batch. Unpacked rows get an attention mask from their lengths; packed rows get
    position ids (restarting per example, pad positions as one more segment) and no attention mask."""

    pad_id: int
    pad_to_multiple_of: int | None = None

    def _width(self, rows: Sequence[Row]) -> int:
        w = max(len(r["input_ids"]) for r in rows)
        m = self.pad_to_multiple_of
        return w if not m else -(-w // m) * m

    def __call__(self, rows: Sequence[Row]) -> dict[str, torch.Tensor]:
        w = self._width(rows)
        batch = {
            "input_ids": _pad([r["input_ids"] for r in rows], self.pad_id, w),
            "labels": _pad([r["labels"] for r in rows], IGNORE, w),
            # Tokens the model really reads (padding excluded), for honest tokens/s figures.
            "num_real_tokens": torch.tensor(sum(len(r["input_ids"]) for r in rows)),
        }
        if "position_ids" in rows[0]:
            batch["position_ids"] = torch.tensor(
                [list(r["position_ids"]) + list(range(w - len(r["position_ids"]))) for r in rows], dtype=torch.long
            )
        else:
            batch["attention_mask"] = torch.tensor([[1] * len(r["input_ids"]) + [0] * (w - len(r["input_ids"])) for r in rows])
        return batch


@dataclass
class DPOCollator:
    """Chosen rows first, then rejected rows, in one padded batch (one forward pass for both)."""

    pad_id: int

    def __call__(self, rows: Sequence[Row]) -> dict[str, torch.Tensor]:
        seqs, labels = [], []
        for key in ("chosen_ids", "rejected_ids"):
            for r in rows:
                seqs.append(list(r["prompt_ids"]) + list(r[key]))
                labels.append([IGNORE] * len(r["prompt_ids"]) + list(r[key]))
        w = max(len(s) for s in seqs)
        batch = {
            "input_ids": _pad(seqs, self.pad_id, w),
            "labels": _pad(labels, IGNORE, w),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (w - len(s)) for s in seqs]),
            "num_real_tokens": torch.tensor(sum(len(s) for s in seqs)),
        }
        if "ref_chosen_logp" in rows[0]:
            batch["ref_logps"] = torch.tensor(
                [r["ref_chosen_logp"] for r in rows] + [r["ref_rejected_logp"] for r in rows], dtype=torch.float32
            )
        return batch


# --- statistics for --dry-run -----------------------------------------------------------------


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {"count": 0}
    s = sorted(lengths)

    def q(p: float) -> int:
        return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]

    return {"count": len(s), "min": s[0], "mean": round(sum(s) / len(s), 1), "p50": q(0.5), "p95": q(0.95), "max": s[-1]}
