"""Code: the extracted Python runs in the sandbox against the query's tests; reward is the share passed.

Tests come from the query (`VerifyContext.tests`: assert lines, pytest-style `test_*` functions, or
HumanEval's `def check(candidate)` with `VerifyContext.entry_point` naming the function it is
given). The tests run in a grader process of their own (see `sandbox`), never in the solution's,
and must execute at least one `assert`. Only when none are given, the tests the model wrote itself (top-level asserts, `test_*` functions,
asserts under `if __name__ == "__main__":`, or a later code block of asserts) are used, and the
reward trusts them less (`test_confidence`). With no tests at all, the code is only run: clean
execution is not verification.

A reference (`VerifyContext.reference`) gives expected outputs for inputs: a list of
`{"input": "add(1, 2)", "output": "3"}` cases (Python expressions; or the same list as JSON text),
each turned into one `assert` the test runner executes with the given tests (`reference_tests`).
Verifiers: "code.reference" (reference cases, with any given tests), "code.sandbox" (tests, method
"tests"), "code.run" (no tests: method "runs", never passed).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Mapping

from ._common import DomainBase, answer_text, bounded, compose, failed
from .base import Reward, Verdict, VerifyContext
from .sandbox import SandboxLimits, SandboxRefused, SandboxResult, run_python, run_tests

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_LANGS = {"", "python", "py", "python3", "py3"}
MODEL_TEST_CONFIDENCE = 0.8
NO_TEST_CONFIDENCE = 0.5
NO_ASSERTION = "the tests ran no assertion: is check() defined but never called?"


def _code_blocks(text: str) -> list[str]:
    return [m.group(2).strip("\n") for m in _FENCE.finditer(text) if m.group(1).lower() in _PY_LANGS]


def _is_test_block(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    has_test = any(isinstance(n, ast.Assert) or (isinstance(n, ast.FunctionDef) and n.name.startswith("test"))
                   for n in tree.body)
    defines = any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("test") for n in tree.body)
    return has_test and not defines


def _is_main_guard(node: ast.stmt) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def split_solution(code: str) -> tuple[str, list[str]]:
    """(solution without its own tests, the model's tests): top-level asserts, test_* functions and
    asserts under a `__main__` guard move to the tests; everything else stays the solution."""
    tree = ast.parse(code)
    keep: list[ast.stmt] = []
    tests: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assert) or (isinstance(node, ast.FunctionDef) and node.name.startswith("test")):
            tests.append(ast.get_source_segment(code, node) or ast.unparse(node))
        elif _is_main_guard(node) and any(isinstance(n, ast.Assert) for n in ast.walk(node)):
            tests.append("\n".join(ast.unparse(n) for n in node.body))  # type: ignore[attr-defined]
        else:
            keep.append(node)
    if len(keep) == len(tree.body):
        return code, []
    return "\n".join(ast.get_source_segment(code, n) or ast.unparse(n) for n in keep) + "\n", tests


class ReferenceError(ValueError):
    """A code reference that is not a list of {"input", "output"} cases of Python expressions."""


def reference_tests(reference: Any) -> list[str]:
    """One `assert (input) == (output)` per reference case; raises ReferenceError naming every bad case."""
    cases = reference
    if isinstance(reference, str):
        try:
            cases = json.loads(reference)
        except ValueError as e:
            raise ReferenceError(f"a code reference must be a JSON list of {{\"input\", \"output\"}} cases ({e})") from None
    if not isinstance(cases, list) or not cases:
        raise ReferenceError('a code reference must be a non-empty list of {"input": "f(1)", "output": "2"} cases')
    tests, problems = [], []
    for i, case in enumerate(cases):
        if not isinstance(case, Mapping) or not all(isinstance(case.get(k), str) for k in ("input", "output")):
            problems.append(f"case {i}: needs string fields 'input' (a call) and 'output' (its expected value)")
            continue
        for k in ("input", "output"):
            try:
                ast.parse(case[k], mode="eval")
            except SyntaxError as e:
                problems.append(f"case {i}: {k} {case[k][:60]!r} is not a Python expression ({e.msg})")
        tests.append(f"assert ({case['input']}) == ({case['output']}), {case['input'] + ' should be ' + case['output']!r}")
    if problems:
        raise ReferenceError("invalid code reference: " + "; ".join(problems[:10]))
    return tests


class CodeDomain(DomainBase):
    name = "code"
    WEIGHTS = {"tests_passed": 0.8, "runs": 0.8, "value": 0.2}
    VERIFY_CONCURRENTLY = True  # each check runs in sandbox processes and asks no judge

    def __init__(self, options=None) -> None:  # noqa: ANN001 - Mapping | None, as DomainBase
        super().__init__(options)
        SandboxLimits.from_options(self.options)  # bad limits fail here, with every problem named

    def extract_answer(self, text: str) -> str | None:
        """The Python after 'Answer:': the first code block, plus later blocks that hold only tests."""
        raw = answer_text(text)
        if raw is None:
            return None
        blocks = _code_blocks(raw)
        if not blocks:
            # No fence: accept the text itself when it is Python (small models drop the fences).
            body = raw.strip().strip("`").strip()
            try:
                ast.parse(body)
            except SyntaxError:
                return None
            return body + "\n" if re.search(r"\b(def|class|import|return|print)\b|=", body) else None
        code = blocks[0].rstrip() + "\n"
        extra = [b for b in blocks[1:] if _is_test_block(b)]
        return code + "".join("\n" + b.rstrip() + "\n" for b in extra)

    def limits(self, ctx: VerifyContext) -> SandboxLimits:
        return SandboxLimits.from_options(self.opts(ctx))

    def _verify(self, answer: str | None, ctx: VerifyContext) -> Verdict:
        if answer is None or not answer.strip():
            return failed("code.sandbox", "no code in the answer")
        try:
            solution, model_tests = split_solution(answer)
        except SyntaxError as e:
            return failed("code.sandbox", f"the code does not parse: {e.msg} (line {e.lineno})",
                          signals={"tests_passed": 0.0} if ctx.tests else {"runs": 0.0})
        limits = self.limits(ctx)
        if ctx.entry_point is not None and not (isinstance(ctx.entry_point, str) and ctx.entry_point.isidentifier()):
            return failed("code.sandbox", f"the entry point must be a Python identifier, got {ctx.entry_point!r}")
        if ctx.reference is not None and ctx.reference != "":
            try:
                ref_tests = reference_tests(ctx.reference)
            except ReferenceError as e:
                return failed("code.reference", str(e), signals={"tests_passed": 0.0})
            try:
                result = run_tests(solution, [*ctx.tests, *ref_tests], limits, entry_point=ctx.entry_point if ctx.tests else None)
            except SandboxRefused as e:
                return failed("code.reference", str(e), sandbox_refused=True)
            return self._tests_verdict(result, "given+reference" if ctx.tests else "reference", 1.0, "code.reference")
        if ctx.tests:
            source, tests, confidence = "given", list(ctx.tests), 1.0
        elif model_tests:
            source, tests, confidence = "model", model_tests, MODEL_TEST_CONFIDENCE
        else:
            source, tests, confidence = "none", [], NO_TEST_CONFIDENCE
        try:
            if tests:
                entry = ctx.entry_point if source == "given" else None
                result = run_tests(solution, tests, limits, entry_point=entry)
                return self._tests_verdict(result, source, confidence)
            result = run_python(solution, limits)
        except SandboxRefused as e:
            return failed("code.sandbox", str(e), sandbox_refused=True)
        details: dict[str, Any] = {"tests_source": "none", "sandbox": result.summary(),
                                   "signals": {"runs": 1.0 if result.loaded else 0.0}, "test_confidence": confidence,
                                   "error": None if result.loaded else result.load_error}
        if result.loaded:
            details.pop("error")
        # Running cleanly is not verification: without tests the answer is never "passed".
        return Verdict(passed=False, score=0.5 if result.loaded else 0.0, verifier="code.run", details=details)

    @staticmethod
    def _tests_verdict(result: SandboxResult, source: str, confidence: float, verifier: str = "code.sandbox") -> Verdict:
        frac = result.fraction_passed
        details: dict[str, Any] = {
            "tests_source": source, "tests_total": len(result.tests), "tests_passed": result.passed_count,
            "limit_hit": result.limit_hit, "sandbox": result.summary(), "signals": {"tests_passed": frac},
            "test_confidence": confidence,
        }
        all_passed = bool(result.tests) and result.passed_count == len(result.tests)
        if not result.loaded:
            details["error"] = f"the solution failed to run: {result.load_error}"
        elif result.grader_error:
            details["error"] = f"the tests could not be graded: {result.grader_error}"
        elif result.assertions == 0:
            # Tests that check nothing verify nothing (HumanEval's `test` defines check() and never calls it).
            details["error"] = NO_ASSERTION
            details["signals"] = {"tests_passed": 0.0}
            frac = 0.0
        passed = (result.loaded and all_passed and result.assertions > 0 and not result.grader_error)
        return Verdict(passed=passed, score=frac, verifier=verifier, details=details)

    def reward(self, verdict: Verdict, value: float | None, ctx: VerifyContext) -> Reward:
        signals = dict(verdict.details.get("signals") or {})
        if not signals:
            return super().reward(verdict, value, ctx)
        confidence = float(verdict.details.get("test_confidence", 1.0))
        # test_confidence scales the whole reward: model-written tests are weaker evidence than given ones.
        return bounded(compose(self.WEIGHTS, {**signals, "value": value}, scale=confidence,
                               extra={"test_confidence": confidence}), verdict)
