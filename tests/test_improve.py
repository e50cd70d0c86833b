"""`kaelum improve` end to end with the tiny Llama: real runtime, ingester, store, trainer, gate.

The task is one the tiny model can learn in seconds: every query's answer is 7 ("What is 3 + 4?",
"What is 12 - 5?"). The store starts with verified traces of such queries; the held-out queries
are other phrasings with answer 7. A candidate trained on the store learns to answer 7 and is
promoted over the random base; the next round's candidate is no better and is rejected.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from test_improve_support import EVAL_OVERRIDES, SEVEN_HELD, SEVEN_STORE, fill_store, improve_args, make_world, write_queries


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny_model import make_tiny_llama

    return str(make_tiny_llama(tmp_path_factory.mktemp("tiny-improve") / "model"))


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny):
    """One 2-round run through `kaelum improve` (the CLI), shared by the assertions below."""
    from kaelum.cli import main

    root = tmp_path_factory.mktemp("improve-2")
    seeded = make_world(root)
    res = CliRunner().invoke(main, ["improve", *improve_args(root, tiny)], catch_exceptions=False)
    return {"root": root, "res": res, "seeded": seeded, "model": tiny}


def test_two_rounds_promote_then_reject(two_rounds):
    res, root = two_rounds["res"], two_rounds["root"]
    assert res.exit_code == 0, res.output
    rounds = json.loads((root / "W" / "improve.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    r1, r2 = rounds
    keys = {"round", "decision", "champion", "candidate", "champion_accuracy", "candidate_accuracy", "champion_ci",
            "candidate_ci", "p_value", "examples", "store_snapshot", "seconds"}
    assert keys <= set(r1) and keys <= set(r2)
    assert set(r1["seconds"]) == {"collect", "ingest", "train", "evaluate", "decide"}
    # Round 1: the candidate learned to answer 7; the random base never does.
    assert r1["decision"] == "promoted", res.output
    assert r1["champion_accuracy"] == 0.0 and r1["candidate_accuracy"] >= 0.75
    assert r1["p_value"] < 0.05 and r1["candidate_ci"][0] > r1["champion_ci"][1]
    assert r1["examples"] == len(two_rounds["seeded"])  # collection with the random base verified nothing
    # Round 2 starts from round 1's candidate, collects with it (now verified), and is no better.
    assert r2["champion"] == r1["candidate"]
    assert r2["collected"]["verified"] >= 1
    assert r2["decision"] == "rejected"
    assert os.path.realpath(root / "W" / "champion") == os.path.realpath(r1["candidate"])
    assert (root / "W" / "improve.png").stat().st_size > 5000
    assert "round 1: PROMOTED" in res.output and "round 2: REJECTED" in res.output


def test_lineage_and_store_snapshot(two_rounds):
    from train.improve import lineage
    from train.manifest import read_manifest

    root = two_rounds["root"]
    rounds = json.loads((root / "W" / "improve.json").read_text())["rounds"]
    base = json.loads((root / "W" / "run.json").read_text())["base_dir"]
    c1, c2 = rounds[0]["candidate"], rounds[1]["candidate"]
    assert read_manifest(c1)["base_model"] == base and read_manifest(c2)["base_model"] == c1
    assert lineage(c2) == [c2, c1, base]
    # The snapshot a round pinned is the one its candidate's manifest records.
    assert rounds[1]["store_snapshot"] == read_manifest(c2)["store"]
    # Round 2 trained only on traces round 1's candidate had not: its own collection's.
    m1, m2 = read_manifest(c1)["data"]["trace_ids"], read_manifest(c2)["data"]["trace_ids"]
    assert not set(m1) & set(m2)
    assert sorted(m1) == sorted(two_rounds["seeded"])


def test_champion_link_serves(two_rounds):
    from kaelum import Orchestrator
    from kaelum.config import Settings

    link = str(two_rounds["root"] / "W" / "champion")
    settings = Settings(MATH_WORKER_MODEL=link, LATS_SIMULATIONS=1, LATS_BRANCHING=1, TEMPERATURE=0.0, SEED=0, **EVAL_OVERRIDES)
    with Orchestrator(settings=settings) as orch:
        res = orch.run("What is 30 - 23?", domain="math")
    assert res.verified and res.answer.strip() == "7"


def test_evaluation_traces_are_tagged_and_never_trained_on(two_rounds):
    import store

    from train.manifest import read_manifest

    root = two_rounds["root"]
    con = store.connect(str(root / "store"))
    try:
        evals = {r[0] for r in con.execute("select trace_id from trajectories where list_contains(tags, 'eval')").fetchall()}
        held = {r[0] for r in con.execute("select distinct query from trajectories where list_contains(tags, 'eval')").fetchall()}
    finally:
        con.close()
    # Round 1 evaluated both models (24 traces); round 2 reused the champion's evaluation (round 1's candidate).
    assert len(evals) == 2 * len(SEVEN_HELD) + len(SEVEN_HELD)
    assert held == set(SEVEN_HELD)
    rounds = json.loads((root / "W" / "improve.json").read_text())["rounds"]
    for r in rounds:
        assert not set(read_manifest(r["candidate"])["data"]["trace_ids"]) & evals
    rec = json.loads((root / "W" / "rounds" / "round-002" / "eval-champion.json").read_text())
    assert rec["reused_from"] == "round-001/candidate"


def test_rerun_of_a_finished_run_does_nothing(two_rounds):
    from kaelum.cli import main

    root = two_rounds["root"]
    before = (root / "W" / "improve.json").read_text()
    res = CliRunner().invoke(main, ["improve", *improve_args(root, two_rounds["model"])], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "round 1: decided already (promoted)" in res.output and "round 2: decided already (rejected)" in res.output
    assert (root / "W" / "improve.json").read_text() == before
    rounds = json.loads(before)["rounds"]
    assert os.path.realpath(root / "W" / "champion") == os.path.realpath(rounds[0]["candidate"])


def test_rerun_with_other_arguments_is_refused(two_rounds):
    from kaelum.cli import main

    root = two_rounds["root"]
    res = CliRunner().invoke(main, ["improve", *improve_args(root, two_rounds["model"], "--method", "dpo")])
    assert res.exit_code == 1
    assert "holds a run started with other arguments (method differ: method was 'sft')" in res.output


def test_held_out_overlap_is_refused(tmp_path, tiny):
    from kaelum.cli import main

    write_queries(tmp_path / "train.jsonl", ["What is 2 + 5?", "  what is 10 - 3 ? "])
    write_queries(tmp_path / "held.jsonl", ["What is 10 - 3?", "What is 9 - 2?"])
    res = CliRunner().invoke(main, ["improve", *improve_args(tmp_path, tiny)])
    assert res.exit_code == 1
    assert ("1 of the queries in --queries" in res.output and "are also in --held-out" in res.output
            and "'  what is 10 - 3 ? '" in res.output and "Held-out queries must never be trained on" in res.output)
    assert not (tmp_path / "W").exists()  # refused before anything was written


def test_a_bad_slice_in_the_held_out_file_is_refused(tmp_path, tiny):
    from kaelum.cli import main

    write_queries(tmp_path / "train.jsonl", ["What is 2 + 5?"])
    (tmp_path / "held.jsonl").write_text('{"query": "What is 3 + 4?", "slice": "a"}\n{"query": "What is 1 + 6?", "slice": 7}\n')
    res = CliRunner().invoke(main, ["improve", *improve_args(tmp_path, tiny)])
    assert res.exit_code == 1
    assert "held.jsonl: 'slice' must be a non-empty string (query 2)" in res.output
    assert not (tmp_path / "W").exists()


def test_filled_store_without_queries_skips_held_out_and_eval_traces(tmp_path, tiny):
    """No --queries: one round trains on the store's untrained traces, minus held-out queries and eval traces."""
    from train.improve import EVAL_SETTINGS, ImproveArgs, improve
    from train.manifest import read_manifest

    held_in_store = SEVEN_HELD[:2]
    seeded = fill_store(tmp_path, extra=[(q, []) for q in held_in_store] + [("What is 40 - 33?", ["eval"])])
    write_queries(tmp_path / "held.jsonl", SEVEN_HELD)
    lines = []
    args = ImproveArgs(domain="math", held_out=str(tmp_path / "held.jsonl"), workdir=str(tmp_path / "W"), model=tiny,
                       store=str(tmp_path / "store"), rounds=1, epochs=10, lr=1e-2, batch_size=4, max_seq_len=128, progress=False,
                       eval_settings={**EVAL_SETTINGS, **EVAL_OVERRIDES})
    rounds = improve(args, echo=lines.append)
    assert len(rounds) == 1 and rounds[0]["decision"] == "promoted"
    trained = set(read_manifest(rounds[0]["candidate"])["data"]["trace_ids"])
    assert trained == set(seeded[: len(SEVEN_STORE)])  # the held-out and eval-tagged traces were left out
    stages = json.loads((tmp_path / "W" / "rounds" / "round-001" / "selection.json").read_text())["stages"]
    assert [s[1] for s in stages[-3:]] == [len(SEVEN_STORE) + 2, len(SEVEN_STORE), len(SEVEN_STORE)]
    assert rounds[0]["collected"] == {"skipped": "no --queries: training on the store's untrained traces"}
    # A second round finds nothing untrained and says so.
    from train.improve import ImproveError

    with pytest.raises(ImproveError, match="round 2: no untrained examples in the store"):
        improve(ImproveArgs(**{**args.__dict__, "rounds": 2}), echo=lines.append)
