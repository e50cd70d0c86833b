"""--method grpo: the domain verifier as GRPO's reward, and a few real GRPOTrainer steps on the tiny Llama."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from kaelum.domains import get_domain
from kaelum.domains.base import VerifyContext
from test_improve_support import write_trace
from train.grpo import parse_completion, prompt_rows, verifier_reward


def chat(text):
    return [{"role": "assistant", "content": text}]


def test_reward_is_the_domain_verifier_and_reward():
    reward = verifier_reward()
    queries = ["What is 3 + 4?"] * 4
    texts = ["Step 1: 3 + 4 = 7\nAnswer: 7", "Step 1: 3 + 4 = 8\nAnswer: 7", "Answer: 8", "I do not know"]
    logged = {}
    got = reward(prompts=[[]] * 4, completions=[chat(t) for t in texts], query=queries, domain=["math"] * 4,
                 reference=[""] * 4, log_metric=lambda k, v: logged.setdefault(k, v))
    math = get_domain("math")
    # The same verdict and reward LATS computes for a terminal with these steps and siblings.
    for i, text in enumerate(texts[:3]):
        siblings = [math.extract_answer(t) for j, t in enumerate(texts) if j != i and math.extract_answer(t) is not None]
        ctx = VerifyContext(query=queries[i], steps=parse_completion(text), sibling_answers=siblings)
        expected = math.reward(math.verify(math.extract_answer(text), ctx), None, ctx).value
        assert got[i] == pytest.approx(expected)
    assert got[0] == 1.0  # right answer, sound step
    assert 0.5 < got[1] < 1.0  # right answer, false step equation
    assert got[2] == 0.0 and got[3] == 0.0  # wrong answer; no answer at all
    assert logged["verified"] == pytest.approx(0.5)


def test_reference_reaches_the_verifier():
    reward = verifier_reward()
    # The factual verifier checks an answer against the query's reference answer.
    out = reward(prompts=[[]] * 2, completions=[chat("Answer: Paris"), chat("Answer: Lyon")], query=["What is the capital of France?"] * 2,
                 domain=["factual"] * 2, reference=["Paris", "Paris"])
    assert out[0] > out[1]


def test_parse_completion_and_prompt_rows():
    assert parse_completion("Step 1: add 3\nStep 2: 3 + 4 = 7\nAnswer: 7\nStep 3: ignored") == ["add 3", "3 + 4 = 7"]

    class T:
        def __init__(self, q):
            self.domain, self.query = "math", q

    rows = prompt_rows([T("What is 1 + 1?"), T("What is  1 + 1?"), T("What is 2 + 2?")])
    assert [r["query"] for r in rows] == ["What is 1 + 1?", "What is 2 + 2?"]
    assert rows[0]["prompt"][0]["role"] == "system" and rows[0]["prompt"][1] == {"role": "user", "content": "What is 1 + 1?"}


def test_grpo_trains_and_writes_an_adapter_that_loads(tmp_path):
    from ingest import ingest_once
    from kaelum.llm import load_llm
    from kaelum.llm.base import SamplingParams
    from kaelum.tracelog import TraceLogger
    from tests.tiny_model import make_tiny_llama
    from train.cli import main as train_main
    from train.manifest import read_manifest

    model = str(make_tiny_llama(tmp_path / "tiny"))
    with TraceLogger(tmp_path / "logs", fsync="never") as lg:
        ids = [write_trace(lg, f"What is {a} + 2?", [], str(a + 2), verified=a % 2 == 0) for a in range(4)]
    ingest_once(str(tmp_path / "logs"), str(tmp_path / "store"), progress=False)
    out = tmp_path / "grpo"
    res = CliRunner().invoke(train_main, ["--model", model, "--domain", "math", "--store", str(tmp_path / "store"), "--output-dir", str(out),
                                          "--method", "grpo", "--grpo-generations", "2", "--grpo-max-completion-length", "8",
                                          "--grpo-max-steps", "2", "--batch-size", "4", "--lr", "1e-3", "--logging-steps", "1", "--no-progress"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    manifest = read_manifest(str(out))
    assert manifest["method"] == "grpo" and manifest["kind"] == "adapter" and manifest["base_model"] == model
    # Every complete trace's query is a prompt, the unverified ones included.
    assert sorted(manifest["data"]["trace_ids"]) == sorted(ids)
    assert manifest["filters"]["view"] == "trajectories"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert [h["rewards/domain_verifier_reward/mean"] for h in state["log_history"] if "reward" in h]  # the reward was computed
    llm = load_llm(str(out))  # the runtime serves the adapter: base from the manifest, merged once
    [completion] = llm.generate([{"role": "user", "content": "What is 1 + 2?"}], n=1, params=SamplingParams(max_tokens=4, temperature=0.0))
    assert isinstance(completion.text, str)


def test_grpo_settings_are_validated():
    from train.config import ConfigError, TrainArgs

    with pytest.raises(ConfigError) as err:
        TrainArgs(model="m", method="grpo", grpo_num_generations=1, grpo_temperature=0.0, grpo_max_steps=0).validate()
    assert err.value.problems == [
        "--grpo-generations must be at least 2 (GRPO compares completions within a group), got 1",
        "--grpo-temperature must be positive, got 0.0",
        "--grpo-max-steps must be at least 1, got 0",
    ]


def test_improve_round_with_grpo(tmp_path):
    """`kaelum improve --method grpo` on a filled store: a merged GRPO candidate whose parent is the base, gated like any other."""
    from test_improve_support import EVAL_OVERRIDES, SEVEN_HELD, fill_store, write_queries
    from tests.tiny_model import make_tiny_llama
    from train.improve import EVAL_SETTINGS, ImproveArgs, improve
    from train.manifest import read_manifest

    model = str(make_tiny_llama(tmp_path / "tiny"))
    seeded = fill_store(tmp_path)
    write_queries(tmp_path / "held.jsonl", SEVEN_HELD)
    args = ImproveArgs(domain="math", held_out=str(tmp_path / "held.jsonl"), workdir=str(tmp_path / "W"), model=model, method="grpo",
                       store=str(tmp_path / "store"), batch_size=4, lr=1e-3, progress=False, eval_settings={**EVAL_SETTINGS, **EVAL_OVERRIDES},
                       train_options={"grpo_num_generations": 2, "grpo_max_steps": 2, "grpo_max_completion_length": 8})
    [rec] = improve(args, echo=lambda line: None)
    manifest = read_manifest(rec["candidate"])
    assert (manifest["method"], manifest["kind"], manifest["base_model"]) == ("grpo", "merged", os.path.abspath(model))
    assert sorted(manifest["data"]["trace_ids"]) == sorted(seeded)
    assert rec["method"] == "grpo" and rec["decision"] in ("promoted", "rejected") and rec["examples"] == len(seeded)
