"""`kaelum-sql export`: TRL/OpenAI files rendered as kaelum-train renders them, read by TRL's own data loading."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ingest import ingest_once
from kaelum.tracelog import TraceLogger
from store.cli import main as sql_main
from test_train_e2e import write_trace
from train.data import select_examples


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    with TraceLogger(root / "logs", fsync="never") as lg:
        for i in range(6):
            write_trace(lg, "math", i, i + 3, reward=0.9 + 0.01 * i, wrong_branch=i % 2 == 0)
        write_trace(lg, "math", 60, 2, reward=0.5)  # below the default --min-reward
        write_trace(lg, "logic", 70, 3, reward=0.99)
    ingest_once(root / "logs", root / "store", progress=False)
    out = {}
    for fmt in ("trl-sft", "trl-dpo", "openai-chat"):
        path = root / f"{fmt}.jsonl"
        res = CliRunner().invoke(sql_main, ["export", "--store", str(root / "store"), "--format", fmt, "--domain", "math", "-o", str(path)])
        assert res.exit_code == 0, res.output
        out[fmt] = [json.loads(line) for line in path.read_text().splitlines()]
    return root, out


def test_records_are_kaelum_trains_own_selection_and_rendering(exported):
    root, out = exported
    sft = select_examples(str(root / "store"), method="sft", domain="math", min_reward=0.7)
    assert len(out["trl-sft"]) == len(sft.examples) == 6
    for rec, ex in zip(out["trl-sft"], sorted(sft.examples, key=lambda e: e.trace_id)):
        assert rec["trace_id"] == ex.trace_id
        assert rec["prompt"] == ex.messages() and rec["completion"] == [{"role": "assistant", "content": ex.completion()}]
    for rec, sft_rec in zip(out["openai-chat"], out["trl-sft"]):
        assert rec["messages"] == sft_rec["prompt"] + sft_rec["completion"]
    dpo = select_examples(str(root / "store"), method="dpo", domain="math")
    assert len(out["trl-dpo"]) == len(dpo.examples) == 3
    for rec, pair in zip(out["trl-dpo"], dpo.examples):
        assert rec["prompt"] == pair.messages()
        assert rec["chosen"][0]["content"] == pair.prefix() + pair.chosen()
        assert rec["rejected"][0]["content"] == pair.prefix() + pair.rejected()


def test_nothing_to_export_names_the_filters(exported):
    root, _ = exported
    res = CliRunner().invoke(sql_main, ["export", "--store", str(root / "store"), "--format", "trl-sft", "--domain", "code"])
    assert res.exit_code == 1
    assert "nothing to export: training_examples has no rows with --domain code, --min-reward 0.7" in res.output


def test_trl_loads_the_exports_into_the_token_ids_kaelum_train_builds(exported, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from tests.tiny_model import make_tiny_llama
    from train.dataset import render_dpo, render_sft

    root, _ = exported
    model_dir = make_tiny_llama(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    common = dict(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True, max_length=512)

    sft_ds = datasets.load_dataset("json", data_files=str(root / "trl-sft.jsonl"), split="train")
    sft = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=sft_ds, processing_class=tok)
    mine = render_sft(tok)([{"example": ex} for ex in sorted(select_examples(str(root / "store"), method="sft", domain="math").examples, key=lambda e: e.trace_id)])
    for row, ref in zip(sft.train_dataset, mine):
        text = tok.decode(row["input_ids"])
        assert text.startswith(ref["prompt_text"] + ref["completion_text"])
        n_prompt = len(tok(ref["prompt_text"], add_special_tokens=False)["input_ids"])
        labels = row["labels"]  # loss on the completion only, as kaelum-train's labels
        assert set(labels[:n_prompt]) == {-100} and any(x != -100 for x in labels[n_prompt:])

    dpo_ds = datasets.load_dataset("json", data_files=str(root / "trl-dpo.jsonl"), split="train")
    dpo = DPOTrainer(model=model, ref_model=AutoModelForCausalLM.from_pretrained(model_dir), args=DPOConfig(**common), train_dataset=dpo_ds, processing_class=tok)
    pairs = render_dpo(tok)([{"example": p} for p in select_examples(str(root / "store"), method="dpo", domain="math").examples])
    for row, ref in zip(dpo.train_dataset, pairs):
        prompt = tok.decode(row["prompt_ids"])
        chosen, rejected = tok.decode(row["chosen_ids"]), tok.decode(row["rejected_ids"])
        # Kaelum's prompt ends with the shared partial path; TRL's holds it at the start of both answers.
        assert prompt + chosen.split("<|im_end|>")[0] == ref["prompt_text"] + ref["chosen_text"]
        assert prompt + rejected.split("<|im_end|>")[0] == ref["prompt_text"] + ref["rejected_text"]
