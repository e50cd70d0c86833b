"""`kaelum improve`: gated rounds of collect → ingest → train → evaluate → decide.

    from train.improve import ImproveArgs, improve
    improve(ImproveArgs(domain="math", queries="train.jsonl", held_out="held.jsonl", rounds=3, workdir="W"))

Each round collects traces with the current champion (LATS, every trace logged and tagged with its
round), ingests them into the store, trains a candidate that starts from the champion on the
store's examples no model of the champion's lineage has trained on, evaluates champion and
candidate on the held-out queries with the same search settings and seeds, and promotes the
candidate only if the gate (`train.gate`) says it is better. Without `--queries` a round skips
collection and trains on the untrained traces the store already holds.

Crash safety. Every phase ends by writing its record under `W/rounds/round-NNN/` (write-temp →
fsync → rename); a rerun of the same command skips every phase that has a record. Inside a phase:
collection skips the queries whose trace is complete in the round's log (the log is the truth, so
a query is never collected twice), ingestion is the ingester's exactly-once catch-up, training
resumes from the candidate's last complete checkpoint with the example set pinned in
`selection.json`, and each model's evaluation is recorded as soon as it finishes.

The workdir:

    W/improve.json          {"rounds": [...]}: the record of every decided round
    W/improve.png           held-out accuracy by round, champion and candidate, with 95% CIs
    W/champion              symlink to the current champion (replaced atomically)
    W/store/                the store (unless --store names another)
    W/run.json              what the run was started with; a rerun must match it
    W/rounds/round-NNN/     logs/collect, logs/eval, candidate/, and one record per phase
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import click

from kaelum.cliopts import flag, progress_flag, store_flag, store_from_env
from kaelum.events import DOMAINS

from .config import Method
from .gate import DEFAULT_ALPHA, DEFAULT_MIN_GAIN, check_thresholds, decide

log = logging.getLogger("kaelum.train.improve")

# Collection: many sampled candidates per batched call and no LLM judge or reflections, so that
# collection yields many verified traces per CPU-second (benchmarks/loop_bench.py measured these).
COLLECT_SETTINGS: dict[str, Any] = {
    "LATS_SIMULATIONS": 3,
    "LATS_BRANCHING": 8,
    "LATS_MAX_DEPTH": 2,
    "LATS_MAX_LLM_CALLS": 6,
    "LATS_LLM_VALUE_WEIGHT": 0.0,
    "LATS_REFLECTION": False,
    "TEMPERATURE": 0.7,
}
# Evaluation: greedy (one simulation, one branch, temperature 0), the same for both models, so the
# comparison measures the model and not search luck.
EVAL_SETTINGS: dict[str, Any] = {
    "LATS_SIMULATIONS": 1,
    "LATS_BRANCHING": 1,
    "LATS_MAX_DEPTH": 6,
    "LATS_MAX_LLM_CALLS": 4,
    "LATS_LLM_VALUE_WEIGHT": 0.0,
    "LATS_REFLECTION": False,
    "TEMPERATURE": 0.0,
}
EVAL_TAG = "eval"  # what train.evaluate tags its traces with; training never selects them
PHASES = ("collect", "ingest", "train", "evaluate", "decide")
KILL_ENV = "KAELUM_IMPROVE_KILL_AT"  # testing hook: comma-separated points at which the process SIGKILLs itself


class ImproveError(ValueError):
    """The rounds cannot start or continue; the message names the flag or the fix."""


@dataclass
class ImproveArgs:
    domain: str = field(metadata=flag("--domain", type=click.Choice(DOMAINS), required=True, help="The domain whose worker improves."))
    held_out: str = field(metadata=flag("--held-out", type=click.Path(dir_okay=False), required=True,
                                        help="Held-out queries (JSONL, with references where known); never trained on. A query's optional "
                                             "'slice' (e.g. a phrasing) is also gated on its own: significantly worse on any slice is rejected."))
    workdir: str = field(metadata=flag("--workdir", type=click.Path(file_okay=False), required=True,
                                       help="Where rounds, records, improve.json and the champion link live."))
    queries: str | None = field(default=None, metadata=flag("--queries", type=click.Path(dir_okay=False),
                                help="Queries to collect traces from each round (JSONL). Without it: train on the store's untrained traces."))
    rounds: int = field(default=1, metadata=flag("--rounds", help="Rounds in all; rerun with more to continue."))
    model: str = field(default="default", metadata=flag("--model", help="The first champion (default: the embedded model)."))
    method: Method = field(default="sft", metadata=flag("--method", help="How each candidate is trained (kaelum-train --method)."))
    min_gain: float = field(default=DEFAULT_MIN_GAIN, metadata=flag("--min-gain", help="Points of held-out verified accuracy a candidate must gain."))
    alpha: float = field(default=DEFAULT_ALPHA, metadata=flag("--alpha", help="The exact McNemar p-value must be below this."))
    # None: WORKDIR/store (store_path), after $KAELUM_STORE.
    store: str | None = field(default=None, metadata=store_flag(
        "The store the rounds ingest into and train from.", default=store_from_env, shown="$KAELUM_STORE or WORKDIR/store"))
    epochs: float = field(default=4, metadata=flag("--epochs", help="Epochs of each candidate's training."))
    lr: float = field(default=4e-4, metadata=flag("--lr", help="Learning rate of each candidate's training."))
    batch_size: int = field(default=8, metadata=flag("--batch-size", help="Batch size per device."))
    min_reward: float = field(default=0.7, metadata=flag("--min-reward", help="Minimum (effective) reward of a training example (sft)."))
    max_seq_len: int = field(default=512, metadata=flag("--max-seq-len", help="Truncate examples to this many tokens."))
    lora_r: int = 16
    lora_alpha: int = 32
    seed: int = field(default=0, metadata=flag("--seed", help="Training seed; search seeds derive from it."))
    collect_settings: dict[str, Any] = field(default_factory=lambda: dict(COLLECT_SETTINGS))  # --collect-setting
    eval_settings: dict[str, Any] = field(default_factory=lambda: dict(EVAL_SETTINGS))  # --eval-setting
    train_options: dict[str, Any] = field(default_factory=dict)  # further TrainArgs fields (grpo_*, grad_accum, ...)
    progress: bool = field(default=True, metadata=progress_flag())

    @property
    def store_path(self) -> str:
        return self.store or os.path.join(self.workdir, "store")

    def problems(self) -> list[str]:
        out = []
        if self.domain not in DOMAINS:
            out.append(f"--domain must be one of {', '.join(DOMAINS)}, got {self.domain!r}")
        if self.rounds < 1:
            out.append(f"--rounds must be at least 1, got {self.rounds}")
        if self.method not in ("sft", "dpo", "grpo"):
            out.append(f"--method must be sft, dpo or grpo, got {self.method!r}")
        if not os.path.isfile(self.held_out):
            out.append(f"--held-out {self.held_out} is not a file")
        if self.queries is not None and not os.path.isfile(self.queries):
            out.append(f"--queries {self.queries} is not a file")
        if not self.workdir.strip():
            out.append("--workdir must not be empty")
        out += check_thresholds(self.min_gain, self.alpha)
        return out


# --- small durable helpers ----------------------------------------------------------------------


def write_json_atomic(path: str, obj: Any) -> None:
    """write-temp → fsync → rename → fsync the folder: after a crash the file is old or new, never torn."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, ensure_ascii=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def point_champion(link: str, target: str) -> None:
    """Make `link` a symlink to `target`, replacing any earlier one in a single rename."""
    target = os.path.abspath(target)
    if os.path.islink(link) and os.readlink(link) == target:
        return
    if os.path.exists(link) and not os.path.islink(link):
        raise ImproveError(f"{link} exists and is not a symlink; it is where the champion is published — move it away")
    tmp = f"{link}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    _fsync_dir(os.path.dirname(os.path.abspath(link)))


def reached(point: str) -> None:
    """Testing hook: SIGKILL this process at `point` when KAELUM_IMPROVE_KILL_AT names it."""
    wanted = os.environ.get(KILL_ENV, "")
    if point in {p.strip() for p in wanted.split(",") if p.strip()}:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- queries and held-out hygiene ---------------------------------------------------------------


def normalize_query(text: str) -> str:
    """What 'the same query' means for held-out hygiene: Unicode NFKC, case-folded, whitespace
    collapsed, trailing punctuation dropped ("What is 3+4 ?" and "what is 3+4" are one query)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split()).rstrip(" ?!.。？！")


def read_queries(path: str, domain: str, flag: str) -> list[dict[str, Any]]:
    """A query file through the project's reader (`reference`/`tests` kept), every query in `domain`."""
    from .evaluate import EvalError, load_eval_queries

    try:
        queries = load_eval_queries(path)
    except EvalError as exc:
        raise ImproveError(str(exc).replace("--queries", flag, 1)) from None
    others = sorted({q["domain"] for q in queries if q.get("domain") not in (None, domain)})
    if others:
        raise ImproveError(f"{flag} {path}: queries of domain {', '.join(others)}; kaelum improve --domain {domain} takes {domain} queries only")
    bad = [i + 1 for i, q in enumerate(queries) if "slice" in q and not (isinstance(q["slice"], str) and q["slice"].strip())]
    if bad:
        raise ImproveError(f"{flag} {path}: 'slice' must be a non-empty string (query {', '.join(map(str, bad[:5]))})")
    return [{**q, "domain": domain} for q in queries]


def check_overlap(train_queries: list[dict[str, Any]], held_out: list[dict[str, Any]], train_path: str, held_path: str) -> None:
    held = {normalize_query(q["query"]) for q in held_out}
    clash = [q["query"] for q in train_queries if normalize_query(q["query"]) in held]
    if clash:
        examples = "; ".join(repr(q) for q in clash[:3])
        raise ImproveError(
            f"{len(clash)} of the queries in --queries {train_path} are also in --held-out {held_path} "
            f"(compared after normalizing case, spacing and trailing punctuation), e.g. {examples}. "
            "Held-out queries must never be trained on: remove them from one of the files"
        )


# --- lineage --------------------------------------------------------------------------------------


def lineage(model_dir: str) -> list[str]:
    """The chain of model directories from `model_dir` back to the first one without a Kaelum manifest."""
    from .manifest import MANIFEST, read_manifest

    chain, seen = [], set()
    path: str | None = model_dir
    while path and os.path.isdir(path) and os.path.realpath(path) not in seen:
        seen.add(os.path.realpath(path))
        chain.append(path)
        if not os.path.isfile(os.path.join(path, MANIFEST)):
            break
        path = read_manifest(path).get("base_model")
    return chain


def trained_by_lineage(model_dir: str) -> set[str]:
    """Trace ids any model in `model_dir`'s lineage trained on (read from their manifests)."""
    from .manifest import MANIFEST, read_manifest

    out: set[str] = set()
    for path in lineage(model_dir):
        if os.path.isfile(os.path.join(path, MANIFEST)):
            out.update(read_manifest(path).get("data", {}).get("trace_ids", []))
    return out


# --- the rounds -----------------------------------------------------------------------------------


@dataclass
class Round:
    """Paths of one round's folder and the records its phases leave."""

    number: int
    root: str

    @classmethod
    def at(cls, workdir: str, number: int) -> "Round":
        return cls(number, os.path.join(os.path.abspath(workdir), "rounds", f"round-{number:03d}"))

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def record(self, phase: str) -> str:
        return self.path(f"{phase}.json")

    def done(self, phase: str) -> dict[str, Any] | None:
        p = self.record(phase)
        return read_json(p) if os.path.isfile(p) else None

    @property
    def candidate(self) -> str:
        return self.path("candidate")

    @property
    def tag(self) -> str:
        return f"improve-round-{self.number}"


@dataclass
class Improver:
    args: ImproveArgs
    echo: Callable[[str], None] = print
    held_out: list[dict[str, Any]] = field(default_factory=list)
    train_queries: list[dict[str, Any]] | None = None
    base: str = ""

    @property
    def work(self) -> str:
        return os.path.abspath(self.args.workdir)

    @property
    def champion_link(self) -> str:
        return os.path.join(self.work, "champion")

    # --- setup ------------------------------------------------------------------------------------

    def prepare(self) -> None:
        a = self.args
        problems = a.problems()
        if problems:
            raise ImproveError("invalid kaelum improve arguments:\n" + "\n".join(f"  - {p}" for p in problems))
        self.held_out = read_queries(a.held_out, a.domain, "--held-out")
        if a.queries is not None:
            self.train_queries = read_queries(a.queries, a.domain, "--queries")
            check_overlap(self.train_queries, self.held_out, a.queries, a.held_out)
        os.makedirs(self.work, exist_ok=True)
        self._check_run_file()

    def _check_run_file(self) -> None:
        """A rerun continues the run only with the arguments that define it; anything else is refused."""
        from .trainer import local_model_path

        a = self.args
        path = os.path.join(self.work, "run.json")
        defining = {
            "domain": a.domain,
            "method": a.method,
            "model": a.model,
            "held_out_sha256": _sha256(a.held_out),
            "queries_sha256": _sha256(a.queries) if a.queries else None,
            "store": os.path.abspath(a.store_path),
        }
        if os.path.isfile(path):
            old = read_json(path)
            diff = [k for k in defining if old.get(k) != defining[k]]
            if diff:
                raise ImproveError(
                    f"{self.work} holds a run started with other arguments ({', '.join(diff)} differ: "
                    + "; ".join(f"{k} was {old.get(k)!r}" for k in diff)
                    + "). Rerun with the same arguments to continue it, or choose another --workdir"
                )
            self.base = old["base_dir"]
            return
        base = local_model_path(a.model)
        if not os.path.isdir(base):
            raise ImproveError(f"--model {a.model} is not a local model directory and the runtime cannot resolve it to one offline")
        self.base = os.path.abspath(base)
        write_json_atomic(path, {**defining, "base_dir": self.base, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fh = open(os.path.join(self.work, ".lock"), "w")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ImproveError(f"another kaelum improve is running in {self.work}") from None
            yield
        finally:
            fh.close()

    # --- the loop ---------------------------------------------------------------------------------

    def champion_before(self, number: int) -> str:
        """The champion that round `number` starts with: the base, then each promoted candidate."""
        champ = self.base
        for r in range(1, number):
            rec = Round.at(self.work, r).done("decide")
            if rec is None:
                raise ImproveError(f"round {r} has no decision record but round {number} was asked for")
            if rec["decision"] == "promoted":
                champ = rec["candidate"]
        return champ

    def run(self) -> list[dict[str, Any]]:
        self.prepare()
        with self.locked():
            for number in range(1, self.args.rounds + 1):
                rnd = Round.at(self.work, number)
                rec = rnd.done("decide")
                if rec is not None:
                    self.echo(f"round {number}: decided already ({rec['decision']})")
                    continue
                champion = self.champion_before(number)
                point_champion(self.champion_link, champion)  # also repairs a swap a crash interrupted
                self.round(rnd, champion)
            point_champion(self.champion_link, self.champion_before(self.args.rounds + 1))
            rounds = self.write_record()
        return rounds

    def round(self, rnd: Round, champion: str) -> dict[str, Any]:
        os.makedirs(rnd.root, exist_ok=True)
        self.echo(f"round {rnd.number}: champion {champion}")
        self.collect(rnd, champion)
        self.ingest(rnd)
        self.train(rnd, champion)
        self.evaluate(rnd, champion)
        return self.decide(rnd, champion)

    def _phase(self, rnd: Round, phase: str) -> dict[str, Any] | None:
        rec = rnd.done(phase)
        if rec is not None:
            self.echo(f"round {rnd.number} {phase}: done already")
        return rec

    def _finish(self, rnd: Round, phase: str, rec: dict[str, Any], t0: float) -> dict[str, Any]:
        rec = {**rec, "seconds": round(time.perf_counter() - t0, 3)}
        write_json_atomic(rnd.record(phase), rec)
        reached(f"round-{rnd.number}/{phase}")
        return rec

    # --- collect ----------------------------------------------------------------------------------

    def collect(self, rnd: Round, champion: str) -> dict[str, Any]:
        rec = self._phase(rnd, "collect")
        if rec is not None:
            return rec
        t0 = time.perf_counter()
        if self.train_queries is None:
            return self._finish(rnd, "collect", {"skipped": "no --queries: training on the store's untrained traces"}, t0)
        from kaelum import Orchestrator

        from .evaluate import settings_for

        logs = rnd.path("logs", "collect")
        done = completed_queries(logs, rnd.tag)
        todo = [(i, q) for i, q in enumerate(self.train_queries) if i not in done]
        if done:
            self.echo(f"round {rnd.number} collect: {len(done)} of {len(self.train_queries)} queries collected already")
        settings = settings_for(champion, **{**self.args.collect_settings, "SEED": self.args.seed + rnd.number})
        with Orchestrator(settings=settings, enable_logging=True, log_dir=logs) as orch:
            iterator: Any = todo
            if self.args.progress and todo:
                from tqdm import tqdm

                iterator = tqdm(todo, desc=f"round {rnd.number} collect", unit="query")
            for i, q in iterator:
                orch.run(q["query"], domain=self.args.domain, tests=q.get("tests"), reference=q.get("reference"),
                         tags=["improve", rnd.tag, f"improve-query-{i}"])
                reached(f"round-{rnd.number}/collect/query-{i}")
        done = completed_queries(logs, rnd.tag)
        return self._finish(rnd, "collect", {"queries": len(self.train_queries), "traces": len(done),
                                             "verified": sum(1 for v in done.values() if v)}, t0)

    # --- ingest -----------------------------------------------------------------------------------

    def ingest(self, rnd: Round) -> dict[str, Any]:
        rec = self._phase(rnd, "ingest")
        if rec is not None:
            return rec
        t0 = time.perf_counter()
        logs = rnd.path("logs", "collect")
        if not os.path.isdir(logs):
            return self._finish(rnd, "ingest", {"skipped": "nothing collected"}, t0)
        summary = ingest_logs(logs, self.args.store_path)
        return self._finish(rnd, "ingest", {"events": summary.events, "files": summary.files, "quarantined": summary.quarantined}, t0)

    # --- train ------------------------------------------------------------------------------------

    def train(self, rnd: Round, champion: str) -> dict[str, Any]:
        rec = self._phase(rnd, "train")
        if rec is not None:
            return rec
        from .manifest import MANIFEST, read_manifest

        t0 = time.perf_counter()
        targs = self.train_args(rnd, champion)
        out = rnd.candidate
        if not os.path.isfile(os.path.join(out, MANIFEST)):
            selection = self.selection(rnd, champion)
            resume = prepare_output_dir(out)
            targs.resume = resume
            if resume:
                self.echo(f"round {rnd.number} train: resuming from the last checkpoint in {out}")
            self.echo(f"round {rnd.number} train: {len(selection.examples)} examples, {self.args.method}, from {champion}")
            with kill_after_checkpoint(out, f"round-{rnd.number}/train/checkpoint"):
                from .trainer import run_training

                run_training(targs, selection)
        manifest = read_manifest(out)
        rec = {
            "candidate": out,
            "parent": manifest["base_model"],
            "method": manifest["method"],
            "examples": manifest["data"]["examples"],
            "train_examples": len(manifest["data"]["train_trace_ids"]),
            "store_snapshot": manifest.get("store"),
            "metrics": manifest.get("metrics"),
        }
        return self._finish(rnd, "train", rec, t0)

    def train_args(self, rnd: Round, champion: str) -> Any:
        from .config import DataArgs, LoraArgs, TrainArgs

        a = self.args
        return TrainArgs(
            model=champion,
            output_dir=rnd.candidate,
            method=a.method,  # type: ignore[arg-type]
            epochs=a.epochs,
            lr=a.lr,
            batch_size=a.batch_size,
            seed=a.seed,
            merge=True,  # a full model: the next round trains from it and the runtime serves it as is
            progress=a.progress,
            lora=LoraArgs(r=a.lora_r, alpha=a.lora_alpha),
            data=DataArgs(store=a.store_path, domain=a.domain, min_reward=a.min_reward, max_seq_len=a.max_seq_len, eval_split=0.1),
            **a.train_options,
        ).validate()

    def selection(self, rnd: Round, champion: str) -> Any:
        """The round's examples, pinned: chosen once and recorded in selection.json, reread by id after a crash."""
        from .data import DataError, Selection, select_examples

        pinned = rnd.done("selection")
        # After a crash the same snapshot is read again (its table versions, as the manifest records them).
        as_of = snapshot_as_of(pinned["store_snapshot"]) if pinned is not None else None
        try:
            sel = select_examples(self.args.store_path, method=self.args.method, domain=self.args.domain,
                                  min_reward=self.args.min_reward, where=None, as_of=as_of)
        except DataError as exc:
            raise ImproveError(f"round {rnd.number}: {exc}") from None
        if pinned is not None:
            ids = set(pinned["trace_ids"])
            examples = [e for e in sel.examples if e.trace_id in ids]
            missing = ids - {e.trace_id for e in examples}
            if missing:
                raise ImproveError(f"round {rnd.number}: {len(missing)} pinned traces are no longer in the store {self.args.store_path}")
            return Selection(examples=examples, stages=[tuple(s) for s in pinned["stages"]],
                             snapshot=PinnedSnapshot(pinned["store_snapshot"]), view=sel.view)
        snap = sel.snapshot.as_dict() if sel.snapshot is not None else None
        excluded_eval = eval_trace_ids(self.args.store_path, snapshot_as_of(snap))
        trained = trained_by_lineage(champion)
        held = {normalize_query(q["query"]) for q in self.held_out}
        stages = list(sel.stages)
        examples = [e for e in sel.examples if e.trace_id not in excluded_eval]
        stages.append(("not an evaluation trace", len(examples)))
        examples = [e for e in examples if normalize_query(e.query) not in held]
        stages.append(("query not in --held-out", len(examples)))
        examples = [e for e in examples if e.trace_id not in trained]
        stages.append((f"not trained on by the champion's lineage ({len(trained)} traces)", len(examples)))
        if not examples:
            raise ImproveError(
                f"round {rnd.number}: no untrained examples in the store {self.args.store_path} ("
                + ", ".join(f"{n} after {name}" for name, n in stages)
                + "); collect more with --queries, or rerun once the store holds new traces"
            )
        write_json_atomic(rnd.record("selection"), {"trace_ids": sorted({e.trace_id for e in examples}),
                                                    "stages": stages, "store_snapshot": snap})
        reached(f"round-{rnd.number}/train/selection")
        return Selection(examples=examples, stages=stages, snapshot=PinnedSnapshot(snap), view=sel.view)

    # --- evaluate ---------------------------------------------------------------------------------

    def evaluate(self, rnd: Round, champion: str) -> dict[str, Any]:
        rec = self._phase(rnd, "evaluate")
        if rec is not None:
            return rec
        t0 = time.perf_counter()
        settings = {**self.args.eval_settings, "SEED": self.args.seed}
        scores = {}
        for role, model in (("champion", champion), ("candidate", rnd.candidate)):
            scores[role] = self.evaluation(rnd, role, model, settings)
            reached(f"round-{rnd.number}/evaluate/{role}")
        # The evaluation traces go into the store, tagged 'eval', where training never selects them.
        eval_logs = rnd.path("logs", "eval")
        if os.path.isdir(eval_logs):
            ingest_logs(eval_logs, self.args.store_path)
        return self._finish(rnd, "evaluate", {r: {k: s[k] for k in ("model", "row", "reused_from")} for r, s in scores.items()}, t0)

    def evaluation(self, rnd: Round, role: str, model: str, settings: dict[str, Any]) -> dict[str, Any]:
        """One model's held-out outcomes: recorded, reused from an earlier round for the same model and settings, or run."""
        path = rnd.path(f"eval-{role}.json")
        if os.path.isfile(path):
            return read_json(path)
        key = {"model": os.path.abspath(model), "settings": settings, "held_out_sha256": _sha256(self.args.held_out)}
        for r in range(rnd.number - 1, 0, -1):
            for earlier in ("candidate", "champion"):
                p = Round.at(self.work, r).path(f"eval-{earlier}.json")
                if os.path.isfile(p):
                    old = read_json(p)
                    if old.get("key") == key:
                        rec = {**old, "reused_from": f"round-{r:03d}/{earlier}"}
                        write_json_atomic(path, rec)
                        return rec
        from .evaluate import evaluate_model

        score = evaluate_model(model, self.held_out, settings, log_dir=rnd.path("logs", "eval"), progress=self.args.progress)
        rec = {"key": key, "model": model, "row": score.row(), "answers": score.answers, "reused_from": None}
        write_json_atomic(path, rec)
        return rec

    # --- decide -----------------------------------------------------------------------------------

    def decide(self, rnd: Round, champion: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        champ = read_json(rnd.path("eval-champion.json"))
        cand = read_json(rnd.path("eval-candidate.json"))
        from .evaluate import checked_outcomes

        # The gate counts checked answers only: a candidate that merely agrees with itself more often is not better.
        # Held-out queries that name a `slice` are also gated per slice (train.gate's module doc).
        slices = [q.get("slice") for q in self.held_out]
        gate = decide(checked_outcomes(champ["answers"]), checked_outcomes(cand["answers"]), self.args.min_gain, self.args.alpha,
                      slices=slices if any(s is not None for s in slices) else None)
        if gate.promoted:
            point_champion(self.champion_link, rnd.candidate)
            reached(f"round-{rnd.number}/decide/champion")
        trained = rnd.done("train") or {}
        seconds = {p: (rnd.done(p) or {}).get("seconds", 0.0) for p in PHASES[:-1]}
        seconds["decide"] = round(time.perf_counter() - t0, 3)
        rec = {
            "round": rnd.number,
            "decision": gate.decision,
            "reason": gate.reason,
            "champion": champion,
            "candidate": rnd.candidate,
            "champion_accuracy": gate.champion_accuracy,
            "candidate_accuracy": gate.candidate_accuracy,
            "champion_ci": list(gate.champion_ci),
            "candidate_ci": list(gate.candidate_ci),
            "p_value": gate.p_value,
            "gain_points": round(gate.gain_points, 3),
            "held_out": gate.queries,
            "only_champion": gate.only_champion,
            "only_candidate": gate.only_candidate,
            "min_gain": gate.min_gain,
            "alpha": gate.alpha,
            "slices": [r.as_dict() for r in gate.slices],
            "method": self.args.method,
            "examples": trained.get("examples"),
            "store_snapshot": trained.get("store_snapshot"),
            "collected": {k: v for k, v in (rnd.done("collect") or {}).items() if k != "seconds"},
            "seconds": seconds,
        }
        write_json_atomic(rnd.record("decide"), rec)
        from .improve_report import format_round

        self.echo(format_round(rec))
        reached(f"round-{rnd.number}/decide")
        self.write_record()
        return rec

    def write_record(self) -> list[dict[str, Any]]:
        """W/improve.json and W/improve.png from the decided rounds (derived, so always rebuildable)."""
        from .improve_report import write_plot

        rounds = []
        for path in sorted(glob.glob(os.path.join(self.work, "rounds", "round-*", "decide.json"))):
            rounds.append(read_json(path))
        write_json_atomic(os.path.join(self.work, "improve.json"), {"rounds": rounds})
        if rounds:
            write_plot(rounds, os.path.join(self.work, "improve.png"))
        return rounds


class PinnedSnapshot:
    """The store snapshot a round's selection was taken at, as the manifest records it (`as_dict`)."""

    def __init__(self, data: dict[str, Any] | None) -> None:
        self.data = data

    def as_dict(self) -> dict[str, Any] | None:
        return self.data


# --- helpers over logs, store and output directory ------------------------------------------------


def completed_queries(log_dir: str, round_tag: str) -> dict[int, bool]:
    """Query index → verified, for the round's traces whose `trace_completed` is in the log.

    Only complete lines count (a kill can leave a partial last line; the ingester waits on it too).
    """
    started: dict[str, int] = {}
    completed: dict[str, bool] = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "*.jsonl"))):
        with open(path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                if ev.get("type") == "trace_started":
                    tags = ev.get("data", {}).get("tags") or []
                    idx = [t for t in tags if t.startswith("improve-query-")]
                    if round_tag in tags and idx:
                        started[ev["trace_id"]] = int(idx[0].rsplit("-", 1)[1])
                elif ev.get("type") == "trace_completed":
                    completed[ev["trace_id"]] = bool(ev.get("data", {}).get("verified"))
    return {started[t]: v for t, v in completed.items() if t in started}


def ingest_logs(log_dir: str, store_path: str) -> Any:
    from ingest import ingest_once

    return ingest_once(log_dir, store_path, progress=False)


def snapshot_as_of(snapshot: dict[str, Any] | None) -> str | None:
    """The `--as-of` that reads a recorded store snapshot again ("events=N,quarantine=M"), from its table versions."""
    versions = (snapshot or {}).get("versions")
    return ",".join(f"{k}={v}" for k, v in sorted(versions.items())) if versions else None


def eval_trace_ids(store_path: str, as_of: str | None = None) -> set[str]:
    """Trace ids the store holds with the evaluation tag (at snapshot `as_of`, else the newest)."""
    from .data import open_store

    con = open_store(store_path, as_of)
    try:
        rows = con.execute("select trace_id from trajectories where list_contains(tags, ?)", [EVAL_TAG]).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def prepare_output_dir(out: str) -> bool:
    """Before (re)training into `out`: drop checkpoints a kill left half-written (trainer_state.json
    is what the Trainer writes last), and say whether a complete checkpoint remains to resume from."""
    if not os.path.isdir(out):
        return False
    checkpoints = [p for p in glob.glob(os.path.join(out, "checkpoint-*")) if os.path.isdir(p)]
    complete = [p for p in checkpoints if os.path.isfile(os.path.join(p, "trainer_state.json"))]
    for p in set(checkpoints) - set(complete):
        shutil.rmtree(p)
    if not complete:
        shutil.rmtree(out)  # whatever else is there belongs to a run that never checkpointed
        return False
    return True


@contextlib.contextmanager
def kill_after_checkpoint(out: str, point: str) -> Iterator[None]:
    """Testing hook: when KAELUM_IMPROVE_KILL_AT names `point`, SIGKILL once a complete checkpoint exists."""
    if point not in os.environ.get(KILL_ENV, ""):
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.02):
            if any(os.path.isfile(os.path.join(p, "trainer_state.json")) for p in glob.glob(os.path.join(out, "checkpoint-*"))):
                reached(point)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()


def improve(args: ImproveArgs, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or continue) the rounds; return the record of every decided round."""
    return Improver(args, echo=echo).run()


__all__ = ["COLLECT_SETTINGS", "EVAL_SETTINGS", "ImproveArgs", "ImproveError", "Improver", "improve", "normalize_query"]
