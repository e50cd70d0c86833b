"""Trainer data path: --where guard, selection stages, dataset steps with literal ids, collators, packing."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from train.cli import main as train_main
from train.config import ConfigError, DataArgs, TrainArgs
from train.data import DataError, PreferencePair, Selection, Trace, check_counts, select_rows
from train.dataset import (
    IGNORE,
    DPOCollator,
    SFTCollator,
    Specials,
    as_rows,
    build_labels,
    drop_empty,
    pack,
    sft_pipeline,
    truncate,
    with_eos,
    with_one_bos,
)
from train.where import WhereError, check_where

SP = Specials(bos_id=1, eos_id=2, pad_id=0, add_bos=True)


# --- --where ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred",
    [
        "reward > 0.9",
        "reward >= 0.8 and domain = 'math' and len(steps) between 1 and 4",
        "query ilike '%sum%' or list_contains(tags, 'gold')",
        "query = 'a;b -- not a comment'",
        "coalesce(feedback_label, '') <> 'wrong'",
    ],
)
def test_where_accepts_single_expressions(pred):
    assert check_where(pred) == pred


@pytest.mark.parametrize(
    "pred, message",
    [
        ("reward>0.9; DROP TABLE training_examples", "found 2 statements separated by ';'"),
        ("reward>0.9; COPY training_examples TO '/tmp/x.csv'", "found 2 statements"),
        ("reward>0.9 -- ", "may not contain SQL comments"),
        ("reward>0.9 /* hidden */", "may not contain SQL comments"),
        ("length(read_text('/etc/passwd')) > 0", "may not call read_text()"),
        ("getenv('HOME') is not null", "may not call getenv()"),
        ("current_setting('threads') > 0", "may not call current_setting()"),
        ("exists (select * from read_csv('/etc/passwd'))", "may not contain subqueries"),
        ("trace_id in (select trace_id from events)", "may not contain subqueries"),
        ("1=1) union select * from read_parquet('x') where (1=1", "not a query fragment"),
        ("reward > 0.9 or (delete from events)", "not a valid SQL expression"),
        ("rank() over () > 1", "may not contain window expressions"),
        ("", "--where is empty"),
    ],
)
def test_where_refuses_malicious_or_broken_predicates(pred, message):
    with pytest.raises(WhereError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_where(pred)


@pytest.mark.parametrize(
    "pred",
    ["reward>0.9; DROP TABLE x", "reward>0.9 -- ", "length(read_text('/etc/passwd')) > 0", "reward > (select 1)"],
)
def test_cli_refuses_malicious_where_before_loading_anything(tmp_path, pred):
    res = CliRunner().invoke(
        train_main, ["--model", str(tmp_path / "nope"), "--store", str(tmp_path / "nostore"), "--where", pred, "--output-dir", str(tmp_path / "o")]
    )
    assert res.exit_code == 1
    assert "Error: invalid training configuration" in res.output and "--where" in res.output
    assert not (tmp_path / "o").exists()


def test_config_lists_every_problem_naming_flags():
    args = TrainArgs(model="", batch_size=0, lr=-1, data=DataArgs(domain="poetry", eval_split=1.5, where="1; 2"), adapter="full", merge=True)
    with pytest.raises(ConfigError) as ei:
        args.validate()
    text = str(ei.value)
    for flag in ("--model", "--batch-size", "--lr", "--domain", "--eval-split", "--where", "--merge"):
        assert flag in text
    assert len(ei.value.problems) == 7


# --- selection --------------------------------------------------------------------------------


def _table(rows):
    return pa.Table.from_pylist(
        [
            {"trace_id": t, "domain": d, "query": f"q{t}", "steps": ["s"], "final_answer": "1", "reward": r, "verified": True, "tags": []}
            for t, d, r in rows
        ]
    )


def test_select_rows_applies_filters_in_order_and_counts_each_stage():
    table = _table([("a", "math", 0.95), ("b", "math", 0.5), ("c", "code", 0.99), ("d", "math", 0.8)])
    rows, stages = select_rows(table, view="training_examples", domain="math", min_reward=0.7, where="reward > 0.9")
    assert [r["trace_id"] for r in rows] == ["a"]
    assert [n for _, n in stages] == [4, 3, 2, 1]


def test_zero_examples_error_names_the_filter_that_removed_them():
    table = _table([("a", "math", 0.95), ("b", "math", 0.5)])
    rows, stages = select_rows(table, view="training_examples", domain="math", min_reward=0.7, where="reward > 0.99")
    with pytest.raises(DataError, match=r"--where 'reward > 0.99' removed them all \(2 in training_examples"):
        check_counts(Selection(examples=[], stages=stages))
    rows, stages = select_rows(table, view="training_examples", domain="code", min_reward=0.7, where=None)
    with pytest.raises(DataError, match="--domain code removed them all"):
        check_counts(Selection(examples=[], stages=stages))
    with pytest.raises(DataError, match="is empty"):
        check_counts(Selection(examples=[], stages=[("training_examples (complete and verified traces)", 0)]))


def test_few_examples_warn_with_the_count(caplog):
    ex = [Trace(trace_id=f"t{i}", domain="math", query="q", steps=("s",), final_answer="1", reward=0.9) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="kaelum.train.data"):
        check_counts(Selection(examples=ex, stages=[("x", 3)]))
    assert "only 3 training examples for domain math" in caplog.text and "100+" in caplog.text


# --- token steps with literal ids -------------------------------------------------------------


def test_exactly_one_bos_and_a_learned_eos():
    assert with_one_bos([5, 6], SP) == [1, 5, 6]
    assert with_one_bos([1, 5], SP) == [1, 5]
    assert with_one_bos([1, 1, 1, 5], SP) == [1, 5]
    no_add = Specials(bos_id=1, eos_id=2, pad_id=0, add_bos=False)
    assert with_one_bos([5, 6], no_add) == [5, 6]
    assert with_eos([7, 8], SP) == [7, 8, 2]
    assert with_eos([7, 2, 2], SP) == [7, 2]


def test_labels_truncate_drop_empty():
    rows = build_labels([{"prompt_ids": [1, 10, 11], "completion_ids": [20, 21, 2]}])
    assert rows[0]["input_ids"] == [1, 10, 11, 20, 21, 2]
    assert rows[0]["labels"] == [IGNORE, IGNORE, IGNORE, 20, 21, 2]
    cut = truncate(4)(rows)
    assert cut[0]["input_ids"] == [1, 10, 11, 20] and cut[0]["labels"] == [IGNORE] * 3 + [20] and cut[0]["truncated"]
    assert drop_empty(truncate(3)(rows)) == []
    assert len(drop_empty(cut)) == 1


def test_pack_restarts_positions_per_example_and_respects_max_len():
    rows = [
        {"input_ids": [1, 3, 4], "labels": [IGNORE, 3, 4], "trace_id": "a"},
        {"input_ids": [1, 5], "labels": [IGNORE, 5], "trace_id": "b"},
        {"input_ids": [1, 6, 7, 8], "labels": [IGNORE, 6, 7, 8], "trace_id": "c"},
    ]
    packed = pack(5)(rows)
    assert [p["input_ids"] for p in packed] == [[1, 3, 4, 1, 5], [1, 6, 7, 8]]
    assert [p["position_ids"] for p in packed] == [[0, 1, 2, 0, 1], [0, 1, 2, 3]]
    assert packed[0]["labels"] == [IGNORE, 3, 4, IGNORE, 5]
    assert packed[0]["trace_ids"] == ["a", "b"]


def test_collator_pads_and_never_masks_eos_even_when_pad_is_eos():
    col = SFTCollator(pad_id=2)  # pad token == EOS, as in SmolLM2
    batch = col([{"input_ids": [1, 5, 2], "labels": [IGNORE, 5, 2]}, {"input_ids": [1, 2], "labels": [IGNORE, 2]}])
    assert batch["input_ids"].tolist() == [[1, 5, 2], [1, 2, 2]]
    assert batch["labels"].tolist() == [[IGNORE, 5, 2], [IGNORE, 2, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert int(batch["num_real_tokens"]) == 5
    packed = SFTCollator(pad_id=0)([{"input_ids": [1, 3, 1, 5], "labels": [IGNORE, 3, IGNORE, 5], "position_ids": [0, 1, 0, 1]},
                                     {"input_ids": [1, 6], "labels": [IGNORE, 6], "position_ids": [0, 1]}])
    assert "attention_mask" not in packed
    assert packed["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]
    assert packed["labels"].tolist()[1] == [IGNORE, 6, IGNORE, IGNORE]


def test_dpo_collator_puts_chosen_then_rejected():
    batch = DPOCollator(pad_id=0)([{"prompt_ids": [1, 9], "chosen_ids": [4, 2], "rejected_ids": [5, 6, 2], "ref_chosen_logp": -1.0, "ref_rejected_logp": -2.0}])
    assert batch["input_ids"].tolist() == [[1, 9, 4, 2, 0], [1, 9, 5, 6, 2]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 4, 2, IGNORE], [IGNORE, IGNORE, 5, 6, 2]]
    assert batch["ref_logps"].tolist() == [-1.0, -2.0]


def test_preference_pair_continues_step_numbers_after_the_prefix():
    p = PreferencePair("t", "math", "q", "n2", ("add 1",), ("add 2",), "3", 0.9, ("add 5",), "6", 0.1)
    assert p.prefix() == "Step 1: add 1\n"
    assert p.chosen() == "Step 2: add 2\nAnswer: 3"
    full = PreferencePair("t", "math", "q", "n2", ("add 1",), ("add 1", "add 2"), "3", 0.9, ("add 5",), "6", 0.1)
    assert full.chosen() == "Step 2: add 2\nAnswer: 3"


# --- with the tiny model's real tokenizer -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def test_rendering_uses_the_worker_prompt_and_chat_template(tiny):
    from transformers import AutoTokenizer

    from kaelum.prompts import worker_messages

    tok = AutoTokenizer.from_pretrained(tiny)
    ex = Trace(trace_id="t1", domain="math", query="What is 2+3?", steps=("Add 2 and 3.",), final_answer="5", reward=0.9)
    rows = sft_pipeline(tok, 512).run(as_rows([ex]))
    r = rows[0]
    assert r["prompt_text"] == tok.apply_chat_template(worker_messages("math", "What is 2+3?"), tokenize=False, add_generation_prompt=True)
    assert r["completion_text"] == "Step 1: Add 2 and 3.\nAnswer: 5"
    sp = Specials.of(tok)
    assert r["input_ids"][0] == sp.bos_id and r["input_ids"][1] != sp.bos_id
    assert r["input_ids"][-1] == sp.eos_id and r["labels"][-1] == sp.eos_id
    n_prompt = len(r["prompt_ids"])
    assert all(t == IGNORE for t in r["labels"][:n_prompt])
    assert tok.decode([t for t in r["labels"] if t != IGNORE]) == "Step 1: Add 2 and 3.\nAnswer: 5<|im_end|>"


def test_packing_does_not_leak_attention_across_examples(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, attn_implementation="sdpa").eval()
    a, b = [1, 40, 41, 42, 43], [1, 50, 51, 52]
    with torch.no_grad():
        la = model(input_ids=torch.tensor([a])).logits[0]
        lb = model(input_ids=torch.tensor([b])).logits[0]
        rows = pack(16)([{"input_ids": a, "labels": a}, {"input_ids": b, "labels": b}])
        batch = SFTCollator(pad_id=0)(rows)
        lp = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        naive = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    torch.testing.assert_close(lp[: len(a)], la, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lp[len(a) :], lb, atol=1e-5, rtol=1e-4)
    # Without the per-example positions the second example would see the first: the check above can fail.
    assert not torch.allclose(naive[len(a) :], lb, atol=1e-3)


def test_completion_only_loss_equals_the_models_own_loss(tiny):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from train.trainer import completion_only_loss

    model = AutoModelForCausalLM.from_pretrained(tiny)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    batch = SFTCollator(pad_id=3)([
        {"input_ids": [1, 40, 41, 42, 43, 2], "labels": [IGNORE, IGNORE, IGNORE, 42, 43, 2]},
        {"input_ids": [1, 50, 51, 2], "labels": [IGNORE, IGNORE, 51, 2]},
    ])
    batch.pop("num_real_tokens")
    ours = completion_only_loss(model, batch)
    ref = model(**batch).loss
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    ours.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    model(**batch).loss.backward()
    for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad]):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)
    # Summed over tokens and divided by the count over all accumulated batches:
    torch.testing.assert_close(completion_only_loss(model, batch, num_items=10), ref * 5 / 10, atol=1e-5, rtol=1e-5)


def test_missing_log_dir_and_missing_store_name_the_fix(tmp_path):
    common = ["--model", "m", "--output-dir", str(tmp_path / "o")]
    res = CliRunner().invoke(train_main, common + ["--log-dir", str(tmp_path / "nologs"), "--store", str(tmp_path / "s")])
    assert res.exit_code == 1 and "does not exist; point it at the folder the orchestrator logs to" in res.output
    res = CliRunner().invoke(train_main, common + ["--store", str(tmp_path / "nostore")])
    assert res.exit_code == 1 and f"no store at {tmp_path / 'nostore'} — run `kaelum-ingest --once" in res.output
