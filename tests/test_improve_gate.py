"""The promotion gate on literal numbers: exact McNemar p-values checked by hand, Wilson CIs, decisions."""

from __future__ import annotations

import math
import os

import pytest

from train.gate import DEFAULT_ALPHA, DEFAULT_MIN_GAIN, GateError, decide, mcnemar_exact, wilson_interval


@pytest.mark.parametrize(
    "b, c, p",
    [
        (0, 0, 1.0),  # no discordant pair: no evidence
        (0, 1, 1.0),  # 2 * (1/2) = 1
        (0, 5, 2 / 32),  # 2 * C(5,0) / 2^5 = 0.0625
        (0, 6, 2 / 64),  # 0.03125
        (1, 6, 2 * (1 + 7) / 128),  # 2 * (C(7,0) + C(7,1)) / 2^7 = 0.125
        (6, 1, 2 * (1 + 7) / 128),  # symmetric
        (2, 10, 2 * (1 + 12 + 66) / 4096),  # 0.03857...
        (5, 5, 1.0),  # capped at 1
    ],
)
def test_mcnemar_exact_by_hand(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_wilson_interval_literal():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 12)[0] == 0.0 and wilson_interval(12, 12)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def outcomes(both: int, only_champion: int, only_candidate: int, neither: int) -> tuple[list[bool], list[bool]]:
    champ = [True] * both + [True] * only_champion + [False] * only_candidate + [False] * neither
    cand = [True] * both + [False] * only_champion + [True] * only_candidate + [False] * neither
    return champ, cand


def test_promotes_a_clear_gain():
    # 40 queries: 10 both, 2 only champion, 10 only candidate -> +20 points, p = 0.03857
    g = decide(*outcomes(10, 2, 10, 18))
    assert g.decision == "promoted" and g.promoted
    assert (g.champion_verified, g.candidate_verified, g.only_champion, g.only_candidate) == (12, 20, 2, 10)
    assert g.gain_points == pytest.approx(20.0)
    assert g.p_value == pytest.approx(158 / 4096)
    assert g.reason == "+20.0 points, p = 0.0386 < 0.05"


def test_rejects_a_gain_that_is_not_significant():
    g = decide(*outcomes(10, 1, 6, 23))  # +12.5 points, p = 0.125
    assert g.decision == "rejected"
    assert g.reason == "p = 0.125 is not below --alpha 0.05 (6 vs 1 discordant queries)"


def test_rejects_a_significant_gain_below_min_gain():
    # 400 queries, 0 vs 6 discordant: p = 0.03125 but only +1.5 points
    g = decide(*outcomes(100, 0, 6, 294))
    assert g.p_value == pytest.approx(1 / 32)
    assert g.decision == "rejected" and g.reason == "gain +1.5 points is below --min-gain 2"
    assert decide(*outcomes(100, 0, 6, 294), min_gain=1.0).decision == "promoted"


def test_rejects_a_worse_or_equal_candidate_whatever_the_p_value():
    g = decide(*outcomes(0, 10, 0, 10), min_gain=0.0, alpha=1.0)
    assert g.decision == "rejected" and g.reason == "the candidate is not better (-50.0 points)"
    assert decide(*outcomes(5, 0, 0, 5), min_gain=0.0, alpha=1.0).reason == "the candidate is not better (+0.0 points)"


def test_defaults_are_documented_values():
    assert (DEFAULT_MIN_GAIN, DEFAULT_ALPHA) == (2.0, 0.05)


def test_bad_input_is_refused():
    with pytest.raises(GateError, match="paired outcomes differ in length: champion 2, candidate 1"):
        decide([True, False], [True])
    with pytest.raises(GateError, match="no held-out outcomes"):
        decide([], [])
    with pytest.raises(GateError, match=r"--alpha must be in \(0, 1\], got 0.0"):
        decide([True], [True], alpha=0.0)
    with pytest.raises(GateError, match="--min-gain must be between 0 and 100 points, got -1"):
        decide([True], [True], min_gain=-1)


def _answers(n_right: int, n: int, method: str) -> list[dict]:
    return [{"verified": i < n_right, "verified_by": method, "answer": "7"} for i in range(n)]


@pytest.mark.parametrize("candidate_method, promoted", [("consistency", False), ("judge", False), ("computed", True), ("reference", True)])
def test_round_gate_counts_checked_answers_only(tmp_path, candidate_method, promoted):
    """A candidate whose answers its own samples merely agree on (or a judge liked) is not better: only checked verdicts count."""
    import json

    from train.evaluate import checked_outcomes
    from train.improve import ImproveArgs, Improver, Round

    held = tmp_path / "held.jsonl"
    held.write_text('{"query": "What is 3 + 4?", "domain": "math"}\n')
    imp = Improver(ImproveArgs(domain="math", held_out=str(held), workdir=str(tmp_path / "W")), echo=lambda s: None)
    rnd = Round.at(imp.work, 1)
    (tmp_path / "W" / "rounds" / "round-001").mkdir(parents=True)
    (tmp_path / "W" / "rounds" / "round-001" / "candidate").mkdir()
    for name, answers in (("champion", _answers(2, 30, "computed")), ("candidate", _answers(28, 30, candidate_method))):
        with open(rnd.path(f"eval-{name}.json"), "w") as fh:
            json.dump({"answers": answers}, fh)
    rec = imp.decide(rnd, champion=str(tmp_path / "base"))
    assert rec["decision"] == ("promoted" if promoted else "rejected")
    assert rec["candidate_accuracy"] == pytest.approx(28 / 30 if promoted else 0.0)
    assert os.path.islink(imp.champion_link) == promoted
    assert checked_outcomes([{"verified": True}, {"verified": True, "verified_by": "tests"}, {"verified": False, "verified_by": "tests"}]) == [False, True, False]


def _sliced(rows: list[tuple[str, int, int, int, int]]) -> tuple[list[bool], list[bool], list[str]]:
    """(slice, both, only_champion, only_candidate, neither) per slice, concatenated."""
    champ, cand, names = [], [], []
    for name, both, oc, ocand, neither in rows:
        a, b = outcomes(both, oc, ocand, neither)
        champ += a
        cand += b
        names += [name] * len(a)
    return champ, cand, names


def test_a_candidate_significantly_worse_on_one_slice_is_rejected():
    # 80 queries: +20 on "arithmetic", -7 on "word". Overall b=7, c=20: +16.2 points,
    # p = 2 * sum(C(27, i), i <= 7) / 2^27 = 0.0192, which alone would promote.
    champ, cand, names = _sliced([("arithmetic", 10, 0, 20, 10), ("word", 5, 7, 0, 28)])
    assert decide(champ, cand).promoted
    g = decide(champ, cand, slices=names)
    assert g.decision == "rejected"
    assert g.p_value == pytest.approx(2 * sum(math.comb(27, i) for i in range(8)) / 2**27)
    # The word slice alone: b=7, c=0, p = 2 / 2^7 = 0.0156 < 0.05.
    word = next(r for r in g.slices if r.name == "word")
    assert (word.queries, word.only_champion, word.only_candidate) == (40, 7, 0)
    assert word.p_value == pytest.approx(2 / 128)
    assert word.gain_points == pytest.approx(-17.5)
    assert "significantly worse on slice 'word'" in g.reason and "-17.5 points" in g.reason
    assert [r.name for r in g.slices] == ["arithmetic", "word"]
    assert g.slices[0].as_dict()["only_candidate"] == 20


def test_a_slice_that_is_worse_but_not_significantly_does_not_block():
    # "word" loses 3 (b=3, c=0): p = 2 / 8 = 0.25, not evidence; overall b=3, c=20 promotes.
    champ, cand, names = _sliced([("arithmetic", 10, 0, 20, 10), ("word", 5, 3, 0, 32)])
    g = decide(champ, cand, slices=names)
    assert g.promoted, g.reason
    assert next(r for r in g.slices if r.name == "word").p_value == pytest.approx(0.25)


def test_queries_without_a_slice_count_overall_only():
    champ, cand, names = _sliced([("arithmetic", 10, 0, 20, 10), ("word", 5, 7, 0, 28)])
    names = [n if n == "arithmetic" else None for n in names]
    g = decide(champ, cand, slices=names)
    assert g.promoted and [r.name for r in g.slices] == ["arithmetic"]


def test_bad_slices_are_refused():
    with pytest.raises(GateError, match="slices name 1 queries, but 2 were evaluated"):
        decide([True, False], [True, True], slices=["a"])
    with pytest.raises(GateError, match="held-out query 2: 'slice' must be a non-empty string, got 3"):
        decide([True, False], [True, True], slices=["a", 3])  # type: ignore[list-item]


def test_round_gate_rejects_a_candidate_worse_on_a_held_out_slice(tmp_path):
    """Held-out queries that name a `slice`: the round's record gates and reports each slice."""
    import json

    from train.improve import ImproveArgs, Improver, Round, read_queries

    champ, cand, names = _sliced([("arithmetic", 10, 0, 20, 10), ("word", 5, 7, 0, 28)])
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"query": f"q{i}", "domain": "math", "slice": n}) + "\n" for i, n in enumerate(names)))
    imp = Improver(ImproveArgs(domain="math", held_out=str(held), workdir=str(tmp_path / "W")), echo=lambda s: None)
    imp.held_out = read_queries(str(held), "math", "--held-out")  # what prepare() reads
    rnd = Round.at(imp.work, 1)
    (tmp_path / "W" / "rounds" / "round-001" / "candidate").mkdir(parents=True)
    for name, outs in (("champion", champ), ("candidate", cand)):
        with open(rnd.path(f"eval-{name}.json"), "w") as fh:
            json.dump({"answers": [{"verified": v, "verified_by": "reference", "answer": "7"} for v in outs]}, fh)
    rec = imp.decide(rnd, champion=str(tmp_path / "base"))
    assert rec["decision"] == "rejected" and "significantly worse on slice 'word'" in rec["reason"]
    assert rec["gain_points"] == pytest.approx(16.25)
    assert {r["slice"]: (r["only_champion"], r["only_candidate"]) for r in rec["slices"]} == {"arithmetic": (0, 20), "word": (7, 0)}
    assert not os.path.islink(imp.champion_link)
    from train.improve_report import format_round

    assert "slice 'word': champion 12/40, candidate 5/40 (-17.5 points, p = 0.0156)" in format_round(rec)

