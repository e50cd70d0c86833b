"""The one reader of query files: `kaelum run --queries`, `kaelum-eval --queries` and the benchmarks use it.

A queries file is JSONL, one object per line:

    {"query": "...", "domain"?: "math", "tests"?: ["assert ..."], "id"?: "q1", "tags"?: ["..."],
     "reference"?: "85"}

- `question` is accepted for `query`, and `answer` for `reference`, so a GSM8K-style file
  (`{"question": ..., "answer": "...reasoning...\\n#### 72"}`) is read as it is: the reference is
  the text after the last `#### ` line (`72`), the reasoning before it is kept as
  `reference_solution`.
- A reference is a string or a number; for the code domain (`"domain": "code"` on the line) it
  may also be a list of `{"input": "add(1, 2)", "output": "3"}` cases (expected outputs for inputs).

Every problem in the file is collected and reported at once, with its line number; a bad file
loses nothing and runs nothing.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from .events import DOMAINS

# GSM8K marks the final answer with a line "#### <answer>".
_GSM8K_FINAL = re.compile(r"(?m)^[ \t]*####[ \t]*(.*?)[ \t]*$")
_ALIASES = (("query", "question"), ("reference", "answer"))


def gsm8k_final_answer(text: str) -> tuple[str, str | None]:
    """(reference, solution) of a GSM8K answer: the text after the last '#### ' line, and what precedes it.

    A text without such a line is the reference itself (solution None).
    """
    matches = list(_GSM8K_FINAL.finditer(text))
    if not matches:
        return text.strip(), None
    last = matches[-1]
    solution = text[: last.start()].strip()
    return last.group(1).strip(), solution or None


def _reference(value: Any, domain: str | None, where: str, problems: list[str]) -> tuple[Any, str | None]:
    """The reference of one line (normalised), and the GSM8K solution text if any; problems appended."""
    if value is None:  # an explicit null: no reference
        return None, None
    if isinstance(value, bool):
        problems.append(f"{where}: 'reference' must be a string or a number, got {json.dumps(value)}")
        return None, None
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value), None
    if isinstance(value, str):
        ref, solution = gsm8k_final_answer(value)
        if not ref:
            problems.append(f"{where}: 'reference' is empty" + (" after its '####' line" if solution else ""))
        return ref, solution
    if isinstance(value, list):
        if domain != "code":
            problems.append(f"{where}: a list 'reference' (input/output cases) is only for the code domain, not "
                            f"{domain or 'a routed query'}; add \"domain\": \"code\"")
            return None, None
        from .domains.code import reference_tests

        try:
            reference_tests(value)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
        return value, None
    problems.append(f"{where}: 'reference' must be a string, a number or (code) a list of cases, got {type(value).__name__}")
    return None, None


def load_queries(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a queries file (see the module doc); each query as a dict with `query` and, when given,
    `domain`, `tests`, `id`, `tags`, `reference` (+ `reference_solution` for GSM8K answers).

    Raises ValueError naming the file and every bad line; OSError when it cannot be read.
    """
    problems: list[str] = []
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: not JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{where}: expected an object, got {type(obj).__name__}")
                continue
            q = dict(obj)
            for name, alias in _ALIASES:
                if alias in q:
                    if name in q and q[name] != q[alias]:
                        problems.append(f"{where}: both '{name}' and its alias '{alias}' are given, and they differ; keep one")
                    q.setdefault(name, q.pop(alias))
            if not isinstance(q.get("query"), str) or not q["query"].strip():
                problems.append(f"{where}: 'query' must be a non-empty string")
            domain = q.get("domain")
            if domain is not None and domain not in DOMAINS:
                problems.append(f"{where}: unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
                domain = None
            for key in ("tests", "tags"):
                v = q.get(key)
                if v is not None and not (isinstance(v, list) and all(isinstance(t, str) for t in v)):
                    problems.append(f"{where}: '{key}' must be a list of strings")
            if "reference" in q:
                ref, solution = _reference(q["reference"], domain, where, problems)
                q["reference"] = ref
                if solution is not None:
                    q["reference_solution"] = solution
            out.append(q)
    if problems:
        raise ValueError(f"{os.fspath(path)}: " + "; ".join(problems))
    if not out:
        raise ValueError(f"{os.fspath(path)}: no queries (expected one JSON object per line)")
    return out


__all__ = ["load_queries", "gsm8k_final_answer"]
