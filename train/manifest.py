"""The output directory describes itself: model, tokenizer, config, prompt template, manifest.

    out/
      adapter_config.json, adapter_model.safetensors   (LoRA/QLoRA)  or  config.json, model.safetensors (--full / --merge)
      tokenizer files, chat template
      trainer_state.json          log history with loss and eval_loss entries
      checkpoint-N/               what --resume continues from
      train_config.json           the resolved TrainArgs
      prompt_template.json        system prompts and answer format the examples were rendered with
      kaelum_manifest.json        base model, hyper-parameters, filters, store snapshot, trace ids, metrics

`kaelum_manifest.json` with `base_model` is what the runtime's `load_llm` looks for to serve an
adapter directory, and what ties a model to the events it learned from.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from datetime import datetime, timezone
from typing import Any

import kaelum
from kaelum import prompts

from .config import TrainArgs
from .data import Selection, trace_ids_hash
from .dataset import Pipeline

log = logging.getLogger("kaelum.train.manifest")

MANIFEST = "kaelum_manifest.json"
CONFIG = "train_config.json"
PROMPT_TEMPLATE = "prompt_template.json"


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def save_model(model: Any, tokenizer: Any, args: TrainArgs) -> str:
    """Write the adapter (or, with --merge / --full, the full model) and the tokenizer; return the kind."""
    out = args.output_dir
    kind = "full"
    if args.adapter != "full":
        if args.merge:
            model = model.merge_and_unload()
            kind = "merged"
        else:
            kind = "adapter"
    if kind == "adapter":
        model.save_pretrained(out)
    else:
        model.config.use_cache = True
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return kind


def build_manifest(
    args: TrainArgs,
    selection: Selection,
    train_ex: list[Any],
    eval_ex: list[Any],
    metrics: dict[str, Any],
    pipe: Pipeline | None,
    kind: str,
    resumed_from: str | None,
) -> dict[str, Any]:
    ids = selection.trace_ids
    return {
        "kaelum_version": kaelum.__version__,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "base_model": args.model,
        "kind": kind,  # adapter | merged | full
        "method": args.method,
        "adapter": args.adapter,
        "domain": args.data.domain,
        "filters": {
            "view": selection.view,
            "domain": args.data.domain,
            "min_reward": args.data.min_reward if selection.view == "training_examples" else None,
            "where": args.data.where,
            "stages": [{"filter": name, "examples": n} for name, n in selection.stages],
        },
        "hyperparameters": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "grad_accum": args.grad_accum,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "warmup_ratio": args.warmup_ratio,
            "lr_scheduler": args.lr_scheduler,
            "max_seq_len": args.data.max_seq_len,
            "packing": args.data.packing,
            "eval_split": args.data.eval_split,
            "seed": args.seed,
            "gradient_checkpointing": args.gradient_checkpointing,
            "lora": None if args.adapter == "full" else {"r": args.lora.r, "alpha": args.lora.alpha, "dropout": args.lora.dropout, "targets": args.lora.targets},
            "dpo_beta": args.dpo_beta if args.method == "dpo" else None,
        },
        "store": selection.snapshot.as_dict() if selection.snapshot else None,
        "data": {
            "trace_ids": ids,
            "trace_ids_sha256": trace_ids_hash(ids),
            "trace_count": len(ids),
            "examples": len(selection.examples),
            "per_domain": selection.per_domain(),
            "train_trace_ids": sorted({e.trace_id for e in train_ex}),
            "eval_trace_ids": sorted({e.trace_id for e in eval_ex}),
            "pipeline": [{"step": n, "rows": c} for n, c in (pipe.counts if pipe else [])],
        },
        "metrics": metrics,
        "resumed_from": os.path.basename(resumed_from) if resumed_from else None,
        "environment": {"python": platform.python_version(), **_versions()},
    }


def _versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "transformers", "peft"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # a missing optional package is simply not recorded
            continue
    return out


def prompt_template(args: TrainArgs) -> dict[str, Any]:
    domains = [args.data.domain] if args.data.domain else list(prompts.SYSTEM_PROMPTS)
    return {
        "source": "kaelum.prompts.worker_messages + tokenizer chat template (add_generation_prompt=True)",
        "system_prompts": {d: prompts.SYSTEM_PROMPTS[d] for d in domains},
        "completion": "Step 1: <thought>\\nStep 2: <thought>\\n...Answer: <final answer><eos>",
        "answer_prefix": prompts.ANSWER_PREFIX,
    }


def save_outputs(
    model: Any,
    tokenizer: Any,
    args: TrainArgs,
    selection: Selection,
    train_ex: list[Any],
    eval_ex: list[Any],
    metrics: dict[str, Any],
    pipe: Pipeline | None,
    resumed_from: str | None = None,
) -> dict[str, Any]:
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    kind = save_model(model, tokenizer, args)
    _write_json(os.path.join(out, CONFIG), args.to_dict())
    _write_json(os.path.join(out, PROMPT_TEMPLATE), prompt_template(args))
    manifest = build_manifest(args, selection, train_ex, eval_ex, metrics, pipe, kind, resumed_from)
    if kind == "adapter":
        manifest["base_model_ref"] = portable_base(out, args.model)
    # Written last: a directory with a manifest is a finished model the runtime may serve.
    _write_json(os.path.join(out, MANIFEST), manifest)
    return manifest


def portable_base(out: str, spec: str) -> dict[str, str] | None:
    """Point the adapter in `out` at a portable name of its base, not this machine's cache path.

    peft writes `base_model_name_or_path` as the directory the base was loaded from (an absolute
    path into ~/.cache/kaelum here). It becomes the base's portable name (`kaelum.llm.loader.
    portable_reference`); the returned {"name", "sha256"} goes into the manifest, and the runtime
    resolves the name, or finds the same content in its cache by the hash.
    """
    from kaelum.llm.loader import portable_reference

    try:
        ref = portable_reference(spec, progress=False)
    except Exception as exc:  # a base the runtime cannot resolve (e.g. a hub id only transformers knows)
        log.warning("no portable reference for base model %r: %s", spec, exc)
        return None
    path = os.path.join(out, "adapter_config.json")
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    config["base_model_name_or_path"] = ref["name"]
    _write_json(path, config)
    return ref


def read_manifest(path: str) -> dict[str, Any]:
    with open(os.path.join(path, MANIFEST), encoding="utf-8") as fh:
        return json.load(fh)
