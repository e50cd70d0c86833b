"""Crash and resume: `kaelum improve` SIGKILLed in every phase, rerun with the same command each time.

One workdir, one real subprocess per kill point (the process kills itself with SIGKILL at the named
point through KAELUM_IMPROVE_KILL_AT), then a final run that finishes. Afterwards: every query was
collected once, the store holds each trace once, training resumed from its checkpoint instead of
starting over, each model was evaluated once, and the round was decided once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from test_improve_support import SEVEN_HELD, SEVEN_TRAIN, improve_args, make_world

# In order: inside collection, after each phase, inside training, between the two evaluations,
# between publishing the champion and recording the decision.
KILL_POINTS = [
    "round-1/collect/query-1",
    "round-1/collect",
    "round-1/ingest",
    "round-1/train/selection",
    "round-1/train/checkpoint",
    "round-1/train",
    "round-1/evaluate/champion",
    "round-1/evaluate",
    "round-1/decide/champion",
    "round-1/decide",
]


def run_improve(args, kill_at=None):
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("KAELUM_IMPROVE_KILL_AT", None)
    if kill_at:
        env["KAELUM_IMPROVE_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", "from kaelum.cli import main; main()", "improve", *args],
                          env=env, capture_output=True, text=True, timeout=900)


def log_events(folder):
    out = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            out += [json.loads(line) for line in fh if line.endswith("\n")]
    return out


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    from tests.tiny_model import make_tiny_llama

    root = tmp_path_factory.mktemp("improve-crash")
    model = str(make_tiny_llama(root / "tiny"))
    seeded = make_world(root)
    args = improve_args(root, model, rounds=1)
    runs = []
    for point in KILL_POINTS:
        res = run_improve(args, kill_at=point)
        runs.append((point, res))
        if res.returncode != -signal.SIGKILL:
            pytest.fail(f"kill at {point}: exit {res.returncode}\n{res.stdout}\n{res.stderr[-3000:]}")
    final = run_improve(args)
    assert final.returncode == 0, final.stdout + final.stderr[-3000:]
    return {"root": root, "runs": runs, "final": final, "seeded": seeded}


def test_each_rerun_skips_what_was_done(crashed):
    runs = dict(crashed["runs"])
    assert "round 1 collect: 2 of 6 queries collected already" in runs["round-1/collect"].stdout
    assert "round 1 collect: done already" in runs["round-1/ingest"].stdout
    assert "round 1 ingest: done already" in runs["round-1/train/selection"].stdout
    assert "resuming from the last checkpoint" in runs["round-1/train"].stdout
    assert "round 1 train: done already" in runs["round-1/evaluate/champion"].stdout
    assert "round 1 evaluate: done already" in runs["round-1/decide/champion"].stdout
    assert "round 1: decided already (promoted)" in crashed["final"].stdout


def test_every_query_collected_once_and_every_trace_stored_once(crashed):
    import store

    rnd = crashed["root"] / "W" / "rounds" / "round-001"
    events = log_events(rnd / "logs" / "collect")
    started = [e for e in events if e["type"] == "trace_started"]
    completed = {e["trace_id"] for e in events if e["type"] == "trace_completed"}
    assert len(started) == len(SEVEN_TRAIN) and {e["trace_id"] for e in started} == completed
    assert sorted(t for e in started for t in e["data"]["tags"] if t.startswith("improve-query-")) == sorted(
        f"improve-query-{i}" for i in range(len(SEVEN_TRAIN)))
    con = store.connect(str(crashed["root"] / "store"))
    try:
        dup = con.execute("select count(*) - count(distinct id) from events").fetchall()[0][0]
        ours = con.execute("select count(*) from trajectories where list_contains(tags, 'improve-round-1')").fetchall()[0][0]
        evals = con.execute("select count(*) from trajectories where list_contains(tags, 'eval')").fetchall()[0][0]
    finally:
        con.close()
    assert dup == 0
    assert ours == len(SEVEN_TRAIN)
    assert evals == 2 * len(SEVEN_HELD)  # champion and candidate, each evaluated once
    assert len([e for e in log_events(rnd / "logs" / "eval") if e["type"] == "trace_started"]) == 2 * len(SEVEN_HELD)


def test_training_resumed_and_round_decided_once(crashed):
    from train.manifest import read_manifest

    root = crashed["root"]
    rounds = json.loads((root / "W" / "improve.json").read_text())["rounds"]
    assert len(rounds) == 1 and rounds[0]["decision"] == "promoted"
    manifest = read_manifest(rounds[0]["candidate"])
    assert manifest["resumed_from"].startswith("checkpoint-")
    assert sorted(manifest["data"]["trace_ids"]) == sorted(crashed["seeded"])
    assert rounds[0]["collected"] == {"queries": len(SEVEN_TRAIN), "traces": len(SEVEN_TRAIN), "verified": 0}
    assert os.path.realpath(root / "W" / "champion") == os.path.realpath(rounds[0]["candidate"])
    assert not [p for p in os.listdir(root / "W") if ".tmp-" in p]
