"""Two boundaries of the training API that need no model: a dry run asked of `finetune_worker` is
refused before anything is touched, and --warmup-ratio becomes the number of warmup steps
transformers itself would compute from the ratio."""

from __future__ import annotations

import pytest

from train import finetune_worker
from train.config import ConfigError
from train.trainer import warmup_steps


def test_finetune_worker_refuses_a_dry_run_before_touching_anything(tmp_path):
    logs, store = tmp_path / "logs", tmp_path / "store"
    with pytest.raises(ConfigError) as err:
        finetune_worker(model_name="default", log_dir=str(logs), store=str(store), dry_run=True)
    assert "finetune_worker always trains" in str(err.value) and "kaelum-train --dry-run" in str(err.value)
    assert not logs.exists() and not store.exists()


@pytest.mark.parametrize("steps_per_epoch, epochs, ratio", [(10, 3, 0.1), (7, 1, 0.0), (7, 2.5, 0.33), (1, 1, 0.99), (125, 0.3, 0.05)])
def test_warmup_steps_are_what_transformers_computes_from_the_ratio(tmp_path, steps_per_epoch, epochs, ratio):
    from transformers import TrainingArguments

    total = -(-steps_per_epoch * epochs // 1)  # the Trainer's max_steps: ceil(epochs * steps per epoch)
    steps = warmup_steps(steps_per_epoch, epochs, ratio)
    assert isinstance(steps, int)
    as_ratio = TrainingArguments(output_dir=str(tmp_path), warmup_steps=ratio, use_cpu=True, report_to="none")
    as_steps = TrainingArguments(output_dir=str(tmp_path), warmup_steps=steps, use_cpu=True, report_to="none")
    assert as_steps.get_warmup_steps(int(total)) == as_ratio.get_warmup_steps(int(total)) == steps
