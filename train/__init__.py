"""kaelum-train and kaelum-eval: fine-tune worker models on the store's traces, and prove they improved.

    from train import collect_traces, filter_high_quality, prepare_dataset, finetune_worker

Heavy modules (torch, transformers) load on first use of a function that needs them.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "collect_traces": "train.api",
    "filter_high_quality": "train.api",
    "prepare_dataset": "train.api",
    "finetune_worker": "train.api",
    "train": "train.api",
    "TrainArgs": "train.config",
    "DataArgs": "train.config",
    "LoraArgs": "train.config",
    "ConfigError": "train.config",
    "Trace": "train.data",
    "PreferencePair": "train.data",
    "DataError": "train.data",
    "TrainError": "train.trainer",
    "TrainResult": "train.trainer",
    "WhereError": "train.where",
    "check_where": "train.where",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
