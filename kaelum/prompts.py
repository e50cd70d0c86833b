"""The one prompt format shared by the runtime's workers and the trainer.

A worker answers in numbered steps and ends with an answer line:

    Step 1: <text>
    Step 2: <text>
    Answer: <final answer>

At inference LATS grows this text one step per tree node: the path so far is given to the model
as the beginning of its own (assistant) message and the model continues it. The trainer teaches
the whole completion for the same messages. Both sides call these functions, so the format a
model is trained on is the format it is later asked for.
"""

from __future__ import annotations

import re
from typing import Sequence

from .domains.registry import DOMAIN_SPECS

# Each domain's system prompt is declared with the domain, in kaelum.domains.registry.
SYSTEM_PROMPTS: dict[str, str] = {spec.name: spec.system_prompt for spec in DOMAIN_SPECS}

ANSWER_PREFIX = "Answer:"
_STEP_RE = re.compile(r"^\s*Step\s+\d+\s*[:.)-]\s*", re.IGNORECASE)


def worker_messages(domain: str, query: str, reflections: Sequence[str] = ()) -> list[dict[str, str]]:
    """Chat messages (system + user) a worker of `domain` sees for `query`.

    Reflections from failed attempts are appended to the user turn so that later expansions
    avoid the same mistakes (LATS). Training examples are rendered without reflections.
    """
    if domain not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(SYSTEM_PROMPTS)}")
    user = query.strip()
    if reflections:
        notes = "\n".join(f"- {r.strip()}" for r in reflections if r.strip())
        user += f"\n\nLessons from earlier failed attempts:\n{notes}"
    return [
        {"role": "system", "content": SYSTEM_PROMPTS[domain]},
        {"role": "user", "content": user},
    ]


def step_line(index: int, thought: str) -> str:
    """The line for step `index` (1-based). A thought that already starts with 'Step N:' is normalised."""
    return f"Step {index}: {_STEP_RE.sub('', thought.strip(), count=1)}"


def format_partial(steps: Sequence[str]) -> str:
    """The assistant text for a partial path: its steps, each on a line, ending with a newline."""
    return "".join(step_line(i + 1, s) + "\n" for i, s in enumerate(steps))


def format_completion(steps: Sequence[str], answer: str) -> str:
    """The full assistant text of a solved trajectory: the steps, then the answer line.

    `steps` are the thoughts of the best path without the root. A terminal node whose model
    output was only the answer line carries that line as its thought; it is not repeated.
    """
    steps = list(steps)
    if steps and steps[-1].strip().lower().startswith(ANSWER_PREFIX.lower()):
        steps = steps[:-1]
    return format_partial(steps) + f"{ANSWER_PREFIX} {answer.strip()}"


def format_continuation(prompt_steps: Sequence[str], steps: Sequence[str], answer: str) -> str:
    """The assistant text that follows `format_partial(prompt_steps)` on a branch that ends in `answer`.

    The full text is rendered once, so step numbers continue after the prefix; `steps` given as the
    whole path (prefix included) and as the continuation alone both work.
    """
    prompt_steps, steps = tuple(prompt_steps), tuple(steps)
    full = steps if steps[: len(prompt_steps)] == prompt_steps else prompt_steps + steps
    return format_completion(full, answer or "")[len(format_partial(prompt_steps)) :]


def strip_step_label(line: str) -> str:
    """'Step 3: add 2' -> 'add 2'."""
    return _STEP_RE.sub("", line.strip(), count=1)
