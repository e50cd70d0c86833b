"""Search mechanics of kaelum.lats with a scripted LLM: branching, UCT order, backed-up values,
pruning and dedup, reflections reaching later prompts, early stop, every budget, seeds."""

from __future__ import annotations

import math

import pytest

from kaelum.lats import LATS, LatsParams, Node, SearchError, SearchObserver, parse_continuation
from test_lats_support import ArithmeticDomain, ScriptedLLM, SeededLLM, tree_shape

QUERY = "What is 2 + 3?"


def params(**kw) -> LatsParams:
    base = dict(simulations=1, max_depth=4, branching=3, exploration=1.0, llm_value_weight=0.0, prune_threshold=0.0, reflections=False, max_llm_calls=100, seed=0)
    base.update(kw)
    return LatsParams(**base)


class Recorder(SearchObserver):
    def __init__(self) -> None:
        self.log: list[tuple] = []

    def node_added(self, node):
        self.log.append(("node", node.id, node.parent.id if node.parent else None, node.thought, node.terminal, node.answer))

    def node_evaluated(self, node, value, signals):
        self.log.append(("eval", node.id, value, dict(signals)))

    def verified(self, node, verdict):
        self.log.append(("verify", node.id, verdict.passed))

    def reflected(self, node, text):
        self.log.append(("reflect", node.id, text))


def judge_by_thought(scores: dict[str, str]):
    """Judge replies chosen by the last step of the partial solution shown to it."""

    def judge(call):
        for thought, reply in scores.items():
            if f": {thought}\n" in call.user:
                return reply
        return "yes"

    return judge


# --- parsing -----------------------------------------------------------------------------------


def test_parse_continuation_steps_answer_and_inline_answer():
    assert parse_continuation("Step 2: 3+4 = 7\nStep 3: so 7\nAnswer: 7\nStep 4: junk") == (["3+4 = 7", "so 7"], "Answer: 7")
    assert parse_continuation("Step 2: 3+4 = 7. answer: 7") == (["3+4 = 7."], "Answer: 7")
    assert parse_continuation(" \nStep 1: think\n") == (["think"], None)
    code = "Step 1: write it\nAnswer:\n```python\ndef f():\n    return 1\n```"
    assert parse_continuation(code) == (["write it"], "Answer:\n```python\ndef f():\n    return 1\n```")


def test_literal_step_n_labels_are_stripped():
    assert parse_continuation("Step N: add 7 to 12\nStep 2. then stop") == (["add 7 to 12", "then stop"], None)


def test_answers_asked_for_alone_are_one_line_unless_the_domain_is_multiline():
    llm = ScriptedLLM(rollout=lambda c: "Step 2: thinking", answer=lambda c: " 5\nand some rambling\nStep 7: more")
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params()).run()
    forced = [c for c in llm.calls if c.kind == "answer"]
    assert forced[0].params.max_tokens == 32 and result.final_answer == "5"
    terminal = result.best
    assert (terminal.thought, terminal.answer) == ("thinking", "5")
    seen = []
    dom = ArithmeticDomain("5")
    dom.extract_answer = lambda text: seen.append(text) or "5"
    LATS(ScriptedLLM(rollout=lambda c: "Step 2: code", answer=lambda c: "\n```python\nx = 5\n```\nStep 3: junk"), dom, QUERY, params(multiline_answers=True, max_answer_tokens=300)).run()
    assert seen[-1] == "Answer: ```python\nx = 5\n```"


def test_params_validation_collects_every_problem():
    with pytest.raises(ValueError) as err:
        LatsParams(simulations=0, branching=0, reward_threshold=1.5, top_p=0)
    msg = str(err.value)
    for name in ("simulations", "branching", "reward_threshold", "top_p"):
        assert name in msg


# --- branching and dedup -------------------------------------------------------------------------


def test_expansion_branches_into_distinct_siblings_and_dedupes_identical_ones():
    llm = ScriptedLLM(
        expand=lambda c: ["Step 1: add 2", "Step 1:  Add 2.", "Step 1: add 3"],
        rollout=lambda c: "Step 2: 2+3=5\nAnswer: 5",
    )
    dom = ArithmeticDomain("5")
    result = LATS(llm, dom, QUERY, params(simulations=3)).run()
    root = result.root
    assert [c.thought for c in root.children] == ["add 2", "add 3"]
    assert [c.samples for c in root.children] == [2, 1]
    # Self-consistency across siblings is the share of samples that produced the step.
    assert root.children[0].signals["consistency"] == pytest.approx(2 / 3)
    assert root.children[1].signals["consistency"] == pytest.approx(1 / 3)
    # All three samples came from one batched call.
    assert llm.calls[0].kind == "expand" and llm.calls[0].n == 3
    assert result.final_answer == "5" and result.verdict.passed


def test_sibling_steps_differ_with_n_greater_than_one():
    llm = ScriptedLLM(rollout=lambda c: "Answer: 4")
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params(simulations=2)).run()
    for node in result.nodes():
        thoughts = [c.thought for c in node.children]
        assert len(thoughts) == len(set(thoughts))
    assert len(result.root.children) == 3


def test_answer_only_continuation_makes_a_terminal_node_whose_thought_is_the_answer_line():
    llm = ScriptedLLM(expand=lambda c: ["Answer: 5", "Step 1: add", "Step 1: 2+3=5\nAnswer: 5"])
    rec = Recorder()
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params(), observer=rec).run()
    kids = result.root.children
    assert (kids[0].thought, kids[0].terminal, kids[0].answer) == ("Answer: 5", True, "5")
    assert (kids[1].terminal, kids[2].thought, kids[2].terminal, kids[2].answer) == (False, "2+3=5", True, "5")
    assert result.stop_reason == "early_stop"
    assert ("verify", kids[0].id, True) in rec.log


# --- UCT order and backpropagation ---------------------------------------------------------------


def test_uct_selection_follows_the_formula_and_the_second_expansion_goes_where_uct_points():
    llm = ScriptedLLM(
        expand=lambda c: ["Step 1: a", "Step 1: b", "Step 1: c"] if c.depth == 0 else [f"Step {c.depth + 1}: x{i}" for i in range(c.n)],
        rollout=lambda c: "Answer: 4",
        judge=judge_by_thought({"a": "yes", "b": "no", "c": "yes"}),
    )
    p = params(simulations=2, llm_value_weight=0.5)
    search = LATS(llm, ArithmeticDomain("5"), QUERY, p)
    result = search.run()
    a, b, c = result.root.children[:3]
    # Iteration 1: a and c tie at 0.5*1 + 0.5/3; the earlier node (a) is simulated, its answer is wrong.
    assert a.prior == pytest.approx(0.5 + 0.5 / 3) and b.prior == pytest.approx(0.5 / 3) and c.prior == pytest.approx(a.prior)
    terminal = a.children[0]
    assert terminal.terminal and terminal.answer == "4" and terminal.prior == pytest.approx(0.2 * a.prior)
    # Iteration 2 expands the argmax of Q + c*sqrt(ln(N+1)/(n+1)) at the root: c.
    expands = [call for call in llm.calls if call.kind == "expand"]
    assert expands[1].prefix == "Step 1: c\n"
    scores_after_1 = {
        "a": (a.prior + terminal.prior) / 2 + math.sqrt(math.log(2) / 2),
        "b": b.prior + math.sqrt(math.log(2) / 1),
        "c": c.prior + math.sqrt(math.log(2) / 1),
    }
    assert max(scores_after_1, key=scores_after_1.get) == "c"


def test_select_picks_the_highest_uct_child_of_a_handmade_tree():
    search = LATS(ScriptedLLM(), ArithmeticDomain(), QUERY, params(exploration=2.0))
    root = Node("n0", None, 0, QUERY, expanded=True, visits=10, reward_sum=5)
    kids = [
        Node("n1", root, 1, "x", prior=0.9, visits=8, reward_sum=6.0),  # Q=0.767, few explorations left
        Node("n2", root, 1, "y", prior=0.2, visits=0),  # Q=0.2, unexplored
        Node("n3", root, 1, "z", prior=0.5, visits=2, reward_sum=0.4),  # Q=0.3
    ]
    root.children = kids
    search.root = root
    expected = max(kids, key=lambda k: k.value + 2.0 * math.sqrt(math.log(11) / (k.visits + 1)))
    assert expected.id == "n2"
    assert search.select() is kids[1]
    search.params = params(exploration=0.0)
    assert search.select() is kids[0]


def test_backpropagated_values_are_the_mean_of_evaluation_and_rewards():
    answers = iter(["Answer: 4", "Answer: 5", "Answer: 3", "Answer: 5", "Answer: 1"])
    llm = ScriptedLLM(rollout=lambda c: next(answers), expand=lambda c: [f"Step {c.depth + 1}: s{c.depth}{i}" for i in range(c.n)])
    # With the LLM judge on, a verified reward stays below 1.0, so the threshold never stops the search.
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params(simulations=5, reward_threshold=1.0, llm_value_weight=0.5)).run()
    terminals = [n for n in result.nodes() if n.terminal]
    assert sorted(t.answer for t in terminals) == ["1", "3", "4", "5", "5"]
    root = result.root
    assert root.visits == len(terminals) == 5
    assert root.reward_sum == pytest.approx(sum(t.prior for t in terminals))
    for node in result.nodes():
        below = [t for t in terminals if node in t.path()]
        assert node.visits == len(below)
        assert node.reward_sum == pytest.approx(sum(t.prior for t in below))
        assert node.value == pytest.approx((node.prior + node.reward_sum) / (1 + node.visits))
    assert result.final_answer == "5"


# --- pruning ---------------------------------------------------------------------------------------


def test_low_value_children_are_pruned_and_never_expanded():
    llm = ScriptedLLM(
        expand=lambda c: ["Step 1: good", "Step 1: bad", "Step 1: fine"] if c.depth == 0 else [f"Step {c.depth + 1}: more {i}" for i in range(c.n)],
        rollout=lambda c: "Answer: 4",
        judge=judge_by_thought({"bad": "no"}),
    )
    # With the LLM judgement as the whole value, "bad" scores 0 and a huge exploration constant
    # would otherwise pick the unvisited node first.
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params(simulations=6, llm_value_weight=1.0, prune_threshold=0.1, exploration=50.0)).run()
    bad = result.root.children[1]
    assert bad.thought == "bad" and bad.pruned and "prune threshold" in bad.prune_reason
    assert not bad.expanded and bad.children == []
    assert all(not call.prefix.startswith("Step 1: bad") for call in llm.calls)


def test_search_stops_when_every_branch_is_closed():
    llm = ScriptedLLM(expand=lambda c: ["Answer: 4", "Answer: 3", "Answer: 4"])
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params(simulations=10)).run()
    assert result.stop_reason == "exhausted"
    assert result.simulations == 1
    assert result.status == "ok" and not result.verdict.passed  # an answer, but a wrong one
    assert [c.answer for c in result.root.children] == ["4", "3"]


# --- reflection --------------------------------------------------------------------------------------


def test_a_failed_terminal_reflects_and_later_expansions_see_the_reflection():
    llm = ScriptedLLM(rollout=lambda c: "Step 2: 2*3=6\nAnswer: 6", reflect=lambda c: "Add, do not multiply.\nextra line")
    rec = Recorder()
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params(simulations=2, reflections=True), observer=rec).run()
    expected = "The answer 6 failed verification. Add, do not multiply."
    assert result.reflections[0] == expected
    assert ("reflect", next(n.id for n in result.nodes() if n.terminal), expected) in rec.log
    expands = [c for c in llm.calls if c.kind == "expand"]
    assert "Lessons from earlier failed attempts" not in expands[0].user
    assert expected in expands[1].user
    # The reflection prompt showed the failed attempt, but never the verifier's expected value.
    reflect_call = next(c for c in llm.calls if c.kind == "reflect")
    assert "Answer: 6" in reflect_call.user and "5" not in reflect_call.user.replace(QUERY, "")


def test_one_reflection_per_simulation_on_the_most_sampled_failure_and_none_at_the_end():
    # Depth limit 2: the second simulation's expansion asks 5 answers at once, 4 of them wrong in
    # two ways. Reflecting on each would spend 4 calls; LATS reflects once per simulation, on the
    # wrong answer most samples gave (7), and not at all in the last simulation.
    llm = ScriptedLLM(rollout=lambda c: "Step 2: 2*3=6\nAnswer: 6", answer=lambda c: [" 6", " 7", " 7", " 7", " 9"],
                      reflect=lambda c: "Recheck.")
    rec = Recorder()
    result = LATS(llm, ArithmeticDomain("5"), QUERY,
                  params(simulations=3, max_depth=2, branching=5, reflections=True), observer=rec).run()
    assert result.simulations == 3
    reflections = [entry[2] for entry in rec.log if entry[0] == "reflect"]
    assert reflections == ["The answer 6 failed verification. Recheck.", "The answer 7 failed verification. Recheck."]
    assert llm.kinds().count("reflect") == 2
    assert llm.kinds()[-1] != "reflect"  # the final simulation's failures are not reflected on


def test_the_reward_has_a_path_value_only_when_the_search_judged_the_path():
    # Without the judge the path's value is only its steps' sample share, which depends on the
    # branching; the reward is then the verifier's. With the judge it is mixed in.
    for weight, expected in ((0.0, {"verifier"}), (0.5, {"verifier", "path_value"})):
        result = LATS(ScriptedLLM(rollout=lambda c: "Answer: 5"), ArithmeticDomain("5"), QUERY,
                      params(simulations=1, llm_value_weight=weight)).run()
        assert set(result.reward.components) == expected
        assert (result.reward.value == 1.0) == (weight == 0.0)
        terminal = result.best
        assert (terminal.signals["path_value"] is None) == (weight == 0.0)


# --- early stop and budgets ------------------------------------------------------------------------


def test_early_stop_on_a_verified_answer_above_the_threshold():
    llm = ScriptedLLM(rollout=lambda c: "Step 2: 2+3=5\nAnswer: 5")
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params(simulations=50)).run()
    assert result.stop_reason == "early_stop" and result.simulations == 1
    assert llm.kinds() == ["expand", "rollout"]
    assert result.reward.value >= 0.8 and result.status == "ok"


def test_verified_answer_below_threshold_does_not_stop_the_search():
    llm = ScriptedLLM(rollout=lambda c: "Answer: 5")
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params(simulations=3, reward_threshold=0.95, llm_value_weight=0.5)).run()
    assert result.stop_reason == "simulations" and result.simulations == 3
    assert result.verdict.passed


def test_simulation_budget():
    llm = ScriptedLLM(rollout=lambda c: "Answer: 4")
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params(simulations=3)).run()
    assert (result.simulations, result.stop_reason) == (3, "simulations")
    assert llm.kinds().count("expand") == 3


@pytest.mark.parametrize("budget", [1, 2, 5, 9])
def test_llm_call_budget_is_never_exceeded(budget):
    llm = ScriptedLLM(rollout=lambda c: "Answer: 4")
    p = params(simulations=100, max_llm_calls=budget, llm_value_weight=0.5, reflections=True)
    result = LATS(llm, ArithmeticDomain("5"), QUERY, p).run()
    assert result.usage.llm_calls == len(llm.calls) <= budget
    assert result.stop_reason == "llm_calls"


def test_depth_budget_truncates_rollouts_and_asks_the_last_level_for_answers():
    llm = ScriptedLLM(
        rollout=lambda c: "\n".join(f"Step {i}: s{i}" for i in range(c.depth + 1, c.depth + 8)),
        answer=lambda c: " 4",
    )
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params(simulations=4, max_depth=2)).run()
    assert max(n.depth for n in result.nodes()) == 2
    assert all(n.terminal for n in result.nodes() if n.depth == 2)
    forced = [c for c in llm.calls if c.kind == "answer"]
    assert forced and all(c.prefix.endswith("Answer:") for c in forced)
    # A depth-1 node expanded at the last level gets answer children sampled in one call.
    assert any(c.n == 3 and c.depth == 1 for c in forced)


def test_wall_clock_budget_ends_with_timeout():
    now = [0.0]

    def clock():
        now[0] += 4.0
        return now[0]

    llm = ScriptedLLM(rollout=lambda c: "Answer: 4")
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params(simulations=100, timeout_s=10), clock=clock).run()
    assert result.stop_reason == "timeout" and result.status == "timeout"
    assert "10" in result.error and result.simulations < 100


def test_no_answer_anywhere_is_a_failed_search():
    llm = ScriptedLLM(rollout=lambda c: "Step 2: hmm", answer=lambda c: " nothing numeric")
    result = LATS(llm, ArithmeticDomain("5"), QUERY, params(simulations=2)).run()
    assert result.status == "failed" and result.final_answer is None and "no answer" in result.error


def test_a_search_runs_once_and_refuses_an_empty_query():
    search = LATS(ScriptedLLM(rollout=lambda c: "Answer: 5"), ArithmeticDomain("5"), QUERY, params())
    search.run()
    with pytest.raises(SearchError, match="runs once"):
        search.run()
    with pytest.raises(SearchError, match="empty"):
        LATS(ScriptedLLM(), ArithmeticDomain(), "  ", params())


# --- seeds ----------------------------------------------------------------------------------------


def _seeded_run(seed):
    llm = SeededLLM()
    p = params(simulations=4, seed=seed, llm_value_weight=0.5, reward_threshold=1.0, exploration=0.7)
    result = LATS(llm, ArithmeticDomain("2"), QUERY, p).run()
    return tree_shape(result.root), [(n.id, n.visits, round(n.value, 9)) for n in result.nodes()], result.final_answer


def test_the_same_seed_reproduces_the_search_and_other_seeds_differ():
    assert _seeded_run(7) == _seeded_run(7)
    assert any(_seeded_run(s)[0] != _seeded_run(7)[0] for s in (8, 9, 10))


def test_verifier_sees_sibling_answers_and_the_chosen_answer_is_rechecked_when_they_change():
    answers = iter(["Answer: 4", "Answer: 5", "Answer: 5"])
    dom = ArithmeticDomain("5")
    rec = Recorder()
    result = LATS(ScriptedLLM(rollout=lambda c: next(answers)), dom, QUERY, params(simulations=3, reward_threshold=1.0, llm_value_weight=0.5), observer=rec).run()
    assert dom.contexts[1].sibling_answers == ("4",)
    best = result.best
    assert best.answer == "5"
    verifies = [e for e in rec.log if e[0] == "verify" and e[1] == best.id]
    # Checked once when found, and again at the end because a later answer appeared.
    assert len(verifies) == 2
    assert set(dom.contexts[-1].sibling_answers) == {"4", "5"}


def test_nodes_carry_their_creation_order():
    nodes = LATS(SeededLLM(), ArithmeticDomain("2"), QUERY, params(simulations=4, seed=3)).run().nodes()
    assert sorted(n.order for n in nodes) == list(range(len(nodes)))
    assert all(n.id == f"n{n.order}" for n in nodes)
    assert all(n.parent is None or n.parent.order < n.order for n in nodes)


def test_a_recheck_keeps_a_path_value_of_zero():
    # Every judgement is "no": each step is worth 0.0, and so is the path to the answer. The
    # recheck at the end (a later answer appeared) must not read that 0.0 as "no value".
    answers = iter(["Answer: 4", "Answer: 5", "Answer: 5"])
    result = LATS(ScriptedLLM(rollout=lambda c: next(answers), judge=lambda c: "no"), ArithmeticDomain("5"), QUERY, params(simulations=3, reward_threshold=1.0, llm_value_weight=1.0)).run()
    assert result.best.answer == "5" and result.best.signals["path_value"] == 0.0
    assert result.reward.components["path_value"] == 0.0
    assert result.reward.value == pytest.approx(0.8)
