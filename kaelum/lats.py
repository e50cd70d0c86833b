"""Language Agent Tree Search (Zhou et al. 2023) over the worker's step-by-step solutions.

No I/O: the search talks to an `LLM` (kaelum.llm.base) and a `Domain` (kaelum.domains.base) and
reports what happens to a `SearchObserver`; the orchestrator turns those reports into events.

One iteration ("simulation"):

1. **Select** — from the root, follow the child with the highest UCT score
   ``Q(c) + exploration * sqrt(ln(N(parent) + 1) / (N(c) + 1))`` until a node that has not been
   expanded. ``Q`` counts the evaluation as one pseudo-visit: ``(prior + Σ rewards) / (1 + N)``.
   Terminal, pruned and exhausted nodes are never selected.
2. **Expand** — sample `branching` continuations of the node's path in ONE call (the prompt is
   `prompts.worker_messages(domain, query, reflections)` + assistant prefix
   `prompts.format_partial(steps)`); keep the first step line of each; identical steps collapse into
   one child whose sample count is its self-consistency. A continuation that reaches ``Answer:``
   makes a terminal child. At the last allowed depth the children are asked for the answer directly.
3. **Evaluate** — a non-terminal child's value is ``w * LLM judgement + (1 - w) * consistency``;
   a terminal child is verified by the domain and its value is the domain's reward. Children below
   `prune_threshold` are pruned.
4. **Simulate** — from the best new non-terminal child, one call continues the path to an answer
   (forcing ``Answer:`` if the model stops without one); the rollout's steps become a chain of nodes
   that later iterations can branch from.
5. **Backpropagate** — each terminal reached adds its reward to every node on its path.
6. **Reflect** — a terminal that fails verification yields a reflection that every later prompt sees.

The search stops early when a verified answer reaches `reward_threshold`, or when a budget
(simulations, LLM calls, wall clock) runs out, or when the tree is exhausted.
"""

from __future__ import annotations

import math
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from .domains.base import Domain, Reward, Verdict, VerifyContext
from .llm.base import LLM, Completion, SamplingParams, UsageCounter
from .prompts import ANSWER_PREFIX, format_completion, format_partial, strip_step_label, worker_messages


class SearchError(RuntimeError):
    """The search cannot continue (bad parameters or an LLM that returns nothing usable)."""


@dataclass(frozen=True)
class LatsParams:
    """Search parameters, validated on construction. `Settings.lats_params()` builds them from the
    `KAELUM_*` settings; the defaults here are the only copy (each Settings field reads its own).

    The defaults are sized for the embedded 135M model on a CPU: wide and shallow, no LLM value
    judge and no reflections, which a 135M model cannot do usefully and which spend its budget.
    docs/runtime.md ("Defaults, and why") has the measurements and the settings for a larger worker.
    """

    simulations: int = 4
    max_depth: int = 2
    branching: int = 8
    exploration: float = 1.0
    reward_threshold: float = 0.8
    max_llm_calls: int = 20
    llm_value_weight: float = 0.0
    judge_samples: int = 3
    prune_threshold: float = 0.1
    reflections: bool = False
    max_reflections: int = 3
    # A search always has a wall-clock limit by default, whoever builds it: a search with none can
    # hold a worker forever on a stalled backend. None (no limit) is still accepted, on request.
    timeout_s: float | None = 600.0
    temperature: float = 0.8
    top_p: float = 0.95
    max_step_tokens: int = 64
    max_rollout_tokens: int = 256
    max_answer_tokens: int = 384
    # False for domains whose answer is one line (math, logic, factual): an answer asked for on
    # its own is then short and cut at its first line. True where it is a code block or prose.
    multiline_answers: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("simulations", "max_depth", "branching", "max_llm_calls", "judge_samples", "max_step_tokens", "max_rollout_tokens", "max_answer_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("reward_threshold", "llm_value_weight", "prune_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.exploration < 0:
            problems.append(f"exploration must be >= 0, got {self.exploration}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_reflections < 0:
            problems.append(f"max_reflections must be >= 0, got {self.max_reflections}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            problems.append(f"timeout_s must be positive, got {self.timeout_s}")
        if problems:
            raise ValueError("invalid LATS parameters: " + "; ".join(problems))

    def event_params(self) -> dict[str, Any]:
        """The `params` object of the `trace_started` event."""
        return {
            "simulations": self.simulations,
            "max_depth": self.max_depth,
            "branching": self.branching,
            "exploration": self.exploration,
            "temperature": self.temperature,
            "seed": self.seed,
        }


@dataclass(eq=False)
class Node:
    """One step of a solution. The root holds the query; its thought is the query text."""

    id: str
    parent: "Node | None"
    depth: int
    thought: str
    order: int = 0  # creation order within the search (node "n<order>"); ties go to the earlier node
    terminal: bool = False
    answer: str | None = None
    children: list["Node"] = field(default_factory=list)
    visits: int = 0
    reward_sum: float = 0.0  # Σ rewards backed up through this node
    prior: float = 0.0  # the evaluation value, counted as one pseudo-visit in Q
    samples: int = 1  # how many of the expansion's samples produced this step (self-consistency)
    expanded: bool = False
    exhausted: bool = False  # no selectable node left below
    pruned: bool = False
    prune_reason: str | None = None
    signals: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None
    reward: Reward | None = None
    llm: dict[str, Any] | None = None  # the call that produced the node (model, tokens, latency)
    sibling_answers: tuple[str, ...] = ()  # what the verifier saw, to re-verify when it changed

    @property
    def value(self) -> float:
        """Q: mean of the evaluation and every reward backed up through the node, in [0, 1]."""
        return (self.prior + self.reward_sum) / (1 + self.visits)

    def path(self) -> list["Node"]:
        node: Node | None = self
        out = []
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def steps(self) -> list[str]:
        """Thoughts on the path, root (the query) excluded: what `format_partial` renders."""
        return [n.thought for n in self.path()[1:]]

    def walk(self) -> list["Node"]:
        out, stack = [], [self]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children))
        return out


class SearchObserver:
    """Receives what the search does, in order. Subclass and override what you need."""

    def node_added(self, node: Node) -> None: ...

    def node_evaluated(self, node: Node, value: float, signals: Mapping[str, Any]) -> None: ...

    def verified(self, node: Node, verdict: Verdict) -> None: ...

    def reflected(self, node: Node, text: str) -> None: ...


class _Clock(Protocol):
    def __call__(self) -> float: ...


@dataclass
class Expansion:
    """What one expansion call produced."""

    children: list[Node]  # the new, deduplicated children
    samples: int  # completions the call returned: the denominator of each child's self-consistency


@dataclass
class SearchResult:
    root: Node
    best: Node | None  # the chosen terminal node, None when no answer was reached
    status: str  # ok | failed | timeout
    stop_reason: str  # early_stop | simulations | llm_calls | exhausted | timeout
    usage: UsageCounter
    reflections: list[str]
    simulations: int
    error: str | None = None

    @property
    def final_answer(self) -> str | None:
        return self.best.answer if self.best is not None else None

    @property
    def verdict(self) -> Verdict | None:
        return self.best.verdict if self.best is not None else None

    @property
    def reward(self) -> Reward | None:
        return self.best.reward if self.best is not None else None

    @property
    def best_path(self) -> list[Node]:
        return self.best.path() if self.best is not None else []

    def nodes(self) -> list[Node]:
        return self.root.walk()


# --- parsing model output --------------------------------------------------------------------

_ANSWER_RE = re.compile(r"\banswer\s*:", re.IGNORECASE)
# Small models copy the instruction literally ("Step N: ..."); strip that label too.
_LABEL_RE = re.compile(r"^\s*Step\s+(\d+|N)\s*[:.)-]\s*", re.IGNORECASE)
_STEP_START_RE = re.compile(r"^\s*Step\s+\d+\s*[:.)-]", re.IGNORECASE | re.MULTILINE)
_WS_RE = re.compile(r"\s+")


def parse_continuation(text: str) -> tuple[list[str], str | None]:
    """Split a model continuation into step thoughts and the answer block.

    Returns (steps, answer_block): `answer_block` starts with ``Answer:`` and runs to the next
    ``Step N:`` line (a code block or a paragraph stays whole), or is None when the text has no
    answer. Blank lines are skipped; a non-step line counts as a step (small models drop labels).
    """
    steps: list[str] = []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        s = line.strip()
        if not s:
            continue
        m = _ANSWER_RE.search(s)
        if m is not None:
            before = _strip_label(s[: m.start()]).strip()
            if before:
                steps.append(before)
            rest = s[m.start() :] + ("\n" + "\n".join(lines[i + 1 :]) if i + 1 < len(lines) else "")
            nxt = _STEP_START_RE.search(rest)
            block = rest[: nxt.start()] if nxt is not None else rest
            # The prompt's spelling: "Answer:" whatever case the model used.
            block = ANSWER_PREFIX + block[block.index(":") + 1 :]
            return steps, block.rstrip()
        thought = _strip_label(s)
        if thought:
            steps.append(thought)
    return steps, None


def _strip_label(line: str) -> str:
    return _LABEL_RE.sub("", strip_step_label(line), count=1).strip()


def normalise(text: str) -> str:
    """What makes two steps or answers 'the same' for dedup and self-consistency."""
    return _WS_RE.sub(" ", text.strip().lower()).rstrip(".")


# --- the search ----------------------------------------------------------------------------

# At most this many terminals of one expansion are checked at once (the default branching is 8).
MAX_CONCURRENT_VERIFICATIONS = 8
JUDGE_SYSTEM = "You are a strict grader. Reply with a single word: yes or no."
REFLECT_SYSTEM = (
    "You review a failed attempt at a problem. In one sentence, say what went wrong and what the next attempt "
    "should do differently."
)


class LATS:
    """One search for one query. Build it, call `run()` once."""

    def __init__(
        self,
        llm: LLM,
        domain: Domain,
        query: str,
        params: LatsParams = LatsParams(),
        observer: SearchObserver | None = None,
        tests: Sequence[str] = (),
        reference: str | None = None,
        domain_options: Mapping[str, Any] | None = None,
        clock: _Clock = time.monotonic,
    ) -> None:
        if not query.strip():
            raise SearchError("the query is empty")
        self.llm = llm
        self.domain = domain
        self.query = query
        self.params = params
        self.observer = observer or SearchObserver()
        self.tests = tuple(tests)
        self.reference = reference
        self.domain_options = dict(domain_options or {})
        self.clock = clock
        self.usage = UsageCounter()
        self.reflections: list[str] = []
        self.judge_skipped = 0
        self._rng = random.Random(params.seed)
        self._next_id = 0
        self._deadline: float | None = None
        self.root: Node | None = None

    # --- budgets ------------------------------------------------------------------------------

    def calls_left(self) -> int:
        # Past the deadline nothing more is spent, so a simulation in progress winds down at once.
        if self._timed_out():
            return 0
        return self.params.max_llm_calls - self.usage.llm_calls

    def _timed_out(self) -> bool:
        return self._deadline is not None and self.clock() >= self._deadline

    def _call(self, messages: Sequence[dict[str, str]], n: int, prefix: str, max_tokens: int, temperature: float, stop: tuple[str, ...] = ()) -> list[Completion]:
        if self.usage.llm_calls >= self.params.max_llm_calls:
            raise SearchError("LLM call budget exhausted")  # callers check first; this is a guard
        seed = None if self.params.seed is None else self.params.seed + self.usage.llm_calls
        sp = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=self.params.top_p, stop=stop, seed=seed)
        completions = list(self.llm.generate(messages, n=n, params=sp, prefix=prefix))
        self.usage.add(completions)
        if not completions:
            raise SearchError(f"the LLM returned no completions for a request of n={n}")
        return completions

    def _llm_info(self, c: Completion, completion_tokens: int | None = None) -> dict[str, Any]:
        return {
            "model": self.llm.model_name,
            "prompt_tokens": int(c.prompt_tokens),
            "completion_tokens": int(c.completion_tokens if completion_tokens is None else completion_tokens),
            "latency_ms": float(c.latency_ms),
        }

    # --- tree construction ----------------------------------------------------------------------

    def _add(self, parent: Node | None, thought: str, *, terminal: bool = False, answer: str | None = None, llm: dict[str, Any] | None = None, samples: int = 1) -> Node:
        node = Node(id=f"n{self._next_id}", parent=parent, depth=0 if parent is None else parent.depth + 1, thought=thought, order=self._next_id, terminal=terminal, answer=answer, llm=llm, samples=samples)
        self._next_id += 1
        if parent is not None:
            parent.children.append(node)
        self.observer.node_added(node)
        return node

    def _prune(self, node: Node, reason: str) -> None:
        node.pruned = True
        node.prune_reason = reason

    def _messages(self) -> list[dict[str, str]]:
        return worker_messages(self.domain.name, self.query, self.reflections[-self.params.max_reflections :] if self.params.max_reflections else ())

    def _extract(self, answer_block: str) -> str | None:
        return self.domain.extract_answer(answer_block)

    def _answer_tokens(self) -> int:
        # A one-line answer needs few tokens; a small model would otherwise ramble to the limit.
        return self.params.max_answer_tokens if self.params.multiline_answers else min(self.params.max_answer_tokens, 32)

    def _answer_block(self, text: str) -> str:
        """'Answer: ...' from what the model wrote after an 'Answer:' prefix."""
        text = text.strip()
        nxt = _STEP_START_RE.search(text)
        text = text[: nxt.start()].rstrip() if nxt else text
        if not self.params.multiline_answers:
            text = next((ln.strip() for ln in text.split("\n") if ln.strip()), "")
        return f"{ANSWER_PREFIX} {text}"

    # --- 1. selection -------------------------------------------------------------------------

    def uct(self, child: Node, parent: Node) -> float:
        return child.value + self.params.exploration * math.sqrt(math.log(parent.visits + 1) / (child.visits + 1))

    def _selectable(self, node: Node) -> bool:
        return not (node.terminal or node.pruned or node.exhausted)

    def select(self) -> Node | None:
        """The next node to expand, or None when nothing selectable is left."""
        assert self.root is not None
        while True:
            node = self.root
            if not self._selectable(node):
                return None
            while node.expanded:
                live = [c for c in node.children if self._selectable(c)]
                if not live:
                    # Everything below is terminal, pruned or exhausted: close it and start over.
                    node.exhausted = True
                    break
                scores = [self.uct(c, node) for c in live]
                top = max(scores)
                # Ties broken by the seeded generator, so a seed reproduces the search.
                node = self._rng.choice([c for c, s in zip(live, scores) if s == top])
            else:
                return node

    # --- 2. expansion -------------------------------------------------------------------------

    def expand(self, node: Node) -> Expansion:
        """Sample `branching` next steps in one call; return the new (deduplicated) children."""
        node.expanded = True
        steps = node.steps()
        prefix = format_partial(steps)
        last_level = node.depth + 1 >= self.params.max_depth
        if last_level:
            # Children at the depth limit must end the solution: ask for the answer directly.
            completions = self._call(self._messages(), self.params.branching, prefix + ANSWER_PREFIX, self._answer_tokens(), self.params.temperature)
            candidates = [(self._answer_block(c.text), c) for c in completions]
        else:
            completions = self._call(self._messages(), self.params.branching, prefix, self.params.max_step_tokens, self.params.temperature, stop=("\nStep",))
            candidates = [(c.text, c) for c in completions]

        groups: dict[tuple[str, str | None], dict[str, Any]] = {}
        order: list[tuple[str, str | None]] = []
        for text, comp in candidates:
            step, answer_block = self._first_step(text)
            if step is None:
                continue
            answer = self._extract(answer_block) if answer_block is not None else None
            terminal = answer_block is not None
            key = (normalise(step), normalise(answer) if answer is not None else None) if terminal else (normalise(step), None)
            if key not in groups:
                groups[key] = {"thought": step, "terminal": terminal, "answer": answer, "comp": comp, "samples": 0}
                order.append(key)
            groups[key]["samples"] += 1

        existing = {(normalise(c.thought), normalise(c.answer) if c.answer is not None else None): c for c in node.children}
        new: list[Node] = []
        for key in order:
            g = groups[key]
            if key in existing:
                # The step is already a child (e.g. from a rollout): the sample still counts as agreement.
                existing[key].samples += g["samples"]
                continue
            child = self._add(node, g["thought"], terminal=g["terminal"], answer=g["answer"], llm=self._llm_info(g["comp"]), samples=g["samples"])
            new.append(child)
        return Expansion(new, len(completions))

    @staticmethod
    def _first_step(text: str) -> tuple[str | None, str | None]:
        """The first step of a continuation and, if it ends the solution right after, the answer block."""
        steps, answer_block = parse_continuation(text)
        if steps and answer_block is not None and len(steps) == 1:
            return steps[0], answer_block
        if steps:
            return steps[0], None
        if answer_block is not None:
            # The model wrote only the answer line: that line is the terminal node's thought.
            return answer_block.split("\n", 1)[0].strip() or ANSWER_PREFIX, answer_block
        return None, None

    # --- 3. evaluation ------------------------------------------------------------------------

    def judge(self, question: str) -> float:
        """LLM judgement in [0, 1]: the share of 'yes' among `judge_samples` sampled replies.

        Also handed to domain verifiers (creative, analysis). Out of LLM budget it returns the
        neutral 0.5 and counts the skip, rather than overspend.
        """
        if self.calls_left() <= 0:
            self.judge_skipped += 1
            return 0.5
        if "yes or no" not in question.lower():
            question = question.rstrip() + "\nReply with yes or no."
        msgs = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": question}]
        comps = self._call(msgs, self.params.judge_samples, "", 3, max(self.params.temperature, 0.7))
        yes = sum(1 for c in comps if c.text.strip().lower().startswith("yes"))
        no = sum(1 for c in comps if c.text.strip().lower().startswith("no"))
        return 0.5 if yes + no == 0 else yes / (yes + no)

    def _value_judgement(self, node: Node) -> float:
        question = (
            f"Question: {self.query}\n\nPartial solution:\n{format_partial(node.steps())}\n"
            "Is the last step correct and does it make progress toward the answer? Reply with yes or no."
        )
        return self.judge(question)

    def evaluate(self, expansion: Expansion) -> None:
        """Set each new child's value (its prior); terminals are verified (`_evaluate_terminal`)."""
        n_samples = expansion.samples
        verdicts = self._verify_concurrently([c for c in expansion.children if c.terminal])
        for child in expansion.children:
            if child.terminal:
                self._evaluate_terminal(child, verdicts.get(id(child)))
                continue
            consistency = child.samples / max(n_samples, 1)
            w = self.params.llm_value_weight
            llm_value = self._value_judgement(child) if w > 0 and self.calls_left() > 0 else None
            value = consistency if llm_value is None else w * llm_value + (1 - w) * consistency
            child.prior = value
            child.signals = {"llm_value": llm_value, "consistency": consistency, "samples": child.samples}
            self.observer.node_evaluated(child, value, child.signals)
            if value < self.params.prune_threshold:
                self._prune(child, f"value {value:.3f} below prune threshold {self.params.prune_threshold}")

    def _terminal_answers(self, exclude: Node) -> tuple[str, ...]:
        assert self.root is not None
        return tuple(n.answer for n in self.root.walk() if n.terminal and n.answer is not None and n is not exclude)

    def _context(self, node: Node, siblings: tuple[str, ...]) -> VerifyContext:
        return VerifyContext(
            query=self.query,
            steps=tuple(node.steps()),
            sibling_answers=siblings,
            tests=self.tests,
            reference=self.reference,
            judge=self.judge,
            options=self.domain_options,
        )

    def _path_value(self, node: Node, alone: float) -> float | None:
        """The search's value estimate of the path to `node`, for the reward; None without a judge.

        Without the LLM value judge the only estimate is how many of an expansion's samples wrote
        the same step, a share that depends on the branching (one sample of 8 is 0.125, of 3 is
        0.33) and says nothing absolute about the path. It still ranks siblings for UCT, but the
        reward, which selects training data (`--where "reward > 0.9"`), is then left to the
        domain's verifier signals. `alone` is the value of a path with no step before the answer.
        """
        if self.params.llm_value_weight <= 0:
            return None
        path_values = [n.prior for n in node.path()[1:-1]]
        value = sum(path_values) / len(path_values) if path_values else alone
        return min(max(value, 0.0), 1.0)

    def _verify_concurrently(self, terminals: Sequence[Node]) -> dict[int, Verdict]:
        """Verdicts of `terminals` checked at the same time, by id(node); empty unless the domain
        allows it (VERIFY_CONCURRENTLY: sandboxed checks with no judge) and there are several.

        A terminal's context depends only on the tree, which already holds every child of the
        expansion, not on its siblings' verdicts: the verdicts, and everything the search derives
        from them in order afterwards, are the same as checking one after another.
        """
        if len(terminals) < 2 or not getattr(self.domain, "VERIFY_CONCURRENTLY", False):
            return {}
        contexts = [self._context(n, self._terminal_answers(n)) for n in terminals]
        with ThreadPoolExecutor(max_workers=min(len(terminals), MAX_CONCURRENT_VERIFICATIONS)) as pool:
            verdicts = list(pool.map(lambda nc: self.domain.verify(nc[0].answer, nc[1]), zip(terminals, contexts)))
        return {id(n): v for n, v in zip(terminals, verdicts)}

    def _evaluate_terminal(self, node: Node, verdict: Verdict | None = None) -> None:
        """Verify `node` (unless `verdict` was already reached for it), then set its reward and prior."""
        siblings = self._terminal_answers(node)
        ctx = self._context(node, siblings)
        if verdict is None:
            verdict = self.domain.verify(node.answer, ctx)
        node.verdict, node.sibling_answers = verdict, siblings
        self.observer.verified(node, verdict)
        path_value = self._path_value(node, node.samples / max(self.params.branching, 1))
        reward = self.domain.reward(verdict, path_value, ctx)
        node.reward = reward
        node.prior = min(max(float(reward.value), 0.0), 1.0)
        agree = sum(1 for a in siblings if node.answer is not None and normalise(a) == normalise(node.answer))
        node.signals = {
            "verifier": float(verdict.score),
            "passed": bool(verdict.passed),
            "path_value": path_value,
            "consistency": (agree + 1) / (len(siblings) + 1),
            "reward": node.prior,
        }
        self.observer.node_evaluated(node, node.prior, node.signals)

    def _solves(self, node: Node) -> bool:
        """A verified terminal good enough to stop the search at once."""
        return node.verdict is not None and node.verdict.passed and node.prior >= self.params.reward_threshold

    # --- 4. simulation ------------------------------------------------------------------------

    def simulate(self, start: Node) -> Node:
        """Continue `start` to an answer with one call; return the last node of the rollout chain."""
        remaining = self.params.max_depth - start.depth
        if remaining <= 0 or self.calls_left() <= 0:
            return start
        prefix = format_partial(start.steps())
        budget = min(self.params.max_rollout_tokens, self.params.max_step_tokens * remaining + self.params.max_answer_tokens)
        comp = self._call(self._messages(), 1, prefix, budget, self.params.temperature)[0]
        steps, answer_block = parse_continuation(comp.text)
        if len(steps) > remaining:
            steps, answer_block = steps[:remaining], None  # the answer lies beyond the depth limit
        forced: Completion | None = None
        if answer_block is None and self.calls_left() > 0:
            # The model stopped (or was cut off) without answering: ask for the answer of the path.
            forced = self._call(self._messages(), 1, format_partial(start.steps() + steps) + ANSWER_PREFIX, self._answer_tokens(), self.params.temperature)[0]
            answer_block = self._answer_block(forced.text)
        # An answer with no step before it becomes its own node whose thought is the answer line.
        steps_nodes = list(steps) if steps or answer_block is None else [answer_block.split("\n", 1)[0].strip()]
        if not steps_nodes:
            return start

        # Tokens of the call(s) are spread over the chain so that the trace sums to the usage.
        total = comp.completion_tokens + (forced.completion_tokens if forced else 0)
        weights = [max(len(s), 1) for s in steps_nodes]
        shares = [total * w // sum(weights) for w in weights]
        shares[-1] += total - sum(shares)
        node = start
        for i, (thought, share) in enumerate(zip(steps_nodes, shares)):
            last = i == len(steps_nodes) - 1
            terminal = last and answer_block is not None
            answer = self._extract(answer_block) if terminal and answer_block is not None else None
            node = self._add(node, thought, terminal=terminal, answer=answer, llm=self._llm_info(comp, share))
        if node.terminal:
            self._evaluate_terminal(node)
        else:
            self._prune(node, "rollout ended without an answer")
        return node

    # --- 5. backpropagation -------------------------------------------------------------------

    @staticmethod
    def backpropagate(node: Node, reward: float) -> None:
        for n in node.path():
            n.visits += 1
            n.reward_sum += reward

    # --- 6. reflection ------------------------------------------------------------------------

    def _reflect_on_failures(self, verified: Sequence[Node], simulations: int) -> None:
        """At most one reflection per simulation, as in LATS: on the failed answer most samples gave.

        `verified` are the terminals the simulation verified. A wide expansion at the depth limit
        can end in many failed answers at once; reflecting on each would spend the budget on
        diagnoses instead of attempts. Skipped when the search is about to stop, since no later
        prompt would see it.
        """
        failed = [n for n in verified if n.verdict is not None and not n.verdict.passed]
        if not failed or self._stop_reason(simulations, verified) is not None:
            return
        worst = max(failed, key=lambda n: (n.samples, -n.order))
        assert worst.verdict is not None
        self._reflect(worst, worst.verdict)

    def _reflect(self, node: Node, verdict: Verdict) -> None:
        if not self.params.reflections or self.params.max_reflections == 0:
            return
        shown = node.answer if node.answer is not None else "(no answer)"
        # What the verifier knows (e.g. the expected value) is never put in the prompt: only that
        # this answer failed, plus the model's own diagnosis.
        text = f"The answer {shown} failed verification."
        if self.calls_left() > 0:
            msgs = [
                {"role": "system", "content": REFLECT_SYSTEM},
                {
                    "role": "user",
                    "content": f"Problem: {self.query}\n\nAttempt:\n{format_completion(node.steps(), shown)}\n\n"
                    "This answer failed verification. In one sentence, what should the next attempt do differently?",
                },
            ]
            comp = self._call(msgs, 1, "", 40, self.params.temperature, stop=("\n\n",))[0]
            lines = [ln.strip() for ln in comp.text.split("\n") if ln.strip()]
            if lines:
                text += " " + lines[0][:300]
        self.reflections.append(text)
        self.observer.reflected(node, text)

    # --- the loop -----------------------------------------------------------------------------

    def _stop_reason(self, simulations: int, verified: Sequence[Node]) -> str | None:
        """Why the search stops after `simulations`, whose last verified `verified`; None to go on."""
        if any(self._solves(n) for n in verified):
            return "early_stop"
        if self._timed_out():
            return "timeout"
        if simulations >= self.params.simulations:
            return "simulations"
        if self.calls_left() <= 0:
            return "llm_calls"
        return None

    def run(self) -> SearchResult:
        if self.root is not None:
            raise SearchError("a LATS instance runs once; build a new one per query")
        if self.params.timeout_s is not None:
            self._deadline = self.clock() + self.params.timeout_s
        self.root = self._add(None, self.query)
        simulations = 0
        verified: list[Node] = []  # the terminals the last simulation verified
        stop = None
        while (stop := self._stop_reason(simulations, verified)) is None:
            leaf = self.select()
            if leaf is None:
                stop = "exhausted"
                break
            if self.calls_left() <= 0:  # the deadline passed during selection
                stop = "timeout" if self._timed_out() else "llm_calls"
                break
            simulations += 1
            verified = self._simulation(leaf)
            self._reflect_on_failures(verified, simulations)

        best = self._choose()
        if best is not None:
            self._final_verification(best)
        status = "timeout" if stop == "timeout" else ("ok" if best is not None and best.answer is not None else "failed")
        error = None
        if status == "failed":
            error = "the search reached no answer within its budget"
        elif status == "timeout":
            error = f"search exceeded its {self.params.timeout_s} s limit"
        return SearchResult(root=self.root, best=best, status=status, stop_reason=stop, usage=self.usage, reflections=list(self.reflections), simulations=simulations, error=error)

    def _simulation(self, leaf: Node) -> list[Node]:
        """Expand `leaf`, evaluate the children, roll out the best one, back up the rewards.

        Returns the terminals it verified, in the order they were checked."""
        expansion = self.expand(leaf)
        if not expansion.children:
            leaf.exhausted = not any(self._selectable(c) for c in leaf.children)
            return []
        self.evaluate(expansion)
        verified = [c for c in expansion.children if c.terminal]
        for child in verified:
            self.backpropagate(child, child.prior)
        if any(self._solves(c) for c in verified):
            return verified
        live = [c for c in expansion.children if self._selectable(c)]
        if not live or self._timed_out():
            return verified
        best = max(live, key=lambda c: (c.prior, -c.order))
        end = self.simulate(best)
        self.backpropagate(end, end.prior if end.terminal else 0.0)
        return verified + [end] if end.terminal else verified

    def _choose(self) -> Node | None:
        """The terminal to answer with: verified first, then reward, then backed-up value."""
        assert self.root is not None
        terminals = [n for n in self.root.walk() if n.terminal and n.answer is not None and n.verdict is not None]
        if not terminals:
            return None
        return max(terminals, key=lambda n: (n.verdict.passed, n.prior, n.value, -n.order))  # type: ignore[union-attr]

    def _final_verification(self, node: Node) -> None:
        """Re-verify the chosen answer when answers found after its check could change the verdict."""
        siblings = self._terminal_answers(node)
        if siblings == node.sibling_answers:
            return
        ctx = self._context(node, siblings)
        verdict = self.domain.verify(node.answer, ctx)
        node.verdict, node.sibling_answers = verdict, siblings
        self.observer.verified(node, verdict)
        # The path's value is the one measured at the first check (`_evaluate_terminal`): the priors
        # on the path are set once, when each step is evaluated. None means the search judged no path.
        node.reward = self.domain.reward(verdict, node.signals["path_value"], ctx)
