"""kaelum-train end to end on a tiny Llama: logger events → ingest → store views → adapter → runtime.

The traces follow the trace shape of docs/architecture.md and are written by the runtime's own
TraceLogger; the store and the ingester are the real ones. Each training run takes seconds.
"""

from __future__ import annotations

import csv
import json
import os

import pytest
from click.testing import CliRunner

from kaelum.events import TraceEvents
from kaelum.tracelog import TraceLogger
from train.cli import main as train_main
from train.data import trace_ids_hash


def write_trace(logger, domain, a, b, *, verified=True, reward=0.95, wrong_branch=False, status="ok"):
    """One trace: root → 'a + b = c' → terminal 'Answer: c' (optionally a failed sibling branch)."""
    t = TraceEvents()
    query = f"What is {a} + {b}?"
    c = a + b
    llm = {"model": "tiny", "prompt_tokens": 40, "completion_tokens": 8, "latency_ms": 1.0}
    logger.log(t.make("trace_started", query=query, domain=domain, router={"domain": domain, "confidence": 1.0, "method": "explicit"},
                      worker_model="tiny", params={"simulations": 2, "max_depth": 4, "branching": 2, "exploration": 1.0, "temperature": 0.7, "seed": 1}, tags=[]))
    logger.log(t.make("node_expanded", node_id="n0", parent_id=None, depth=0, thought=query, terminal=False, answer=None, llm=None))
    logger.log(t.make("node_expanded", node_id="n1", parent_id="n0", depth=1, thought=f"{a} + {b} = {c}", terminal=False, answer=None, llm=llm))
    logger.log(t.make("node_evaluated", node_id="n1", value=0.8, signals={}))
    logger.log(t.make("node_expanded", node_id="n2", parent_id="n1", depth=2, thought=f"The sum is {c}.", terminal=True, answer=str(c), llm=llm))
    logger.log(t.make("node_evaluated", node_id="n2", value=0.9, signals={}))
    logger.log(t.make("verification", node_id="n2", answer=str(c), passed=verified, score=1.0 if verified else 0.0, verifier="math.sympy", details={}))
    stats = [{"node_id": "n0", "visits": 2, "value": 0.5}, {"node_id": "n1", "visits": 2, "value": 0.8}, {"node_id": "n2", "visits": 1, "value": 0.9}]
    if wrong_branch:
        logger.log(t.make("node_expanded", node_id="n3", parent_id="n1", depth=2, thought=f"The sum is {c + 1}.", terminal=True, answer=str(c + 1), llm=llm))
        logger.log(t.make("node_evaluated", node_id="n3", value=0.2, signals={}))
        logger.log(t.make("verification", node_id="n3", answer=str(c + 1), passed=False, score=0.0, verifier="math.sympy", details={}))
        stats.append({"node_id": "n3", "visits": 1, "value": 0.2})
    logger.log(t.make("trace_completed", status=status, final_answer=str(c), best_path=["n0", "n1", "n2"], verified=verified, reward=reward,
                      reward_components={"verified": 1.0 if verified else 0.0}, node_stats=stats,
                      usage={"llm_calls": 2, "prompt_tokens": 80, "completion_tokens": 16}, duration_ms=5.0, error=None))
    return t.trace_id


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Logs with traces of every kind the filters must tell apart, and the ids they should keep."""
    from tests.tiny_model import make_tiny_llama

    root = tmp_path_factory.mktemp("train_e2e")
    model = make_tiny_llama(root / "tiny")
    logs = root / "logs"
    expected, all_ids = [], {}
    with TraceLogger(logs, fsync="never") as lg:
        for i in range(24):  # selected: math, verified, reward 0.92..
            expected.append(write_trace(lg, "math", i, i + 3, reward=0.92 + 0.003 * i, wrong_branch=i % 2 == 0))
        all_ids["low_reward"] = [write_trace(lg, "math", 50 + i, 1, reward=0.75) for i in range(3)]  # kept by --min-reward, cut by --where
        all_ids["below_min"] = [write_trace(lg, "math", 60 + i, 2, reward=0.5) for i in range(3)]
        all_ids["logic"] = [write_trace(lg, "logic", 70 + i, 3, reward=0.99) for i in range(3)]
        all_ids["unverified"] = [write_trace(lg, "math", 80 + i, 4, verified=False, reward=0.1) for i in range(3)]
    return {"root": root, "model": str(model), "logs": str(logs), "store": str(root / "store"), "expected": sorted(expected)}


def _train(world, out, *extra, where="reward >= 0.9"):
    args = ["--model", world["model"], "--domain", "math", "--log-dir", world["logs"], "--store", world["store"],
            "--output-dir", str(out), "--epochs", "2", "--batch-size", "4", "--lr", "5e-3", "--min-reward", "0.7",
            "--max-seq-len", "256", "--eval-split", "0.2", "--logging-steps", "1", "--no-progress"]
    if where:
        args += ["--where", where]
    return CliRunner().invoke(train_main, args + list(extra), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(world):
    out = world["root"] / "out"
    res = _train(world, out)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_output_directory_holds_exactly_the_documented_files(trained):
    out, output = trained
    names = sorted(os.listdir(out))
    checkpoints = [n for n in names if n.startswith("checkpoint-")]
    assert len(checkpoints) == 2  # one per epoch
    assert sorted(set(names) - set(checkpoints)) == sorted([
        "README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "kaelum_manifest.json",
        "prompt_template.json", "tokenizer.json", "tokenizer_config.json", "train_config.json", "trainer_state.json",
    ])
    assert "Model written to" in output and "MATH_WORKER_MODEL" in output


def test_manifest_lists_exactly_the_trace_ids_the_filter_selected(trained, world):
    out, _ = trained
    m = json.load(open(out / "kaelum_manifest.json"))
    assert m["data"]["trace_ids"] == world["expected"]
    assert m["data"]["trace_count"] == 24 and m["data"]["trace_ids_sha256"] == trace_ids_hash(world["expected"])
    assert sorted(m["data"]["train_trace_ids"] + m["data"]["eval_trace_ids"]) == world["expected"]
    assert len(m["data"]["eval_trace_ids"]) == 5
    assert m["base_model"] == world["model"] and m["kind"] == "adapter"
    assert m["filters"]["where"] == "reward >= 0.9" and m["domain"] == "math" and m["filters"]["min_reward"] == 0.7
    assert [s["examples"] for s in m["filters"]["stages"]] == [33, 30, 27, 24]  # view, --domain, --min-reward, --where
    assert m["store"]["event_count"] > 0 and m["store"]["files"] and all(s.startswith("events/") for s in m["store"]["files"])
    assert m["store"]["versions"]["events"] >= 1
    assert m["hyperparameters"]["lr"] == 5e-3 and m["hyperparameters"]["lora"]["r"] == 16
    assert m["metrics"]["eval_loss"] > 0


def test_loss_falls_and_eval_loss_is_in_trainer_state(trained):
    out, _ = trained
    text = (out / "trainer_state.json").read_text()
    assert '"eval_loss"' in text  # the guide: grep "eval_loss" finetuned_models/trainer_state.json
    history = json.loads(text)["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert len(losses) >= 5 and sum(losses[-3:]) < 0.8 * sum(losses[:3])  # about 6.3 → 4.3 on this data
    assert len(evals) == 2 and evals[-1] < evals[0]


def test_adapter_loads_through_settings_and_answers(trained):
    from kaelum import Settings
    from kaelum.llm import load_llm
    from kaelum.llm.base import SamplingParams
    from kaelum.prompts import worker_messages

    out, _ = trained
    settings = Settings(MATH_WORKER_MODEL=str(out))
    llm = load_llm(settings.worker_model("math"))
    [c] = llm.generate(worker_messages("math", "What is 3 + 6?"), n=1, params=SamplingParams(max_tokens=24, temperature=0.0))
    assert c.completion_tokens > 0 and c.text.strip()
    # The trained format shows through: the random base model would not start with 'Step'.
    assert c.text.lstrip().startswith("Step")


def test_resume_continues_from_the_last_checkpoint(trained, world, tmp_path):
    import shutil

    out, _ = trained
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    state = json.load(open(copy / "trainer_state.json"))
    step = state["global_step"]
    refused = _train(world, copy)
    assert refused.exit_code == 1 and "pass --resume to continue it" in refused.output
    res = _train(world, copy, "--resume", "--epochs", "3")
    assert res.exit_code == 0, res.output
    assert f"resumed from {copy}/checkpoint-{step}" in res.output
    new = json.load(open(copy / "trainer_state.json"))
    assert new["global_step"] == step * 3 // 2
    steps_logged = [h["step"] for h in new["log_history"] if "loss" in h]
    assert steps_logged[: len([h for h in state["log_history"] if "loss" in h])] == [h["step"] for h in state["log_history"] if "loss" in h]
    assert json.load(open(copy / "kaelum_manifest.json"))["resumed_from"] == f"checkpoint-{step}"
    assert not _train(world, tmp_path / "fresh", "--resume").exit_code == 0


def test_dry_run_prints_counts_stats_and_examples_and_trains_nothing(world, tmp_path):
    res = _train(world, tmp_path / "dry", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "math       24" in res.output
    assert "Total tokens:      min" in res.output and "p95" in res.output
    assert res.output.count("(rendered) ---") == 2 and "<|im_start|>assistant\nStep 1:" in res.output
    assert "Dry run: nothing was trained." in res.output
    assert not (tmp_path / "dry").exists()


def test_zero_examples_is_an_error_naming_the_filter(world, tmp_path):
    res = _train(world, tmp_path / "none", where="reward > 0.999")
    assert res.exit_code == 1
    assert "no examples left: --where 'reward > 0.999' removed them all" in res.output


def test_dpo_reads_preference_pairs(world, tmp_path):
    out = tmp_path / "dpo"
    res = _train(world, out, "--method", "dpo", "--lr", "1e-3", "--epochs", "1", where=None)
    assert res.exit_code == 0, res.output
    m = json.load(open(out / "kaelum_manifest.json"))
    assert m["method"] == "dpo" and m["filters"]["view"] == "preference_pairs"
    assert m["data"]["examples"] == 12  # the even traces have a failed sibling branch
    assert '"eval_loss"' in (out / "trainer_state.json").read_text()


def test_kaelum_eval_compares_models_side_by_side(trained, world, tmp_path):
    from train.eval_cli import main as eval_main

    out, _ = trained
    queries = tmp_path / "held_out.jsonl"
    queries.write_text("".join(json.dumps({"query": f"What is {a} + {b}?", "domain": "math"}) + "\n" for a, b in [(101, 7), (230, 5)]))
    res = CliRunner().invoke(
        eval_main,
        ["--model", world["model"], "--model", str(out), "--queries", str(queries), "--simulations", "1", "--seed", "1",
         "--csv", str(tmp_path / "eval.csv"), "--plot", str(tmp_path / "eval.png"), "--show", "--no-progress"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert "verified accuracy" in res.output and "tokens / query" in res.output and "load seconds (once)" in res.output
    assert "What is 101 + 7?" in res.output and "What is 230 + 5?" in res.output  # --show: per query
    rows = list(csv.DictReader(open(tmp_path / "eval.csv")))
    assert [(r["query"], r["model"]) for r in rows] == [(f"What is {q}?", m) for q in ("101 + 7", "230 + 5") for m in (world["model"], str(out))]
    assert all(r["verified"] in ("True", "False") and "answer" in r for r in rows)
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_guide_programmatic_example_runs_as_written(world, tmp_path, monkeypatch):
    import shutil

    from train import collect_traces, filter_high_quality, finetune_worker, prepare_dataset

    shutil.copytree(world["logs"], tmp_path / "logs")
    monkeypatch.chdir(tmp_path)
    traces = collect_traces("./logs")
    high_quality = filter_high_quality(traces, min_reward=0.8)
    math_traces = [t for t in high_quality if t.domain == "math" and t.reward > 0.9]
    assert sorted(t.trace_id for t in math_traces) == world["expected"]
    assert len(traces) == 33 and len(high_quality) == 27
    rows = prepare_dataset(math_traces, world["model"], max_seq_len=256)
    assert len(rows) == 24 and all(r["labels"][-1] != -100 for r in rows)
    result = finetune_worker(model_name=world["model"], domain="math", output_dir="./specialized_math_model", min_reward=0.9, epochs=1, progress=False)
    assert result.train_examples + result.eval_examples == 27 - 3  # reward >= 0.9 keeps the 24 selected traces
    assert (tmp_path / "specialized_math_model" / "kaelum_manifest.json").is_file()


def test_merge_and_packing_write_a_full_model_the_runtime_serves(world, tmp_path):
    from kaelum import Settings
    from kaelum.llm import load_llm
    from kaelum.llm.base import SamplingParams
    from kaelum.prompts import worker_messages

    out = tmp_path / "merged"
    res = _train(world, out, "--merge", "--packing", "--epochs", "1")
    assert res.exit_code == 0, res.output
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    m = json.load(open(out / "kaelum_manifest.json"))
    assert m["kind"] == "merged" and m["hyperparameters"]["packing"] is True
    assert [s["step"] for s in m["data"]["pipeline"]][-1] == "pack"
    llm = load_llm(Settings(MATH_WORKER_MODEL=str(out)).worker_model("math"))
    [c] = llm.generate(worker_messages("math", "What is 1 + 2?"), n=1, params=SamplingParams(max_tokens=8, temperature=0.0))
    assert c.completion_tokens > 0


def test_qlora_on_cpu_says_it_needs_a_gpu(world, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res = _train(world, tmp_path / "q", "--qlora")
    assert res.exit_code == 1 and "--qlora needs a CUDA GPU" in res.output and "use --lora" in res.output


def test_eval_held_out_queries_from_the_store_exclude_trained_traces(trained, world):
    from train.evaluate import queries_from_store, trained_trace_ids

    out, _ = trained
    ids = trained_trace_ids(str(out))
    assert sorted(ids) == world["expected"]
    qs = queries_from_store(world["store"], "domain = 'math'", ids)
    assert len(qs) == 6 and all(q["id"] not in ids for q in qs)  # the 3 low-reward and 3 below-min traces
    from click.testing import CliRunner as _R

    from train.eval_cli import main as eval_main

    res = _R().invoke(eval_main, ["--model", str(out), "--where", "reward > 0.9; drop table x", "--store", world["store"]])
    assert res.exit_code == 1 and "found 2 statements" in res.output
    res = _R().invoke(eval_main, ["--model", str(out), "--where", "reward > 2", "--store", world["store"]])
    assert res.exit_code == 1 and "selects no held-out traces" in res.output
