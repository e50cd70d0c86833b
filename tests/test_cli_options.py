"""The options written once (kaelum.cliopts): derived from the dataclasses, shared by every command,
every command resolving $KAELUM_STORE, and the docs' flag tables equal to the commands' options."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ingest.cli import main as ingest_main
from ingest.config import IngestConfig
from kaelum.cli import main as kaelum_main
from kaelum.cliopts import dataclass_options, flag, flag_table, flag_table_blocks, pop_dataclass, render_flag_tables
from store.cli import main as sql_main
from store_traces import _simple  # complete, verified traces (tests/ is on sys.path)
from train.cli import main as train_main
from train.config import TrainArgs
from train.eval_cli import main as eval_main

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture
def env_store(tmp_path, monkeypatch):
    """$KAELUM_STORE names a store that kaelum-ingest made from two verified traces (rewards 0.9, 0.95)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    with open(logs / "a.jsonl", "wb") as f:
        for query, reward in (("What is 2+3?", 0.9), ("What is 4+4?", 0.95)):
            for event in _simple(query, True, reward)[1]:
                f.write(event.to_json_line())
    store = tmp_path / "env-store"
    monkeypatch.setenv("KAELUM_STORE", str(store))
    monkeypatch.chdir(tmp_path)  # ./store, the fallback, is not there
    res = CliRunner().invoke(ingest_main, ["--once", "--log-dir", str(logs), "--no-progress", "--log-level", "error"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["events"] == 18
    assert (store / "events").is_dir() and not (tmp_path / "store").exists()
    return store


def test_kaelum_sql_reads_the_store_kaelum_store_names(env_store):
    res = CliRunner().invoke(sql_main, ["-f", "json", "select count(*) as n from training_examples"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"n": 2}  # one row per line (JSON Lines)


def test_kaelum_ingest_status_reads_the_store_kaelum_store_names(env_store):
    res = CliRunner().invoke(ingest_main, ["status", "--json"])
    assert res.exit_code == 0, res.output
    (snap,) = json.loads(res.output)
    assert snap["events_total"] == 18


def test_kaelum_train_reads_the_store_kaelum_store_names(env_store):
    res = CliRunner().invoke(train_main, ["--model", "m", "--where", "reward > 0.99", "--dry-run"])
    assert res.exit_code == 1
    # The counts come from the store $KAELUM_STORE names: 2 examples, both removed by --where.
    assert "no examples left: --where 'reward > 0.99' removed them all (2 in training_examples" in res.output


def test_kaelum_eval_reads_the_store_kaelum_store_names(env_store, monkeypatch, tmp_path):
    res = CliRunner().invoke(eval_main, ["--model", "default", "--where", "reward > 0.99"])
    assert res.exit_code == 1
    assert "--where 'reward > 0.99' selects no held-out traces" in res.output
    # The control: the same command with $KAELUM_STORE naming no store fails on the store, not on --where.
    monkeypatch.setenv("KAELUM_STORE", str(tmp_path / "nothing-here"))
    res = CliRunner().invoke(eval_main, ["--model", "default", "--where", "reward > 0.99"])
    assert res.exit_code == 1 and "nothing-here" in res.output and "selects no held-out traces" not in res.output


def test_store_flag_beats_kaelum_store(env_store, tmp_path):
    res = CliRunner().invoke(train_main, ["--model", "m", "--store", str(tmp_path / "other"), "--dry-run"])
    assert res.exit_code == 1 and f"no store at {tmp_path / 'other'}" in res.output


@pytest.mark.parametrize("command", ["ui", "improve"])
def test_kaelum_ui_and_improve_resolve_kaelum_store(command, monkeypatch, tmp_path):
    cmd = kaelum_main.get_command(click.Context(kaelum_main), command)
    args = ["--domain", "math", "--held-out", "h.jsonl", "--workdir", str(tmp_path / "w")] if command == "improve" else []
    monkeypatch.setenv("KAELUM_STORE", str(tmp_path / "env-store"))
    assert cmd.make_context(command, list(args)).params["store"] == str(tmp_path / "env-store")
    monkeypatch.delenv("KAELUM_STORE")
    # Unset: kaelum ui falls back to ./store; kaelum improve to WORKDIR/store (ImproveArgs.store None).
    assert cmd.make_context(command, list(args)).params["store"] == ("./store" if command == "ui" else None)


def test_kaelum_ui_defaults_are_ui_config_defaults(monkeypatch):
    """`kaelum ui` states its defaults itself (its module must load without the ui extra, which
    `ui.server.UIConfig` needs); they are UIConfig's."""
    from ui.server import UIConfig

    for name in ("KAELUM_STORE", "KAELUM_UI_TOKEN", "KAELUM_UI_USER"):
        monkeypatch.delenv(name, raising=False)
    cmd = kaelum_main.get_command(click.Context(kaelum_main), "ui")
    params = cmd.make_context("ui", []).params
    want = UIConfig()
    assert {k: params[k] for k in ("store", "host", "port", "token", "model", "refresh_s", "poll_s")} == {
        "store": want.store, "host": want.host, "port": want.port, "token": want.token, "model": want.model,
        "refresh_s": want.refresh_s, "poll_s": want.poll_s}
    assert params["user"] is None  # then UIConfig's own default: the login name


def test_kaelum_train_defaults_are_train_args_defaults(monkeypatch):
    monkeypatch.delenv("KAELUM_STORE", raising=False)
    ctx = train_main.make_context("kaelum-train", [])
    params = dict(ctx.params)
    params.pop("verbose")
    assert pop_dataclass(TrainArgs, params) == TrainArgs()
    assert params == {}  # every option is a TrainArgs field (or -v)


def test_kaelum_train_flags_reach_their_fields():
    ctx = train_main.make_context("kaelum-train", [
        "--model", "m", "--store", "s", "--domain", "code", "--min-reward", "0.8", "--qlora", "--lora-r", "8",
        "--method", "dpo", "--grpo-generations", "6", "--no-bf16", "--no-progress", "--epochs", "1.5"])
    params = dict(ctx.params)
    params.pop("verbose")
    args = pop_dataclass(TrainArgs, params)
    assert (args.model, args.data.store, args.data.domain, args.data.min_reward, args.adapter, args.lora.r) == ("m", "s", "code", 0.8, "qlora", 8)
    assert (args.method, args.grpo_num_generations, args.bf16, args.progress, args.epochs) == ("dpo", 6, False, False, 1.5)


def test_kaelum_ingest_defaults_are_ingest_config_defaults(monkeypatch):
    monkeypatch.delenv("KAELUM_STORE", raising=False)
    params = dict(ingest_main.make_context("kaelum-ingest", ["--log-dir", "L", "--no-progress"]).params)
    params.pop("log_level")
    assert pop_dataclass(IngestConfig, params) == IngestConfig(log_dir="L", store="./store", progress=False)
    assert params == {}
    params = dict(ingest_main.make_context("kaelum-ingest", ["--log-dir", "L", "--no-watchdog", "--batch-events", "7"]).params)
    params.pop("log_level")
    cfg = pop_dataclass(IngestConfig, params, progress=True)
    assert (cfg.use_watchdog, cfg.batch_events, cfg.progress) == (False, 7, True)


def test_ingest_refuses_the_writer_ids_the_store_refuses(tmp_path):
    res = CliRunner().invoke(ingest_main, ["--once", "--log-dir", str(tmp_path), "--store", str(tmp_path / "s"), "--writer-id", "-bad/id"])
    assert res.exit_code == 2
    assert "--writer-id: invalid writer id '-bad/id': use 1-128 characters from A-Z a-z 0-9 _ . -" in res.output


@dataclass
class Inner:
    size: int = field(default=3, metadata=flag("--size", help="How big."))


@dataclass
class Outer:
    name: str = field(default="x", metadata=flag("--name", help="What."))
    inner: Inner = field(default_factory=Inner)
    hidden: int = 9  # no flag: not an option


def test_dataclass_options_of_a_small_dataclass():
    @click.command()
    @dataclass_options(Outer)
    def cmd(**kw):  # noqa: ANN003
        click.echo(repr(pop_dataclass(Outer, kw)))

    res = CliRunner().invoke(cmd, ["--size", "5"])
    assert res.exit_code == 0 and res.output.strip() == "Outer(name='x', inner=Inner(size=5), hidden=9)"
    assert "--hidden" not in CliRunner().invoke(cmd, ["--help"]).output
    assert CliRunner().invoke(cmd, ["--size", "big"]).exit_code == 2


@pytest.mark.parametrize("doc", ["training.md", "ingest.md", "ui.md"])
def test_the_docs_flag_tables_are_the_commands_options(doc):
    text = (DOCS / doc).read_text(encoding="utf-8")
    assert flag_table_blocks(text), f"docs/{doc} carries no generated flag table"
    assert render_flag_tables(text) == text, f"docs/{doc} is stale: run python -m kaelum.cliopts docs/{doc}"


def test_flag_table_lists_every_option_and_only_those():
    table = flag_table(train_main)
    rows = [line for line in table.splitlines()[2:]]
    documented = {cell.strip("` ").split(" ")[0] for cell in (r.split(" | ")[0].lstrip("| ") for r in rows)}
    expected = {("/".join(p.opts + p.secondary_opts) if p.secondary_opts else ", ".join(p.opts)).split(" ")[0]
                for p in train_main.params if isinstance(p, click.Option)} - {"-h, --help"}
    assert documented == expected
    assert "| `--min-reward` | `0.7` |" in table and "| `--store` | `$KAELUM_STORE or ./store` |" in table
    assert "| `--lora` | `default` |" in table and "| `--method sft\\|dpo\\|grpo` | `sft` |" in table


def test_the_seed_guides_finetune_setup_flags_keep_their_meaning(monkeypatch):
    """The seed guide's `finetune_setup.py` commands, as `kaelum-train` arguments, with its defaults."""
    monkeypatch.delenv("KAELUM_STORE", raising=False)

    def parse(argv):
        params = dict(train_main.make_context("kaelum-train", argv).params)
        params.pop("verbose")
        return pop_dataclass(TrainArgs, params)

    a = parse(["--model", "meta-llama/Llama-3.2-3B-Instruct", "--log-dir", "./logs", "--output-dir", "./finetuned_models",
               "--epochs", "3", "--batch-size", "4", "--lr", "2e-5"])
    assert (a.model, a.data.log_dir, a.output_dir, a.epochs, a.batch_size, a.lr, a.data.domain) == (
        "meta-llama/Llama-3.2-3B-Instruct", "./logs", "./finetuned_models", 3, 4, 2e-5, None)
    a = parse(["--model", "m", "--domain", "code", "--output-dir", "./finetuned_code", "--log-dir", "./production_logs",
               "--min-reward", "0.85", "--epochs", "5", "--batch-size", "2", "--lr", "1e-5"])
    assert (a.data.domain, a.data.min_reward, a.epochs, a.batch_size, a.lr, a.data.log_dir) == ("code", 0.85, 5, 2, 1e-5, "./production_logs")
    d = parse(["--model", "m"])
    assert (d.data.min_reward, d.epochs, d.batch_size, d.lr, d.output_dir) == (0.7, 3, 4, 2e-5, "./finetuned_models")


@pytest.mark.parametrize("source, command", [("train/config.py", train_main), ("ingest/config.py", ingest_main)])
def test_every_flag_a_validation_message_names_is_a_flag_of_the_command(source, command):
    import re

    text = (Path(__file__).resolve().parents[1] / source).read_text(encoding="utf-8")
    messages = re.findall(r'append\(f?"([^"\n]*)"', text)  # the problems validation reports
    named = {flag for m in messages for flag in re.findall(r"--[a-z][a-z0-9-]+", m)}
    real = {o for p in command.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
    assert named and named <= real, named - real


def test_kaelum_improve_defaults_are_improve_args_defaults(monkeypatch):
    from train.improve import ImproveArgs

    monkeypatch.delenv("KAELUM_STORE", raising=False)
    cmd = kaelum_main.get_command(click.Context(kaelum_main), "improve")
    params = dict(cmd.make_context("improve", ["--domain", "math", "--held-out", "h.jsonl", "--workdir", "w"]).params)
    for own in ("collect_settings", "eval_settings", "grpo_generations", "grpo_max_steps"):  # not ImproveArgs fields
        params.pop(own)
    assert pop_dataclass(ImproveArgs, params) == ImproveArgs(domain="math", held_out="h.jsonl", workdir="w")
    assert params == {}
