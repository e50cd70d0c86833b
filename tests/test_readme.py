"""Every command in the README runs as written: the files it reads ship, its flags exist."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
CLIS = {
    "kaelum": "kaelum.cli:main",
    "kaelum-ingest": "ingest.cli:main",
    "kaelum-sql": "store.cli:main",
    "kaelum-train": "train.cli:main",
    "kaelum-eval": "train.eval_cli:main",
}
# Flags whose value is a file the command reads (outputs such as --csv, --plot are written).
INPUT_FLAGS = {"--queries", "-c"}


def _commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split(" # ")[0].strip()  # a comment after the command
            if not line or line.startswith("#"):
                continue
            for part in line.split("&&"):
                out.append(shlex.split(part))
    return out


COMMANDS = _commands()


def _cli(argv: list[str]) -> tuple[click.Command, list[str]]:
    module, attr = CLIS[argv[0]].split(":")
    cmd = getattr(importlib.import_module(module), attr)
    names = [argv[0]]
    args = argv[1:]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for i, token in enumerate(args):
            if not token.startswith("-") and cmd.get_command(ctx, token) is not None and (i == 0 or not args[i - 1].startswith("--")):
                names.append(token)
                cmd = cmd.get_command(ctx, token)
                break
    return cmd, names


def test_the_readme_has_the_commands_we_check():
    assert len(COMMANDS) >= 12
    assert any(c[:1] == ["kaelum-eval"] for c in COMMANDS)


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:70] for c in COMMANDS])
def test_every_file_a_readme_command_reads_ships(argv):
    for flag, value in zip(argv, argv[1:]):
        if flag in INPUT_FLAGS:
            assert (REPO / value).is_file(), f"README: {' '.join(argv)!r} reads {value}, which does not ship"


@pytest.mark.parametrize("argv", [c for c in COMMANDS if c[0] in CLIS], ids=lambda c: " ".join(c)[:70])
def test_every_flag_of_a_readme_command_exists(argv):
    cmd, names = _cli(argv)
    help_text = CliRunner().invoke(cmd, ["--help"], terminal_width=200).output
    flags = {t.split("=")[0] for t in argv[1:] if t.startswith("--")}
    missing = sorted(f for f in flags if not re.search(rf"(^|[\s,/\[]){re.escape(f)}([\s,=/\]]|$)", help_text, flags=re.M))
    assert not missing, f"README: {' '.join(names)} has no {', '.join(missing)} (its --help: {help_text[:400]})"


def test_the_held_out_examples_are_disjoint_from_the_training_examples():
    from kaelum.orchestrator import load_queries

    train = {q["query"] for q in load_queries(str(REPO / "examples" / "math.jsonl"))}
    held = [q["query"] for q in load_queries(str(REPO / "examples" / "held_out.jsonl"))]
    assert len(held) == 12 and len(set(held)) == 12 and not set(held) & train
